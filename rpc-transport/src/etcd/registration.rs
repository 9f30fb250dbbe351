//! The server side: a key under the prefix, on a lease kept alive in the background.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use rpc_core::balance::Backoff;
use tracing::{info, warn};

use super::security::{Access, Connection};
use super::{dir, within, Entry, EtcdError, EtcdTls, DEFAULT_REQUEST_TIMEOUT};
use crate::registry::{self, Background};

/// Registers the server `name`, reachable at `addr` (`host:port`, as clients should dial
/// it), under `prefix` in the etcd cluster at `etcd`, on a lease of `ttl` (whole seconds,
/// rounded up) kept alive in the background. Weight 1; see [`EtcdRegistrar`] for the other
/// options.
///
/// Fails if etcd cannot be reached: a server that cannot announce itself had better say so
/// at start-up. Once registered, failures are logged and retried for as long as the
/// [`Registration`] lives.
///
/// ```no_run
/// # async fn demo() -> Result<(), rpc_transport::etcd::EtcdError> {
/// use std::time::Duration;
///
/// let registration = rpc_transport::etcd::register(
///     ["127.0.0.1:2379"],
///     "/services/inventory",
///     "a",
///     "127.0.0.1:4000",
///     Duration::from_secs(10),
/// )
/// .await?;
/// assert_eq!(registration.key(), "/services/inventory/a");
/// // ... serve; then, to leave at once rather than after the TTL:
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
pub async fn register<E: AsRef<str>>(
    etcd: impl IntoIterator<Item = E>,
    prefix: &str,
    name: &str,
    addr: impl fmt::Display,
    ttl: Duration,
) -> Result<Registration, EtcdError> {
    EtcdRegistrar::new(etcd, prefix, name, addr)
        .ttl(ttl)
        .register()
        .await
}

/// Options for registering a server in etcd; [`register`](EtcdRegistrar::register) does it.
///
/// ```no_run
/// # async fn demo() -> Result<(), rpc_transport::etcd::EtcdError> {
/// use std::time::Duration;
/// use rpc_transport::etcd::EtcdRegistrar;
///
/// let registration = EtcdRegistrar::new(["127.0.0.1:2379"], "/services/inventory", "a", "10.0.0.1:4000")
///     .ttl(Duration::from_secs(5))
///     .weight(3)
///     .register()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdRegistrar {
    connection: Connection,
    name: String,
    key: String,
    entry: Entry,
    ttl: Duration,
    backoff: Backoff,
}

impl EtcdRegistrar {
    /// Registers `name` at `addr` under `prefix` in the etcd cluster at `etcd`, with weight
    /// 1, a 10 s TTL, 5 s for each request to etcd, and retries after 100 ms doubling up to
    /// 5 s.
    pub fn new<E: AsRef<str>>(
        etcd: impl IntoIterator<Item = E>,
        prefix: &str,
        name: &str,
        addr: impl fmt::Display,
    ) -> EtcdRegistrar {
        EtcdRegistrar {
            connection: Connection::new(
                etcd.into_iter().map(|e| e.as_ref().to_string()).collect(),
                dir(prefix),
                Access::Write,
                DEFAULT_REQUEST_TIMEOUT,
            ),
            name: name.to_string(),
            key: format!("{}{name}", dir(prefix)),
            entry: Entry::new(addr.to_string()),
            ttl: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// The lease's time to live: how long the key outlives the server if it dies without
    /// deregistering. Rounded up to whole seconds; at least 1 s (etcd may grant a little
    /// more: its minimum is about 1.5 times its election timeout).
    pub fn ttl(mut self, ttl: Duration) -> EtcdRegistrar {
        self.ttl = ttl;
        self
    }

    /// The weight clients give this server (default 1).
    pub fn weight(mut self, weight: u32) -> EtcdRegistrar {
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
    pub fn metadata(mut self, key: &str, value: &str) -> EtcdRegistrar {
        self.entry.set_metadata("etcd", key, value);
        self
    }

    /// How long each request to etcd may take (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> EtcdRegistrar {
        self.connection.request_timeout = timeout;
        self
    }

    /// Connects to etcd over TLS: see [`EtcdTls`]. Endpoints given as `host:port` are then
    /// reached as `https://host:port`.
    pub fn tls(mut self, tls: EtcdTls) -> EtcdRegistrar {
        self.connection.tls = Some(tls);
        self
    }

    /// Authenticates as `user` with `password`, for an etcd with authentication enabled. The
    /// user's role needs `readwrite` on the prefix (`etcdctl role grant-permission <role>
    /// readwrite /services/inventory/ --prefix`). The password travels in the clear unless
    /// [TLS](EtcdRegistrar::tls) is on.
    pub fn auth(mut self, user: &str, password: &str) -> EtcdRegistrar {
        self.connection.set_auth(user, password);
        self
    }

    /// How long to wait before trying again after etcd failed, by the number of failures in
    /// a row.
    pub fn backoff(mut self, backoff: Backoff) -> EtcdRegistrar {
        self.backoff = backoff;
        self
    }

    /// Grants the lease, puts the key on it, and starts keeping the lease alive.
    pub async fn register(self) -> Result<Registration, EtcdError> {
        let action = format!("registering `{}` in etcd", self.key);
        if self.name.is_empty() {
            return Err(EtcdError::invalid(action, "the server's name is empty"));
        }
        if let Some(why) = self.entry.bad_addr() {
            return Err(EtcdError::invalid(action, why));
        }
        let ttl_secs = whole_seconds(self.ttl);
        if ttl_secs == 0 {
            return Err(EtcdError::invalid(
                action,
                "the TTL is zero; give at least one second",
            ));
        }
        let mut client = self.connection.connect().await?;
        let lease = Arc::new(AtomicI64::new(0));
        let keeper = Keeper {
            options: self,
            ttl_secs,
            lease: Arc::clone(&lease),
        };
        let granted_ttl = keeper.grant_and_put(&mut client).await?;
        let key = keeper.options.key.clone();
        let connection = keeper.options.connection.clone();
        info!(
            key = %key,
            lease = lease.load(Ordering::Acquire),
            ttl_secs = granted_ttl,
            "etcd: registered"
        );
        let task = tokio::spawn(keeper.run(client, granted_ttl));
        Ok(Registration {
            key,
            lease,
            connection,
            task: Background::new(task),
        })
    }
}

/// A server's entry in etcd, kept alive in the background while this lives.
///
/// [`deregister`](Registration::deregister) removes the entry at once (do it before the
/// server shuts down, e.g. with [`deregister_on`](Registration::deregister_on)). Dropping the
/// `Registration` only stops the keepalive: the entry then expires after the TTL, as when
/// the server crashes.
pub struct Registration {
    key: String,
    lease: Arc<AtomicI64>,
    connection: Connection,
    task: Background,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &self.lease_id())
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The key the server is registered under: `{prefix}/{name}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is on now (a new one after the registration was remade because the
    /// lease was lost).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// Stops the keepalive and revokes the lease, which deletes the key: clients watching the
    /// prefix stop sending new calls to this server, and let those in progress finish.
    ///
    /// If etcd cannot be reached, this fails after the request timeout, and the key expires
    /// after the TTL instead.
    pub async fn deregister(mut self) -> Result<(), EtcdError> {
        // Waits until it has stopped, so it grants no lease behind our back.
        self.task.stop().await;
        let lease = self.lease_id();
        let key = self.key.clone();
        // A connection of its own: the keepalive's may be the one that broke.
        let mut client = self.connection.connect().await?;
        let revoked = within(
            &self.connection,
            || format!("deregistering `{key}` (revoking lease {lease}) in etcd"),
            client.lease_revoke(lease),
        )
        .await;
        match revoked {
            Ok(_) => {
                info!(key = %key, lease, "etcd: deregistered");
                Ok(())
            }
            Err(err) if lease_not_found(&err) => {
                info!(key = %key, lease, "etcd: deregistered (the lease had expired already)");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// A future that waits for `signal`, then [deregisters](Registration::deregister): give
    /// it to [`Server::serve_with_shutdown`](rpc_core::Server::serve_with_shutdown), and
    /// clients stop sending new calls before the server stops accepting them. A failure to
    /// deregister is logged (the key then expires after the TTL).
    ///
    /// ```no_run
    /// # use rpc_core::Server;
    /// # async fn demo(registration: rpc_transport::etcd::Registration, server: Server, listener: rpc_transport::tcp::TcpListener) -> std::io::Result<()> {
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
        let key = self.key.clone();
        registry::deregister_on(signal, self.deregister(), move |err| {
            warn!(key = %key, "etcd: {err}; the key expires after its TTL");
        })
    }
}

/// The background task's state.
struct Keeper {
    options: EtcdRegistrar,
    ttl_secs: i64,
    /// The current lease, shared with the [`Registration`]; 0 while there is none.
    lease: Arc<AtomicI64>,
}

/// Why keeping a lease alive stopped.
enum Stop {
    /// etcd says the lease is gone: register again.
    Lost,
    /// etcd could not be reached or failed: try again after a backoff.
    Failed(EtcdError),
}

impl Keeper {
    /// Grants a lease and puts the key on it; returns the TTL granted.
    async fn grant_and_put(&self, client: &mut Client) -> Result<i64, EtcdError> {
        let connection = &self.options.connection;
        let key = &self.options.key;
        let granted = within(
            connection,
            || format!("granting a {} s lease for `{key}` in etcd", self.ttl_secs),
            client.lease_grant(self.ttl_secs, None),
        )
        .await?;
        if !granted.error().is_empty() {
            return Err(EtcdError::refused(
                format!("granting a {} s lease for `{key}` in etcd", self.ttl_secs),
                format!("etcd refused: {}", granted.error()),
            ));
        }
        let lease = granted.id();
        // Noted before the put, so a deregistration that stops us after it revokes this one.
        self.lease.store(lease, Ordering::Release);
        within(
            connection,
            || format!("putting `{key}` on lease {lease} in etcd"),
            client.put(
                key.as_bytes(),
                self.options.entry.format(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(granted.ttl().max(1))
    }

    /// Keeps the registration alive for good (the task is aborted to stop it).
    async fn run(self, mut client: Client, mut ttl_secs: i64) {
        let key = self.options.key.clone();
        let mut failures = 0u32;
        let mut registered = true;
        loop {
            if !registered {
                match self.grant_and_put(&mut client).await {
                    Ok(ttl) => {
                        ttl_secs = ttl;
                        registered = true;
                        failures = 0;
                        info!(
                            key = %key,
                            lease = self.lease.load(Ordering::Acquire),
                            "etcd: registered again"
                        );
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        warn!(key = %key, "etcd: {err}; trying again");
                        client = self.pause_and_reconnect(failures, client).await;
                        continue;
                    }
                }
            }
            match self.keep_alive(&mut client, ttl_secs, &mut failures).await {
                Stop::Lost => {
                    info!(
                        key = %key,
                        lease = self.lease.load(Ordering::Acquire),
                        "etcd: the lease expired or was revoked; registering again"
                    );
                    registered = false;
                }
                Stop::Failed(err) => {
                    failures = failures.saturating_add(1);
                    warn!(key = %key, "etcd: {err}; trying again");
                    client = self.pause_and_reconnect(failures, client).await;
                }
            }
        }
    }

    /// Refreshes the current lease every third of its TTL, until that fails.
    async fn keep_alive(&self, client: &mut Client, ttl_secs: i64, failures: &mut u32) -> Stop {
        let limit = &self.options.connection;
        let lease = self.lease.load(Ordering::Acquire);
        let action = || format!("keeping lease {lease} of `{}` alive", self.options.key);
        let interval = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(1)) / 3;
        let (mut keeper, mut responses) =
            match within(limit, action, client.lease_keep_alive(lease)).await {
                Ok(pair) => pair,
                // It fails too when the lease is gone: ask etcd which it is.
                Err(err) => return self.lost_or(client, lease, err).await,
            };
        // Opening the stream refreshed the lease once already.
        *failures = 0;
        loop {
            tokio::time::sleep(interval).await;
            if let Err(err) = within(limit, action, keeper.keep_alive()).await {
                return Stop::Failed(err);
            }
            match within(limit, action, responses.message()).await {
                Ok(Some(response)) if response.ttl() > 0 => {}
                Ok(Some(_)) => return Stop::Lost,
                Ok(None) => {
                    return Stop::Failed(EtcdError::refused(
                        action(),
                        "etcd closed the keepalive stream",
                    ))
                }
                Err(err) => return Stop::Failed(err),
            }
        }
    }

    /// [`Stop::Lost`] if etcd says `lease` does not exist (its TTL is -1), else
    /// [`Stop::Failed`] with `err`.
    async fn lost_or(&self, client: &mut Client, lease: i64, err: EtcdError) -> Stop {
        let asked = within(
            &self.options.connection,
            || format!("reading the TTL of lease {lease}"),
            client.lease_time_to_live(lease, None),
        )
        .await;
        match asked {
            Ok(response) if response.ttl() <= 0 => Stop::Lost,
            _ => Stop::Failed(err),
        }
    }

    /// Waits out the backoff, then makes a fresh client (the old one's connection may be
    /// stuck).
    async fn pause_and_reconnect(&self, failures: u32, client: Client) -> Client {
        tokio::time::sleep(self.options.backoff.delay(failures)).await;
        match self.options.connection.connect().await {
            Ok(fresh) => fresh,
            Err(err) => {
                warn!(key = %self.options.key, "etcd: {err}");
                client
            }
        }
    }
}

/// `ttl` in whole seconds, rounded up.
fn whole_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Whether revoking failed because etcd does not know the lease (it expired already).
fn lease_not_found(err: &EtcdError) -> bool {
    matches!(
        &err.cause,
        super::Cause::Etcd(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::NotFound
    )
}
