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
//! # TLS and authentication
//!
//! Production clusters serve clients over TLS, often require client certificates
//! (`--client-cert-auth`), and have authentication enabled. [`EtcdTls`] holds the CA that
//! signed etcd's certificate and, for `--client-cert-auth`, a client certificate and its
//! key; `.auth(user, password)` authenticates as an etcd user. [`EtcdRegistrar`] and
//! [`EtcdDiscovery`] take both, the same way:
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_transport::etcd::{EtcdDiscovery, EtcdRegistrar, EtcdTls};
//! # use rpc_core::service;
//! # #[service]
//! # pub trait Inventory {
//! #     async fn stock(&self, item: String) -> u32;
//! # }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = EtcdTls::new(std::fs::read_to_string("/etc/etcd/ca.pem")?).identity(
//!     std::fs::read_to_string("/etc/inventory/etcd-client.pem")?,
//!     std::fs::read_to_string("/etc/inventory/etcd-client-key.pem")?,
//! );
//!
//! // Server side: a user whose role may write keys under the prefix.
//! let registration = EtcdRegistrar::new(["10.0.0.10:2379"], "/services/inventory", "inventory-1", "10.0.0.1:4000")
//!     .tls(tls.clone())
//!     .auth("inventory-server", &std::env::var("ETCD_PASSWORD")?)
//!     .ttl(Duration::from_secs(10))
//!     .register()
//!     .await?;
//!
//! // Client side: a user whose role may read them is enough.
//! let etcd = EtcdDiscovery::new(["10.0.0.10:2379"], "/services/inventory")
//!     .tls(tls)
//!     .auth("inventory-client", &std::env::var("ETCD_CLIENT_PASSWORD")?);
//! let client = InventoryClient::builder().discover(etcd);
//! # Ok(()) }
//! ```
//!
//! - With TLS, endpoints given as `host:port` are reached as `https://host:port`, and etcd's
//!   certificate must name that host (or the name given by [`EtcdTls::domain_name`]). Only
//!   the CA given is trusted, not the system's.
//! - The user's role needs `readwrite` on the prefix to register and `read` to discover:
//!   `etcdctl role grant-permission inventory-server readwrite /services/inventory/ --prefix`.
//!   Without TLS, the password crosses the network in the clear.
//! - etcd's auth tokens expire (simple tokens after `--auth-token-ttl` unused, 5 minutes by
//!   default): a request refused for an expired token authenticates again and is retried, so
//!   long-lived registrations and watches go on; a failed keepalive or watch also reconnects,
//!   which authenticates afresh.
//! - Errors say what to do. [`EtcdError::is_tls`]: the handshake failed (etcd's certificate
//!   is not signed by the CA given, etcd requires a client certificate and none or an
//!   untrusted one was given, or one side speaks TLS and the other does not);
//!   [`EtcdError::is_unauthenticated`]: a wrong password, an unknown user, or no user for an
//!   etcd with authentication on; [`EtcdError::is_permission_denied`]: the user's role may
//!   not write (or read) the prefix, with the `etcdctl` command that grants it. Registering
//!   returns these errors; the background keepalive and discovery's watch log them (at
//!   `warn`) in the same words while they retry.
//!
//! Building this module needs `protoc`, the Protocol Buffers compiler (`apt-get install
//! protobuf-compiler` on Debian and Ubuntu), for the etcd client's generated gRPC code. TLS
//! is rustls with the `ring` provider (no `cmake` or `nasm` needed). What happens is logged
//! with [`tracing`](https://docs.rs/tracing): registrations and lost leases at `info`,
//! failures at `warn`, each endpoint change at `debug`.

use std::fmt;
use std::io;
use std::time::Duration;

// The entry format, shared with the ZooKeeper registry.
use crate::registry::Entry;

mod discovery;
mod registration;
mod security;

pub use discovery::{watch, EtcdDiscovery, EtcdWatch};
pub use registration::{register, EtcdRegistrar, Registration};
pub use security::EtcdTls;

use security::{tls_problem, Access, Connection, TlsProblem};

/// Default time allowed for one request to etcd (connecting included).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the connection to etcd, so a vanished etcd is noticed on a quiet watch.
/// (etcd refuses pings more often than every 5 s by default.)
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Something failed talking to etcd: says what was being done, why it failed, and what to
/// check.
///
/// Converts into an [`io::Error`] (with `?`) for code that returns `io::Result`.
#[derive(Debug)]
pub struct EtcdError {
    action: String,
    cause: Cause,
    /// Where the request went and as whom, for the words of TLS and authentication errors.
    /// `None` for errors made before there was a connection to speak of.
    target: Option<Box<Target>>,
}

/// What an error's text says about the connection it happened on.
#[derive(Debug, Clone)]
struct Target {
    endpoints: String,
    client_certificate: bool,
    user: Option<String>,
    dir: String,
    access: Access,
}

#[derive(Debug)]
enum Cause {
    Etcd(etcd_client::Error),
    /// The TLS handshake failed (the etcd error it came in, and what rustls said).
    Tls(etcd_client::Error, TlsProblem),
    /// etcd did not accept the user (wrong password, unknown user, or none given).
    Unauthenticated(etcd_client::Error),
    /// etcd has authentication disabled, but a user was given.
    AuthNotEnabled(etcd_client::Error),
    /// The user's roles do not allow the access.
    PermissionDenied(etcd_client::Error),
    TimedOut(Duration),
    /// etcd answered, but not what was asked for.
    Refused(String),
    Invalid(String),
}

/// etcd's words for a request without a user while authentication is enabled
/// (`rpctypes.ErrGRPCUserEmpty`, code InvalidArgument).
const USER_EMPTY: &str = "etcdserver: user name is empty";
/// A wrong password or an unknown user (`rpctypes.ErrGRPCAuthFailed`, code InvalidArgument).
const AUTH_FAILED: &str = "etcdserver: authentication failed";
/// A token that expired or is unknown (`rpctypes.ErrGRPCInvalidAuthToken`).
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
/// `rpctypes.ErrGRPCAuthNotEnabled`.
const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

impl EtcdError {
    /// Sorts etcd-client's error into what it means for whoever reads it: etcd's status
    /// codes are not enough, as it reports a wrong password with `InvalidArgument`.
    fn etcd(action: impl Into<String>, err: etcd_client::Error) -> EtcdError {
        let cause = if let etcd_client::Error::GRpcStatus(status) = &err {
            let message = status.message();
            match status.code() {
                tonic::Code::PermissionDenied => Cause::PermissionDenied(err),
                tonic::Code::Unauthenticated => Cause::Unauthenticated(err),
                _ if message.starts_with(USER_EMPTY)
                    || message.starts_with(AUTH_FAILED)
                    || message.starts_with(INVALID_TOKEN) =>
                {
                    Cause::Unauthenticated(err)
                }
                _ if message.starts_with(AUTH_NOT_ENABLED) => Cause::AuthNotEnabled(err),
                _ => match tls_problem(status) {
                    Some(problem) => Cause::Tls(err, problem),
                    None => Cause::Etcd(err),
                },
            }
        } else {
            match tls_problem(&err) {
                Some(problem) => Cause::Tls(err, problem),
                None => Cause::Etcd(err),
            }
        };
        EtcdError {
            action: action.into(),
            cause,
            target: None,
        }
    }

    fn timed_out(action: impl Into<String>, after: Duration) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::TimedOut(after),
            target: None,
        }
    }

    fn refused(action: impl Into<String>, why: impl Into<String>) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::Refused(why.into()),
            target: None,
        }
    }

    fn invalid(action: impl Into<String>, why: impl Into<String>) -> EtcdError {
        EtcdError {
            action: action.into(),
            cause: Cause::Invalid(why.into()),
            target: None,
        }
    }

    /// Notes where the request went, for the error's words.
    fn on(mut self, connection: &Connection) -> EtcdError {
        self.target = Some(Box::new(Target {
            endpoints: connection.endpoints.join(", "),
            client_certificate: connection.tls.as_ref().is_some_and(EtcdTls::has_identity),
            user: connection.user().map(str::to_string),
            dir: connection.dir.clone(),
            access: connection.access,
        }));
        self
    }

    /// Whether the request got no answer in time (etcd down, unreachable, or without a
    /// leader).
    pub fn is_timeout(&self) -> bool {
        matches!(self.cause, Cause::TimedOut(_))
    }

    /// Whether the arguments were refused before anything was sent (an empty name, an address
    /// with spaces, no etcd endpoint, a zero TTL, an `http://` endpoint with TLS settings).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self.cause, Cause::Invalid(_))
    }

    /// Whether the TLS handshake with etcd failed: etcd's certificate is not signed by the CA
    /// given (or does not name its host), etcd wants a client certificate and got none (or
    /// one it does not trust), or etcd does not speak TLS at all.
    pub fn is_tls(&self) -> bool {
        matches!(self.cause, Cause::Tls(..))
    }

    /// Whether etcd did not accept the user: a wrong password, an unknown user, no user given
    /// while etcd has authentication enabled, or a user given while it has it disabled.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self.cause,
            Cause::Unauthenticated(_) | Cause::AuthNotEnabled(_)
        )
    }

    /// Whether the user's roles do not allow what was asked: writing keys under the prefix
    /// (registration) or reading them (discovery).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self.cause, Cause::PermissionDenied(_))
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = &self.action;
        let target = self.target.as_deref();
        let at = target.map_or("that address", |t| t.endpoints.as_str());
        let user = target.and_then(|t| t.user.as_deref());
        match &self.cause {
            Cause::Etcd(err) => write!(
                f,
                "{action} failed: {err}; check that etcd is running and reachable at {at}"
            ),
            Cause::Tls(_, problem) => {
                write!(
                    f,
                    "{action} failed: the TLS handshake with etcd at {at} failed: "
                )?;
                match problem {
                    TlsProblem::UnknownCa(why) => write!(
                        f,
                        "its certificate is not signed by the CA given ({why}); give the CA \
                         that signed etcd's certificate (the issuer of its --cert-file)"
                    ),
                    TlsProblem::WrongName(why) => write!(
                        f,
                        "its certificate is not for the host connected to ({why}); connect by a \
                         name or address its certificate lists, or name one with \
                         `EtcdTls::domain_name`"
                    ),
                    TlsProblem::BadServerCertificate(why) => write!(
                        f,
                        "its certificate was refused ({why}); check that it is valid now"
                    ),
                    TlsProblem::ClientCertificate(why)
                        if target.is_some_and(|t| t.client_certificate) =>
                    {
                        write!(
                            f,
                            "etcd refused our client certificate ({why}); give one signed by \
                             the CA in etcd's --trusted-ca-file, for client authentication"
                        )
                    }
                    TlsProblem::ClientCertificate(why) => write!(
                        f,
                        "etcd requires a client certificate and none was given ({why}); it runs \
                         with --client-cert-auth: give one signed by the CA in its \
                         --trusted-ca-file with `EtcdTls::identity`"
                    ),
                    TlsProblem::NotTls(why) => write!(
                        f,
                        "etcd does not answer in TLS ({why}), as an etcd serving plain text \
                         does: drop the TLS settings, or start etcd with --cert-file and \
                         --key-file"
                    ),
                    TlsProblem::PlainToTls => write!(
                        f,
                        "etcd closed the connection at once, as an etcd serving TLS does to a \
                         plain-text client; if it runs with --cert-file, give the CA that \
                         signed its certificate with `.tls(EtcdTls::new(ca_pem))`"
                    ),
                    TlsProblem::Other(why) => write!(f, "{why}"),
                }
            }
            Cause::Unauthenticated(err) => match user {
                // etcd-client authenticates again on an expired token; this is what is left
                // when that did not help either.
                Some(user) if is_invalid_token(err) => write!(
                    f,
                    "{action} failed: etcd at {at} no longer accepts user `{user}`'s auth token \
                     ({err}), and authenticating again did not help; check etcd's \
                     --auth-token settings and its logs"
                ),
                Some(user) => write!(
                    f,
                    "{action} failed: etcd at {at} refused user `{user}`'s password, or has no \
                     such user ({err}); check the user name and password (`etcdctl user get \
                     {user}`)"
                ),
                None => write!(
                    f,
                    "{action} failed: etcd at {at} has authentication enabled and no user was \
                     given ({err}); give one with `.auth(user, password)`"
                ),
            },
            Cause::AuthNotEnabled(err) => write!(
                f,
                "{action} failed: etcd at {at} has authentication disabled, yet user `{}` was \
                 given ({err}); drop `.auth(…)`, or enable authentication in etcd (`etcdctl \
                 auth enable`)",
                user.unwrap_or("?")
            ),
            Cause::PermissionDenied(err) => {
                let (verb, grant) = match target.map(|t| t.access) {
                    Some(Access::Read) => ("read", "read"),
                    _ => ("write", "readwrite"),
                };
                let dir = target.map_or("the prefix", |t| t.dir.as_str());
                write!(
                    f,
                    "{action} failed: user `{}` may not {verb} keys under `{dir}` ({err}); grant \
                     its role {grant} on the prefix: `etcdctl role grant-permission <role> \
                     {grant} {dir} --prefix`",
                    user.unwrap_or("(none)")
                )
            }
            Cause::TimedOut(after) => write!(
                f,
                "{action} failed: no answer within {after:?}; check that etcd is running, \
                 reachable at {at}, and has a leader"
            ),
            Cause::Refused(why) => {
                write!(f, "{action} failed: {why}; check etcd's health and logs")
            }
            Cause::Invalid(why) => write!(f, "{action} failed: {why}"),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Etcd(err)
            | Cause::Tls(err, _)
            | Cause::Unauthenticated(err)
            | Cause::AuthNotEnabled(err)
            | Cause::PermissionDenied(err) => Some(err),
            Cause::TimedOut(_) | Cause::Refused(_) | Cause::Invalid(_) => None,
        }
    }
}

impl From<EtcdError> for io::Error {
    fn from(err: EtcdError) -> io::Error {
        let kind = match &err.cause {
            Cause::Etcd(_) | Cause::Refused(_) | Cause::Tls(..) => io::ErrorKind::Other,
            Cause::Unauthenticated(_) | Cause::AuthNotEnabled(_) | Cause::PermissionDenied(_) => {
                io::ErrorKind::PermissionDenied
            }
            Cause::TimedOut(_) => io::ErrorKind::TimedOut,
            Cause::Invalid(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

/// Whether etcd refused the token it was sent (expired, or forgotten by a restart).
fn is_invalid_token(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status) if status.message().starts_with(INVALID_TOKEN))
}

/// Whether etcd closed the connection before answering: what a plain-text HTTP/2 client gets
/// from an etcd speaking TLS (which takes the client's preface for a broken TLS record, and
/// hangs up or answers with an HTTP/1 `400`, a broken frame to HTTP/2), and a TLS client
/// without an acceptable certificate from an etcd with `--client-cert-auth`; also what a
/// crashing etcd gives, which is why [`Connection::diagnose`] looks closer.
fn hung_up(err: &etcd_client::Error) -> bool {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(err) = source {
        text += &format!(": {err}");
        source = err.source();
    }
    let text = text.to_ascii_lowercase();
    [
        "frame with invalid size",
        "connection closed",
        "broken pipe",
        "connection reset",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// Runs one request to etcd within the connection's request timeout, naming what it was
/// doing if it fails.
async fn within<T>(
    connection: &Connection,
    action: impl FnOnce() -> String,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    let result = attempt(connection, action, request).await;
    if result.is_ok() {
        connection.worked();
    }
    result
}

/// [`within`], without noting a success: for making a client, which may send nothing.
async fn attempt<T>(
    connection: &Connection,
    action: impl FnOnce() -> String,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    let limit = connection.request_timeout;
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            let mut error = EtcdError::etcd(action(), err);
            // Only while these settings have never worked: once they have, a hang-up is etcd
            // going away (a restart, a crash), and looking closer would only delay the retry.
            if matches!(&error.cause, Cause::Etcd(err) if hung_up(err)) && !connection.has_worked()
            {
                if let Some(problem) = connection.diagnose().await {
                    error.cause = match error.cause {
                        Cause::Etcd(err) => Cause::Tls(err, problem),
                        other => other,
                    };
                }
            }
            Err(error.on(connection))
        }
        Err(_) => Err(EtcdError::timed_out(action(), limit).on(connection)),
    }
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
