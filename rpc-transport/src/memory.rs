//! In-process transport over channels, for unit tests and for services in one process.
//!
//! Frames travel as whole `Bytes` over bounded channels: no framing and no syscalls, but
//! every message is still encoded and decoded, so tests exercise the real codec.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use futures::{SinkExt, StreamExt};
//!
//! let (mut a, mut b) = rpc_transport::memory::pair();
//! a.send(bytes::Bytes::from_static(b"frame")).await?;
//! assert_eq!(&b.next().await.unwrap()?[..], b"frame");
//! # Ok(()) }
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{Sink, Stream};

/// Frames one direction of a pair may have queued before the sender waits.
const CAPACITY: usize = 256;

/// One end of an in-memory connection: an [`rpc_core::Transport`].
///
/// When one end is dropped, the other reads the end of the stream, and sending to it fails
/// with [`io::ErrorKind::BrokenPipe`].
#[derive(Debug)]
pub struct MemoryTransport {
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

/// A connected pair: `(client_end, server_end)`.
pub fn pair() -> (MemoryTransport, MemoryTransport) {
    let (a_tx, a_rx) = mpsc::channel(CAPACITY);
    let (b_tx, b_rx) = mpsc::channel(CAPACITY);
    (
        MemoryTransport { tx: a_tx, rx: b_rx },
        MemoryTransport { tx: b_tx, rx: a_rx },
    )
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the other end of the memory transport was dropped",
    )
}

impl Stream for MemoryTransport {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx)
            .poll_next(cx)
            .map(|frame| frame.map(Ok))
    }
}

impl Sink<Bytes> for MemoryTransport {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.poll_ready(cx).map_err(|_| gone())
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        self.tx.start_send(frame).map_err(|_| gone())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A frame is delivered as soon as the channel accepts it.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}

/// A listener of in-memory connections; see [`listener()`].
#[derive(Debug)]
pub struct MemoryListener {
    incoming: tokio::sync::mpsc::UnboundedReceiver<MemoryTransport>,
}

/// Makes new connections to a [`MemoryListener`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    outgoing: tokio::sync::mpsc::UnboundedSender<MemoryTransport>,
}

/// A listener and a connector to it, for several clients of one server in one process.
///
/// The listener is closed for good once every connector is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use rpc_core::Listener;
///
/// let (mut listener, connector) = rpc_transport::memory::listener();
/// let _client_end = connector.connect().await?;
/// let _server_end = listener.accept().await.expect("open")?;
/// # Ok(()) }
/// ```
pub fn listener() -> (MemoryListener, MemoryConnector) {
    let (outgoing, incoming) = tokio::sync::mpsc::unbounded_channel();
    (MemoryListener { incoming }, MemoryConnector { outgoing })
}

impl MemoryConnector {
    /// Opens a new connection to the listener; fails with
    /// [`io::ErrorKind::ConnectionRefused`] if the listener was dropped.
    pub async fn connect(&self) -> io::Result<MemoryTransport> {
        let (client_end, server_end) = pair();
        self.outgoing.send(server_end).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the memory listener was dropped",
            )
        })?;
        Ok(client_end)
    }
}

impl rpc_core::Listener for MemoryListener {
    type Transport = MemoryTransport;

    async fn accept(&mut self) -> Option<io::Result<MemoryTransport>> {
        self.incoming.recv().await.map(Ok)
    }
}
