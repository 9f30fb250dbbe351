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

pub use rpc_core::memory::{pair, MemoryTransport};

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

/// A memory connector is also a [`Connect`](rpc_core::Connect), for reconnecting and
/// balancing clients in tests: each connection is a new one to the listener.
impl rpc_core::Connect for MemoryConnector {
    type Transport = MemoryTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<MemoryTransport>> + Send {
        MemoryConnector::connect(self)
    }
}

impl rpc_core::Listener for MemoryListener {
    type Transport = MemoryTransport;

    async fn accept(&mut self) -> Option<io::Result<MemoryTransport>> {
        self.incoming.recv().await.map(Ok)
    }
}
