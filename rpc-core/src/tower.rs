//! Tower interop (feature `tower`): calls as a [`tower::Service`](tower_service::Service),
//! so that tower's layers (concurrency limits, load shedding, timeouts, your own) can wrap
//! a client's calls.
//!
//! [`CallService`] takes a [`Call`] (what every generated client method returns) and
//! awaits it: it adds nothing to the call's cost (its future is the call's own future),
//! and it is always ready. Layers that need to send a request twice (tower's `Retry`)
//! cannot, as a `Call` is not `Clone`: the balancing client retries idempotent calls
//! itself.
//!
//! Only the client side is offered. A tower `Layer` builds its service once and keeps its
//! state (a limit's semaphore, a counter) in it, while a server's middleware chain is made
//! per call; adapting one to the other would rebuild the layer's state for every call and
//! silently limit nothing. Write server policy as a [`Middleware`](crate::middleware::Middleware).
//!
//! ```
//! use rpc_core::tower::CallService;
//! use rpc_core::{service, Call, Server};
//! use tower_service::Service;
//!
//! #[service]
//! pub trait Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64;
//! }
//! struct Adder;
//! impl Calc for Adder {
//!     async fn add(&self, a: i64, b: i64) -> i64 { a + b }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rpc_core::RpcError> {
//! let (client_end, server_end) = rpc_transport::memory::pair();
//! tokio::spawn(Server::new().add_service(CalcServer::new(Adder)).serve_connection(server_end));
//! let calc = CalcClient::new(client_end);
//!
//! let mut service = CallService;
//! std::future::poll_fn(|cx| Service::<Call<i64>>::poll_ready(&mut service, cx)).await?;
//! assert_eq!(service.call(calc.add(1, 2)).await?, 3);
//! # Ok(()) }
//! ```

use std::future::IntoFuture;
use std::task::{Context, Poll};

use crate::client::{Call, CallFuture};
use crate::error::RpcError;

/// A [`tower::Service`](tower_service::Service) that runs [`Call`]s; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallService;

impl<R> tower_service::Service<Call<R>> for CallService {
    type Response = R;
    type Error = RpcError;
    type Future = CallFuture<R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), RpcError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<R>) -> CallFuture<R> {
        call.into_future()
    }
}
