//! The user-facing client: [`Client`] (what generated clients wrap), [`Call`] and
//! [`ClientBuilder`]. The top layer: it sends calls on one connection (`connection`) or
//! through a pool of them (`balance`), and nothing below depends on it.
//!
//! Calls register in the connection's table of pending calls, queue their frame and wake the
//! connection's I/O task, which writes every queued frame in one batch and routes each
//! response to its caller by request id. No task is spawned per call; the I/O task is
//! spawned once per connection.

mod builder;
mod call;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use builder::ClientBuilder;
pub use call::{Call, CallFuture};

use crate::balance::PoolHandle;
use crate::compress::Compression;
use crate::connection::{ConnectionOptions, Handle};
use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;
use crate::middleware::{ClientCall, Layers, Middleware, Scope, Stack};
use crate::streaming::Streaming;
use crate::transport::Transport;

/// The decoder of a call answered by a stream, which never gets one response.
fn no_single_response<R>(_: &Bytes) -> Result<R, RpcError> {
    Err(RpcError::protocol(
        "the server answered a streaming call with a single response",
    ))
}

/// A handle to a client's connection (or connections); generated clients (`FooClient`)
/// wrap it.
///
/// Made from one transport ([`Client::new`]), it is one connection: cheap to clone, all
/// clones share it, and calls from any of them are multiplexed over it. The connection
/// closes when the last clone (and the last call made through it) is dropped.
///
/// Made by a [`ClientBuilder`] from a connector or a set of endpoints, it reconnects,
/// balances calls over endpoints and retries idempotent calls; the generated client and its
/// calls look the same either way.
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
    inner: Inner,
}

/// A client's middleware: as configured, the stack its calls run through, and the client
/// without them that the end of the stack sends calls on.
pub(crate) struct ClientLayers {
    bare: Client,
    configured: Layers<ClientCall>,
    stack: Stack<ClientCall>,
}

#[derive(Clone)]
pub(crate) enum Inner {
    /// One connection, as given.
    Connection(Arc<Handle>),
    /// Connections made and remade by the client itself, to one endpoint or several.
    Pool(Arc<PoolHandle>),
    /// One of the above, with middleware around its calls (a variant rather than a field,
    /// so that a plain client stays one pointer to clone).
    Layered(Arc<ClientLayers>),
}

impl Client {
    /// Opens a client connection over `transport` for the service `desc`.
    ///
    /// Sends `Hello` at once without waiting for an answer: the first calls follow it in the
    /// same write. Spawns the connection's I/O task, so it must be called within a tokio
    /// runtime (it panics otherwise, as `tokio::spawn` does).
    pub fn new<T: Transport>(transport: T, desc: &'static ServiceDescriptor) -> Client {
        Client::with_options(transport, desc, &ConnectionOptions::default())
    }

    /// [`Client::new`], offering the server `compression`'s codecs: if it accepts one,
    /// large messages both ways are compressed (see [`Compression`]). A server that has
    /// none of them, or predates compression, is talked to uncompressed.
    ///
    /// Generated clients take the result with `FooClient::from_client`; a client built
    /// with [`ClientBuilder::compression`] does the same for every connection it makes.
    pub fn with_compression<T: Transport>(
        transport: T,
        desc: &'static ServiceDescriptor,
        compression: Compression,
    ) -> Client {
        let options = ConnectionOptions {
            compression: Some(compression),
            ..ConnectionOptions::default()
        };
        Client::with_options(transport, desc, &options)
    }

    pub(crate) fn with_options<T: Transport>(
        transport: T,
        desc: &'static ServiceDescriptor,
        options: &ConnectionOptions,
    ) -> Client {
        Client {
            inner: Inner::Connection(Handle::open(transport, desc, options)),
        }
    }

    pub(crate) fn from_pool(pool: Arc<PoolHandle>) -> Client {
        Client {
            inner: Inner::Pool(pool),
        }
    }

    /// Starts building a client with options (reconnection, load balancing, retries,
    /// keepalive); generated clients have `FooClient::builder()`.
    pub fn builder(desc: &'static ServiceDescriptor) -> ClientBuilder<Client> {
        ClientBuilder::new(desc, std::convert::identity)
    }

    /// Adds a [`Middleware`] every call of this client (and of its clones made from now
    /// on) runs through, after those added before; see [`middleware`](crate::middleware).
    ///
    /// ```
    /// use rpc_core::middleware::{from_fn, ClientCall, Next};
    /// use rpc_core::{Client, ServiceDescriptor};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # const DESC: ServiceDescriptor = ServiceDescriptor::new("Nothing", &[]);
    /// # let (client_end, _server_end) = rpc_transport::memory::pair();
    /// // Every call carries the tenant's name.
    /// let client = Client::new(client_end, &DESC).layer(from_fn(
    ///     |mut call: ClientCall, next: Next<ClientCall>| {
    ///         call.metadata_mut().insert("tenant", "acme");
    ///         next.run(call)
    ///     },
    /// ));
    /// # let _ = client;
    /// # }
    /// ```
    pub fn layer(self, middleware: impl Middleware<ClientCall>) -> Client {
        self.layer_scoped(Scope::All, middleware)
    }

    /// Adds a [`Middleware`] that only the calls of the method named `method` run through.
    ///
    /// # Panics
    /// If the service has no method of that name: a typo would otherwise leave the method
    /// without its policy.
    pub fn layer_for_method(self, method: &str, middleware: impl Middleware<ClientCall>) -> Client {
        let scope = Scope::method("Client::layer_for_method", self.service(), method);
        self.layer_scoped(scope, middleware)
    }

    pub(crate) fn layer_scoped(
        self,
        scope: Scope,
        middleware: impl Middleware<ClientCall>,
    ) -> Client {
        let mut configured = match &self.inner {
            Inner::Layered(layers) => layers.configured.clone(),
            Inner::Connection(_) | Inner::Pool(_) => Layers::default(),
        };
        configured.push(scope, middleware);
        self.with_layers(configured)
    }

    /// The client with `layers` as its middleware (replacing any it had).
    pub(crate) fn with_layers(self, layers: Layers<ClientCall>) -> Client {
        let bare = self.bare();
        match layers.for_service(bare.service().name) {
            Some(stack) => Client {
                inner: Inner::Layered(Arc::new(ClientLayers {
                    bare,
                    configured: layers,
                    stack,
                })),
            },
            None => bare,
        }
    }

    /// The same client without its middleware: what the end of its stack sends calls on.
    fn bare(&self) -> Client {
        match &self.inner {
            Inner::Layered(layers) => layers.bare.clone(),
            Inner::Connection(_) | Inner::Pool(_) => self.clone(),
        }
    }

    /// What the client's calls go through.
    pub(crate) fn into_inner(self) -> Inner {
        self.inner
    }

    /// The service this client talks to.
    pub fn service(&self) -> &'static ServiceDescriptor {
        match &self.inner {
            Inner::Connection(handle) => handle.shared.desc,
            Inner::Pool(pool) => pool.desc(),
            Inner::Layered(layers) => layers.bare.service(),
        }
    }

    /// What a reconnecting or balancing client has done so far: calls, retries, and the
    /// state of each endpoint. `None` for a client made from one transport.
    pub fn stats(&self) -> Option<crate::balance::ClientStats> {
        match &self.inner {
            Inner::Connection(_) => None,
            Inner::Pool(pool) => Some(pool.stats()),
            Inner::Layered(layers) => layers.bare.stats(),
        }
    }

    /// Starts a call of the method at `method` in the service's table; used by generated
    /// clients (through `__private`). Nothing is sent until the returned [`Call`] is awaited.
    pub(crate) fn call<A, R>(
        &self,
        method: u32,
        args: A,
        decode: fn(&Bytes) -> Result<R, RpcError>,
    ) -> Call<R>
    where
        A: crate::codec::EncodeArgs,
    {
        Call::new(self.clone(), method, args, decode)
    }

    /// Starts a call whose request body is already encoded; its result is the response body
    /// as it came.
    pub(crate) fn call_body(&self, method: u32, body: &[u8]) -> Call<Bytes> {
        Call::from_body(self.clone(), method, body, |body| Ok(body.clone()))
    }

    /// Like [`call_body`](Client::call_body), for a method returning a stream: its items'
    /// bodies as they came.
    pub(crate) fn call_body_streaming(&self, method: u32, body: &[u8]) -> Call<Streaming<Bytes>> {
        Call::from_body(self.clone(), method, body, no_single_response).with_streams(
            None,
            Some(Box::new(|stream| {
                Streaming::from_remote(stream, |item| Ok(item.clone()))
            })),
        )
    }

    /// Starts a call of a method returning `Streaming<O>`. Awaiting the call sends it and
    /// gives the stream at once: items (or the call's error) arrive through it.
    pub(crate) fn call_streaming<A, O>(
        &self,
        method: u32,
        args: A,
        decode_item: fn(&Bytes) -> Result<O, RpcError>,
    ) -> Call<Streaming<O>>
    where
        A: crate::codec::EncodeArgs,
        O: 'static,
    {
        Call::new(self.clone(), method, args, no_single_response).with_streams(
            None,
            Some(Box::new(move |stream| {
                Streaming::from_remote(stream, decode_item)
            })),
        )
    }

    /// Starts a call of a method taking a `Streaming<I>` argument and returning one `R`. The
    /// items of `input` are sent after the request, as the server grants credit.
    pub(crate) fn call_with_stream<A, I, R>(
        &self,
        method: u32,
        args: A,
        input: Streaming<I>,
        encode_item: fn(I, &mut crate::codec::BodyWriter<'_>) -> Result<(), RpcError>,
        decode: fn(&Bytes) -> Result<R, RpcError>,
    ) -> Call<R>
    where
        A: crate::codec::EncodeArgs,
        I: 'static,
    {
        Call::new(self.clone(), method, args, decode)
            .with_streams(Some(input.into_source(encode_item)), None)
    }

    /// Starts a call of a method taking a `Streaming<I>` argument and returning
    /// `Streaming<O>`.
    pub(crate) fn call_bidi<A, I, O>(
        &self,
        method: u32,
        args: A,
        input: Streaming<I>,
        encode_item: fn(I, &mut crate::codec::BodyWriter<'_>) -> Result<(), RpcError>,
        decode_item: fn(&Bytes) -> Result<O, RpcError>,
    ) -> Call<Streaming<O>>
    where
        A: crate::codec::EncodeArgs,
        I: 'static,
        O: 'static,
    {
        Call::new(self.clone(), method, args, no_single_response).with_streams(
            Some(input.into_source(encode_item)),
            Some(Box::new(move |stream| {
                Streaming::from_remote(stream, decode_item)
            })),
        )
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.service().name)
            .field(
                "kind",
                &match &self.inner {
                    Inner::Connection(_) => "connection",
                    Inner::Pool(_) => "pool",
                    Inner::Layered(layers) => match layers.bare.inner {
                        Inner::Pool(_) => "pool with middleware",
                        _ => "connection with middleware",
                    },
                },
            )
            .finish_non_exhaustive()
    }
}
