//! Traffic governance: ready-made [middleware](crate::middleware) for the policies most
//! services need.
//!
//! - [`RateLimit`]: calls per period, per method and per caller (peer IP, TLS identity, a
//!   metadata value such as a tenant); a refused call fails with
//!   [`RateLimited`](crate::ErrorKind::RateLimited) and says when to retry.
//! - [`AdaptiveConcurrency`]: a server-side concurrency limit found from observed latency
//!   instead of a fixed number, which also refuses calls that would miss their deadline
//!   and sheds calls of lower [`Priority`] first.
//! - `ResponseCache` (feature `cache`): a client-side cache that answers repeated calls of
//!   idempotent methods from memory for a while.
//!
//! Each is a [`Middleware`](crate::middleware::Middleware): install it with
//! [`Server::layer`](crate::Server::layer) (or `layer_for`, `layer_for_method`). Bad
//! settings (a rate of 0, a limit of 0) are refused when the policy is built, with a
//! [`ConfigError`] that says what to change.

mod adaptive;
#[cfg(feature = "cache")]
mod cache;
mod priority;
mod rate;

use std::fmt;

pub use adaptive::{AdaptiveConcurrency, AdaptiveConcurrencyBuilder};
#[cfg(feature = "cache")]
pub use cache::{ResponseCache, ResponseCacheBuilder};
pub use priority::Priority;
pub use rate::{KeyBy, RateLimit, RateLimitBuilder};

/// A policy's settings make no sense; the message says which and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
