//! The one clock the runtime reads.
//!
//! Deadlines, backoff, breakers, budgets and latencies are measured on tokio's clock rather
//! than the system's, so that a runtime whose time is paused (`tokio::time::pause`) or
//! simulated (turmoil, through `rpc_transport::sim`) sees every timer of ours move with its
//! own time. In a normal runtime the two clocks are the same reading.
//!
//! The values stay `std::time::Instant`s (the public API hands them out, e.g.
//! [`context::deadline`](crate::context::deadline)); compare them with
//! `tokio::time::Instant::now().into_std()`, which [`now`] returns.

use std::time::{Duration, Instant};

/// Now, on tokio's clock.
#[inline]
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Time passed since `since`, on tokio's clock (what `Instant::elapsed` is on the system's).
#[inline]
pub(crate) fn since(since: Instant) -> Duration {
    now().saturating_duration_since(since)
}
