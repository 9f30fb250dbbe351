//! The client side: a stream of endpoint changes that follows a prefix in etcd.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use etcd_client::{Client, GetOptions, WatchOptions, WatchResponse, WatchStream};
use rpc_core::balance::Backoff;
#[cfg(doc)]
use rpc_core::balance::{Change, Discover};
use tracing::{info, warn};

use super::security::{Access, Connection};
use super::{dir, within, Entry, EtcdError, EtcdTls, DEFAULT_REQUEST_TIMEOUT};
use crate::registry::{watch_stream, Follow, Known, Watch};

/// Follows the servers registered under `prefix` in the etcd cluster at `etcd` (`host:port`
/// of one or more members), with the default options of [`EtcdDiscovery`]: give it to
/// [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover).
///
/// ```no_run
/// # use rpc_core::service;
/// # #[service]
/// # pub trait Inventory {
/// #     async fn stock(&self, item: String) -> u32;
/// # }
/// # async fn demo() {
/// let client = InventoryClient::builder()
///     .discover(rpc_transport::etcd::watch(["127.0.0.1:2379"], "/services/inventory"));
/// # }
/// ```
pub fn watch<E: AsRef<str>>(etcd: impl IntoIterator<Item = E>, prefix: &str) -> EtcdWatch {
    EtcdDiscovery::new(etcd, prefix).watch()
}

/// Options for following a prefix in etcd. A [`Discover`] source as it is (give it to
/// [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover)); or
/// [`watch`](EtcdDiscovery::watch) makes the stream of changes.
///
/// See [the module's documentation](super) for the keys and values it reads.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::balance::Backoff;
/// use rpc_transport::etcd::EtcdDiscovery;
/// # use rpc_core::service;
/// # #[service]
/// # pub trait Inventory {
/// #     async fn stock(&self, item: String) -> u32;
/// # }
///
/// # async fn demo() {
/// let etcd = EtcdDiscovery::new(["10.0.0.10:2379", "10.0.0.11:2379"], "/services/inventory")
///     .backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(10)))
///     .request_timeout(Duration::from_secs(3));
/// let client = InventoryClient::builder().discover(etcd);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    connection: Connection,
    backoff: Backoff,
}

impl EtcdDiscovery {
    /// Follows `prefix` in the etcd cluster at `etcd`; reconnects after 100 ms, doubling up to
    /// 5 s; gives each request to etcd 5 s.
    pub fn new<E: AsRef<str>>(etcd: impl IntoIterator<Item = E>, prefix: &str) -> EtcdDiscovery {
        EtcdDiscovery {
            connection: Connection::new(
                etcd.into_iter().map(|e| e.as_ref().to_string()).collect(),
                dir(prefix),
                Access::Read,
                DEFAULT_REQUEST_TIMEOUT,
            ),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// How long to wait before reconnecting to etcd after a failure, by the number of
    /// failures in a row.
    pub fn backoff(mut self, backoff: Backoff) -> EtcdDiscovery {
        self.backoff = backoff;
        self
    }

    /// How long connecting to etcd, listing the prefix and starting the watch may each take
    /// before the attempt counts as failed (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> EtcdDiscovery {
        self.connection.request_timeout = timeout;
        self
    }

    /// Connects to etcd over TLS: see [`EtcdTls`]. Endpoints given as `host:port` are then
    /// reached as `https://host:port`.
    pub fn tls(mut self, tls: EtcdTls) -> EtcdDiscovery {
        self.connection.tls = Some(tls);
        self
    }

    /// Authenticates as `user` with `password`, for an etcd with authentication enabled. The
    /// user's role needs `read` on the prefix (`etcdctl role grant-permission <role> read
    /// /services/inventory/ --prefix`). The password travels in the clear unless
    /// [TLS](EtcdDiscovery::tls) is on.
    pub fn auth(mut self, user: &str, password: &str) -> EtcdDiscovery {
        self.connection.set_auth(user, password);
        self
    }

    /// The stream of changes: first an [`Insert`](Change::Insert) for every server listed
    /// now, then one change per put or delete under the prefix. It never ends; it does its
    /// work only while polled (no background task), and dropping it closes its connection to
    /// etcd.
    pub fn watch(self) -> EtcdWatch {
        EtcdWatch::new(Watch::new(Watcher { options: self }, "etcd discovery"))
    }
}

watch_stream! {
    /// The changes to the servers under a prefix in etcd; made by [`watch`] or
    /// [`EtcdDiscovery::watch`]. A `Stream` of [`Change`]s for
    /// [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover).
    EtcdWatch, EtcdDiscovery
}

/// A live watch: the client it runs on, and when it started.
struct Session {
    // Kept so the connection lives as long as the watch.
    _client: Client,
    stream: WatchStream,
    started: Instant,
}

struct Watcher {
    options: EtcdDiscovery,
}

impl Follow for Watcher {
    type Session = Session;
    type Error = EtcdError;

    fn backoff(&self) -> &Backoff {
        &self.options.backoff
    }

    fn started(session: &Session) -> Instant {
        session.started
    }

    async fn follow(&mut self, session: &mut Session, known: &mut Known) -> Result<(), String> {
        match session.stream.message().await {
            Ok(Some(response)) => self.apply(response, known),
            Ok(None) => Err("etcd closed the watch".to_string()),
            // Read as any other request's error: a lost connection, a revoked
            // permission, an expired token each say so.
            Err(err) => {
                let action = format!("watching `{}` in etcd", self.options.connection.dir);
                Err(EtcdError::etcd(action, err)
                    .on(&self.options.connection)
                    .to_string())
            }
        }
    }

    fn start_failed(&self, err: EtcdError, _: &Known) {
        warn!(prefix = %self.options.connection.dir, "etcd discovery: {err}");
    }

    fn ended(&self, session: Session, failed: String, _: &Known) {
        drop(session);
        warn!(
            prefix = %self.options.connection.dir,
            "etcd discovery: {failed}; reconnecting and listing again"
        );
    }

    /// Connects, lists the prefix (queueing what differs from what is known) and starts
    /// watching from the revision listed.
    async fn start(&mut self, known: &mut Known) -> Result<Session, EtcdError> {
        let limit = &self.options.connection;
        let dir = limit.dir.clone();
        let mut client = limit.connect().await?;
        let listed = within(
            limit,
            || format!("listing `{dir}` in etcd"),
            client.get(dir.as_bytes(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = listed.header().map_or(0, |header| header.revision());
        let mut now = HashMap::new();
        for kv in listed.kvs() {
            if let Some((key, entry)) = read(kv.key(), kv.value()) {
                now.insert(key, entry);
            }
        }

        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision.saturating_add(1));
        let mut stream = within(
            limit,
            || format!("watching `{dir}` in etcd"),
            client.watch(dir.as_bytes(), Some(options)),
        )
        .await?;
        // etcd confirms the watch before sending anything else.
        let created = within(
            limit,
            || format!("watching `{dir}` in etcd"),
            stream.message(),
        )
        .await?;
        match created {
            Some(response) if response.created() && !response.canceled() => {}
            Some(response) => {
                return Err(EtcdError::refused(
                    format!("watching `{dir}` in etcd"),
                    format!("etcd refused the watch: {}", refusal(&response)),
                ))
            }
            None => {
                return Err(EtcdError::refused(
                    format!("watching `{dir}` in etcd"),
                    "etcd closed the watch at once",
                ))
            }
        }

        known.sync(now);
        info!(
            prefix = %dir,
            revision,
            servers = known.len(),
            "etcd discovery: listed and watching"
        );
        Ok(Session {
            _client: client,
            stream,
            started: Instant::now(),
        })
    }
}

impl Watcher {
    /// Applies a watch response; says why if the watch is over.
    fn apply(&self, response: WatchResponse, known: &mut Known) -> Result<(), String> {
        if response.canceled() || response.compact_revision() != 0 {
            return Err(format!("etcd cancelled the watch: {}", refusal(&response)));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            // The raw event type, read without `Event::event_type`, which panics on a type it
            // does not know.
            match event.0.r#type {
                PUT => match read(kv.key(), kv.value()) {
                    Some((key, entry)) => known.insert(key, entry),
                    // Not a server (any more): as if deleted.
                    None => known.remove(&String::from_utf8_lossy(kv.key())),
                },
                DELETE => known.remove(&String::from_utf8_lossy(kv.key())),
                other => warn!(
                    prefix = %self.options.connection.dir,
                    "etcd discovery: ignoring an event of unknown type {other}"
                ),
            }
        }
        Ok(())
    }
}

/// `mvccpb.Event.EventType`.
const PUT: i32 = 0;
const DELETE: i32 = 1;

/// A key and value under the prefix as a server entry, or `None` (logged) if it is not one.
fn read(key: &[u8], value: &[u8]) -> Option<(String, Entry)> {
    let Ok(key) = std::str::from_utf8(key) else {
        warn!(key = %String::from_utf8_lossy(key), "etcd discovery: ignoring a key that is not UTF-8");
        return None;
    };
    match Entry::parse(value) {
        Ok(entry) => Some((key.to_string(), entry)),
        Err(why) => {
            warn!(
                key = %key,
                "etcd discovery: ignoring the value of `{key}`: {why} (expected `host:port` or \
                 `host:port weight`)"
            );
            None
        }
    }
}

/// Why etcd cancelled a watch, in words.
fn refusal(response: &WatchResponse) -> String {
    if response.compact_revision() != 0 {
        format!(
            "the revisions it needed were compacted (up to {})",
            response.compact_revision()
        )
    } else if response.cancel_reason().is_empty() {
        "no reason given".to_string()
    } else {
        response.cancel_reason().to_string()
    }
}
