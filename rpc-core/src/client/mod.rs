//! The client side: a multiplexed connection shared by every clone of a generated client.
//!
//! A [`Client`] owns one connection. Calls register in the connection's table of pending
//! calls ([`pending`]), queue their frame and wake the connection's I/O task ([`driver`]),
//! which writes every queued frame in one batch and routes each response to its caller by
//! request id. No task is spawned per call; the I/O task is spawned once per connection.

mod call;
mod driver;
mod pending;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

pub use call::{Call, CallFuture};
pub(crate) use pending::Shared;

use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;
use crate::transport::Transport;

/// The default limit on the size of one frame, sent or received: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 << 20;

/// A handle to one client connection; generated clients (`FooClient`) wrap it.
///
/// Cheap to clone: all clones share the connection, and calls from any of them are
/// multiplexed over it. The connection closes when the last clone (and the last call made
/// through it) is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use rpc_core::{Client, ServiceDescriptor};
///
/// const DESC: ServiceDescriptor = ServiceDescriptor::new("Nothing", &[]);
/// let (client_end, _server_end) = rpc_transport::memory::pair();
/// let client = Client::new(client_end, &DESC);
/// assert_eq!(client.service().name, "Nothing");
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Closes the connection when the last `Client` clone goes away.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl Client {
    /// Opens a client connection over `transport` for the service `desc`.
    ///
    /// Sends `Hello` at once without waiting for an answer: the first calls follow it in the
    /// same write. Spawns the connection's I/O task, so it must be called within a tokio
    /// runtime (it panics otherwise, as `tokio::spawn` does).
    pub fn new<T: Transport>(transport: T, desc: &'static ServiceDescriptor) -> Client {
        let shared = Arc::new(Shared::new(desc, DEFAULT_MAX_FRAME_SIZE));
        tokio::spawn(driver::run(Arc::clone(&shared), transport));
        Client {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// The service this client talks to.
    pub fn service(&self) -> &'static ServiceDescriptor {
        self.handle.shared.desc
    }

    /// Starts a call of the method at `method` in the service's table; used by generated
    /// clients. Nothing is sent until the returned [`Call`] is awaited.
    pub fn call<A, R>(
        &self,
        method: u32,
        args: &A,
        decode: fn(&[u8]) -> Result<R, RpcError>,
    ) -> Call<R>
    where
        A: Serialize + ?Sized,
    {
        Call::new(self.clone(), method, args, decode)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.handle.shared.desc.name)
            .finish_non_exhaustive()
    }
}
