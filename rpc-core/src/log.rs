//! The events a server operator should see, as `tracing` events of target `rpc` with
//! structured fields: nothing is written unless the program installs a subscriber.
//!
//! One function per event, so that each has one wording and one set of fields wherever it
//! is raised.

use std::io;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::observe::TARGET;

/// A connection broke (reset, timed out, keepalive unanswered); the server goes on.
pub(crate) fn connection_broke(err: &io::Error) {
    tracing::warn!(target: TARGET, error = %err, "rpc connection broke");
}

/// The server closes a connection and tells the client why.
pub(crate) fn closing_connection(kind: ErrorKind, message: &str) {
    tracing::warn!(
        target: TARGET,
        kind = kind.as_str(),
        reason = message,
        "rpc server closing a connection"
    );
}

/// A client closed its connection for a reason other than going away.
pub(crate) fn client_said_goodbye(kind: ErrorKind, message: &str) {
    tracing::warn!(
        target: TARGET,
        kind = kind.as_str(),
        reason = message,
        "rpc client closed its connection"
    );
}

/// A handler panicked; its call failed with `Internal`, the connection goes on.
pub(crate) fn handler_panicked(method: &str, panic: &str) {
    tracing::error!(target: TARGET, method, panic, "rpc handler panicked");
}

/// Accepting a connection failed (out of file descriptors, say); the server retries.
pub(crate) fn accept_failed(err: &io::Error, retry_in: Duration) {
    tracing::warn!(
        target: TARGET,
        error = %err,
        retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
        "rpc server failed to accept a connection"
    );
}

/// Connections still busy when the shutdown grace period ended are closed.
pub(crate) fn grace_expired(connections: usize, grace: Duration) {
    tracing::warn!(
        target: TARGET,
        connections,
        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        "rpc server closing connections still busy after the shutdown grace period"
    );
}

/// A connection failed before it sent its `Hello`.
pub(crate) fn failed_before_hello(err: &io::Error) {
    tracing::warn!(target: TARGET, error = %err, "rpc connection failed before its Hello");
}

/// A connection is refused (wrong service or protocol, no Hello in time, over a limit, or
/// refused by the `Authorize` hook).
pub(crate) fn refusing_connection(kind: ErrorKind, reason: &str) {
    tracing::warn!(
        target: TARGET,
        kind = kind.as_str(),
        reason,
        "rpc server refusing a connection"
    );
}
