//! [`Reply`]: what a call answered, as middleware pass it back.

use std::any::Any;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::{ErrorKind, RpcError};
use crate::streaming::RemoteStream;

/// A call's successful outcome, as it passes back through middleware. Make one with
/// [`Reply::encode`] to answer a call without running it; a reply from
/// [`Next::run`](super::Next::run) is the handler's result (on a server) or the server's
/// response (on a client).
///
/// A method's own error type (`Result<T, MyError>`) is part of its result: its `Err` is a
/// `Reply` too. A refused or failed call is the `Err(RpcError)` beside it.
pub struct Reply(pub(crate) Kind);

pub(crate) enum Kind {
    /// A handler's result, still typed (the server's `FooResponse`).
    Value(Box<dyn Any + Send>),
    /// An encoded result: a response body, or a middleware's answer.
    Body(Bytes),
    /// The stream a streaming call answered with (on a client).
    Stream(RemoteStream),
}

impl Reply {
    /// Answers with `value`, which must be the method's result type (for a method
    /// returning `Result<T, E>`, a `Result<T, E>`): it is encoded the way the method's own
    /// result is. A value of another type reaches the caller as an undecodable response.
    /// Not for methods returning a stream.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Reply, RpcError> {
        let mut body = BytesMut::new();
        codec::encode_value(value, &mut body)?;
        Ok(Reply(Kind::Body(body.freeze())))
    }

    /// Answers with a result body already encoded (one that [`body`](Reply::body) gave
    /// earlier, say, from a cache).
    pub fn from_body(body: Bytes) -> Reply {
        Reply(Kind::Body(body))
    }

    /// The encoded result, when this reply holds one: on a client, every unary call's
    /// reply; on a server, only an answer a middleware made (a handler's result is encoded
    /// after the middleware are done).
    pub fn body(&self) -> Option<&Bytes> {
        match &self.0 {
            Kind::Body(body) => Some(body),
            Kind::Value(_) | Kind::Stream(_) => None,
        }
    }

    /// Decodes the encoded result as `T` (see [`body`](Reply::body)); `None` when the
    /// reply holds no encoded result.
    pub fn decode<T: DeserializeOwned>(&self) -> Option<Result<T, RpcError>> {
        self.body().map(|body| codec::decode_value(body))
    }

    /// Whether the call answered with a stream of items.
    pub fn is_stream(&self) -> bool {
        matches!(self.0, Kind::Stream(_))
    }

    /// A handler's typed result.
    pub(crate) fn value<R: Send + 'static>(response: R) -> Reply {
        Reply(Kind::Value(Box::new(response)))
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Value(_) => f.write_str("Reply(handler's result)"),
            Kind::Body(body) => write!(f, "Reply({} bytes)", body.len()),
            Kind::Stream(_) => f.write_str("Reply(stream)"),
        }
    }
}

/// The error of a reply that middleware turned into something the call cannot use.
pub(crate) fn mismatched(what: &str, method: &str) -> RpcError {
    RpcError::new(
        ErrorKind::Internal,
        format!("a middleware answered `{method}` with {what}, which that method does not return"),
    )
}
