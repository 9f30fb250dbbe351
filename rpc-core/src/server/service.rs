//! What a server hosts: the [`Service`] trait that `#[service]` implements.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::connection::{self, ConnectionContext};
use super::dispatch::Route;
use crate::codec::BodyWriter;
use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;
use crate::streaming::{ItemSource, RemoteStream};
use crate::transport::Transport;

pub use crate::boxed::BoxFuture;

/// A service the [`Server`](crate::Server) can host. `#[service]` implements it for the
/// generated `FooServer<S>`; implementing it by hand is possible but rarely useful.
///
/// The server decodes each request with [`decode_request`](Service::decode_request), runs
/// [`call`](Service::call)'s future inside the connection's task (no task spawned per call),
/// and encodes the result with [`encode_response`](Service::encode_response) straight into
/// the outgoing frame.
pub trait Service: Send + Sync + 'static {
    /// The decoded arguments of any method (`FooRequest`).
    type Request: Send + 'static;
    /// The result of any method (`FooResponse`).
    type Response: Send + 'static;

    /// The service's wire name and method table.
    fn descriptor(&self) -> &'static ServiceDescriptor;

    /// Decodes the arguments of the method with `fingerprint` from a request body; `input`
    /// is the stream of items of a method with a `Streaming<T>` argument.
    fn decode_request(
        &self,
        fingerprint: u64,
        body: &[u8],
        input: Option<RemoteStream>,
    ) -> Result<Self::Request, RpcError>;

    /// [`decode_request`](Service::decode_request) of a body that lies in `frame`, the
    /// buffer it was received in: `#[service]` implements it for services with `Bytes`
    /// arguments, which it takes out of `frame` without copying them. The default calls
    /// `decode_request`.
    #[doc(hidden)]
    fn decode_request_in(
        &self,
        fingerprint: u64,
        body: &[u8],
        frame: &Bytes,
        input: Option<RemoteStream>,
    ) -> Result<Self::Request, RpcError> {
        let _ = frame;
        self.decode_request(fingerprint, body, input)
    }

    /// Runs the method the request names.
    fn call(&self, request: Self::Request) -> BoxFuture<Self::Response>;

    /// Takes the stream out of the result of a method returning `Streaming<T>`; any other
    /// result is given back.
    fn response_stream(&self, response: Self::Response) -> Result<ItemSource, Self::Response> {
        Err(response)
    }

    /// Encodes a method's result into a response body.
    fn encode_response(
        &self,
        response: &Self::Response,
        buf: &mut BytesMut,
    ) -> Result<(), RpcError>;

    /// [`encode_response`](Service::encode_response), taking the result: `#[service]`
    /// implements it for services returning `Bytes` or `Vec<u8>`, whose buffers it hands to
    /// the transport instead of copying them. The default calls `encode_response`.
    #[doc(hidden)]
    fn encode_response_owned(
        &self,
        response: Self::Response,
        body: &mut BodyWriter<'_>,
    ) -> Result<(), RpcError> {
        self.encode_response(&response, body.buf())
    }
}

/// A hosted service with its types erased, so one server can host several.
pub(crate) trait HostedService: Send + Sync + 'static {
    fn descriptor(&self) -> &'static ServiceDescriptor;

    /// Serves one connection whose `Hello` asked for this service.
    fn serve(
        self: Arc<Self>,
        transport: Box<dyn Transport>,
        routes: Vec<Route>,
        context: ConnectionContext,
    ) -> BoxFuture<std::io::Result<()>>;
}

impl<S: Service> HostedService for S {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        Service::descriptor(self)
    }

    fn serve(
        self: Arc<Self>,
        transport: Box<dyn Transport>,
        routes: Vec<Route>,
        context: ConnectionContext,
    ) -> BoxFuture<std::io::Result<()>> {
        Box::pin(connection::run(self, transport, routes, context))
    }
}
