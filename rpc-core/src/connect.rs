//! Where a reconnecting client gets its connections: the [`Connect`] trait, and its erased
//! form that yields connection handles to the balancing layer.

use std::future::Future;
use std::io;
use std::sync::Arc;

use crate::boxed::BoxFuture;
use crate::connection::{ConnectionOptions, Handle};
use crate::descriptor::ServiceDescriptor;
use crate::transport::Transport;

/// Makes new connections to one endpoint, as often as a client needs them.
///
/// `rpc-transport` implements it for TCP addresses, Unix socket paths and memory
/// connectors; any closure returning a future of `io::Result<impl Transport>` is one too,
/// for a transport of your own or extra set-up per connection:
///
/// ```
/// use rpc_core::Connect;
///
/// fn assert_connect<C: Connect>(_: C) {}
/// assert_connect(|| rpc_transport::tcp::connect("127.0.0.1:4000"));
/// ```
pub trait Connect: Send + Sync + 'static {
    /// The transport each connection gets.
    type Transport: Transport;

    /// Opens one new connection.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Transport>> + Send;
}

impl<F, Fut, T> Connect for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<T>> + Send,
    T: Transport,
{
    type Transport = T;

    fn connect(&self) -> impl Future<Output = io::Result<T>> + Send {
        self()
    }
}

/// A connector with its transport type erased: connects and opens a client connection.
pub(crate) type DynConnect = Arc<
    dyn Fn(&'static ServiceDescriptor, ConnectionOptions) -> BoxFuture<io::Result<Arc<Handle>>>
        + Send
        + Sync,
>;

pub(crate) fn erase<C: Connect>(connector: C) -> DynConnect {
    let connector = Arc::new(connector);
    Arc::new(move |desc, options| {
        let connector = Arc::clone(&connector);
        Box::pin(async move {
            let transport = connector.connect().await?;
            Ok(Handle::open(transport, desc, &options))
        })
    })
}
