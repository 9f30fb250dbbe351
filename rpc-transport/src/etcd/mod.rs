//! Service discovery through [etcd](https://etcd.io) (cargo feature `etcd`).
//!
//! Servers announce themselves under a key prefix with [`register`]; clients follow that
//! prefix with [`watch`] and balance their calls over whatever is announced there.
//!
//! - **Keys.** A server named `name` registers under `{prefix}/{name}`, e.g.
//!   `/services/inventory/a` for the prefix `/services/inventory` (a trailing `/` on the
//!   prefix is ignored). Names must be unique within a prefix: a second server registering
//!   under the same name replaces the first one's entry.
//! - **Values.** The value is plain text: the address clients connect to over TCP
//!   (`host:port`), optionally followed by whitespace and a weight (a `u32`, default 1) for
//!   the [`Weighted`](rpc_core::balance::Weighted) and
//!   [`ConsistentHash`](rpc_core::balance::ConsistentHash) strategies, then optionally
//!   `key=value` words that become the endpoint's metadata (its zone, for zone-aware
//!   clients: `zone=eu-west-1a`): `10.0.0.7:4000`, `10.0.0.7:4000 3` or
//!   `10.0.0.7:4000 1 zone=eu-west-1a`. A value that is not of this form is logged and
//!   ignored (as if the key did not exist), so anything else stored under the prefix does no
//!   harm. (Clients of earlier versions ignore a value with metadata in this way.)
//! - **Endpoint keys.** Each server becomes one
//!   [`Endpoint`](rpc_core::balance::Endpoint) whose key is its full etcd key
//!   (`/services/inventory/a`), with a [`tcp::connector`](crate::tcp::connector) to its
//!   address.
//! - **Leases.** The key is attached to a lease of the registration's TTL, which a background
//!   task keeps alive (refreshing it every third of the TTL). [`Registration::deregister`]
//!   revokes the lease, which deletes the key at once: clients stop sending new calls to the
//!   server, and the calls they have in progress on it finish. A server that crashes (or
//!   drops its [`Registration`], or loses its network) stops refreshing the lease; etcd
//!   deletes the key when the TTL runs out, and clients then drop the server. So the TTL is
//!   how long a dead server may stay listed: a few seconds is usual. If the lease is lost
//!   while the server lives (etcd lost its data, or the server was cut off for longer than
//!   the TTL), the background task registers again with a new lease as soon as it can.
//! - **Watching.** A client lists the prefix, then watches it from the revision it listed:
//!   each put under the prefix inserts (or updates) an endpoint, each delete (a revoke, an
//!   expired lease, an `etcdctl del`) removes one. When the watch or the connection to etcd
//!   fails, it reconnects with backoff and lists again, and only what differs from what it
//!   had is changed: while etcd is unreachable, the client keeps balancing over the servers
//!   it knew.
//!
//! Server side, tied to graceful shutdown: the signal given to
//! [`Server::serve_with_shutdown`](rpc_core::Server::serve_with_shutdown) first deregisters
//! (so clients stop sending new calls), then the server stops accepting and lets the calls
//! in progress finish. [`Registration::deregister_on`] builds that signal:
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_core::{service, Server};
//! use rpc_transport::etcd;
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
//! let registration = etcd::register(
//!     ["10.0.0.10:2379"],          // etcd
//!     "/services/inventory",       // prefix
//!     "inventory-1",               // this server's name, unique within the prefix
//!     "10.0.0.1:4000",             // the address clients connect to
//!     Duration::from_secs(10),     // lease TTL
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
//!     .discover(rpc_transport::etcd::watch(["10.0.0.10:2379"], "/services/inventory"));
//! let units = client.stock("apples".into()).await?;
//! # Ok(()) }
//! ```
//!
//! Building this module needs `protoc`, the Protocol Buffers compiler (`apt-get install
//! protobuf-compiler` on Debian and Ubuntu), for the etcd client's generated gRPC code.
//! Connections to etcd are plain HTTP/2 (no TLS, no authentication) for now. What happens is
//! logged with [`tracing`](https://docs.rs/tracing): registrations and lost leases at `info`,
//! failures at `warn`, each endpoint change at `debug`.

use std::fmt;
use std::io;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

// The entry format, shared with the ZooKeeper registry.
use crate::registry::Entry;

mod discovery;
mod registration;

pub use discovery::{watch, EtcdDiscovery, EtcdWatch};
pub use registration::{register, EtcdRegistrar, Registration};

/// Default time allowed for one request to etcd (connecting included).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the connection to etcd, so a vanished etcd is noticed on a quiet watch.
/// (etcd refuses pings more often than every 5 s by default.)
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Something failed talking to etcd: says what was being done, and why it failed.
///
/// Converts into an [`io::Error`] (with `?`) for code that returns `io::Result`.
#[derive(Debug)]
pub struct EtcdError {
    action: String,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Etcd(etcd_client::Error),
    TimedOut(Duration),
    /// etcd answered, but not what was asked for.
    Refused(String),
    Invalid(String),
}

impl EtcdError {
    fn etcd(action: impl Into<String>, err: etcd_client::Error) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::Etcd(err),
        }
    }

    fn timed_out(action: impl Into<String>, after: Duration) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::TimedOut(after),
        }
    }

    fn refused(action: impl Into<String>, why: impl Into<String>) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::Refused(why.into()),
        }
    }

    fn invalid(action: impl Into<String>, why: impl Into<String>) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::Invalid(why.into()),
        }
    }

    /// Whether the request got no answer in time (etcd down, unreachable, or without a
    /// leader).
    pub fn is_timeout(&self) -> bool {
        matches!(self.cause, Cause::TimedOut(_))
    }

    /// Whether the arguments were refused before anything was sent (an empty name, an address
    /// with spaces, no etcd endpoint, a zero TTL).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self.cause, Cause::Invalid(_))
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Etcd(err) => write!(
                f,
                "{} failed: {err}; check that etcd is running and reachable at that address",
                self.action
            ),
            Cause::TimedOut(after) => write!(
                f,
                "{} failed: no answer within {after:?}; check that etcd is running, reachable \
                 at that address, and has a leader",
                self.action
            ),
            Cause::Refused(why) => write!(
                f,
                "{} failed: {why}; check etcd's health and logs",
                self.action
            ),
            Cause::Invalid(why) => write!(f, "{} failed: {why}", self.action),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Etcd(err) => Some(err),
            Cause::TimedOut(_) | Cause::Refused(_) | Cause::Invalid(_) => None,
        }
    }
}

impl From<EtcdError> for io::Error {
    fn from(err: EtcdError) -> io::Error {
        let kind = match &err.cause {
            Cause::Etcd(_) | Cause::Refused(_) => io::ErrorKind::Other,
            Cause::TimedOut(_) => io::ErrorKind::TimedOut,
            Cause::Invalid(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

/// Runs one request to etcd within `limit`, naming what it was doing if it fails.
async fn within<T>(
    limit: Duration,
    action: impl FnOnce() -> String,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(EtcdError::etcd(action(), err)),
        Err(_) => Err(EtcdError::timed_out(action(), limit)),
    }
}

/// A client for the etcd cluster at `endpoints`. (The connection itself is made on the first
/// request, and remade by the client when lost.)
async fn connect(endpoints: &[String], limit: Duration) -> Result<Client, EtcdError> {
    if endpoints.is_empty() {
        return Err(EtcdError::invalid(
            "connecting to etcd",
            "no etcd endpoint was given; pass at least one `host:port`",
        ));
    }
    let options = ConnectOptions::new()
        .with_connect_timeout(limit)
        .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
        .with_require_leader(true);
    within(
        limit,
        || format!("connecting to etcd at {}", endpoints.join(", ")),
        Client::connect(endpoints, Some(options)),
    )
    .await
}

/// The key prefix everything of `prefix` lives under: `prefix` with exactly one trailing `/`.
fn dir(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_in_one_slash() {
        assert_eq!(dir("/services/inventory"), "/services/inventory/");
        assert_eq!(dir("/services/inventory/"), "/services/inventory/");
        assert_eq!(dir(""), "/");
    }
}
