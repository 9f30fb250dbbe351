//! The server side: an ephemeral node under the path, on a session kept (and remade) in the
//! background.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rpc_core::balance::Backoff;
use tracing::{info, warn};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkClientError, SessionState};

use super::{
    child, connect, dir, within, Entry, ZkError, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SESSION_TIMEOUT,
};
use crate::registry::{self, Background};

/// Registers the server `name`, reachable at `addr` (`host:port`, as clients should dial
/// it), as the ephemeral node `{path}/{name}` with the ZooKeeper ensemble at `zookeeper`
/// (`host:port` of one or more of its servers), on a session kept in the background. Weight
/// 1, a 10 s session timeout; see [`ZkRegistrar`] for the other options.
///
/// Fails if ZooKeeper cannot be reached, or if a live server holds the name already
/// ([`ZkError::is_name_taken`]): a server that cannot announce itself had better say so at
/// start-up. Once registered, failures are logged and retried for as long as the
/// [`Registration`] lives.
///
/// ```no_run
/// # async fn demo() -> Result<(), rpc_transport::zookeeper::ZkError> {
/// let registration = rpc_transport::zookeeper::register(
///     ["127.0.0.1:2181"],
///     "/services/inventory",
///     "a",
///     "127.0.0.1:4000",
/// )
/// .await?;
/// assert_eq!(registration.node(), "/services/inventory/a");
/// // ... serve; then, to leave at once:
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
pub async fn register<Z: AsRef<str>>(
    zookeeper: impl IntoIterator<Item = Z>,
    path: &str,
    name: &str,
    addr: impl fmt::Display,
) -> Result<Registration, ZkError> {
    ZkRegistrar::new(zookeeper, path, name, addr)
        .register()
        .await
}

/// Options for registering a server in ZooKeeper; [`register`](ZkRegistrar::register) does
/// it.
///
/// ```no_run
/// # async fn demo() -> Result<(), rpc_transport::zookeeper::ZkError> {
/// use std::time::Duration;
/// use rpc_transport::zookeeper::ZkRegistrar;
///
/// let registration =
///     ZkRegistrar::new(["127.0.0.1:2181"], "/services/inventory", "a", "10.0.0.1:4000")
///         .session_timeout(Duration::from_secs(6))
///         .weight(3)
///         .metadata(rpc_core::balance::ZONE, "eu-west-1a")
///         .register()
///         .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ZkRegistrar {
    servers: Vec<String>,
    path: String,
    name: String,
    entry: Entry,
    session_timeout: Duration,
    request_timeout: Duration,
    backoff: Backoff,
}

impl ZkRegistrar {
    /// Registers `name` at `addr` under `path` with the ZooKeeper ensemble at `zookeeper`,
    /// with weight 1, a 10 s session timeout, 5 s for each request to ZooKeeper, and retries
    /// after 100 ms doubling up to 5 s.
    pub fn new<Z: AsRef<str>>(
        zookeeper: impl IntoIterator<Item = Z>,
        path: &str,
        name: &str,
        addr: impl fmt::Display,
    ) -> ZkRegistrar {
        ZkRegistrar {
            servers: zookeeper
                .into_iter()
                .map(|z| z.as_ref().to_string())
                .collect(),
            path: path.to_string(),
            name: name.to_string(),
            entry: Entry::new(addr.to_string()),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// The session timeout asked of ZooKeeper: how long the node outlives the server if it
    /// dies without deregistering (default 10 s). ZooKeeper keeps it between its
    /// `minSessionTimeout` and `maxSessionTimeout` (by default 2 and 20 times its `tickTime`).
    pub fn session_timeout(mut self, timeout: Duration) -> ZkRegistrar {
        self.session_timeout = timeout;
        self
    }

    /// The weight clients give this server (default 1).
    pub fn weight(mut self, weight: u32) -> ZkRegistrar {
        self.entry.weight = weight;
        self
    }

    /// Publishes a metadata value with the server's address, which discovering clients give
    /// its endpoint ([`Endpoint::metadata`](rpc_core::balance::Endpoint::metadata)): its
    /// zone, for zone-aware clients, is `.metadata(rpc_core::balance::ZONE, "eu-west-1a")`.
    /// Keys and values are single words (no spaces), keys without `=`.
    ///
    /// # Panics
    /// If the key is empty or has `=` or white space, or the value has white space: the
    /// entry could not be read back.
    pub fn metadata(mut self, key: &str, value: &str) -> ZkRegistrar {
        self.entry.set_metadata("ZooKeeper", key, value);
        self
    }

    /// How long each request to ZooKeeper may take, opening a session included (default
    /// 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> ZkRegistrar {
        self.request_timeout = timeout;
        self
    }

    /// How long to wait before trying again after ZooKeeper failed, by the number of
    /// failures in a row.
    pub fn backoff(mut self, backoff: Backoff) -> ZkRegistrar {
        self.backoff = backoff;
        self
    }

    /// Opens a session, creates the path if missing and the ephemeral node, and starts
    /// following the session (to register again if it is lost).
    pub async fn register(self) -> Result<Registration, ZkError> {
        let node = child(self.path.trim_end_matches('/'), &self.name);
        let action = || format!("registering `{node}` in ZooKeeper");
        let dir = dir(&self.path, action)?;
        if self.name.is_empty() || self.name.contains('/') {
            return Err(ZkError::invalid(
                action(),
                format!("the server's name `{}` is empty or has `/`", self.name),
            ));
        }
        if let Some(why) = self.entry.bad_addr() {
            return Err(ZkError::invalid(action(), why));
        }
        let client = connect(&self.servers, self.session_timeout, self.request_timeout).await?;
        let keeper = Keeper {
            options: self,
            dir,
            node: node.clone(),
            session: Arc::new(AtomicI64::new(client.session_id().0)),
            client: Arc::new(Mutex::new(Some(client.clone()))),
        };
        keeper.create(&client, None).await?;
        info!(
            node = %node,
            session = %client.session_id(),
            timeout = ?client.session_timeout(),
            "ZooKeeper: registered"
        );
        let session = Arc::clone(&keeper.session);
        let current = Arc::clone(&keeper.client);
        let request_timeout = keeper.options.request_timeout;
        let task = tokio::spawn(keeper.run(client));
        Ok(Registration {
            node,
            session,
            client: current,
            task: Background::new(task),
            request_timeout,
        })
    }
}

/// A server's node in ZooKeeper, kept (and made again after a lost session) in the
/// background while this lives.
///
/// [`deregister`](Registration::deregister) deletes the node at once (do it before the server
/// shuts down, e.g. with [`deregister_on`](Registration::deregister_on)). Dropping the
/// `Registration` closes the session, which deletes the node too (if ZooKeeper can be
/// reached; if not, the session expires after its timeout, as when the server crashes).
pub struct Registration {
    node: String,
    session: Arc<AtomicI64>,
    /// The current session's client; `None` while the background task opens a new one. The
    /// task holds clones: the session is closed when the last one goes.
    client: Arc<Mutex<Option<Client>>>,
    /// Dropping it aborts the task: the task's clients are dropped with it, and ours with
    /// this registration: the session is closed.
    task: Background,
    request_timeout: Duration,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("node", &self.node)
            .field("session", &format_args!("{:#x}", self.session_id()))
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The node the server is registered as: `{path}/{name}`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The id of the session the node is on now (a new one after the registration was remade
    /// because the session was lost).
    pub fn session_id(&self) -> i64 {
        self.session.load(Ordering::Acquire)
    }

    /// Stops following the session, deletes the node (clients watching the path stop sending
    /// new calls to this server, and let those in progress finish), and closes the session.
    ///
    /// If ZooKeeper cannot be reached, this fails after the request timeout, and the node
    /// goes when ZooKeeper expires the session.
    pub async fn deregister(mut self) -> Result<(), ZkError> {
        // Waits until it has stopped, so it makes no new session behind our back.
        self.task.stop().await;
        let client = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let node = self.node.clone();
        let Some(client) = client else {
            // Lost with its session, and not made again yet: nothing to delete.
            info!(node = %node, "ZooKeeper: deregistered (the session was lost already)");
            return Ok(());
        };
        let deleted = within(
            self.request_timeout,
            || format!("deregistering `{node}` (deleting the node) in ZooKeeper"),
            client.delete(&node, None),
        )
        .await;
        // Dropping the last client closes the session.
        drop(client);
        match deleted {
            Ok(()) => {
                info!(node = %node, "ZooKeeper: deregistered");
                Ok(())
            }
            Err(ZkError {
                cause: super::Cause::Zk(ZkClientError::NoNode | ZkClientError::SessionExpired),
                ..
            }) => {
                info!(node = %node, "ZooKeeper: deregistered (the node was gone already)");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// A future that waits for `signal`, then [deregisters](Registration::deregister): give
    /// it to [`Server::serve_with_shutdown`](rpc_core::Server::serve_with_shutdown), and
    /// clients stop sending new calls before the server stops accepting them. A failure to
    /// deregister is logged (the node then goes when the session expires).
    ///
    /// ```no_run
    /// # use rpc_core::Server;
    /// # async fn demo(registration: rpc_transport::zookeeper::Registration, server: Server, listener: rpc_transport::tcp::TcpListener) -> std::io::Result<()> {
    /// let ctrl_c = async {
    ///     let _ = tokio::signal::ctrl_c().await;
    /// };
    /// server
    ///     .serve_with_shutdown(listener, registration.deregister_on(ctrl_c))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    // Not an `async fn`: the signature promises the `Send + 'static` that
    // `serve_with_shutdown` needs.
    pub fn deregister_on<F>(self, signal: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let node = self.node.clone();
        registry::deregister_on(signal, self.deregister(), move |err| {
            warn!(node = %node, "ZooKeeper: {err}; the node goes when its session expires");
        })
    }
}

/// The background task's state.
struct Keeper {
    options: ZkRegistrar,
    /// The path, as [`dir`] gives it.
    dir: String,
    node: String,
    /// The current session's id, shared with the [`Registration`].
    session: Arc<AtomicI64>,
    /// The current session's client, shared with the [`Registration`].
    client: Arc<Mutex<Option<Client>>>,
}

impl Keeper {
    /// Creates the path (if missing) and the node on `client`'s session. `previous` is the
    /// session this registration had before, whose node ZooKeeper may not have deleted yet.
    async fn create(&self, client: &Client, previous: Option<i64>) -> Result<(), ZkError> {
        let limit = self.options.request_timeout;
        let node = &self.node;
        let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
        if !self.dir.is_empty() {
            within(
                limit,
                || format!("creating the path `{}` in ZooKeeper", self.dir),
                client.mkdir(&self.dir, &open),
            )
            .await?;
        }
        let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let data = self.options.entry.format();
        let action = || format!("registering `{node}` (creating the ephemeral node) in ZooKeeper");
        match within(
            limit,
            action,
            client.create(node, data.as_bytes(), &ephemeral),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(ZkError {
                cause: super::Cause::Zk(ZkClientError::NodeExists),
                ..
            }) => {}
            Err(err) => return Err(err),
        }
        // Taken: by our own earlier session (lost on our side, not yet expired on
        // ZooKeeper's), which we may replace, or by another server, which we must not.
        let stat = within(
            limit,
            || format!("reading the owner of `{node}` in ZooKeeper"),
            client.check_stat(node),
        )
        .await?;
        match stat {
            Some(stat) if previous.is_some_and(|old| stat.ephemeral_owner == old) => {
                info!(node = %node, "ZooKeeper: replacing the node of this server's lost session");
                within(
                    limit,
                    || format!("deleting the node of a lost session, `{node}`, in ZooKeeper"),
                    client.delete(node, Some(stat.version)),
                )
                .await?;
                within(
                    limit,
                    action,
                    client.create(node, data.as_bytes(), &ephemeral),
                )
                .await?;
                Ok(())
            }
            // Deleted meanwhile: try again (after the backoff).
            None => Err(ZkError::zk(action(), ZkClientError::NoNode)),
            Some(_) => Err(ZkError {
                action: action(),
                cause: super::Cause::NameTaken,
            }),
        }
    }

    /// Follows the session; when it is lost, opens a new one and creates the node again. For
    /// good: the task is aborted to stop it.
    async fn run(self, mut client: Client) {
        let node = self.node.clone();
        loop {
            self.until_lost(&client).await;
            let lost = client.session_id().0;
            info!(
                node = %node,
                session = %client.session_id(),
                "ZooKeeper: the session expired or was closed; registering again with a new one"
            );
            *self.client.lock().unwrap_or_else(PoisonError::into_inner) = None;
            drop(client);
            let mut failures = 0u32;
            client = loop {
                tokio::time::sleep(self.options.backoff.delay(failures)).await;
                failures = failures.saturating_add(1);
                let fresh = match connect(
                    &self.options.servers,
                    self.options.session_timeout,
                    self.options.request_timeout,
                )
                .await
                {
                    Ok(fresh) => fresh,
                    Err(err) => {
                        warn!(node = %node, "ZooKeeper: {err}; trying again");
                        continue;
                    }
                };
                match self.create(&fresh, Some(lost)).await {
                    Ok(()) => break fresh,
                    Err(err) => warn!(node = %node, "ZooKeeper: {err}; trying again"),
                }
            };
            self.session.store(client.session_id().0, Ordering::Release);
            *self.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
            info!(node = %node, session = %client.session_id(), "ZooKeeper: registered again");
        }
    }

    /// Returns once `client`'s session is over (expired, closed, or refused), logging the
    /// disconnections and reconnections on the way.
    async fn until_lost(&self, client: &Client) {
        let node = &self.node;
        let mut states = client.state_watcher();
        let mut state = client.state();
        // Also looks every session timeout, in case a change went unreported.
        let every = client.session_timeout().max(Duration::from_secs(1));
        while !state.is_terminated() {
            let next = tokio::select! {
                next = states.changed() => next,
                () = tokio::time::sleep(every) => client.state(),
            };
            if next == state {
                continue;
            }
            state = next;
            match state {
                SessionState::Disconnected => warn!(
                    node = %node,
                    "ZooKeeper: disconnected; reconnecting (the node stays while the session \
                     lives: up to its timeout)"
                ),
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    info!(node = %node, "ZooKeeper: reconnected")
                }
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {}
            }
        }
    }
}
