//! Middleware: async policy around every call, on servers and on clients.
//!
//! A [`Middleware`] runs around each call. It sees the service, the method, the peer (on a
//! server), the metadata and the deadline; it may refuse the call (return an error), answer
//! it without running it ([`Reply::encode`]), add metadata, or call
//! [`next.run(call)`](Next::run) and look at the outcome. Middleware stack in the order they
//! are added: the first added runs first and sees the outcome last.
//!
//! The same trait serves both sides, over the call type of each: [`ServerCall`] (install
//! with [`Server::layer`](crate::Server::layer), [`Server::layer_for`](crate::Server::layer_for)
//! for one service or [`Server::layer_for_method`](crate::Server::layer_for_method) for one
//! method) and [`ClientCall`] (install with [`Client::layer`](crate::Client::layer) or
//! [`ClientBuilder::layer`](crate::ClientBuilder::layer)). A closure is a middleware through
//! [`from_fn`]. Ready-made policies: [`RateLimit`](crate::governance::RateLimit),
//! [`AdaptiveConcurrency`](crate::governance::AdaptiveConcurrency) and
//! [`authorize_with`] (an asynchronous authorization check).
//!
//! With no middleware installed a call takes the same path as before, at no cost; with
//! some, each call's middleware chain is one boxed future per middleware.
//!
//! ```
//! use rpc_core::middleware::{from_fn, Next, ServerCall};
//! use rpc_core::{service, ErrorKind, RpcError, Server};
//!
//! #[service]
//! pub trait Echo {
//!     async fn echo(&self, text: String) -> String;
//! }
//! struct Parrot;
//! impl Echo for Parrot {
//!     async fn echo(&self, text: String) -> String {
//!         let tenant = rpc_core::context::metadata().get_str("tenant").map(str::to_owned);
//!         format!("{text} (for {})", tenant.unwrap_or_default())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Refuses calls without a tenant, and tells the handler who it is.
//! let tenants = from_fn(|mut call: ServerCall, next: Next<ServerCall>| async move {
//!     let Some(tenant) = call.metadata().get_str("x-api-key").map(|key| key.replace("key-", ""))
//!     else {
//!         return Err(RpcError::unauthenticated("send an `x-api-key`"));
//!     };
//!     call.metadata_mut().insert("tenant", tenant);
//!     next.run(call).await
//! });
//! let (client_end, server_end) = rpc_transport::memory::pair();
//! tokio::spawn(Server::new().layer(tenants).add_service(EchoServer::new(Parrot)).serve_connection(server_end));
//! let client = EchoClient::new(client_end);
//!
//! let err = client.echo("hi".into()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Unauthenticated);
//! let reply = client.echo("hi".into()).metadata("x-api-key", "key-acme").await;
//! assert_eq!(reply.as_deref(), Ok("hi (for acme)"));
//! # }
//! ```

mod auth;
mod call;
pub(crate) mod reply;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

pub use auth::{authorize_with, AuthorizeWith};
pub use call::{ClientCall, ServerCall};
pub use reply::Reply;

use crate::boxed::BoxFuture;
use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;

/// Policy that runs around each call; see the [module docs](self).
///
/// `C` is the call it sees: [`ServerCall`] on a server, [`ClientCall`] on a client. A
/// middleware may be written as an `async fn` in its `impl`:
///
/// ```
/// use rpc_core::middleware::{Middleware, Next, Reply, ServerCall};
/// use rpc_core::RpcError;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// Counts the calls that failed.
/// #[derive(Default)]
/// struct CountFailures(AtomicU64);
///
/// impl Middleware<ServerCall> for CountFailures {
///     async fn call(&self, call: ServerCall, next: Next<ServerCall>) -> Result<Reply, RpcError> {
///         let outcome = next.run(call).await;
///         if outcome.is_err() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///         outcome
///     }
/// }
/// ```
pub trait Middleware<C: MiddlewareCall>: Send + Sync + 'static {
    /// Handles one call: refuse it (`Err`), answer it ([`Reply::encode`]), or pass it on
    /// with [`next.run(call)`](Next::run) and return (or change) what that gives.
    fn call(&self, call: C, next: Next<C>) -> impl Future<Output = Result<Reply, RpcError>> + Send;
}

/// A middleware made from a closure; see [`from_fn`].
#[derive(Clone)]
pub struct FromFn<F>(F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

/// A middleware from a closure `Fn(C, Next<C>) -> impl Future<Output = Result<Reply,
/// RpcError>>`; annotate the closure's arguments (`|call: ServerCall, next:
/// Next<ServerCall>|`) so the compiler knows which side it is for. The closure's future
/// owns what it uses: clone what it needs from the closure's captures before `async move`.
pub fn from_fn<C, F, Fut>(f: F) -> FromFn<F>
where
    C: MiddlewareCall,
    F: Fn(C, Next<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, RpcError>> + Send + 'static,
{
    FromFn(f)
}

impl<C, F, Fut> Middleware<C> for FromFn<F>
where
    C: MiddlewareCall,
    F: Fn(C, Next<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, RpcError>> + Send + 'static,
{
    fn call(&self, call: C, next: Next<C>) -> impl Future<Output = Result<Reply, RpcError>> + Send {
        (self.0)(call, next)
    }
}

/// A middleware with its type erased, so one stack holds several kinds.
trait Erased<C>: Send + Sync + 'static {
    fn call_boxed<'a>(
        &'a self,
        call: C,
        next: Next<C>,
    ) -> futures::future::BoxFuture<'a, Result<Reply, RpcError>>;
}

impl<C: MiddlewareCall, M: Middleware<C>> Erased<C> for M {
    fn call_boxed<'a>(
        &'a self,
        call: C,
        next: Next<C>,
    ) -> futures::future::BoxFuture<'a, Result<Reply, RpcError>> {
        Box::pin(self.call(call, next))
    }
}

/// Which calls an entry of a stack applies to.
#[derive(Clone, Debug)]
pub(crate) enum Scope {
    /// Every call.
    All,
    /// The calls of the service with this wire name.
    Service(&'static str),
    /// The calls of one method (service wire name, method name).
    Method(&'static str, &'static str),
}

impl Scope {
    /// The scope of the method named `method` of `service`, for `what` (the builder method
    /// being called).
    ///
    /// # Panics
    /// If the service has no such method: a typo would otherwise leave the method without
    /// its policy.
    pub(crate) fn method(what: &str, service: &'static ServiceDescriptor, method: &str) -> Scope {
        match service.methods.iter().find(|m| m.name == method) {
            Some(info) => Scope::Method(service.name, info.name),
            None => {
                let names: Vec<&str> = service.methods.iter().map(|m| m.name).collect();
                panic!(
                    "{what}: `{}` has no method `{method}`; its methods are {}",
                    service.name,
                    names.join(", ")
                );
            }
        }
    }

    fn covers_service(&self, service: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Service(name) | Scope::Method(name, _) => *name == service,
        }
    }
}

/// One installed middleware and where it applies.
struct Entry<C> {
    scope: Scope,
    middleware: Arc<dyn Erased<C>>,
}

impl<C> Clone for Entry<C> {
    fn clone(&self) -> Self {
        Entry {
            scope: self.scope.clone(),
            middleware: Arc::clone(&self.middleware),
        }
    }
}

/// An ordered list of middleware, as configured (a server's or a client's).
pub(crate) struct Layers<C> {
    entries: Vec<Entry<C>>,
}

impl<C> Default for Layers<C> {
    fn default() -> Self {
        Layers {
            entries: Vec::new(),
        }
    }
}

impl<C> Clone for Layers<C> {
    fn clone(&self) -> Self {
        Layers {
            entries: self.entries.clone(),
        }
    }
}

impl<C: MiddlewareCall> Layers<C> {
    pub(crate) fn push(&mut self, scope: Scope, middleware: impl Middleware<C>) {
        self.entries.push(Entry {
            scope,
            middleware: Arc::new(middleware),
        });
    }

    /// The stack one service's calls run through; `None` when nothing applies to it, so
    /// that its calls take the plain path.
    pub(crate) fn for_service(&self, service: &str) -> Option<Stack<C>> {
        let entries: Vec<_> = self
            .entries
            .iter()
            .filter(|entry| entry.scope.covers_service(service))
            .cloned()
            .collect();
        (!entries.is_empty()).then(|| Stack(entries.into()))
    }
}

impl<C> fmt::Debug for Layers<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|entry| &entry.scope))
            .finish()
    }
}

/// The middleware a service's calls run through, in order.
pub(crate) struct Stack<C>(Arc<[Entry<C>]>);

impl<C> Clone for Stack<C> {
    fn clone(&self) -> Self {
        Stack(Arc::clone(&self.0))
    }
}

impl<C> fmt::Debug for Stack<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stack({} middleware)", self.0.len())
    }
}

/// What runs the call itself once every middleware has passed it on.
pub(crate) type Endpoint<C> = Box<dyn FnOnce(C) -> BoxFuture<Result<Reply, RpcError>> + Send>;

impl<C: MiddlewareCall> Stack<C> {
    /// Runs `call` through the stack, then through `endpoint`.
    pub(crate) fn run(&self, call: C, endpoint: Endpoint<C>) -> BoxFuture<Result<Reply, RpcError>> {
        let next = Next {
            stack: self.clone(),
            index: 0,
            endpoint,
        };
        Box::pin(next.run(call))
    }
}

/// The calls middleware see: [`ServerCall`] and [`ClientCall`] (sealed: there are no
/// others).
pub trait MiddlewareCall: sealed::Sealed + Send + 'static {
    /// The method called.
    fn method_info(&self) -> &'static crate::MethodInfo;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ServerCall {}
    impl Sealed for super::ClientCall {}
}

/// The rest of the chain: the middleware after this one, then the call itself. Pass the
/// call on with [`run`](Next::run), at most once; dropping it refuses nothing by itself
/// (return an error to refuse).
pub struct Next<C> {
    stack: Stack<C>,
    index: usize,
    endpoint: Endpoint<C>,
}

impl<C> fmt::Debug for Next<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &(self.stack.0.len() - self.index))
            .finish_non_exhaustive()
    }
}

impl<C: MiddlewareCall> Next<C> {
    /// Runs the rest of the chain on `call` (the middleware after this one, then the call
    /// itself) and gives its outcome.
    pub async fn run(mut self, call: C) -> Result<Reply, RpcError> {
        while let Some(entry) = self.stack.0.get(self.index) {
            self.index += 1;
            if let Scope::Method(_, method) = entry.scope {
                if method != call.method_info().name {
                    continue;
                }
            }
            let middleware = Arc::clone(&entry.middleware);
            return middleware.call_boxed(call, self).await;
        }
        (self.endpoint)(call).await
    }
}
