//! The one deadline mechanism of a call, on either side: how long it may take, and the
//! timer that says when that is over.
//!
//! A client call's future, the stream it may return and the pump sending a stream all hold a
//! [`Deadline`]; a balancing client computes each attempt's time remaining from the same
//! instant. Deadlines travel as time remaining, so clocks need not agree.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project::pin_project;
use tokio::time::Sleep;

use crate::context;
use crate::error::{ErrorKind, RpcError};

/// A call's deadline: none, or a timer for `timeout` from when it was set.
#[pin_project]
#[derive(Debug)]
pub(crate) struct Deadline {
    #[pin]
    sleep: Option<Sleep>,
    /// The timeout the deadline was set with, for the error message.
    timeout: Duration,
}

impl Deadline {
    /// No deadline.
    pub(crate) fn none() -> Deadline {
        Deadline {
            sleep: None,
            timeout: Duration::ZERO,
        }
    }

    /// A deadline `timeout` from now, or none.
    pub(crate) fn after(timeout: Option<Duration>) -> Deadline {
        match timeout {
            Some(timeout) => Deadline {
                sleep: Some(tokio::time::sleep(timeout)),
                timeout,
            },
            None => Deadline::none(),
        }
    }

    /// A deadline at `at`, set with `timeout` (or none): a handler's, from the time remaining
    /// its request was sent with.
    pub(crate) fn at(at: Option<Instant>, timeout: Option<Duration>) -> Deadline {
        match at {
            Some(at) => Deadline {
                sleep: Some(tokio::time::sleep_until(at.into())),
                timeout: timeout.unwrap_or_default(),
            },
            None => Deadline::none(),
        }
    }

    /// The timeout the deadline was set with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the deadline to `timeout` from now (or none).
    pub(crate) fn set(self: Pin<&mut Self>, timeout: Option<Duration>) {
        let mut this = self.project();
        if let Some(timeout) = timeout {
            *this.timeout = timeout;
            this.sleep.set(Some(tokio::time::sleep(timeout)));
        } else {
            this.sleep.set(None);
        }
    }

    /// `Ready` with the error once the deadline has passed; never ready without one.
    #[inline]
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RpcError> {
        let this = self.project();
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| RpcError::deadline(*this.timeout)),
            None => Poll::Pending,
        }
    }
}

/// The timeout a client call runs under: its own, or what is left of the deadline of the
/// handler it is made from, whichever ends first. `Err` if that has already passed.
#[inline]
pub(crate) fn effective_timeout(
    own: Option<Duration>,
    inherit: bool,
) -> Result<Option<Duration>, RpcError> {
    let inherited = if inherit { context::deadline() } else { None };
    let Some(deadline) = inherited else {
        return Ok(own);
    };
    let left = deadline.saturating_duration_since(crate::clock::now());
    if left.is_zero() {
        return Err(RpcError::new(
            ErrorKind::DeadlineExceeded,
            "the deadline of the call this one is made from had already passed, so it was \
             not sent",
        ));
    }
    Ok(Some(own.map_or(left, |own| own.min(left))))
}
