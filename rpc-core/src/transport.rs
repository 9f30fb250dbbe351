//! What the core needs from I/O: a duplex of whole frames, and a source of them.
//!
//! The core never sees sockets. Anything that moves whole frames both ways is a
//! [`Transport`]: the length-prefixed framer in `rpc-transport` over TCP or Unix sockets,
//! the in-memory channels used in tests, or a user's own (TLS, QUIC, a fault injector).

use std::future::Future;
use std::io;

use bytes::Bytes;
use futures::{Sink, Stream};

use crate::peer::Peer;

/// A duplex of whole frames: a [`Stream`] of received frames and a [`Sink`] of frames to send.
///
/// Each item is one complete frame (one protocol message); the transport does the framing.
/// The stream ends (`None`) when the peer closed the connection cleanly; an `Err` item means
/// the connection broke or the peer sent something that cannot be a frame (e.g. one larger
/// than the transport's limit), after which the connection is closed.
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
    Stream<Item = io::Result<Bytes>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = io::Result<Bytes>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static
{
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
