//! TCP: `connect` and `bind`, with `TCP_NODELAY` on every connection.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use rpc_core::Listener;
//!
//! let mut listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let _client_end = rpc_transport::tcp::connect(addr).await?;
//! let _server_end = listener.accept().await.expect("open")?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpStream, ToSocketAddrs};

use crate::framing::{Framed, DEFAULT_MAX_FRAME_SIZE};

/// A TCP connection carrying frames.
pub type TcpTransport = Framed<TcpStream>;

/// Connects to `addr` (anything `tokio::net::ToSocketAddrs` takes, e.g. `"host:port"`).
pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpTransport> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Framed::new(stream))
}

/// A [`Connect`](rpc_core::Connect) for reconnecting and balancing clients: connects to
/// `addr` (resolved again on every connection, so a DNS name may move) each time a new
/// connection is needed.
///
/// ```
/// fn assert_connect<C: rpc_core::Connect>(_: &C) {}
/// let connector = rpc_transport::tcp::connector("localhost:4000");
/// assert_connect(&connector);
/// assert_eq!(connector.addr(), "localhost:4000");
/// ```
pub fn connector(addr: impl ToString) -> TcpConnector {
    TcpConnector {
        addr: addr.to_string(),
    }
}

/// Connects to one TCP address whenever asked; see [`connector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnector {
    addr: String,
}

impl TcpConnector {
    /// The address it connects to.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl rpc_core::Connect for TcpConnector {
    type Transport = TcpTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<TcpTransport>> + Send {
        connect(self.addr.as_str())
    }
}

/// Listens on `addr`; `"127.0.0.1:0"` picks a free port (see [`TcpListener::local_addr`]).
pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    Ok(TcpListener {
        inner: tokio::net::TcpListener::bind(addr).await?,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        http: false,
    })
}

/// A TCP listener; give it to [`rpc_core::Server::serve`].
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    max_frame_size: usize,
    http: bool,
}

impl TcpListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl rpc_core::Listener for TcpListener {
    fn set_max_frame_size(&mut self, bytes: usize) {
        self.max_frame_size = bytes;
    }

    fn set_http(&mut self, on: bool) {
        self.http = on;
    }

    fn peer(&self, transport: &TcpTransport) -> rpc_core::Peer {
        match transport.get_ref().peer_addr() {
            Ok(addr) => rpc_core::Peer::new()
                .with_addr(addr.to_string())
                .with_ip(addr.ip()),
            Err(_) => rpc_core::Peer::new(),
        }
    }

    type Transport = TcpTransport;

    async fn accept(&mut self) -> Option<io::Result<TcpTransport>> {
        Some(self.inner.accept().await.and_then(|(stream, _peer)| {
            stream.set_nodelay(true)?;
            Ok(Framed::new(stream)
                .with_max_frame_size(self.max_frame_size)
                .with_http(self.http))
        }))
    }
}
