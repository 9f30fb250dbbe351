//! The client side: a stream of endpoint changes that follows a path in ZooKeeper.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::FutureExt;
use rpc_core::balance::Backoff;
#[cfg(doc)]
use rpc_core::balance::{Change, Discover};
use tokio::time::Instant;
use tracing::{info, warn};
use zookeeper_client::{
    AddWatchMode, Client, Error as ZkClientError, EventType, PersistentWatcher, SessionState,
    WatchedEvent,
};

use super::{
    child, connect, dir, within, Entry, ZkError, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SESSION_TIMEOUT,
};
use crate::registry::{watch_stream, Follow, Known, Watch};

/// Follows the servers registered under `path` with the ZooKeeper ensemble at `zookeeper`
/// (`host:port` of one or more of its servers), with the default options of
/// [`ZkDiscovery`]: give it to [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover).
///
/// ```no_run
/// # use rpc_core::service;
/// # #[service]
/// # pub trait Inventory {
/// #     async fn stock(&self, item: String) -> u32;
/// # }
/// # async fn demo() {
/// let client = InventoryClient::builder()
///     .discover(rpc_transport::zookeeper::watch(["127.0.0.1:2181"], "/services/inventory"));
/// # }
/// ```
pub fn watch<Z: AsRef<str>>(zookeeper: impl IntoIterator<Item = Z>, path: &str) -> ZkWatch {
    ZkDiscovery::new(zookeeper, path).watch()
}

/// Options for following a path in ZooKeeper. A [`Discover`] source as it is (give it to
/// [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover)); or
/// [`watch`](ZkDiscovery::watch) makes the stream of changes.
///
/// See [the module's documentation](super) for the nodes and data it reads.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_core::balance::Backoff;
/// use rpc_transport::zookeeper::ZkDiscovery;
/// # use rpc_core::service;
/// # #[service]
/// # pub trait Inventory {
/// #     async fn stock(&self, item: String) -> u32;
/// # }
///
/// # async fn demo() {
/// let zookeeper = ZkDiscovery::new(["10.0.0.10:2181", "10.0.0.11:2181"], "/services/inventory")
///     .backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(10)))
///     .request_timeout(Duration::from_secs(3));
/// let client = InventoryClient::builder().discover(zookeeper);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ZkDiscovery {
    servers: Vec<String>,
    path: String,
    backoff: Backoff,
    request_timeout: Duration,
    session_timeout: Duration,
}

impl ZkDiscovery {
    /// Follows `path` with the ZooKeeper ensemble at `zookeeper`; opens a new session after
    /// 100 ms, doubling up to 5 s, when one is lost; gives each request to ZooKeeper 5 s; asks
    /// for 10 s sessions.
    pub fn new<Z: AsRef<str>>(zookeeper: impl IntoIterator<Item = Z>, path: &str) -> ZkDiscovery {
        ZkDiscovery {
            servers: zookeeper
                .into_iter()
                .map(|z| z.as_ref().to_string())
                .collect(),
            path: path.to_string(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
        }
    }

    /// How long to wait before opening a new session after a failure, by the number of
    /// failures in a row.
    pub fn backoff(mut self, backoff: Backoff) -> ZkDiscovery {
        self.backoff = backoff;
        self
    }

    /// How long opening a session, setting the watch and listing the path may each take
    /// before the attempt counts as failed (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> ZkDiscovery {
        self.request_timeout = timeout;
        self
    }

    /// The session timeout asked of ZooKeeper (default 10 s). The client's session only
    /// holds its watch: while disconnected for less than this, it gets the watch back
    /// without listing anew from a new session.
    pub fn session_timeout(mut self, timeout: Duration) -> ZkDiscovery {
        self.session_timeout = timeout;
        self
    }

    /// The stream of changes: first an [`Insert`](Change::Insert) for every server listed
    /// now, then one change per node created, changed or deleted under the path. It never
    /// ends; it does its work only while polled (no task of its own: the ZooKeeper client
    /// runs its connection in a tokio task), and dropping it closes its session.
    pub fn watch(self) -> ZkWatch {
        ZkWatch::new(Watch::new(Watcher { options: self }, "ZooKeeper discovery"))
    }
}

watch_stream! {
    /// The changes to the servers under a path in ZooKeeper; made by [`watch`] or
    /// [`ZkDiscovery::watch`]. A `Stream` of [`Change`]s for
    /// [`ClientBuilder::discover`](rpc_core::ClientBuilder::discover).
    ZkWatch, ZkDiscovery
}

/// A live session and its watch on the path.
struct Session {
    client: Client,
    watcher: PersistentWatcher,
    /// The path, as [`dir`] gives it.
    dir: String,
    started: Instant,
}

struct Watcher {
    options: ZkDiscovery,
}

impl Follow for Watcher {
    type Session = Session;
    type Error = ZkError;

    fn backoff(&self) -> &Backoff {
        &self.options.backoff
    }

    fn started(session: &Session) -> Instant {
        session.started
    }

    async fn follow(&mut self, session: &mut Session, known: &mut Known) -> Result<(), String> {
        // Never polled again after a terminal session state: the client closes the
        // channel then, and its `changed` panics on a closed channel. Should it close
        // otherwise, that panic ends this session rather than the client's discovery.
        let event = AssertUnwindSafe(session.watcher.changed())
            .catch_unwind()
            .await;
        match event {
            Err(_) => Err("the ZooKeeper client closed the watch".to_string()),
            Ok(event) => self.apply(session, known, event).await,
        }
    }

    fn start_failed(&self, err: ZkError, known: &Known) {
        warn!(
            path = %self.options.path,
            known = known.len(),
            "ZooKeeper discovery: {err}; keeping the servers known"
        );
    }

    fn ended(&self, session: Session, failed: String, known: &Known) {
        let dir = session.dir.clone();
        // Dropping the client closes the session (if it is not over already).
        drop(session);
        warn!(
            path = %dir,
            known = known.len(),
            "ZooKeeper discovery: {failed}; opening a new session and listing again"
        );
    }

    /// Opens a session, watches the path and lists it.
    async fn start(&mut self, known: &mut Known) -> Result<Session, ZkError> {
        let limit = self.options.request_timeout;
        let dir = dir(&self.options.path, || {
            format!("watching `{}` in ZooKeeper", self.options.path)
        })?;
        let client = connect(&self.options.servers, self.options.session_timeout, limit).await?;
        let watcher = self.watch_and_list(&client, &dir, known).await?;
        info!(
            path = %self.options.path,
            session = %client.session_id(),
            servers = known.len(),
            "ZooKeeper discovery: listed and watching"
        );
        Ok(Session {
            client,
            watcher,
            dir,
            started: Instant::now(),
        })
    }
}

impl Watcher {
    /// Applies a watch event; says why if the session is over.
    async fn apply(
        &self,
        session: &mut Session,
        known: &mut Known,
        event: WatchedEvent,
    ) -> Result<(), String> {
        let (client, dir) = (&session.client, session.dir.as_str());
        match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::Disconnected => {
                    warn!(
                        path = %dir,
                        known = known.len(),
                        "ZooKeeper discovery: disconnected; keeping the servers known while \
                         reconnecting"
                    );
                    Ok(())
                }
                // Watches anew, then lists: the client does not set persistent watches
                // again on the server it reconnects to (zookeeper-client 0.11 re-sends
                // only the one-shot ones), and events may have been missed while
                // disconnected anyway (ZOOKEEPER-4698).
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    info!(
                        path = %dir,
                        "ZooKeeper discovery: reconnected; watching and listing again"
                    );
                    match self.watch_and_list(client, dir, known).await {
                        Ok(watcher) => {
                            // Replaced only now: while both exist, dropping the old one
                            // leaves the server's watch in place.
                            session.watcher = watcher;
                            Ok(())
                        }
                        Err(err) => Err(err.to_string()),
                    }
                }
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                    Err(format!("the session ended ({})", event.session_state))
                }
            },
            EventType::NodeCreated | EventType::NodeDataChanged => {
                match server_name(dir, &event.path) {
                    Some(_) => self.reread(client, &event.path, known).await,
                    None => Ok(()),
                }
            }
            EventType::NodeDeleted => {
                if server_name(dir, &event.path).is_some() {
                    known.remove(&event.path);
                }
                Ok(())
            }
            EventType::NodeChildrenChanged => Ok(()),
        }
    }

    /// Watches the path (persistent and recursive), then lists it, queueing what differs
    /// from what is known. Watching first: a change made while listing is seen afterwards,
    /// as an event.
    async fn watch_and_list(
        &self,
        client: &Client,
        dir: &str,
        known: &mut Known,
    ) -> Result<PersistentWatcher, ZkError> {
        let watched = if dir.is_empty() { "/" } else { dir };
        let watcher = within(
            self.options.request_timeout,
            || format!("watching `{watched}` in ZooKeeper"),
            client.watch(watched, AddWatchMode::PersistentRecursive),
        )
        .await?;
        self.list(client, dir, known).await?;
        Ok(watcher)
    }

    /// Lists the children of the path and reads their data, then makes `known` what was
    /// listed, queueing the changes that takes.
    async fn list(&self, client: &Client, dir: &str, known: &mut Known) -> Result<(), ZkError> {
        let limit = self.options.request_timeout;
        let listed = if dir.is_empty() { "/" } else { dir };
        let names = match within(
            limit,
            || format!("listing `{listed}` in ZooKeeper"),
            client.list_children(listed),
        )
        .await
        {
            Ok(names) => names,
            // No server registered yet (the path is made by the first): nothing under it.
            Err(ZkError {
                cause: super::Cause::Zk(ZkClientError::NoNode),
                ..
            }) => Vec::new(),
            Err(err) => return Err(err),
        };
        let nodes: Vec<String> = names.iter().map(|name| child(dir, name)).collect();
        // All the reads at once: the client pipelines them on its connection.
        let reads = nodes.iter().map(|node| {
            within(
                limit,
                move || format!("reading `{node}` in ZooKeeper"),
                client.get_data(node),
            )
        });
        let mut now = HashMap::new();
        for (node, read) in nodes.iter().zip(futures::future::join_all(reads).await) {
            match read {
                Ok((data, _)) => {
                    if let Some(entry) = parse(node, &data) {
                        now.insert(node.clone(), entry);
                    }
                }
                // Deleted since listed.
                Err(ZkError {
                    cause: super::Cause::Zk(ZkClientError::NoNode),
                    ..
                }) => {}
                Err(err) => return Err(err),
            }
        }
        known.sync(now);
        Ok(())
    }

    /// Reads `node` again after it was created or changed.
    async fn reread(&self, client: &Client, node: &str, known: &mut Known) -> Result<(), String> {
        let read = within(
            self.options.request_timeout,
            || format!("reading `{node}` in ZooKeeper"),
            client.get_data(node),
        )
        .await;
        match read {
            Ok((data, _)) => match parse(node, &data) {
                Some(entry) => known.insert(node.to_string(), entry),
                // Not a server (any more): as if deleted.
                None => known.remove(node),
            },
            Err(ZkError {
                cause: super::Cause::Zk(ZkClientError::NoNode),
                ..
            }) => known.remove(node),
            Err(err) => return Err(err.to_string()),
        }
        Ok(())
    }
}

/// The server's name if `node` is a child of `dir` (not `dir` itself, nor a grandchild).
fn server_name<'a>(dir: &str, node: &'a str) -> Option<&'a str> {
    let name = node.strip_prefix(dir)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// A node's data as a server entry, or `None` (logged) if it is not one.
fn parse(node: &str, data: &[u8]) -> Option<Entry> {
    match Entry::parse(data) {
        Ok(entry) => Some(entry),
        Err(why) => {
            warn!(
                node = %node,
                "ZooKeeper discovery: ignoring the data of `{node}`: {why} (expected \
                 `host:port [weight] [key=value ...]`)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn only_children_are_servers() {
        assert_eq!(server_name("/s", "/s/a"), Some("a"));
        assert_eq!(server_name("", "/a"), Some("a"));
        assert_eq!(server_name("/s", "/s"), None);
        assert_eq!(server_name("/s", "/s/a/b"), None);
        assert_eq!(server_name("/s", "/sa/b"), None);
        assert_eq!(server_name("/s", "/other/a"), None);
    }
}
