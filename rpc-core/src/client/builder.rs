//! [`ClientBuilder`]: a client with options — reconnection, balancing, retries, keepalive.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Client;
use crate::balance::{
    Backoff, Discover, Endpoint, FailureAccrual, Hedge, LeastLoaded, Pool, PoolConfig, PoolHandle,
    RetryBudget, Strategy, Subset, Zone,
};
use crate::compress::Compression;
use crate::connect::Connect;
use crate::connection::ConnectionOptions;
use crate::descriptor::ServiceDescriptor;
use crate::keepalive::Keepalive;
use crate::middleware::{ClientCall, Layers, Middleware, Scope};
use crate::transport::Transport;

/// Builds a client with options; generated clients start one with `FooClient::builder()`.
///
/// Set options, then finish with how the client reaches its server:
/// - [`connect`](ClientBuilder::connect): one endpoint, reconnected whenever the connection
///   is lost;
/// - [`balance`](ClientBuilder::balance): a fixed set of endpoints, each kept connected, each
///   call sent to one of them;
/// - [`discover`](ClientBuilder::discover): endpoints that come and go, from a
///   [`Discover`] source (a stream of [`Change`](crate::balance::Change)s, DNS, ...);
/// - [`transport`](ClientBuilder::transport): one connection over a transport you opened,
///   as `FooClient::new` does, with this builder's keepalive and metadata.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::{service, Keepalive, Server};
/// use rpc_core::balance::RetryBudget;
///
/// #[service]
/// pub trait Echo {
///     #[rpc(idempotent)]
///     async fn echo(&self, text: String) -> String;
/// }
/// struct Parrot;
/// impl Echo for Parrot {
///     async fn echo(&self, text: String) -> String { text }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rpc_core::RpcError> {
/// let (listener, connector) = rpc_transport::memory::listener();
/// tokio::spawn(Server::new().add_service(EchoServer::new(Parrot)).serve(listener));
///
/// let client = EchoClient::builder()
///     .keepalive(Some(Keepalive::new(Duration::from_secs(20), Duration::from_secs(5))))
///     .retry_budget(RetryBudget::new(0.1))
///     .wait_for_ready(true)
///     .connect(connector);
/// assert_eq!(client.echo("hi".into()).await?, "hi");
/// # Ok(()) }
/// ```
///
/// The finishing methods spawn tasks, so call them within a tokio runtime.
pub struct ClientBuilder<C> {
    desc: &'static ServiceDescriptor,
    wrap: fn(Client) -> C,
    strategy: Box<dyn Strategy>,
    retry_budget: RetryBudget,
    max_attempts: u32,
    backoff: Backoff,
    retry_backoff: Backoff,
    connect_timeout: Duration,
    wait_for_ready: bool,
    accrual: FailureAccrual,
    options: ConnectionOptions,
    layers: Layers<ClientCall>,
    hedge: Option<Hedge>,
    subset: Option<Subset>,
    zone: Option<Zone>,
}

/// A builder taken apart to make a pool: the pool, how to wrap its client, the middleware.
type PoolParts<C> = (Arc<Pool>, fn(Client) -> C, Layers<ClientCall>);

impl<C> fmt::Debug for ClientBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("service", &self.desc.name)
            .field("retry_budget", &self.retry_budget)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retry_backoff", &self.retry_backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_for_ready", &self.wait_for_ready)
            .field("failure_accrual", &self.accrual)
            .field("hedge", &self.hedge)
            .field("keepalive", &self.options.keepalive)
            .field("metadata", &self.options.metadata)
            .field("max_frame_size", &self.options.max_frame_size)
            .field(
                "max_buffered_stream_bytes",
                &self.options.max_buffered_stream_bytes,
            )
            .field("compression", &self.options.compression)
            .finish_non_exhaustive()
    }
}

impl<C> ClientBuilder<C> {
    /// A builder for a client of `desc`, finished by wrapping the [`Client`] with `wrap`;
    /// generated code calls it as `ClientBuilder::new(&Self::DESCRIPTOR, Self::from_client)`.
    ///
    /// The defaults: [`LeastLoaded`] balancing; retries of idempotent methods within
    /// [`RetryBudget::default`] and at most 3 attempts per call; reconnection after
    /// [`Backoff::default`]; a 5 s connect timeout; calls fail fast with `Disconnected` while
    /// no endpoint is connected (but wait for a first connection attempt under way);
    /// [`FailureAccrual::default`]; keepalive pings after 30 s of silence, 10 s to answer.
    pub fn new(desc: &'static ServiceDescriptor, wrap: fn(Client) -> C) -> ClientBuilder<C> {
        ClientBuilder {
            desc,
            wrap,
            strategy: Box::new(LeastLoaded::new()),
            retry_budget: RetryBudget::default(),
            max_attempts: 3,
            backoff: Backoff::default(),
            retry_backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(500)),
            connect_timeout: Duration::from_secs(5),
            wait_for_ready: false,
            accrual: FailureAccrual::default(),
            options: ConnectionOptions {
                keepalive: Some(Keepalive::new(
                    Duration::from_secs(30),
                    Duration::from_secs(10),
                )),
                ..ConnectionOptions::default()
            },
            layers: Layers::default(),
            hedge: None,
            subset: None,
            zone: None,
        }
    }

    /// How each call chooses its endpoint (see [`balance`](crate::balance)).
    pub fn strategy(mut self, strategy: impl Strategy) -> ClientBuilder<C> {
        self.strategy = Box::new(strategy);
        self
    }

    /// How many retries the client may make in all.
    pub fn retry_budget(mut self, budget: RetryBudget) -> ClientBuilder<C> {
        self.retry_budget = budget;
        self
    }

    /// The most times one call is sent, the first included (at least 1, which means no
    /// retries).
    pub fn max_attempts(mut self, attempts: u32) -> ClientBuilder<C> {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Hedges calls of idempotent methods (see [`Hedge`]): a call still unanswered after
    /// the hedge's delay is also sent to another endpoint, the first answer wins and the
    /// other request is cancelled. Each hedge spends the [retry budget](Self::retry_budget)
    /// as a retry does. Off by default; methods not marked `#[rpc(idempotent)]`, and
    /// streaming ones, are never hedged.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rpc_core::balance::{Endpoint, Hedge};
    /// use rpc_core::service;
    ///
    /// #[service]
    /// pub trait Store {
    ///     #[rpc(idempotent)]
    ///     async fn get(&self, key: String) -> Option<String>;
    /// }
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = StoreClient::builder()
    ///     // A second request once the call took longer than 95% of recent `get`s.
    ///     .hedge(Hedge::percentile(0.95)?.floor(Duration::from_millis(2)))
    ///     .balance(["10.0.0.1:4000", "10.0.0.2:4000", "10.0.0.3:4000"].map(|addr| {
    ///         Endpoint::new(addr, rpc_transport::tcp::connector(addr))
    ///     }));
    /// let value = client.get("k".into()).await?;
    /// let stats = client.client().stats().expect("a balancing client");
    /// println!("{value:?}; {} hedges, {} won", stats.hedges, stats.hedges_won);
    /// # Ok(()) }
    /// ```
    pub fn hedge(mut self, hedge: Hedge) -> ClientBuilder<C> {
        self.hedge = Some(hedge);
        self
    }

    /// Connects to a [`Subset`] of the endpoints rather than to all of them: for fleets
    /// where every client connecting to every server would be too many connections.
    /// Calls are balanced among the subset; an endpoint of the subset that is down or
    /// ejected is stood in for by the next one on the ring until it is back.
    ///
    /// ```no_run
    /// use rpc_core::balance::{Endpoint, Subset};
    /// # #[rpc_core::service] pub trait Store { async fn get(&self, key: String) -> Option<String>; }
    ///
    /// // This client is number 7 of its fleet; it connects to 10 of the 100 servers.
    /// let client = StoreClient::builder()
    ///     .subset(Subset::new(10).client_index(7))
    ///     .balance((0..100).map(|i| {
    ///         let addr = format!("10.0.1.{i}:4000");
    ///         Endpoint::new(addr.clone(), rpc_transport::tcp::connector(addr))
    ///     }));
    /// ```
    pub fn subset(mut self, subset: Subset) -> ClientBuilder<C> {
        self.subset = Some(subset);
        self
    }

    /// Keeps calls in the client's [`Zone`] while its endpoints can take them, and spills
    /// over to other zones when they cannot. Endpoints carry their zone as the metadata
    /// [`ZONE`](crate::balance::ZONE).
    ///
    /// ```no_run
    /// use rpc_core::balance::{Endpoint, Zone, ZONE};
    /// # #[rpc_core::service] pub trait Store { async fn get(&self, key: String) -> Option<String>; }
    ///
    /// let client = StoreClient::builder().zone(Zone::new("a")).balance(
    ///     [("10.0.1.1:4000", "a"), ("10.0.2.1:4000", "b")].map(|(addr, zone)| {
    ///         Endpoint::new(addr, rpc_transport::tcp::connector(addr)).metadata(ZONE, zone)
    ///     }),
    /// );
    /// ```
    pub fn zone(mut self, zone: Zone) -> ClientBuilder<C> {
        self.zone = Some(zone);
        self
    }

    /// The delays between attempts to reconnect to an endpoint.
    pub fn backoff(mut self, backoff: Backoff) -> ClientBuilder<C> {
        self.backoff = backoff;
        self
    }

    /// The delays before retrying a call on an endpoint already tried, or after
    /// `Overloaded`.
    pub fn retry_backoff(mut self, backoff: Backoff) -> ClientBuilder<C> {
        self.retry_backoff = backoff;
        self
    }

    /// How long one attempt to connect may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder<C> {
        self.connect_timeout = timeout;
        self
    }

    /// What a call does while no endpoint is connected: `false` (the default) fails it at
    /// once with `Disconnected`, unless a first connection attempt is under way; `true`
    /// waits for a connection, up to the call's deadline.
    pub fn wait_for_ready(mut self, wait: bool) -> ClientBuilder<C> {
        self.wait_for_ready = wait;
        self
    }

    /// When endpoints whose calls keep failing are set aside.
    pub fn failure_accrual(mut self, accrual: FailureAccrual) -> ClientBuilder<C> {
        self.accrual = accrual;
        self
    }

    /// Keepalive pings on every connection, or `None` for none.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> ClientBuilder<C> {
        self.options.keepalive = keepalive;
        self
    }

    /// Sends a key/value pair with every call (before the call's own metadata).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> ClientBuilder<C> {
        self.options.metadata.insert(key, value);
        self
    }

    /// The largest frame sent or received (8 MiB by default).
    pub fn max_frame_size(mut self, bytes: usize) -> ClientBuilder<C> {
        self.options.max_frame_size = bytes;
        self
    }

    /// The most stream data each connection buffers for this client's consumers: bytes of
    /// items the servers sent that were not read yet, over all the connection's streams
    /// (32 MiB by default). Servers of this version pace their streams to stay well within
    /// it; an item past it from a server that does not cuts its stream with `Overloaded`.
    pub fn max_buffered_stream_bytes(mut self, bytes: usize) -> ClientBuilder<C> {
        self.options.max_buffered_stream_bytes = bytes;
        self
    }

    /// Adds a [`Middleware`] every call of the client runs through, after those added
    /// before (see [`Client::layer`] and [`middleware`](crate::middleware)). Installed
    /// around a balancing client, it sees each call once, whatever the retries, hedges and
    /// endpoints below it: the place for a fallback answer when every endpoint is down.
    pub fn layer(mut self, middleware: impl Middleware<ClientCall>) -> ClientBuilder<C> {
        self.layers.push(Scope::All, middleware);
        self
    }

    /// Offers the servers `compression`'s codecs on every connection (off, `None`, by
    /// default): a server that accepts one compresses large messages both ways; one that
    /// has none of them, or predates compression, is talked to uncompressed.
    pub fn compression(mut self, compression: Option<Compression>) -> ClientBuilder<C> {
        self.options.compression = compression;
        self
    }

    /// One connection over `transport`, not remade when lost.
    pub fn transport<T: Transport>(self, transport: T) -> C {
        let client = Client::with_options(transport, self.desc, &self.options);
        (self.wrap)(client.with_layers(self.layers))
    }

    /// One endpoint, reconnected whenever its connection is lost.
    pub fn connect<K: Connect>(self, connector: K) -> C {
        self.balance([Endpoint::new("default", connector)])
    }

    /// A fixed set of endpoints.
    pub fn balance<K: Connect>(self, endpoints: impl IntoIterator<Item = Endpoint<K>>) -> C {
        let (pool, wrap, layers) = self.into_pool();
        for endpoint in endpoints {
            pool.insert(endpoint);
        }
        wrap(Client::from_pool(Arc::new(PoolHandle::new(pool))).with_layers(layers))
    }

    /// Endpoints that come and go, from a discovery source: a stream of [`Change`](crate::balance::Change)s (a
    /// channel, say), a [`StaticList`](crate::balance::StaticList), DNS (`rpc_transport::dns::Dns`), or any other
    /// [`Discover`] implementation. Each change adds or removes one endpoint; a removed
    /// endpoint takes no new calls and closes once the calls it has are done. Calls wait for
    /// the first change; after the source ends, the endpoints stay as they are.
    ///
    /// ```
    /// use rpc_core::balance::{Change, Endpoint};
    /// use rpc_core::{service, Server};
    ///
    /// #[service]
    /// pub trait Echo {
    ///     async fn echo(&self, text: String) -> String;
    /// }
    /// struct Parrot;
    /// impl Echo for Parrot {
    ///     async fn echo(&self, text: String) -> String { text }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), rpc_core::RpcError> {
    /// let (changes, discovered) = futures::channel::mpsc::unbounded();
    /// let client = EchoClient::builder().discover(discovered);
    ///
    /// let (listener, connector) = rpc_transport::memory::listener();
    /// tokio::spawn(Server::new().add_service(EchoServer::new(Parrot)).serve(listener));
    /// changes.unbounded_send(Change::Insert(Endpoint::new("one", connector))).expect("open");
    /// assert_eq!(client.echo("hi".into()).await?, "hi");
    /// # Ok(()) }
    /// ```
    pub fn discover(self, source: impl Discover) -> C {
        let (pool, wrap, layers) = self.into_pool();
        pool.follow(source.into_changes());
        wrap(Client::from_pool(Arc::new(PoolHandle::new(pool))).with_layers(layers))
    }

    fn into_pool(self) -> PoolParts<C> {
        let config = PoolConfig {
            strategy: self.strategy,
            retry_budget: self.retry_budget,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_backoff: self.retry_backoff,
            connect_timeout: self.connect_timeout,
            wait_for_ready: self.wait_for_ready,
            accrual: self.accrual,
            options: self.options,
            hedge: self.hedge,
            subset: self.subset,
            zone: self.zone,
        };
        (
            Arc::new(Pool::new(self.desc, config)),
            self.wrap,
            self.layers,
        )
    }
}
