//! The boxed future type every layer uses where a concrete type cannot be named.

use std::future::Future;
use std::pin::Pin;

/// A boxed, `Send` future, as handlers are run on the server and as a balancing client runs
/// a call's attempts.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
