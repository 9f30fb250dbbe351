//! The one error type for everything the framework itself can fail at.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// What kind of failure an [`RpcError`] is.
///
/// New kinds may be added in later versions, so match with a wildcard arm.
///
/// ```
/// use rpc_core::{ErrorKind, RpcError};
///
/// let err = RpcError::new(ErrorKind::Overloaded, "server is at its concurrency limit");
/// assert_eq!(err.kind(), ErrorKind::Overloaded);
/// assert!(err.kind().is_retryable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No response arrived before the call's deadline; the server stops the handler too.
    DeadlineExceeded,
    /// The connection closed or broke before the response arrived.
    Disconnected,
    /// The server shed the call (concurrency limit reached, or shutting down).
    Overloaded,
    /// The peer serves another service, another schema of it, or another protocol version.
    Incompatible,
    /// A malformed, undecodable or oversized message.
    Protocol,
    /// The handler panicked; the connection and the server live on.
    Internal,
    /// The server does not know who the caller is: a missing, expired or wrong credential
    /// (a bearer token, a client certificate). Retrying with the same credential fails again.
    Unauthenticated,
    /// The server knows who the caller is and does not allow it this call (or connection).
    PermissionDenied,
    /// The caller went over a rate limit. [`RpcError::retry_after`] says when the limit
    /// lets the next call through; a balancing client neither counts it against the
    /// endpoint nor retries it at once. Servers of earlier versions never send it; to
    /// clients of earlier versions it reads as `Overloaded`.
    RateLimited,
}

impl ErrorKind {
    /// Whether a call that failed this way never ran to completion on the server and may be
    /// sent again (to this server or another one) without doing its work twice.
    ///
    /// `Disconnected` is *not* in this set: the request may have reached the server.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Overloaded)
    }

    /// The kind's stable name, as used in logs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::DeadlineExceeded => "deadline exceeded",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Internal => "internal error",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::RateLimited => "rate limited",
        }
    }

    pub(crate) fn to_wire(self) -> u8 {
        match self {
            ErrorKind::DeadlineExceeded => 1,
            ErrorKind::Disconnected => 2,
            ErrorKind::Overloaded => 3,
            ErrorKind::Incompatible => 4,
            ErrorKind::Protocol => 5,
            ErrorKind::Internal => 6,
            ErrorKind::Unauthenticated => 7,
            ErrorKind::PermissionDenied => 8,
            // Earlier clients know no code 9: they get `Overloaded`, and the precise kind
            // travels in the error's detail (see `protocol::ErrorDetail`).
            ErrorKind::RateLimited => 3,
        }
    }

    /// The kind's code in an error's detail, which names kinds that travel as another
    /// code for the sake of earlier peers.
    pub(crate) fn detail_code(self) -> u8 {
        match self {
            ErrorKind::RateLimited => 9,
            kind => kind.to_wire(),
        }
    }

    /// Kinds a newer peer may send that this version does not know become `Protocol`.
    pub(crate) fn from_wire(code: u8) -> ErrorKind {
        match code {
            1 => ErrorKind::DeadlineExceeded,
            2 => ErrorKind::Disconnected,
            3 => ErrorKind::Overloaded,
            4 => ErrorKind::Incompatible,
            6 => ErrorKind::Internal,
            7 => ErrorKind::Unauthenticated,
            8 => ErrorKind::PermissionDenied,
            9 => ErrorKind::RateLimited,
            _ => ErrorKind::Protocol,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the framework: the call did not produce the handler's return value.
///
/// The service's own errors travel inside the method's return type; `RpcError` is only what
/// the framework failed at. [`kind`](RpcError::kind) says what happened; `Display` says it in
/// words and, where useful, what to do about it.
///
/// ```
/// use rpc_core::{ErrorKind, RpcError};
///
/// fn takes_any_error() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     Err(RpcError::new(ErrorKind::Disconnected, "server closed the connection"))?
/// }
/// assert!(takes_any_error().unwrap_err().to_string().contains("server closed"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RpcError {
    kind: ErrorKind,
    /// When to try again, in milliseconds (fits beside `kind`: the error stays 24 bytes).
    retry_after_ms: Option<NonZeroU32>,
    message: Box<str>,
}

impl RpcError {
    /// An error of `kind` with a message saying what happened (and what to do, where useful).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RpcError {
        RpcError {
            kind,
            retry_after_ms: None,
            message: message.into().into_boxed_str(),
        }
    }

    /// A [`RateLimited`](ErrorKind::RateLimited) error telling the caller to wait
    /// `retry_after` before the next call (rounded up to whole milliseconds).
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> RpcError {
        RpcError::new(ErrorKind::RateLimited, message).with_retry_after(retry_after)
    }

    /// Says when the caller may try again, for errors that know (see
    /// [`retry_after`](RpcError::retry_after)).
    pub fn with_retry_after(mut self, retry_after: Duration) -> RpcError {
        let ms = retry_after
            .as_nanos()
            .div_ceil(1_000_000)
            .clamp(1, u128::from(u32::MAX));
        self.retry_after_ms = NonZeroU32::new(u32::try_from(ms).unwrap_or(u32::MAX));
        self
    }

    /// How long the server asked the caller to wait before trying again, if it said: set
    /// on [`RateLimited`](ErrorKind::RateLimited) errors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_ms
            .map(|ms| Duration::from_millis(u64::from(ms.get())))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An [`Unauthenticated`](ErrorKind::Unauthenticated) error: for an
    /// [`Authorize`](crate::Authorize) hook that does not know who the caller is.
    pub fn unauthenticated(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Unauthenticated, message)
    }

    /// A [`PermissionDenied`](ErrorKind::PermissionDenied) error: for an
    /// [`Authorize`](crate::Authorize) hook that knows the caller and refuses it.
    pub fn permission_denied(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::PermissionDenied, message)
    }

    pub(crate) fn deadline(after: std::time::Duration) -> RpcError {
        RpcError::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "no response within the call's deadline of {after:?}; the server was told to stop \
                 the handler (raise the deadline with `.timeout(..)` if the call needs longer)"
            ),
        )
    }

    pub(crate) fn protocol(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Protocol, message)
    }

    pub(crate) fn disconnected(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Disconnected, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl fmt::Debug for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcError")
            .field("kind", &self.kind)
            .field("message", &&*self.message)
            .field("retry_after", &self.retry_after())
            .finish()
    }
}

impl std::error::Error for RpcError {}

impl From<RpcError> for std::io::Error {
    fn from(err: RpcError) -> std::io::Error {
        let kind = match err.kind {
            ErrorKind::DeadlineExceeded => std::io::ErrorKind::TimedOut,
            ErrorKind::Disconnected => std::io::ErrorKind::ConnectionAborted,
            ErrorKind::Protocol => std::io::ErrorKind::InvalidData,
            ErrorKind::Unauthenticated | ErrorKind::PermissionDenied => {
                std::io::ErrorKind::PermissionDenied
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip() {
        for kind in [
            ErrorKind::DeadlineExceeded,
            ErrorKind::Disconnected,
            ErrorKind::Overloaded,
            ErrorKind::Incompatible,
            ErrorKind::Protocol,
            ErrorKind::Internal,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
        ] {
            assert_eq!(ErrorKind::from_wire(kind.to_wire()), kind);
        }
        // Sent as `Overloaded` to every client; the precise kind is the detail's.
        assert_eq!(ErrorKind::RateLimited.to_wire(), 3);
        assert_eq!(ErrorKind::from_wire(9), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::from_wire(200), ErrorKind::Protocol);
    }

    #[test]
    fn display_has_kind_and_message() {
        let err = RpcError::new(ErrorKind::Internal, "handler panicked");
        assert_eq!(err.to_string(), "internal error: handler panicked");
    }
}
