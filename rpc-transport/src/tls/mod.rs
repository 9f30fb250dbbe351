//! TLS and mutual TLS over TCP, with [rustls](https://docs.rs/rustls) and its `ring`
//! crypto provider (enable this crate's `tls` feature).
//!
//! A server binds with a certificate; a client connects with the CA that issued it and the
//! name it was issued for. Everything else is the same as over plain TCP:
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use rpc_transport::tls;
//!
//! // server: its certificate chain and key, PEM (or DER)
//! let config = tls::server_config(std::fs::read("server.pem")?, std::fs::read("server.key")?)?;
//! let listener = tls::bind("0.0.0.0:4000", config).await?;
//! // Server::new().add_service(..).serve(listener)
//!
//! // client: the CA it trusts, and the server's name as its certificate gives it
//! let config = tls::client_config(std::fs::read("ca.pem")?)?;
//! let transport = tls::connect("rpc.example.com:4000", "rpc.example.com", config).await?;
//! // FooClient::new(transport); or, reconnecting:
//! // FooClient::builder().connect(tls::connector("rpc.example.com:4000", "rpc.example.com", config))
//! # Ok(()) }
//! ```
//!
//! **Mutual TLS.** [`server_config_mtls`] also takes the CA that issues client certificates,
//! and refuses clients without one; [`client_config_mtls`] gives the client its certificate.
//! The server's [`Listener::peer`](rpc_core::Listener::peer) then carries the client's
//! [`Identity`](rpc_core::Identity): the names its certificate was issued for and the
//! certificate chain, which the [`Authorize`](rpc_core::Authorize) hook and handlers
//! ([`rpc_core::context::peer`]) see. See [`TlsStream::identity`] for which names.
//!
//! **Errors.** A certificate one end refuses fails with [`io::ErrorKind::PermissionDenied`]
//! and a message saying what was refused and what to do: `connect` fails that way when the
//! client does not trust the server's certificate; when the server refuses the client's
//! (with TLS 1.3 the client learns it only after its handshake), the connection's first read
//! fails that way, which a client reports as [`Unauthenticated`](rpc_core::ErrorKind::Unauthenticated).
//! A plain client connecting to a TLS server gets the server's TLS alert and fails at once
//! with "the peer speaks TLS"; a TLS client connecting to a plain server fails its handshake
//! with "the server does not speak TLS". Neither waits for a timeout.
//!
//! **Handshakes.** The listener runs handshakes concurrently, each within a time limit
//! ([`TlsListener::with_handshake_timeout`], 10 s by default), and at most
//! [`TlsListener::with_max_handshakes`] (1,024) at once, so a client that connects and says
//! nothing delays nobody else. A handshake that fails or times out is logged (a `tracing`
//! warning, target `rpc`) and its connection closed; `accept` goes on with the next one.
//!
//! Both ends offer the ALPN protocol [`ALPN_PROTOCOL`] (`trpc/1`). To build a rustls
//! configuration of your own (other roots, a certificate resolver, revocation lists), start
//! from [`provider`] and set `alpn_protocols` to it.

mod config;
mod error;
mod identity;

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::task::JoinSet;

use crate::framing::{Framed, DEFAULT_MAX_FRAME_SIZE};

pub use config::{
    certificates, client_config, client_config_mtls, private_key, provider, server_config,
    server_config_mtls,
};
/// The rustls crate this module is built on, for configurations of your own.
pub use tokio_rustls::rustls;
/// Certificate and key types ([`CertificateDer`](pki_types::CertificateDer),
/// [`PrivateKeyDer`](pki_types::PrivateKeyDer), [`ServerName`](pki_types::ServerName)).
pub use tokio_rustls::rustls::pki_types;

use rustls::{ClientConfig, ServerConfig};

/// The ALPN protocol both ends offer: `trpc/1`.
pub const ALPN_PROTOCOL: &[u8] = b"trpc/1";

/// How long a server waits for a client's handshake by default: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many handshakes a listener runs at once by default: 1,024.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// How long a server waits, after refusing a handshake, for the client to read the alert
/// that says why and close (closing first could reset the connection and lose the alert).
const LINGER: Duration = Duration::from_secs(1);
/// The most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 64 << 10;

/// A TLS connection carrying frames.
pub type TlsTransport = Framed<TlsStream>;

/// A TCP connection with TLS on it, either end; the byte stream under a [`TlsTransport`].
///
/// Errors reading it are explained: a TLS alert refusing a certificate becomes
/// [`io::ErrorKind::PermissionDenied`] with a message saying what to fix.
#[derive(Debug)]
pub struct TlsStream {
    inner: tokio_rustls::TlsStream<TcpStream>,
    peer_addr: Option<SocketAddr>,
}

impl TlsStream {
    /// The TCP connection under it.
    pub fn get_ref(&self) -> &TcpStream {
        self.inner.get_ref().0
    }

    /// The TLS connection's state: negotiated version, cipher suite, ALPN protocol, the
    /// peer's certificates.
    pub fn connection(&self) -> &rustls::CommonState {
        self.inner.get_ref().1
    }

    /// The address of the other end, as it was when the connection was made.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The certificate chain the other end presented and this end verified (DER, its own
    /// certificate first): the server's on a client, the client's on a server with mutual
    /// TLS. `None` if it presented none.
    pub fn peer_certificates(&self) -> Option<&[pki_types::CertificateDer<'static>]> {
        self.connection().peer_certificates()
    }

    /// The identity the other end's verified certificate proves, if it presented one.
    ///
    /// Its names are those the certificate was issued for: each DNS name and URI (a SPIFFE
    /// ID, say) of its subject alternative names, in the certificate's order; a certificate
    /// without either is named by its subject's common name (CN) instead. Its certificates
    /// are the chain as presented, the peer's own first.
    pub fn identity(&self) -> Option<rpc_core::Identity> {
        identity::of_chain(self.peer_certificates()?)
    }

    fn is_client(&self) -> bool {
        matches!(self.inner, tokio_rustls::TlsStream::Client(_))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let client = this.is_client();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(error::on_stream(err, client))),
            other => other,
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let client = this.is_client();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(error::on_stream(err, client))),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let client = this.is_client();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(error::on_stream(err, client))),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let client = this.is_client();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(error::on_stream(err, client))),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Connects to `addr` over TCP and makes a TLS handshake, verifying the server's
/// certificate against `config`'s roots and `server_name` (a DNS name, or an IP address
/// the certificate names).
///
/// A server certificate the client does not trust fails with
/// [`io::ErrorKind::PermissionDenied`], saying why (an unknown issuer, another name,
/// expired); a server that does not speak TLS fails with [`io::ErrorKind::InvalidData`].
/// The handshake has no time limit of its own: a reconnecting client's `connect_timeout`
/// covers it, or wrap the call in `tokio::time::timeout`.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use rpc_transport::tls;
///
/// let config = tls::client_config(std::fs::read("ca.pem")?)?;
/// let transport = tls::connect("10.0.0.7:4000", "billing.internal", config).await?;
/// # Ok(()) }
/// ```
pub async fn connect(
    addr: impl ToSocketAddrs,
    server_name: &str,
    config: impl Into<Arc<ClientConfig>>,
) -> io::Result<TlsTransport> {
    let name = pki_types::ServerName::try_from(server_name.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{server_name}` is neither a DNS name nor an IP address to verify the server's certificate against"),
        )
    })?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let peer_addr = tcp.peer_addr().ok();
    let connector = tokio_rustls::TlsConnector::from(config.into());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|err| error::client_handshake(err, server_name))?;
    Ok(Framed::new(TlsStream {
        inner: stream.into(),
        peer_addr,
    }))
}

/// A [`Connect`](rpc_core::Connect) for reconnecting and balancing clients: connects to
/// `addr` (resolved again on every connection) with TLS, as [`connect`] does, each time a
/// new connection is needed.
///
/// ```
/// use rpc_transport::tls;
///
/// fn assert_connect<C: rpc_core::Connect>(_: &C) {}
/// # let ca = rcgen::generate_simple_self_signed(["ca.internal".to_string()]).unwrap().cert.pem();
/// let config = tls::client_config(ca)?; // the PEM of the CA the client trusts
/// let connector = tls::connector("10.0.0.7:4000", "billing.internal", config);
/// assert_connect(&connector);
/// assert_eq!(connector.server_name(), "billing.internal");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn connector(
    addr: impl ToString,
    server_name: impl Into<String>,
    config: impl Into<Arc<ClientConfig>>,
) -> TlsConnector {
    TlsConnector {
        addr: addr.to_string(),
        server_name: server_name.into(),
        config: config.into(),
    }
}

/// Connects to one address with TLS whenever asked; see [`connector`].
#[derive(Debug, Clone)]
pub struct TlsConnector {
    addr: String,
    server_name: String,
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    /// The address it connects to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The name the server's certificate is verified against.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The client's TLS configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

impl rpc_core::Connect for TlsConnector {
    type Transport = TlsTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<TlsTransport>> + Send {
        connect(
            self.addr.as_str(),
            self.server_name.as_str(),
            Arc::clone(&self.config),
        )
    }
}

/// Listens on `addr` for TLS connections with `config` (from [`server_config`],
/// [`server_config_mtls`] or your own); `"127.0.0.1:0"` picks a free port.
pub async fn bind(
    addr: impl ToSocketAddrs,
    config: impl Into<Arc<ServerConfig>>,
) -> io::Result<TlsListener> {
    Ok(TlsListener {
        inner: tokio::net::TcpListener::bind(addr).await?,
        acceptor: tokio_rustls::TlsAcceptor::from(config.into()),
        handshakes: JoinSet::new(),
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        http: false,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        max_handshakes: DEFAULT_MAX_HANDSHAKES,
    })
}

/// A TLS listener; give it to [`rpc_core::Server::serve`].
///
/// It accepts TCP connections and runs their handshakes concurrently, in tasks it owns
/// (dropping the listener ends them), each within the handshake timeout; `accept` returns
/// the connections whose handshake succeeded, in the order they finish. While
/// [`max_handshakes`](TlsListener::with_max_handshakes) are in progress it takes no new
/// connection (they wait in the kernel's backlog).
pub struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: JoinSet<Option<TlsStream>>,
    max_frame_size: usize,
    /// Hand HTTP connections back to the server (`set_http`).
    http: bool,
    handshake_timeout: Duration,
    max_handshakes: usize,
}

impl TlsListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Sets how long a client has to complete its handshake (default 10 s); a client still
    /// handshaking then is disconnected.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TlsListener {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how many handshakes may be in progress at once (default 1,024, at least 1).
    pub fn with_max_handshakes(mut self, max: usize) -> TlsListener {
        self.max_handshakes = max.max(1);
        self
    }

    /// How many handshakes are in progress.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.len()
    }

    fn start_handshake(&mut self, tcp: TcpStream, addr: SocketAddr) {
        let acceptor = self.acceptor.clone();
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::warn!(target: "rpc", peer = %addr, "TLS connection dropped: {err}");
                return None;
            }
            let handshake = acceptor.accept(tcp).into_fallible();
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => Some(TlsStream {
                    inner: stream.into(),
                    peer_addr: Some(addr),
                }),
                Ok(Err((err, tcp))) => {
                    let err = error::server_handshake(err);
                    tracing::warn!(target: "rpc", peer = %addr, "TLS handshake failed: {err}");
                    linger(tcp).await;
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        target: "rpc",
                        peer = %addr,
                        "TLS handshake did not finish within {timeout:?}; connection closed"
                    );
                    None
                }
            }
        });
    }
}

/// Closes a connection whose handshake failed so that the alert saying why reaches the
/// client: closes the sending side, then reads what the client still sends until it closes
/// too (closing with unread data would reset the connection, and the alert with it).
async fn linger(mut tcp: TcpStream) {
    let drain = async {
        if tcp.shutdown().await.is_err() {
            return;
        }
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .field("handshakes_in_progress", &self.handshakes.len())
            .field("max_handshakes", &self.max_handshakes)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_frame_size", &self.max_frame_size)
            .finish()
    }
}

impl rpc_core::Listener for TlsListener {
    type Transport = TlsTransport;

    fn set_max_frame_size(&mut self, bytes: usize) {
        self.max_frame_size = bytes;
    }

    fn set_http(&mut self, on: bool) {
        self.http = on;
    }

    fn peer(&self, transport: &TlsTransport) -> rpc_core::Peer {
        let stream = transport.get_ref();
        let mut peer = rpc_core::Peer::new();
        if let Some(addr) = stream.peer_addr() {
            peer = peer.with_addr(addr.to_string()).with_ip(addr.ip());
        }
        if let Some(identity) = stream.identity() {
            peer = peer.with_identity(identity);
        }
        peer
    }

    /// Waits for the next connection whose handshake succeeds. Cancel-safe: a connection
    /// accepted or a handshake finished stays in the listener for the next call.
    async fn accept(&mut self) -> Option<io::Result<TlsTransport>> {
        loop {
            let room = self.handshakes.len() < self.max_handshakes;
            tokio::select! {
                biased;
                Some(done) = self.handshakes.join_next() => match done {
                    Ok(Some(stream)) => {
                        let transport = Framed::new(stream)
                            .with_max_frame_size(self.max_frame_size)
                            .with_http(self.http);
                        return Some(Ok(transport));
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(target: "rpc", "a TLS handshake task failed: {err}");
                    }
                },
                accepted = self.inner.accept(), if room => match accepted {
                    Ok((tcp, addr)) => self.start_handshake(tcp, addr),
                    Err(err) => return Some(Err(err)),
                },
            }
        }
    }
}
