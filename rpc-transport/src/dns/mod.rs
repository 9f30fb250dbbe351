//! DNS discovery (feature `dns`): a balancing client's endpoints from A/AAAA or SRV records,
//! followed as they change.
//!
//! [`Dns`] is a [`Discover`] source: give it to
//! [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover). It resolves the name when
//! the client starts, then again whenever the answer's TTL runs out (kept between
//! [`min_interval`](Dns::min_interval) and [`max_interval`](Dns::max_interval)), and tells
//! the client what changed: an address that appeared becomes a new endpoint, keyed
//! `"ip:port"` and reached with [`tcp::connector`]; an address that
//! is gone from the answer is removed, which drains it (its calls in progress finish, new
//! calls go elsewhere).
//!
//! A lookup that fails (a timeout, a server error) changes nothing: the client keeps the
//! endpoints it has, and the lookup is tried again after a [`retry_backoff`](Dns::retry_backoff)
//! delay. So is an answer with no address at all (the name or its records are gone): a
//! resolver hiccup must never empty a client, and endpoints that really are gone show it
//! through their connections. Until the first answer with an address, the client's calls
//! wait for it (within their deadlines), as for any discovery source.
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_core::service;
//! use rpc_transport::dns::Dns;
//!
//! #[service]
//! pub trait Inventory {
//!     async fn stock(&self, item: String) -> u32;
//! }
//!
//! # async fn demo() -> Result<(), rpc_core::RpcError> {
//! // Every address of the name, on port 4000 (A and AAAA records)...
//! let client = InventoryClient::builder().discover(Dns::new("inventory.internal:4000"));
//! // ...or every target of its SRV records, with their ports and weights.
//! let client = InventoryClient::builder()
//!     .discover(Dns::srv("_rpc._tcp.inventory.internal").min_interval(Duration::from_secs(5)));
//! let n = client.stock("apples".into()).await?;
//! # Ok(()) }
//! ```
//!
//! Resolution uses the system's configuration (`/etc/resolv.conf`) unless told otherwise
//! with [`nameserver`](Dns::nameserver) or [`resolver_config`](Dns::resolver_config); the
//! resolver is [`hickory-resolver`](hickory_resolver), whose configuration types this module
//! re-exports. Each change is logged with `tracing` (an endpoint added or removed at `info`,
//! a failed lookup at `warn`, each resolution at `debug`).

mod answer;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use hickory_resolver::config::NameServerConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::{Resolver, TokioResolver};
use rpc_core::balance::{Backoff, Change, Discover, Endpoint};
use tokio::time::Instant;

use self::answer::{Answer, Failure, Found, Query};
use crate::tcp::{self, TcpConnector};

/// The shortest wait between two resolutions, whatever [`Dns::min_interval`] says.
const MIN_INTERVAL_FLOOR: Duration = Duration::from_millis(10);

/// The resolver's configuration types, to pass to [`Dns::resolver_config`].
pub use hickory_resolver::config::{ResolverConfig, ResolverOpts};

/// Endpoints from DNS: the addresses of a name (A/AAAA) or the targets of its SRV records,
/// followed as they change. See the [module docs](self) for what it does and when.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::balance::{Backoff, Discover};
/// use rpc_transport::dns::Dns;
///
/// let dns = Dns::new("inventory.internal:4000")
///     .nameserver("127.0.0.1:5353".parse().unwrap())
///     .min_interval(Duration::from_secs(1))
///     .max_interval(Duration::from_secs(60))
///     .timeout(Duration::from_secs(2))
///     .retry_backoff(Backoff::new(Duration::from_millis(500), Duration::from_secs(30)));
/// fn assert_discover(_: impl Discover) {}
/// assert_discover(dns);
/// ```
#[derive(Debug, Clone)]
pub struct Dns {
    query: Query,
    resolver: Source,
    min_interval: Duration,
    max_interval: Duration,
    retry: Backoff,
    timeout: Option<Duration>,
    /// Given to every endpoint found.
    metadata: Vec<(String, String)>,
}

/// Where the resolver's configuration comes from.
#[derive(Debug, Clone)]
enum Source {
    System,
    Nameservers(Vec<SocketAddr>),
    Config(Box<(ResolverConfig, ResolverOpts)>),
}

impl Dns {
    /// The A and AAAA records of a name, written `"name:port"` (`"inventory.internal:4000"`);
    /// every address becomes an endpoint on that port. Without a port in the string, set it
    /// with [`port`](Dns::port).
    ///
    /// # Panics
    ///
    /// [`into_changes`](Discover::into_changes) (that is, `ClientBuilder::discover`) panics
    /// if no port was given either way.
    pub fn new(name: impl Into<String>) -> Dns {
        let (name, port) = split_port(name.into());
        Dns::with_query(Query::Host { name, port })
    }

    /// The SRV records of a name (`"_rpc._tcp.inventory.internal"`): each target's
    /// addresses become endpoints with the record's port and weight (an endpoint reached
    /// through several records gets their weights summed), for the
    /// [`Weighted`](rpc_core::balance::Weighted) strategy to use. Each endpoint's metadata
    /// says its target (`dns.target`) and the record's priority (`dns.priority`); the
    /// priority does not restrict which endpoints get calls.
    ///
    /// A target's addresses come from the answer's additional section when the server sends
    /// them there (Kubernetes' and Consul's do), otherwise from a lookup of their own.
    ///
    /// Consul's DNS interface answers SRV questions with a service's instances whose health
    /// checks are not failing: `Dns::srv("_inventory._tcp.service.consul")` with
    /// [`nameserver`](Dns::nameserver) set to the local agent (`127.0.0.1:8600`).
    pub fn srv(name: impl Into<String>) -> Dns {
        Dns::with_query(Query::Srv { name: name.into() })
    }

    fn with_query(query: Query) -> Dns {
        Dns {
            query,
            resolver: Source::System,
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(300),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            timeout: None,
            metadata: Vec::new(),
        }
    }

    /// Gives every endpoint this source finds a metadata value, for strategies and
    /// zone-aware routing to read. DNS records say nothing of zones; with one name per zone,
    /// tag each name's endpoints and follow them together:
    ///
    /// ```
    /// use futures::stream::{self, StreamExt};
    /// use rpc_core::balance::{Discover, ZONE};
    /// use rpc_transport::dns::Dns;
    ///
    /// fn assert_discover(_: impl Discover) {}
    /// let zones = ["a", "b"].map(|zone| {
    ///     Dns::new(format!("inventory.zone-{zone}.internal:4000"))
    ///         .metadata(ZONE, zone)
    ///         .into_changes()
    /// });
    /// // Give it to `.discover(...)` of a client built with `.zone(Zone::new("a"))`.
    /// assert_discover(stream::select_all(zones));
    /// ```
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Dns {
        let key = key.into();
        self.metadata.retain(|(k, _)| *k != key);
        self.metadata.push((key, value.into()));
        self
    }

    /// The port of the endpoints found through A/AAAA records (replacing one given in
    /// `"name:port"`). SRV records carry their own ports: there it changes nothing.
    pub fn port(mut self, port: u16) -> Dns {
        if let Query::Host { port: p, .. } = &mut self.query {
            *p = Some(port);
        }
        self
    }

    /// Asks this name server (over UDP, and TCP for answers too long for UDP) instead of the
    /// system's; call it again to add more.
    pub fn nameserver(mut self, addr: SocketAddr) -> Dns {
        match &mut self.resolver {
            Source::System => self.resolver = Source::Nameservers(vec![addr]),
            Source::Nameservers(addrs) => addrs.push(addr),
            Source::Config(config) => config.0.add_name_server(nameserver(addr)),
        }
        self
    }

    /// The whole resolver configuration, instead of the system's: name servers, search
    /// domains, and options such as the IPv4/IPv6 strategy. Its cache is always turned off
    /// (this source decides when to ask again) and [`timeout`](Dns::timeout), if set,
    /// replaces the one in `options`.
    pub fn resolver_config(mut self, config: ResolverConfig, options: ResolverOpts) -> Dns {
        self.resolver = Source::Config(Box::new((config, options)));
        self
    }

    /// The shortest time between two resolutions, however short the TTL (5 s by default;
    /// below 10 ms it counts as 10 ms). An answer with TTL 0, which Consul gives by default,
    /// is asked again after this long.
    pub fn min_interval(mut self, interval: Duration) -> Dns {
        self.min_interval = interval;
        self
    }

    /// The longest time between two resolutions, however long the TTL (5 minutes by
    /// default).
    pub fn max_interval(mut self, interval: Duration) -> Dns {
        self.max_interval = interval;
        self
    }

    /// The delays before trying a failed resolution again (1 s doubling up to 60 s, with
    /// jitter, by default). The endpoints stay as they were meanwhile.
    pub fn retry_backoff(mut self, backoff: Backoff) -> Dns {
        self.retry = backoff;
        self
    }

    /// How long to wait for a name server's answer to one query (the resolver's default,
    /// 5 s, unless set; it tries twice before the lookup fails).
    pub fn timeout(mut self, timeout: Duration) -> Dns {
        self.timeout = Some(timeout);
        self
    }

    /// The name it resolves.
    pub fn name(&self) -> &str {
        self.query.name()
    }

    fn build_resolver(&self) -> Result<TokioResolver, NetError> {
        let mut builder = match &self.resolver {
            Source::System => TokioResolver::builder_tokio()?,
            Source::Nameservers(addrs) => Resolver::builder_with_config(
                ResolverConfig::from_name_servers(addrs.iter().copied().map(nameserver).collect()),
                TokioRuntimeProvider::default(),
            ),
            Source::Config(config) => {
                let (config, options) = &**config;
                Resolver::builder_with_config(config.clone(), TokioRuntimeProvider::default())
                    .with_options(options.clone())
            }
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        if let Some(timeout) = self.timeout {
            options.timeout = timeout;
        }
        builder.build()
    }

    /// How long to trust an answer of this TTL: never less than [`MIN_INTERVAL_FLOOR`], so
    /// that a TTL of 0 with a `min_interval` of 0 cannot have the source ask again the
    /// moment each answer arrives.
    fn interval(&self, ttl: Duration) -> Duration {
        ttl.min(self.max_interval)
            .max(self.min_interval)
            .max(MIN_INTERVAL_FLOOR)
    }
}

/// Splits `"name:port"`, `"[v6 address]:port"`; anything else is a name without a port.
fn split_port(name: String) -> (String, Option<u16>) {
    let split = match name.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => name
            .rsplit_once(':')
            .filter(|(host, _)| !host.contains(':')),
    };
    match split.map(|(host, port)| (host, port.parse::<u16>())) {
        Some((host, Ok(port))) => (host.to_string(), Some(port)),
        _ => (name, None),
    }
}

/// A name server at `addr`, over UDP and TCP.
fn nameserver(addr: SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut config.connections {
        connection.port = addr.port();
    }
    config
}

impl Discover for Dns {
    type Connector = TcpConnector;
    type Changes = DnsChanges;

    fn into_changes(self) -> DnsChanges {
        if let Query::Host { name, port: None } = &self.query {
            panic!("Dns::new({name:?}) has no port: write \"{name}:PORT\" or call .port(PORT)");
        }
        let watch = Watch {
            dns: self,
            resolver: None,
            current: BTreeMap::new(),
            pending: VecDeque::new(),
            failures: 0,
            next: None,
        };
        DnsChanges {
            inner: futures::stream::unfold(watch, Watch::next_change).boxed(),
        }
    }
}

/// The changes a [`Dns`] source finds, as the client consumes them: it resolves when polled
/// and due, and never ends.
pub struct DnsChanges {
    inner: BoxStream<'static, Change<TcpConnector>>,
}

impl fmt::Debug for DnsChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsChanges").finish_non_exhaustive()
    }
}

impl Stream for DnsChanges {
    type Item = Change<TcpConnector>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// The state of a [`DnsChanges`] between resolutions.
struct Watch {
    dns: Dns,
    /// Built at the first resolution (reading the system's configuration may fail: that is
    /// a failed resolution, tried again later).
    resolver: Option<TokioResolver>,
    /// The endpoints the client has from this source, by key.
    current: BTreeMap<String, Found>,
    /// Changes found and not yet taken.
    pending: VecDeque<Change<TcpConnector>>,
    /// Failed resolutions in a row.
    failures: u32,
    /// When to resolve again; `None`: now.
    next: Option<Instant>,
}

impl Watch {
    async fn next_change(mut self) -> Option<(Change<TcpConnector>, Watch)> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some((change, self));
            }
            if let Some(at) = self.next {
                tokio::time::sleep_until(at).await;
            }
            let wait = self.refresh().await;
            self.next = Some(Instant::now() + wait);
        }
    }

    /// Resolves once and queues what changed; returns how long until the next resolution.
    async fn refresh(&mut self) -> Duration {
        let result = match &self.resolver {
            Some(resolver) => answer::resolve(resolver, &self.dns.query).await,
            None => match self.dns.build_resolver() {
                Ok(resolver) => {
                    answer::resolve(self.resolver.insert(resolver), &self.dns.query).await
                }
                Err(err) => Err(Failure::Lookup(err)),
            },
        };
        match result {
            Ok(answer) => {
                self.failures = 0;
                let wait = self.dns.interval(answer.ttl);
                tracing::debug!(
                    name = self.dns.name(),
                    endpoints = answer.endpoints.len(),
                    next_in = ?wait,
                    "resolved"
                );
                self.apply(answer);
                wait
            }
            Err(failure) => {
                self.failures = self.failures.saturating_add(1);
                let wait = self.dns.retry.delay(self.failures);
                tracing::warn!(
                    name = self.dns.name(),
                    error = %failure,
                    failures = self.failures,
                    endpoints_kept = self.current.len(),
                    retry_in = ?wait,
                    "DNS resolution failed; keeping the current endpoints"
                );
                wait
            }
        }
    }

    /// Queues the difference between the current endpoints and `answer`'s: inserts first,
    /// so that a client whose every address changed is never left with none.
    fn apply(&mut self, answer: Answer) {
        for (key, found) in &answer.endpoints {
            if self.current.get(key) == Some(found) {
                continue;
            }
            tracing::info!(name = self.dns.name(), endpoint = %key, weight = found.weight, "endpoint added");
            let mut endpoint =
                Endpoint::new(key.clone(), tcp::connector(found.addr)).weight(found.weight);
            for (k, v) in &found.metadata {
                endpoint = endpoint.metadata(*k, v.clone());
            }
            for (k, v) in &self.dns.metadata {
                endpoint = endpoint.metadata(k.clone(), v.clone());
            }
            self.pending.push_back(Change::Insert(endpoint));
        }
        for key in self.current.keys() {
            if !answer.endpoints.contains_key(key) {
                tracing::info!(name = self.dns.name(), endpoint = %key, "endpoint removed");
                self.pending.push_back(Change::Remove(key.clone()));
            }
        }
        self.current = answer.endpoints;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_a_port_is_split_and_one_without_waits_for_it() {
        let dns = Dns::new("inventory.internal:4000");
        assert!(
            matches!(&dns.query, Query::Host { name, port: Some(4000) } if name == "inventory.internal")
        );
        let dns = Dns::new("inventory.internal").port(4001);
        assert!(
            matches!(&dns.query, Query::Host { name, port: Some(4001) } if name == "inventory.internal")
        );
        assert_eq!(Dns::srv("_rpc._tcp.x").name(), "_rpc._tcp.x");
        let split = |s: &str| split_port(s.to_string());
        assert_eq!(split("[::1]:80"), ("::1".to_string(), Some(80)));
        assert_eq!(split("10.0.0.1:80"), ("10.0.0.1".to_string(), Some(80)));
        assert_eq!(split("::1"), ("::1".to_string(), None));
        assert_eq!(split("name:http"), ("name:http".to_string(), None));
        assert_eq!(split("name:70000"), ("name:70000".to_string(), None));
    }

    #[test]
    fn the_ttl_is_clamped_between_the_intervals() {
        let dns = Dns::new("x:1")
            .min_interval(Duration::from_secs(2))
            .max_interval(Duration::from_secs(10));
        assert_eq!(dns.interval(Duration::ZERO), Duration::from_secs(2));
        assert_eq!(dns.interval(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(dns.interval(Duration::MAX), Duration::from_secs(10));
    }

    #[test]
    fn a_ttl_of_zero_waits_the_min_interval_and_never_less_than_the_floor() {
        // Consul answers with TTL 0 by default: asked again after `min_interval`.
        assert_eq!(
            Dns::srv("x").interval(Duration::ZERO),
            Duration::from_secs(5)
        );
        let eager = Dns::srv("x").min_interval(Duration::ZERO);
        assert_eq!(eager.interval(Duration::ZERO), MIN_INTERVAL_FLOOR);
        assert_eq!(
            eager.max_interval(Duration::ZERO).interval(Duration::ZERO),
            MIN_INTERVAL_FLOOR
        );
    }

    #[test]
    #[should_panic(expected = "has no port")]
    fn a_name_without_a_port_panics_when_started() {
        let _ = Dns::new("inventory.internal").into_changes();
    }
}
