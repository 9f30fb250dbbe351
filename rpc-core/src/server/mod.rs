//! The server: a builder of hosted services and limits, and the loops that serve them.

mod auth;
mod call;
mod connection;
mod dispatch;
mod handshake;
#[cfg(feature = "http")]
mod http;
mod service;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use auth::{Authorize, CallInfo, ConnectionInfo};
pub(crate) use service::HostedService;
pub use service::{BoxFuture, Service};
pub use stats::ServerStats;

use crate::compress::Compression;
use crate::descriptor::ServiceDescriptor;
use crate::error::ErrorKind;
use crate::health::{HealthCheck, HealthClient, HealthReporter, HealthServer};
use crate::keepalive::Keepalive;
use crate::load::LoadReporter;
use crate::log;
use crate::middleware::{Layers, Middleware, Scope, ServerCall, Stack};
use crate::observe::ServerMetrics;
use crate::outgoing::{close_with, CLOSE_TIMEOUT};
use crate::peer::Peer;
use crate::protocol;
use crate::reflection::{self, ReflectionClient, ReflectionServer};
use crate::streaming::ConnectionWindow;
use crate::transport::{Listener, Transport};
use connection::ConnectionContext;

/// Limits and timeouts of a [`Server`].
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) max_frame_size: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) hello_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) max_buffered_stream_bytes: usize,
    pub(crate) keepalive: Option<Keepalive>,
    /// Serve HTTP connections with the JSON gateway.
    pub(crate) http: bool,
    /// The codecs this server accepts from clients that offer them; `None`: it never
    /// compresses.
    pub(crate) compression: Option<Compression>,
}

/// A server: the services it hosts and its limits. Build it, then run one of
/// [`serve`](Server::serve), [`serve_with_shutdown`](Server::serve_with_shutdown) or
/// [`serve_connection`](Server::serve_connection).
///
/// Each returns a `Send + 'static` future, to `.await` or `tokio::spawn`. Dropping (or
/// aborting) that future closes every connection it serves and drops their handlers.
///
/// | setting | default |
/// | --- | --- |
/// | [`max_frame_size`](Server::max_frame_size) | 8 MiB |
/// | [`max_concurrent_requests`](Server::max_concurrent_requests) (per connection) | 1,024 |
/// | [`shutdown_grace`](Server::shutdown_grace) | 30 s |
/// | [`hello_timeout`](Server::hello_timeout) | 10 s |
/// | [`max_connections`](Server::max_connections) | 10,000 |
/// | [`max_connections_per_ip`](Server::max_connections_per_ip) | 1,000 |
/// | [`max_buffered_bytes`](Server::max_buffered_bytes) (per connection) | 16 MiB |
/// | [`max_buffered_stream_bytes`](Server::max_buffered_stream_bytes) (per connection) | 32 MiB |
/// | [`keepalive`](Server::keepalive) | ping after 60 s of silence, 20 s to answer |
/// | [`compression`](Server::compression) | off |
///
/// Every server also hosts the [health check](crate::health) (`rpc.Health`).
///
/// ```
/// use rpc_core::{service, Server};
///
/// #[service]
/// pub trait Greeter {
///     async fn hello(&self, name: String) -> String;
/// }
///
/// struct English;
/// impl Greeter for English {
///     async fn hello(&self, name: String) -> String {
///         format!("Hello, {name}!")
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (client_end, server_end) = rpc_transport::memory::pair();
/// tokio::spawn(Server::new().add_service(GreeterServer::new(English)).serve_connection(server_end));
/// let client = GreeterClient::new(client_end);
/// assert_eq!(client.hello("Ada".into()).await?, "Hello, Ada!");
/// # Ok(()) }
/// ```
pub struct Server {
    services: HashMap<&'static str, Arc<dyn HostedService>>,
    auth: Option<Arc<dyn Authorize>>,
    layers: Layers<ServerCall>,
    config: ServerConfig,
    stats: ServerStats,
    health: HealthReporter,
}

impl Default for Server {
    fn default() -> Server {
        Server::new()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut services: Vec<&str> = self.services.keys().copied().collect();
        services.sort_unstable();
        f.debug_struct("Server")
            .field("services", &services)
            .field("config", &self.config)
            .field("authorize", &self.auth.is_some())
            .field("middleware", &self.layers)
            .finish()
    }
}

impl Server {
    /// A server hosting nothing yet, with the default limits.
    pub fn new() -> Server {
        Server {
            services: HashMap::new(),
            auth: None,
            layers: Layers::default(),
            config: ServerConfig {
                max_frame_size: crate::DEFAULT_MAX_FRAME_SIZE,
                max_concurrent_requests: 1024,
                shutdown_grace: Duration::from_secs(30),
                hello_timeout: Duration::from_secs(10),
                max_connections: 10_000,
                max_connections_per_ip: 1_000,
                max_buffered_bytes: 16 << 20,
                max_buffered_stream_bytes: crate::DEFAULT_MAX_BUFFERED_STREAM_BYTES,
                keepalive: Some(Keepalive::new(
                    Duration::from_secs(60),
                    Duration::from_secs(20),
                )),
                http: false,
                compression: None,
            },
            stats: ServerStats::default(),
            health: HealthReporter::default(),
        }
    }

    /// Live counters of this server (open connections, ...), readable while it runs.
    pub fn stats(&self) -> ServerStats {
        self.stats.clone()
    }

    /// Hosts `service`; each connection's `Hello` names the service it wants.
    ///
    /// # Panics
    /// If a service of the same wire name is already hosted: that is a programming error
    /// (rename one with `#[service(name = "...")]`).
    pub fn add_service<S: Service>(mut self, service: S) -> Server {
        let name = Service::descriptor(&service).name;
        if self.services.contains_key(name) {
            panic!(
                "Server::add_service: a service named `{name}` is already hosted; each wire \
                 name can be hosted once (give one a different name with \
                 #[service(name = \"...\")])"
            );
        }
        self.services.insert(name, Arc::new(service));
        self
    }

    /// The largest frame accepted from a client or sent to it, in bytes (default 8 MiB).
    /// A connection's first frame, the client's `Hello` with its schema, may be up to
    /// [`MIN_HELLO_LIMIT`](crate::MIN_HELLO_LIMIT) even when this is smaller.
    ///
    /// A larger request closes its connection with a `Protocol` error; a larger response
    /// fails that call with `Protocol`.
    pub fn max_frame_size(mut self, bytes: usize) -> Server {
        self.config.max_frame_size = bytes;
        self
    }

    /// How many calls one connection may have in progress (default 1,024). Calls beyond it
    /// fail at once with `Overloaded`: they are not queued.
    pub fn max_concurrent_requests(mut self, limit: usize) -> Server {
        self.config.max_concurrent_requests = limit.max(1);
        self
    }

    /// How long [`serve_with_shutdown`](Server::serve_with_shutdown) lets calls in progress
    /// finish after the signal (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Server {
        self.config.shutdown_grace = grace;
        self
    }

    /// Also serves JSON over HTTP/1.1 on the same listeners (default off; needs the `http`
    /// feature). A connection whose first bytes are an HTTP request is served by the HTTP
    /// gateway instead of being refused: `POST /<service>/<method>` with a JSON object of
    /// the arguments by name calls the method; `GET /` lists the services and
    /// `GET /<service>` gives one's [schema](crate::schema). Calls take the path binary
    /// calls take (the `Authorize` hook, limits, deadlines, shutdown): headers become
    /// metadata, and `rpc-timeout-ms` sets the deadline. See `docs/http.md` for statuses
    /// and bodies. The in-process transport carries no HTTP.
    #[cfg(feature = "http")]
    pub fn http(mut self, on: bool) -> Server {
        self.config.http = on;
        self
    }

    /// How long a new connection may take to send its `Hello` (default 10 s).
    pub fn hello_timeout(mut self, timeout: Duration) -> Server {
        self.config.hello_timeout = timeout;
        self
    }

    /// How many connections [`serve`](Server::serve) serves at once (default 10,000). A
    /// connection beyond it is told `Overloaded` ("at its connection limit") and closed.
    pub fn max_connections(mut self, limit: usize) -> Server {
        self.config.max_connections = limit;
        self
    }

    /// How many connections from one IP address [`serve`](Server::serve) serves at once
    /// (default 1,000), so that one host cannot take all of
    /// [`max_connections`](Server::max_connections). A connection beyond it is told
    /// `Overloaded` and closed. Listeners that cannot tell a peer's IP (Unix sockets,
    /// in-memory) are not limited by it.
    pub fn max_connections_per_ip(mut self, limit: usize) -> Server {
        self.config.max_connections_per_ip = limit;
        self
    }

    /// Installs an [`Authorize`] hook that accepts or refuses each connection and each call
    /// before any handler runs (replacing an earlier one).
    pub fn authorize(mut self, auth: impl Authorize) -> Server {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Adds a [`Middleware`] every call to every hosted service runs through (the health
    /// check and reflection too: look at [`ServerCall::service`] to let them pass).
    /// Middleware run in the order they are added, after the [`authorize`](Server::authorize)
    /// hook and before the call's arguments are decoded; see [`middleware`](crate::middleware).
    pub fn layer(mut self, middleware: impl Middleware<ServerCall>) -> Server {
        self.layers.push(Scope::All, middleware);
        self
    }

    /// Adds a [`Middleware`] that only the calls to the service `service` describes run
    /// through (`FooClient::DESCRIPTOR`), in order with those added by
    /// [`layer`](Server::layer).
    pub fn layer_for(
        mut self,
        service: &'static ServiceDescriptor,
        middleware: impl Middleware<ServerCall>,
    ) -> Server {
        self.layers.push(Scope::Service(service.name), middleware);
        self
    }

    /// Adds a [`Middleware`] that only the calls of one method run through: `method` is its
    /// name in the trait of the service `service` describes (`FooClient::DESCRIPTOR`).
    ///
    /// # Panics
    /// If the service has no method of that name: a typo would otherwise leave the method
    /// without its policy.
    pub fn layer_for_method(
        mut self,
        service: &'static ServiceDescriptor,
        method: &str,
        middleware: impl Middleware<ServerCall>,
    ) -> Server {
        let scope = Scope::method("Server::layer_for_method", service, method);
        self.layers.push(scope, middleware);
        self
    }

    /// How many bytes of responses one connection may have waiting to be sent (default
    /// 16 MiB). While a client does not read its responses and they pile up beyond this, the
    /// server stops reading that client's requests, instead of buffering without bound.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Server {
        self.config.max_buffered_bytes = bytes;
        self
    }

    /// How many bytes of stream items one connection may hold for handlers that have not
    /// read them yet, over all its calls with a `Streaming<T>` argument (default 32 MiB).
    ///
    /// Each stream is bounded by its credit window, but streams multiply it: without this,
    /// one client with many calls whose handlers do not read could make the server hold
    /// calls × window × frame size. Clients of this version pace their streams to stay well
    /// within the default; an item past the limit cuts its stream: the handler reads an
    /// `Overloaded` error after the items it had, and the client is told to stop sending.
    /// [`ServerStats::buffered_stream_bytes`] shows what is held now.
    pub fn max_buffered_stream_bytes(mut self, bytes: usize) -> Server {
        self.config.max_buffered_stream_bytes = bytes;
        self
    }

    /// Pings a client that has sent nothing for a while, and closes its connection if it
    /// does not answer in time (its machine or network is gone; without this, a connection
    /// with no FIN would stay open for good). `None` turns it off.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Server {
        self.config.keepalive = keepalive;
        self
    }

    /// Compresses the messages of connections whose client offers a codec this server has
    /// (see [`Compression`]): the server picks its own most preferred codec of the client's
    /// offer and says so in its first frame. Off by default (`None`); clients that offer
    /// nothing, or predate compression, are served uncompressed either way.
    ///
    /// ```
    /// use rpc_core::compress::Compression;
    /// use rpc_core::Server;
    ///
    /// # fn main() -> Result<(), rpc_core::compress::CompressionError> {
    /// # if !rpc_core::compress::Codec::Lz4.is_available() { return Ok(()); }
    /// let compression = Compression::builder()
    ///     .codecs([rpc_core::compress::Codec::Lz4])
    ///     .build()?;
    /// let server = Server::new().compression(Some(compression));
    /// # drop(server);
    /// # Ok(()) }
    /// ```
    pub fn compression(mut self, compression: Option<Compression>) -> Server {
        self.config.compression = compression;
        self
    }

    /// Sets the utilization this server reports to its balancing clients, and reads its
    /// load ([load reports](crate::load)); the reporter stays valid after the server is
    /// started.
    pub fn load_reporter(&self) -> LoadReporter {
        LoadReporter {
            state: self.stats.load(),
        }
    }

    /// Marks services as serving or not in this server's [health check](crate::health);
    /// the reporter stays valid after the server is started.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Accepts connections from `listener` and serves them until the listener is closed for
    /// good; then waits for the open connections to end.
    ///
    /// A failed `accept` (e.g. out of file descriptors) is retried with backoff. To accept
    /// on several listeners at once (TCP and a Unix socket, say), pass them as one
    /// [`Listeners`](crate::Listeners).
    pub fn serve<L: Listener>(self, listener: L) -> impl Future<Output = io::Result<()>> + Send {
        self.serve_with_shutdown(listener, std::future::pending())
    }

    /// Like [`serve`](Server::serve) until `signal` completes; then stops accepting, answers
    /// new calls with `Overloaded` ("shutting down"), lets calls in progress finish within the
    /// [grace period](Server::shutdown_grace), and closes every connection.
    pub fn serve_with_shutdown<L, F>(
        self,
        mut listener: L,
        signal: F,
    ) -> impl Future<Output = io::Result<()>> + Send
    where
        L: Listener,
        F: Future<Output = ()> + Send + 'static,
    {
        let shared = Arc::new(self.into_shared());
        listener.set_max_frame_size(shared.config.max_frame_size);
        if shared.config.http {
            listener.set_http(true);
        }
        async move {
            let shutdown = shared.shutdown.clone();
            let mut connections = JoinSet::new();
            let mut backoff = Duration::ZERO;
            let mut signal = std::pin::pin!(signal);
            let signalled = loop {
                tokio::select! {
                    biased;
                    () = &mut signal => break true,
                    accepted = listener.accept() => match accepted {
                        Some(Ok(transport)) => {
                            backoff = Duration::ZERO;
                            if shared.stats.open_connections() >= shared.config.max_connections {
                                shared.stats.refused();
                                let why = format!(
                                    "the server is at its limit of {} connections \
                                     (max_connections); retry later or elsewhere",
                                    shared.config.max_connections
                                );
                                connections.spawn(refuse(transport, ErrorKind::Overloaded, why, REFUSE_TIMEOUT));
                                continue;
                            }
                            let peer = listener.peer(&transport);
                            let limit = shared.config.max_connections_per_ip;
                            let per_ip = peer.ip().map(|ip| shared.per_ip.enter(ip, limit).ok_or(ip)).transpose();
                            let per_ip = match per_ip {
                                Ok(slot) => slot,
                                Err(ip) => {
                                    shared.stats.refused();
                                    let why = format!(
                                        "the server already serves {limit} connections from {ip}, its \
                                         limit per address (max_connections_per_ip); close some or \
                                         retry later"
                                    );
                                    connections.spawn(refuse(transport, ErrorKind::Overloaded, why, REFUSE_TIMEOUT));
                                    continue;
                                }
                            };
                            let open = shared.stats.open();
                            connections.spawn(serve_transport(
                                Arc::clone(&shared),
                                transport,
                                shutdown.clone(),
                                (open, per_ip),
                                peer,
                            ));
                        }
                        Some(Err(err)) => {
                            backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                            log::accept_failed(&err, backoff);
                            tokio::time::sleep(backoff).await;
                        }
                        None => break false,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            };
            drop(listener);
            if signalled {
                shutdown.cancel();
                let grace = shared.config.shutdown_grace;
                let drained = tokio::time::timeout(grace, async {
                    while connections.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    log::grace_expired(connections.len(), grace);
                    connections.shutdown().await;
                }
            } else {
                while connections.join_next().await.is_some() {}
            }
            Ok(())
        }
    }

    /// Serves one connection until it closes.
    ///
    /// Resolves to `Ok` when the client closed it, or to an error saying why the server
    /// closed it (a protocol violation, a `Hello` it could not accept, a broken connection).
    pub fn serve_connection<T: Transport>(
        self,
        transport: T,
    ) -> impl Future<Output = io::Result<()>> + Send {
        let shared = Arc::new(self.into_shared());
        let open = shared.stats.open();
        let shutdown = shared.shutdown.clone();
        serve_transport(shared, transport, shutdown, (open, None), Peer::new())
    }

    fn into_shared(self) -> Shared {
        let shutdown = CancellationToken::new();
        let mut services = self.services;
        if !services.contains_key(ReflectionClient::DESCRIPTOR.name) {
            let mut hosted: Vec<&'static ServiceDescriptor> = services
                .values()
                .map(|service| service.descriptor())
                .collect();
            for builtin in [&ReflectionClient::DESCRIPTOR, &HealthClient::DESCRIPTOR] {
                if !hosted.iter().any(|desc| desc.name == builtin.name) {
                    hosted.push(builtin);
                }
            }
            let reflection = reflection::Hosted {
                services: hosted.into(),
            };
            services.insert(
                ReflectionClient::DESCRIPTOR.name,
                Arc::new(ReflectionServer::new(reflection)),
            );
        }
        if !services.contains_key(HealthClient::DESCRIPTOR.name) {
            let check = HealthCheck {
                services: services
                    .keys()
                    .copied()
                    .chain([HealthClient::DESCRIPTOR.name])
                    .collect(),
                reporter: self.health,
                shutdown: shutdown.clone(),
            };
            services.insert(
                HealthClient::DESCRIPTOR.name,
                Arc::new(HealthServer::new(check)),
            );
        }
        let layers = services
            .keys()
            .filter_map(|&name| Some((name, self.layers.for_service(name)?)))
            .collect();
        Shared {
            auth: self.auth,
            layers,
            per_ip: Arc::default(),
            shutdown,
            metrics: ServerMetrics::new(services.values().map(|service| service.descriptor())),
            services,
            config: Arc::new(self.config),
            stats: self.stats,
        }
    }
}

/// What every connection of one serve loop shares.
struct Shared {
    /// Cancelled when a shutdown starts.
    shutdown: CancellationToken,
    services: HashMap<&'static str, Arc<dyn HostedService>>,
    /// Metric handles per service, made once for every connection.
    metrics: ServerMetrics,
    config: Arc<ServerConfig>,
    stats: ServerStats,
    auth: Option<Arc<dyn Authorize>>,
    /// The middleware of each service that has some.
    layers: HashMap<&'static str, Stack<ServerCall>>,
    per_ip: Arc<PerIp>,
}

/// Open connections per peer IP address, for `max_connections_per_ip`. Touched once when a
/// connection opens and once when it closes, never per call.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Counts a connection from `ip`, unless `limit` are open already.
    fn enter(self: &Arc<PerIp>, ip: IpAddr, limit: usize) -> Option<PerIpSlot> {
        let mut open = crate::lock::lock(&self.open);
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PerIpSlot {
            per_ip: Arc::clone(self),
            ip,
        })
    }
}

/// One open connection counted in [`PerIp`], until dropped.
struct PerIpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut open = crate::lock::lock(&self.per_ip.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// How long telling a connection beyond `max_connections` why it is refused may take.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads the `Hello`, then serves the connection with the service it asked for.
async fn serve_transport<T: Transport>(
    shared: Arc<Shared>,
    transport: T,
    shutdown: CancellationToken,
    _open: (stats::OpenConnection, Option<PerIpSlot>),
    peer: Peer,
) -> io::Result<()> {
    // The set-up's futures (the wait for `Hello`, a refusal, the HTTP gateway) are large
    // and done once the connection is established: boxed, so that the task of an
    // established connection, idle most of its life, holds only the connection.
    match Box::pin(set_up(shared, transport, shutdown, peer)).await {
        Ok(connection) => connection.await,
        Err(over) => over,
    }
}

/// Reads the client's `Hello` and accepts it, giving the connection to serve, or refuses
/// it (`Err`, with the result of the whole connection: `Ok(())` for a client that left
/// before its `Hello`).
async fn set_up<T: Transport>(
    shared: Arc<Shared>,
    mut transport: T,
    shutdown: CancellationToken,
    peer: Peer,
) -> Result<futures::future::BoxFuture<'static, io::Result<()>>, io::Result<()>> {
    let first = tokio::select! {
        biased;
        first = tokio::time::timeout(shared.config.hello_timeout, transport.next()) => first,
        () = shutdown.cancelled() => return Err(Ok(())),
    };
    let frame = match first {
        Err(_) => {
            let why = format!(
                "no Hello within {:?} of connecting (hello_timeout)",
                shared.config.hello_timeout
            );
            return Err(refuse(transport, ErrorKind::Protocol, why, CLOSE_TIMEOUT).await);
        }
        Ok(None) => return Err(Ok(())),
        Ok(Some(Err(err))) if err.kind() == io::ErrorKind::InvalidData => {
            return Err(refuse(
                transport,
                ErrorKind::Protocol,
                err.to_string(),
                CLOSE_TIMEOUT,
            )
            .await);
        }
        Ok(Some(Err(err))) => {
            let err = match crate::transport::HttpConnection::take(err) {
                #[cfg(feature = "http")]
                Ok((io, buffered)) => {
                    return Err(http::serve(shared, io, buffered, shutdown, peer).await);
                }
                #[cfg(not(feature = "http"))]
                Ok(_) => io::Error::other("an HTTP connection, and this server has no gateway"),
                Err(err) => err,
            };
            log::failed_before_hello(&err);
            return Err(Err(err));
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let hello_limit = shared.config.max_frame_size.max(crate::MIN_HELLO_LIMIT);
    if frame.len() > hello_limit {
        let why = format!(
            "the Hello is {} bytes, more than this server's limit of {hello_limit} bytes",
            frame.len(),
        );
        return Err(refuse(transport, ErrorKind::Protocol, why, CLOSE_TIMEOUT).await);
    }
    match handshake::accept(&frame, &shared.services, shared.config.compression.as_ref()) {
        Ok(handshake::Accepted {
            service,
            routes,
            codec,
        }) => {
            let name = service.descriptor().name;
            let verdict = match &shared.auth {
                Some(auth) => auth::check_connection(&**auth, &peer, name),
                None => Ok(()),
            };
            if let Err(err) = verdict {
                let why = err.message().to_string();
                return Err(refuse(transport, err.kind(), why, CLOSE_TIMEOUT).await);
            }
            let context = ConnectionContext {
                config: Arc::clone(&shared.config),
                shutdown,
                metrics: shared.metrics.service(name),
                peer: (!peer.is_unknown()).then(|| Arc::new(peer)),
                auth: shared.auth.clone(),
                layers: shared.layers.get(name).cloned(),
                stream_window: ConnectionWindow::new(
                    shared.config.max_buffered_stream_bytes,
                    Some(shared.stats.stream_bytes()),
                ),
                codec,
                load: shared.stats.load(),
            };
            Ok(service.serve(Box::new(transport), routes, context))
        }
        Err(err) => Err(refuse(
            transport,
            err.kind(),
            err.message().to_string(),
            CLOSE_TIMEOUT,
        )
        .await),
    }
}

/// Tells the client why its connection is refused, and closes it.
async fn refuse<T: Transport>(
    mut transport: T,
    kind: ErrorKind,
    why: String,
    within: Duration,
) -> io::Result<()> {
    log::refusing_connection(kind, &why);
    close_with(
        &mut transport,
        [protocol::goodbye_frame(kind, &why)],
        within,
    )
    .await;
    linger(&mut transport).await;
    Err(io::Error::new(io::ErrorKind::InvalidData, why))
}

/// How long a connection told goodbye may take to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// After a `Goodbye` and closing our side: reads and drops whatever the peer still sends
/// (requests it pipelined behind its `Hello`, say) until it closes too, for at most
/// [`LINGER`]. Closing a TCP socket with unread data resets the connection, and the reset
/// can destroy the `Goodbye` before the peer has read it.
pub(crate) async fn linger<T: Transport + ?Sized>(transport: &mut T) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = transport.next().await {}
    })
    .await;
}
