//! Service discovery through [ZooKeeper](https://zookeeper.apache.org) (cargo feature
//! `zookeeper`).
//!
//! Servers announce themselves under a path with [`register`]; clients follow that path with
//! [`watch`] and balance their calls over whatever is announced there.
//!
//! - **Nodes.** A server named `name` registers as the *ephemeral* node `{path}/{name}`, e.g.
//!   `/services/inventory/a` for the path `/services/inventory` (a trailing `/` on the path is
//!   ignored; the path is created, as persistent nodes, if missing). Names must be unique
//!   within a path: registering a name that a live server holds fails with an error that says
//!   so ([`ZkError::is_name_taken`]).
//! - **Data.** The node's data is the same plain text as an etcd registration's value: the
//!   address clients connect to over TCP (`host:port`), optionally followed by whitespace and
//!   a weight (a `u32`, default 1) for the [`Weighted`](rpc_core::balance::Weighted) and
//!   [`ConsistentHash`](rpc_core::balance::ConsistentHash) strategies, then optionally
//!   `key=value` words that become the endpoint's metadata (its zone, for zone-aware
//!   clients: `zone=eu-west-1a`): `10.0.0.7:4000`, `10.0.0.7:4000 3` or
//!   `10.0.0.7:4000 1 zone=eu-west-1a`. A child whose data is not of this form is logged and
//!   ignored, so anything else stored under the path does no harm; so are grandchildren.
//! - **Endpoint keys.** Each server becomes one [`Endpoint`](rpc_core::balance::Endpoint)
//!   whose key is its full node path (`/services/inventory/a`), with a
//!   [`tcp::connector`](crate::tcp::connector) to its address.
//! - **Sessions.** The node lives as long as the ZooKeeper session that created it: the
//!   client library keeps the session alive with pings, and reconnects (to any server of
//!   the ensemble) when the connection breaks. [`Registration::deregister`] deletes the node
//!   at once: clients stop sending new calls to the server, and the calls they have in
//!   progress on it finish. Dropping the [`Registration`] closes the session, which deletes
//!   the node too. A server that crashes (or loses its network) stops pinging; ZooKeeper
//!   expires its session after the session timeout and deletes the node, and clients then
//!   drop the server. So the session timeout is how long a dead server may stay listed. If
//!   the session expires while the server lives (it was cut off for longer than the timeout,
//!   or ZooKeeper restarted without its data), a background task opens a new session and
//!   creates the node again as soon as it can.
//! - **Watching.** A client sets a persistent recursive watch on the path, then lists its
//!   children and reads their data: each created or changed child inserts (or updates) an
//!   endpoint, each deleted one removes one. While ZooKeeper is unreachable the client keeps
//!   balancing over the servers it knew; when the connection comes back it lists again (a
//!   persistent watch may miss events across a reconnection), and when its session is lost
//!   it opens a new one with backoff and lists again. Either way only what differs from what
//!   it had is changed.
//!
//! Server side, tied to graceful shutdown: the signal given to
//! [`Server::serve_with_shutdown`](rpc_core::Server::serve_with_shutdown) first deregisters
//! (so clients stop sending new calls), then the server stops accepting and lets the calls
//! in progress finish. [`Registration::deregister_on`] builds that signal:
//!
//! ```no_run
//! use rpc_core::{service, Server};
//! use rpc_transport::zookeeper;
//!
//! #[service]
//! pub trait Inventory {
//!     #[rpc(idempotent)]
//!     async fn stock(&self, item: String) -> u32;
//! }
//!
//! struct Shelf;
//! impl Inventory for Shelf {
//!     async fn stock(&self, _item: String) -> u32 { 7 }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = rpc_transport::tcp::bind("0.0.0.0:4000").await?;
//! let registration = zookeeper::register(
//!     ["10.0.0.10:2181"],          // ZooKeeper
//!     "/services/inventory",       // path
//!     "inventory-1",               // this server's name, unique within the path
//!     "10.0.0.1:4000",             // the address clients connect to
//! )
//! .await?;
//! let ctrl_c = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! Server::new()
//!     .add_service(InventoryServer::new(Shelf))
//!     // On Ctrl-C: deregister, then stop accepting and finish the calls in progress.
//!     .serve_with_shutdown(listener, registration.deregister_on(ctrl_c))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Client side:
//!
//! ```no_run
//! # use rpc_core::service;
//! # #[service]
//! # pub trait Inventory {
//! #     #[rpc(idempotent)]
//! #     async fn stock(&self, item: String) -> u32;
//! # }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = InventoryClient::builder()
//!     .discover(rpc_transport::zookeeper::watch(["10.0.0.10:2181"], "/services/inventory"));
//! let units = client.stock("apples".into()).await?;
//! # Ok(()) }
//! ```
//!
//! Connections to ZooKeeper are plain TCP (no TLS, no SASL) for now; nodes are created with
//! the open ACL (anyone may read and write them). It needs ZooKeeper 3.6 or later (for
//! persistent watches). What happens is logged with [`tracing`](https://docs.rs/tracing):
//! registrations and lost sessions at `info`, failures at `warn`, each endpoint change at
//! `debug`.

use std::fmt;
use std::io;
use std::time::Duration;

use zookeeper_client::{Client, Error as ZkClientError};

// The data format, shared with the etcd registry.
use crate::registry::Entry;

mod discovery;
mod registration;

pub use discovery::{watch, ZkDiscovery, ZkWatch};
pub use registration::{register, Registration, ZkRegistrar};

/// Default time allowed for one request to ZooKeeper (opening a session included).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default session timeout asked of ZooKeeper (which bounds it by its `minSessionTimeout` and
/// `maxSessionTimeout`, by default 2 and 20 times its tick time).
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Something failed talking to ZooKeeper: says what was being done, and why it failed.
///
/// Converts into an [`io::Error`] (with `?`) for code that returns `io::Result`.
#[derive(Debug)]
pub struct ZkError {
    action: String,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Zk(ZkClientError),
    TimedOut(Duration),
    /// The node's name is held by another live session.
    NameTaken,
    Invalid(String),
}

impl ZkError {
    fn zk(action: impl Into<String>, err: ZkClientError) -> ZkError {
        ZkError {
            action: action.into(),
            cause: Cause::Zk(err),
        }
    }

    fn timed_out(action: impl Into<String>, after: Duration) -> ZkError {
        ZkError {
            action: action.into(),
            cause: Cause::TimedOut(after),
        }
    }

    fn invalid(action: impl Into<String>, why: impl Into<String>) -> ZkError {
        ZkError {
            action: action.into(),
            cause: Cause::Invalid(why.into()),
        }
    }

    /// Whether the request got no answer in time (ZooKeeper down or unreachable, or without a
    /// quorum).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.cause,
            Cause::TimedOut(_)
                | Cause::Zk(ZkClientError::Timeout)
                | Cause::Zk(ZkClientError::NoHosts)
                | Cause::Zk(ZkClientError::ConnectionLoss)
        )
    }

    /// Whether registering failed because a live server holds the name already (its node
    /// exists, on another session).
    pub fn is_name_taken(&self) -> bool {
        matches!(self.cause, Cause::NameTaken)
    }

    /// Whether the arguments were refused before anything was sent (an empty name, a name
    /// with `/`, a path not starting with `/`, an address with spaces, no ZooKeeper server).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self.cause, Cause::Invalid(_))
    }
}

impl fmt::Display for ZkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Zk(ZkClientError::NoHosts | ZkClientError::Timeout) => write!(
                f,
                "{} failed: no ZooKeeper server answered; check that ZooKeeper is running and \
                 reachable at that address",
                self.action
            ),
            Cause::Zk(ZkClientError::NoAuth | ZkClientError::AuthFailed) => write!(
                f,
                "{} failed: ZooKeeper refused it (permission denied); check the ACL of the \
                 path's nodes, which must let anyone create and delete children",
                self.action
            ),
            Cause::Zk(err) => write!(
                f,
                "{} failed: {err}; check that ZooKeeper is running, reachable at that address, \
                 and has a quorum (its log says more)",
                self.action
            ),
            Cause::TimedOut(after) => write!(
                f,
                "{} failed: no answer within {after:?}; check that ZooKeeper is running, \
                 reachable at that address, and has a quorum",
                self.action
            ),
            Cause::NameTaken => write!(
                f,
                "{} failed: the node exists already, held by another live session: another \
                 server registered under this name. Give each server a name of its own; if it \
                 is this server's own earlier run that crashed, its node goes when ZooKeeper \
                 expires that session (within the session timeout), so try again then",
                self.action
            ),
            Cause::Invalid(why) => write!(f, "{} failed: {why}", self.action),
        }
    }
}

impl std::error::Error for ZkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Zk(err) => Some(err),
            Cause::TimedOut(_) | Cause::NameTaken | Cause::Invalid(_) => None,
        }
    }
}

impl From<ZkError> for io::Error {
    fn from(err: ZkError) -> io::Error {
        let kind = if err.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            match &err.cause {
                Cause::NameTaken => io::ErrorKind::AlreadyExists,
                Cause::Invalid(_) => io::ErrorKind::InvalidInput,
                Cause::Zk(_) | Cause::TimedOut(_) => io::ErrorKind::Other,
            }
        };
        io::Error::new(kind, err)
    }
}

/// Runs one request to ZooKeeper within `limit`, naming what it was doing if it fails.
async fn within<T>(
    limit: Duration,
    action: impl FnOnce() -> String,
    request: impl std::future::Future<Output = Result<T, ZkClientError>>,
) -> Result<T, ZkError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(ZkError::zk(action(), err)),
        Err(_) => Err(ZkError::timed_out(action(), limit)),
    }
}

/// Opens a new session with the ensemble at `servers` (`host:port` each).
async fn connect(
    servers: &[String],
    session_timeout: Duration,
    limit: Duration,
) -> Result<Client, ZkError> {
    if servers.is_empty() {
        return Err(ZkError::invalid(
            "connecting to ZooKeeper",
            "no ZooKeeper server was given; pass at least one `host:port`",
        ));
    }
    let connect_string = servers.join(",");
    // Fails eagerly (once every server was tried) rather than retrying for a whole session
    // timeout: the callers retry with their own backoff.
    let connector = Client::connector()
        .with_session_timeout(session_timeout)
        .with_fail_eagerly();
    within(
        limit,
        || format!("connecting to ZooKeeper at {connect_string}"),
        connector.connect(&connect_string),
    )
    .await
}

/// `path` without its trailing `/`s, checked to be absolute (ZooKeeper refuses the others).
fn dir(path: &str, action: impl FnOnce() -> String) -> Result<String, ZkError> {
    let trimmed = path.trim_end_matches('/');
    if !path.starts_with('/') {
        return Err(ZkError::invalid(
            action(),
            format!("the path `{path}` does not start with `/`; give an absolute path"),
        ));
    }
    Ok(trimmed.to_string())
}

/// The node of the child `name` of `dir` (`dir` as [`dir`] gives it: `""` for the root).
fn child(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_without_trailing_slash() {
        let action = || "test".to_string();
        assert_eq!(
            dir("/services/inventory", action).unwrap(),
            "/services/inventory"
        );
        assert_eq!(
            dir("/services/inventory/", action).unwrap(),
            "/services/inventory"
        );
        assert_eq!(dir("/", action).unwrap(), "");
        assert!(dir("services", action).unwrap_err().is_invalid_argument());
        assert_eq!(child("", "a"), "/a");
        assert_eq!(child("/s", "a"), "/s/a");
    }
}
