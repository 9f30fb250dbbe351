//! The server's authorization hook: who may connect, and who may make which call.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::context::Metadata;
use crate::descriptor::MethodInfo;
use crate::error::{ErrorKind, RpcError};
use crate::peer::Peer;

/// Decides which connections and calls a [`Server`](crate::Server) accepts; install it with
/// [`Server::authorize`](crate::Server::authorize).
///
/// [`connection`](Authorize::connection) runs once per connection, after its `Hello`, and
/// sees the peer (its address and any identity the transport verified, such as a TLS client
/// certificate) and the service it asked for. [`call`](Authorize::call) runs before every
/// call's arguments are decoded and sees the method and the call's metadata (a bearer
/// token, say). Returning an error refuses: a refused connection is closed with a `Goodbye`
/// and every call on it fails with the error; a refused call fails with it and never
/// reaches the handler. Return [`RpcError::unauthenticated`] when the caller did not prove
/// who it is and [`RpcError::permission_denied`] when it did and is not allowed; the
/// message reaches the caller, so say what is missing, not what the secret should be.
///
/// Both run on the connection's task, so they must not block: check a token against keys
/// held in memory, and refresh those keys in a task of your own. A hook that panics refuses
/// with `Internal`. The [health check](crate::health) goes through the hook too: let
/// `rpc.Health` through if probes carry no credentials.
///
/// A closure `Fn(&CallInfo) -> Result<(), RpcError>` is an `Authorize` that checks calls:
///
/// ```
/// use rpc_core::{service, CallInfo, ErrorKind, RpcError, Server};
///
/// #[service]
/// pub trait Vault {
///     async fn read(&self, key: String) -> String;
/// }
/// struct Secrets;
/// impl Vault for Secrets {
///     async fn read(&self, key: String) -> String { format!("value of {key}") }
/// }
///
/// fn check(call: &CallInfo<'_>) -> Result<(), RpcError> {
///     match call.metadata().get_str("authorization") {
///         Some("Bearer let-me-in") => Ok(()),
///         Some(_) => Err(RpcError::permission_denied("this token may not read the vault")),
///         None => Err(RpcError::unauthenticated("send `authorization: Bearer <token>`")),
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (client_end, server_end) = rpc_transport::memory::pair();
/// let server = Server::new().authorize(check).add_service(VaultServer::new(Secrets));
/// tokio::spawn(server.serve_connection(server_end));
/// let vault = VaultClient::new(client_end);
///
/// let err = vault.read("k".into()).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unauthenticated);
/// let value = vault.read("k".into()).metadata("authorization", "Bearer let-me-in").await;
/// assert_eq!(value.as_deref(), Ok("value of k"));
/// # }
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// Accepts or refuses a connection, once its `Hello` has named the service. The
    /// default accepts every connection.
    fn connection(&self, connection: &ConnectionInfo<'_>) -> Result<(), RpcError> {
        let _ = connection;
        Ok(())
    }

    /// Accepts or refuses one call, before its arguments are decoded. The default accepts
    /// every call.
    fn call(&self, call: &CallInfo<'_>) -> Result<(), RpcError> {
        let _ = call;
        Ok(())
    }
}

impl<F> Authorize for F
where
    F: Fn(&CallInfo<'_>) -> Result<(), RpcError> + Send + Sync + 'static,
{
    fn call(&self, call: &CallInfo<'_>) -> Result<(), RpcError> {
        self(call)
    }
}

/// A new connection, as [`Authorize::connection`] sees it.
#[derive(Debug)]
pub struct ConnectionInfo<'a> {
    pub(crate) peer: &'a Peer,
    pub(crate) service: &'static str,
}

impl<'a> ConnectionInfo<'a> {
    /// Who connected: address, IP and verified identity, as far as the listener knows.
    pub fn peer(&self) -> &'a Peer {
        self.peer
    }

    /// The wire name of the service its `Hello` asked for.
    pub fn service(&self) -> &'static str {
        self.service
    }
}

/// A call, as [`Authorize::call`] sees it.
#[derive(Debug)]
pub struct CallInfo<'a> {
    pub(crate) peer: &'a Peer,
    pub(crate) service: &'static str,
    pub(crate) method: &'static MethodInfo,
    pub(crate) metadata: &'a Metadata,
}

impl<'a> CallInfo<'a> {
    /// Who makes the call: the connection's peer.
    pub fn peer(&self) -> &'a Peer {
        self.peer
    }

    /// The wire name of the service.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The method's name, as written in the trait.
    pub fn method(&self) -> &'static str {
        self.method.name
    }

    /// Everything known about the method (whether it is idempotent, streams, ...).
    pub fn method_info(&self) -> &'static MethodInfo {
        self.method
    }

    /// The metadata the caller sent with the call (per-client and per-call pairs).
    pub fn metadata(&self) -> &'a Metadata {
        self.metadata
    }
}

/// Asks `auth` about a connection; a hook that panics refuses it with `Internal`.
pub(crate) fn check_connection(
    auth: &dyn Authorize,
    peer: &Peer,
    service: &'static str,
) -> Result<(), RpcError> {
    let info = ConnectionInfo { peer, service };
    guarded(|| auth.connection(&info), "a connection")
}

/// Asks `auth` about one call; a hook that panics refuses it with `Internal`. Out of line:
/// servers without a hook never come here.
#[inline(never)]
pub(crate) fn check_call(
    auth: &dyn Authorize,
    peer: Option<&Peer>,
    service: &'static str,
    method: &'static MethodInfo,
    metadata: &Metadata,
) -> Result<(), RpcError> {
    static UNKNOWN: Peer = Peer::unknown();
    let info = CallInfo {
        peer: peer.unwrap_or(&UNKNOWN),
        service,
        method,
        metadata,
    };
    guarded(
        || auth.call(&info),
        format_args!("a call of `{}`", method.name),
    )
}

/// Runs a hook, turning its panic into a refusal that names what it was asked about.
fn guarded(
    hook: impl FnOnce() -> Result<(), RpcError>,
    about: impl std::fmt::Display,
) -> Result<(), RpcError> {
    catch_unwind(AssertUnwindSafe(hook)).unwrap_or_else(|_| {
        Err(RpcError::new(
            ErrorKind::Internal,
            format!("the server's authorization hook panicked on {about}"),
        ))
    })
}
