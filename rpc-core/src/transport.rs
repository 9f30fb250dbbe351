//! What the core needs from I/O: a duplex of frames, and a source of them.
//!
//! The core never sees sockets. Anything that moves frames both ways is a
//! [`Transport`]: the length-prefixed framer in `rpc-transport` over TCP or Unix sockets,
//! the in-memory channels used in tests, or a user's own (TLS, QUIC, a fault injector).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};

pub use crate::frame::{Frame, IntoParts};
use crate::peer::Peer;

/// A duplex of frames: a [`Stream`] of received frames and a [`Sink`] of [`Frame`]s to send.
///
/// Each item is one complete frame (one protocol message); the transport does the framing.
/// A received frame is one [`Bytes`]; a frame to send may be made of parts ([`Frame`]),
/// which the transport writes back to back (a byte stream can hand a large part to
/// `writev` from its own buffer; a transport of whole messages joins them with
/// [`Frame::into_bytes`], or wraps itself in [`WholeFrames`]). The stream ends (`None`)
/// when the peer closed the connection cleanly; an `Err` item means the connection broke or
/// the peer sent something that cannot be a frame (e.g. one larger than the transport's
/// limit), after which the connection is closed.
///
/// Frames handed to the sink may be queued: a transport should send everything queued on
/// `poll_flush`, in as few writes as it can. It is implemented for every type with the right
/// shape, so there is nothing to implement by hand:
///
/// ```
/// use rpc_core::Transport;
///
/// fn assert_transport<T: Transport>() {}
/// assert_transport::<rpc_transport::memory::MemoryTransport>();
/// ```
pub trait Transport:
    Stream<Item = io::Result<Bytes>> + Sink<Frame, Error = io::Error> + Send + Unpin + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = io::Result<Bytes>> + Sink<Frame, Error = io::Error> + Send + Unpin + 'static
{
}

/// A duplex of whole [`Bytes`] frames made into a [`Transport`]: each [`Frame`] of several
/// parts is joined into one buffer (a copy) before it is handed on.
///
/// For transports that carry whole messages anyway (a message queue, WebSocket messages, a
/// test double written before frames had parts):
///
/// ```
/// use std::io;
/// use bytes::Bytes;
/// use futures::{Sink, Stream};
/// use rpc_core::{Transport, WholeFrames};
///
/// fn wrap<T>(whole: T) -> impl Transport
/// where
///     T: Stream<Item = io::Result<Bytes>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static,
/// {
///     WholeFrames::new(whole)
/// }
/// ```
#[derive(Debug)]
pub struct WholeFrames<T> {
    inner: T,
}

impl<T> WholeFrames<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> WholeFrames<T> {
        WholeFrames { inner }
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped transport.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The wrapped transport, unwrapped.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Stream + Unpin> Stream for WholeFrames<T> {
    type Item = T::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T: Sink<Bytes> + Unpin> Sink<Frame> for WholeFrames<T> {
    type Error = T::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), T::Error> {
        Pin::new(&mut self.inner).start_send(frame.into_bytes())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Implements `Sink<Bytes>` for a type that is a `Sink<Frame>`, each `Bytes` sent as a frame
/// of one part: the transports of this workspace keep taking whole frames as they did before
/// frames had parts. Not a public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __sink_of_whole_frames {
    ([$($generics:tt)*] $ty:ty $(where $($bounds:tt)*)?) => {
        /// Whole frames of one part, as before frames had parts: `send(bytes)` still works.
        impl<$($generics)*> ::futures::Sink<::bytes::Bytes> for $ty $(where $($bounds)*)? {
            type Error = ::std::io::Error;

            fn poll_ready(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::futures::Sink::<$crate::Frame>::poll_ready(self, cx)
            }

            fn start_send(
                self: ::std::pin::Pin<&mut Self>,
                frame: ::bytes::Bytes,
            ) -> ::std::io::Result<()> {
                ::futures::Sink::<$crate::Frame>::start_send(self, $crate::Frame::new(frame))
            }

            fn poll_flush(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::futures::Sink::<$crate::Frame>::poll_flush(self, cx)
            }

            fn poll_close(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::futures::Sink::<$crate::Frame>::poll_close(self, cx)
            }
        }
    };
}

/// A source of new connections for [`Server::serve`](crate::Server::serve).
pub trait Listener: Send + 'static {
    /// The transport each accepted connection gets.
    type Transport: Transport;

    /// Waits for the next connection.
    ///
    /// `None` means the listener is closed for good and the server stops accepting. An `Err`
    /// is a failure of this one `accept` (e.g. out of file descriptors): the server logs it,
    /// backs off briefly and tries again.
    ///
    /// It must be cancel-safe: the server drops an unfinished `accept` when it shuts down.
    fn accept(&mut self) -> impl Future<Output = Option<io::Result<Self::Transport>>> + Send;

    /// Tells the listener the server's frame size limit, so transports that read a length
    /// prefix can refuse a larger frame before buffering it. The server calls this once,
    /// before the first `accept`; the default does nothing.
    fn set_max_frame_size(&mut self, bytes: usize) {
        let _ = bytes;
    }

    /// Asks the listener to hand connections whose first bytes are an HTTP request back to
    /// the server (as an [`HttpConnection`] in the error of their first read) rather than
    /// read them as frames. The server calls this once, before the first `accept`, when its
    /// HTTP gateway is on; the default does nothing (a transport that is not a byte stream,
    /// like the in-process one, never carries HTTP).
    fn set_http(&mut self, on: bool) {
        let _ = on;
    }

    /// Who is at the other end of an accepted transport: its address for logs and traces
    /// (e.g. the client's `IP:port`), its IP for
    /// [`max_connections_per_ip`](crate::Server::max_connections_per_ip), and any identity
    /// the transport verified (a TLS client certificate), which the
    /// [`Authorize`](crate::Authorize) hook and handlers ([`context::peer`](crate::context::peer))
    /// see. The default knows nothing.
    fn peer(&self, transport: &Self::Transport) -> Peer {
        let _ = transport;
        Peer::new()
    }
}

/// A byte stream, as an HTTP server needs it.
pub trait RawIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T> RawIo for T where T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

/// A connection whose first bytes are an HTTP request, handed back by a framer that was
/// asked to look for them ([`Listener::set_http`]): the error of the transport's first read
/// carries it (see [`HttpConnection::take`]), and the server serves it with its HTTP
/// gateway instead of refusing it.
pub struct HttpConnection {
    // Behind a mutex only because an `io::Error`'s payload must be `Sync`.
    io: std::sync::Mutex<Option<(Box<dyn RawIo>, bytes::Bytes)>>,
}

impl HttpConnection {
    /// The connection `io`, of which the framer already read `buffered`.
    pub fn new<IO: RawIo>(io: IO, buffered: bytes::Bytes) -> HttpConnection {
        HttpConnection {
            io: std::sync::Mutex::new(Some((Box::new(io), buffered))),
        }
    }

    /// The error a transport's read returns to hand `self` over.
    pub fn into_error(self) -> io::Error {
        io::Error::other(self)
    }

    /// The connection carried by `err`, if it carries one; else `err` itself.
    pub fn take(err: io::Error) -> Result<(Box<dyn RawIo>, bytes::Bytes), io::Error> {
        if !err
            .get_ref()
            .is_some_and(|inner| inner.is::<HttpConnection>())
        {
            return Err(err);
        }
        let kind = err.kind();
        let carried = err
            .into_inner()
            .and_then(|inner| inner.downcast::<HttpConnection>().ok())
            .and_then(|conn| crate::lock::lock(&conn.io).take());
        carried.ok_or_else(|| io::Error::new(kind, "the HTTP connection was already taken"))
    }
}

impl std::fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpConnection")
    }
}

impl std::fmt::Display for HttpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection speaks HTTP and was handed to the HTTP gateway")
    }
}

impl std::error::Error for HttpConnection {}
