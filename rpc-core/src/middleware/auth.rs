//! Asynchronous authorization: a check that may wait (on a key service, a database) before
//! a call runs.

use std::fmt;
use std::future::Future;

use super::{Middleware, Next, Reply, ServerCall};
use crate::error::RpcError;

/// An authorization policy whose check is asynchronous; see [`authorize_with`].
pub struct AuthorizeWith<F>(F);

impl<F> fmt::Debug for AuthorizeWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizeWith")
    }
}

/// Authorizes each call with an asynchronous check, before its arguments are decoded:
/// `check(&call)` gives a future that resolves to `Ok(())` to let the call run, or to the
/// error to refuse it with ([`RpcError::unauthenticated`], [`RpcError::permission_denied`]).
/// The future owns what it needs: take the token out of the call's metadata before
/// `async move`.
///
/// [`Server::authorize`](crate::Server::authorize) is the synchronous form, checked
/// without an allocation per call; use this one when the check must wait.
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::Arc;
/// use rpc_core::middleware::authorize_with;
/// use rpc_core::{service, ErrorKind, RpcError, Server};
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
/// /// Stands for a key service reached over the network.
/// struct KeyService(HashSet<String>);
/// impl KeyService {
///     async fn is_valid(&self, token: &str) -> bool { self.0.contains(token) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = Arc::new(KeyService(HashSet::from(["let-me-in".to_string()])));
/// let auth = authorize_with(move |call| {
///     let token = call.metadata().get_str("authorization").map(str::to_owned);
///     let keys = Arc::clone(&keys);
///     async move {
///         let token = token.ok_or_else(|| RpcError::unauthenticated("send `authorization`"))?;
///         match keys.is_valid(&token).await {
///             true => Ok(()),
///             false => Err(RpcError::unauthenticated("this token is unknown or expired")),
///         }
///     }
/// });
/// let (client_end, server_end) = rpc_transport::memory::pair();
/// let server = Server::new().layer(auth).add_service(VaultServer::new(Secrets));
/// tokio::spawn(server.serve_connection(server_end));
/// let vault = VaultClient::new(client_end);
///
/// let err = vault.read("k".into()).metadata("authorization", "guess").await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unauthenticated);
/// let value = vault.read("k".into()).metadata("authorization", "let-me-in").await;
/// assert_eq!(value.as_deref(), Ok("value of k"));
/// # }
/// ```
pub fn authorize_with<F, Fut>(check: F) -> AuthorizeWith<F>
where
    F: Fn(&ServerCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
{
    AuthorizeWith(check)
}

impl<F, Fut> Middleware<ServerCall> for AuthorizeWith<F>
where
    F: Fn(&ServerCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
{
    async fn call(&self, call: ServerCall, next: Next<ServerCall>) -> Result<Reply, RpcError> {
        (self.0)(&call).await?;
        next.run(call).await
    }
}
