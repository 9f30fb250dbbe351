//! The server's per-call pipeline: admit → route → authorize → decode → start.
//!
//! The connection (`connection.rs`) does I/O and scheduling; for each request it reads, it
//! asks its [`Dispatcher`] for an [`Admitted`] call, or the error to answer with, and starts
//! the call it is given (its context, its observation, its handler's first poll: the last
//! step, which is the connection's because it schedules).
//! Policies that decide whether and how a call runs (middleware, rate limits, load
//! shedding, other front ends) belong here, as further steps of [`Dispatcher::dispatch`],
//! never in the I/O loop.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::CatchUnwind;
use futures::FutureExt;
use pin_project::pin_project;

use super::auth::{self, Authorize};
use super::service::{BoxFuture, Service};
use super::ServerConfig;
use crate::context::{self, CallContext, Metadata};
use crate::descriptor::MethodInfo;
use crate::error::{ErrorKind, RpcError};
use crate::health::HealthClient;
use crate::middleware::reply::{self, Reply};
use crate::middleware::{ServerCall, Stack};
use crate::observe::ServerObserver;
use crate::peer::Peer;
use crate::streaming::{RemoteStream, StreamEngine};

/// How the client's method at some index maps onto this server: the method, or why not.
pub(crate) type Route = Result<&'static MethodInfo, Arc<str>>;

/// A handler's future, with its panics caught: the handler's own, or the chain of
/// middleware around it.
#[pin_project(project = HandlerProjection)]
pub(crate) enum Handler<R> {
    Plain(#[pin] CatchUnwind<AssertUnwindSafe<BoxFuture<R>>>),
    Layered(#[pin] Chain),
}

/// A call's chain of middleware, with its panics caught.
type Chain = CatchUnwind<AssertUnwindSafe<BoxFuture<Result<Reply, RpcError>>>>;

/// What a handler (and its middleware) gave.
pub(crate) enum Answer<R> {
    /// The handler's result.
    Typed(R),
    /// A middleware's answer, encoded.
    Encoded(Bytes),
    /// A middleware refused the call, or the handler's arguments did not decode.
    Failed(RpcError),
}

impl<R: Send + 'static> Handler<R> {
    pub(crate) fn plain(future: BoxFuture<R>) -> Handler<R> {
        Handler::Plain(AssertUnwindSafe(future).catch_unwind())
    }

    fn layered(future: BoxFuture<Result<Reply, RpcError>>) -> Handler<R> {
        Handler::Layered(AssertUnwindSafe(future).catch_unwind())
    }
}

impl<R: Send + 'static> Future for Handler<R> {
    type Output = std::thread::Result<Answer<R>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HandlerProjection::Plain(handler) => handler.poll(cx).map(|r| r.map(Answer::Typed)),
            HandlerProjection::Layered(chain) => poll_layered(chain, cx),
        }
    }
}

/// Polls a chain of middleware. Out of line, so that the plain handler's poll stays small
/// enough to be inlined where the connection polls its calls.
#[inline(never)]
fn poll_layered<R: Send + 'static>(
    chain: Pin<&mut Chain>,
    cx: &mut Context<'_>,
) -> Poll<std::thread::Result<Answer<R>>> {
    chain.poll(cx).map(|r| r.map(Answer::of))
}

impl<R: Send + 'static> Answer<R> {
    /// What the chain of middleware passed back out.
    fn of(reply: Result<Reply, RpcError>) -> Answer<R> {
        match reply.map(|reply| reply.0) {
            Ok(reply::Kind::Value(value)) => match value.downcast::<R>() {
                Ok(response) => Answer::Typed(*response),
                // Only the endpoint makes `Value`s, with this `R`.
                Err(_) => Answer::Failed(RpcError::new(
                    ErrorKind::Internal,
                    "a middleware passed back a result of another service",
                )),
            },
            Ok(reply::Kind::Body(body)) => Answer::Encoded(body),
            Ok(reply::Kind::Stream(_)) => Answer::Failed(RpcError::new(
                ErrorKind::Internal,
                "a middleware answered with a received stream, which a server cannot send",
            )),
            Err(err) => Answer::Failed(err),
        }
    }
}

/// The arguments of a call whose middleware decide whether they are ever decoded.
pub(crate) struct Deferred {
    stack: Stack<ServerCall>,
    body: Bytes,
    input: Option<RemoteStream>,
}

/// A request as the dispatcher passes it on.
pub(crate) enum Request<Q> {
    Decoded(Q),
    /// To run through middleware, which decode it last (boxed: the plain request, moved
    /// on every call, stays small).
    Layered(Box<Deferred>),
}

/// One request as the connection read it.
pub(crate) struct Incoming<'a> {
    /// The buffer `body` is part of (the frame, or the body a compressed frame opened to).
    pub(crate) body_owner: &'a Bytes,
    pub(crate) id: u64,
    /// The index in the client's method table.
    pub(crate) method: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) metadata: Metadata,
    pub(crate) body: &'a [u8],
}

/// What admission needs to know of the connection.
#[derive(Clone, Copy)]
pub(crate) struct ConnectionLoad {
    /// Calls in progress: handlers running and result streams being sent.
    pub(crate) calls: usize,
    /// The server is shutting down.
    pub(crate) draining: bool,
}

/// A call admitted and decoded, ready for the connection to start.
pub(crate) struct Admitted<Q> {
    pub(crate) id: u64,
    /// The index in the client's method table.
    pub(crate) index: u32,
    pub(crate) method: &'static MethodInfo,
    pub(crate) request: Request<Q>,
    pub(crate) metadata: Metadata,
    pub(crate) timeout: Option<Duration>,
    pub(crate) body_len: usize,
}

/// The pipeline of one connection's calls to one service.
pub(crate) struct Dispatcher<S: Service> {
    pub(crate) service: Arc<S>,
    routes: Vec<Route>,
    config: Arc<ServerConfig>,
    pub(crate) observe: ServerObserver,
    peer: Option<Arc<Peer>>,
    auth: Option<Arc<dyn Authorize>>,
    layers: Option<Stack<ServerCall>>,
}

impl<S: Service> Dispatcher<S> {
    pub(crate) fn new(
        service: Arc<S>,
        routes: Vec<Route>,
        config: Arc<ServerConfig>,
        observe: ServerObserver,
        peer: Option<Arc<Peer>>,
        auth: Option<Arc<dyn Authorize>>,
        layers: Option<Stack<ServerCall>>,
    ) -> Dispatcher<S> {
        Dispatcher {
            service,
            routes,
            config,
            observe,
            peer,
            auth,
            layers,
        }
    }

    /// Runs a request through the pipeline. A call with a streaming argument gets its
    /// stream from `streams`. On `Err`, the call was refused and recorded as such: answer
    /// it with the error.
    #[inline]
    pub(crate) fn dispatch(
        &self,
        request: Incoming<'_>,
        load: ConnectionLoad,
        streams: &mut StreamEngine,
    ) -> Result<Admitted<S::Request>, RpcError> {
        let (id, method, body_len) = (request.id, request.method, request.body.len());
        let started = self.pipeline(request, load, streams);
        if let Err(err) = &started {
            self.rejected(method, id, body_len, err);
        }
        started
    }

    #[cold]
    #[inline(never)]
    fn rejected(&self, method: u32, id: u64, body_len: usize, err: &RpcError) {
        self.observe
            .rejected(&self.routes, method, id, body_len, err);
    }

    #[inline]
    fn pipeline(
        &self,
        request: Incoming<'_>,
        load: ConnectionLoad,
        streams: &mut StreamEngine,
    ) -> Result<Admitted<S::Request>, RpcError> {
        self.admit(load)?;
        let method = self.route(request.method)?;
        self.authorize(method, &request.metadata)?;
        let decoded = match &self.layers {
            None => Request::Decoded(self.decode(
                request.id,
                method,
                request.body,
                request.body_owner,
                streams,
            )?),
            Some(stack) => defer(stack, &request, method, streams),
        };
        Ok(Admitted {
            id: request.id,
            index: request.method,
            method,
            request: decoded,
            metadata: request.metadata,
            timeout: request.timeout,
            body_len: request.body.len(),
        })
    }

    /// Whether the connection takes another call now.
    #[inline]
    fn admit(&self, load: ConnectionLoad) -> Result<(), RpcError> {
        let desc = self.service.descriptor();
        // The health check still answers while the server drains: "not serving" is what a
        // balancer asking then needs to hear.
        if load.draining && desc.name != HealthClient::DESCRIPTOR.name {
            return Err(RpcError::new(
                ErrorKind::Overloaded,
                "the server is shutting down; retry on another server",
            ));
        }
        if load.calls >= self.config.max_concurrent_requests {
            return Err(RpcError::new(
                ErrorKind::Overloaded,
                format!(
                    "this connection already has {} calls in progress, the server's limit \
                     (max_concurrent_requests); retry later or elsewhere",
                    load.calls
                ),
            ));
        }
        Ok(())
    }

    /// The method the client's index `method` names, through the `Hello` table.
    #[inline]
    fn route(&self, method: u32) -> Result<&'static MethodInfo, RpcError> {
        match self.routes.get(method as usize) {
            Some(Ok(info)) => Ok(*info),
            Some(Err(why)) => Err(RpcError::new(ErrorKind::Incompatible, &**why)),
            None => Err(RpcError::new(
                ErrorKind::Incompatible,
                format!(
                    "the request names method {method}, but the client's Hello listed only {} \
                     methods of `{}`",
                    self.routes.len(),
                    self.service.descriptor().name
                ),
            )),
        }
    }

    /// The server's `Authorize` hook, if it has one, before anything is decoded.
    #[inline]
    fn authorize(&self, method: &'static MethodInfo, metadata: &Metadata) -> Result<(), RpcError> {
        match &self.auth {
            Some(auth) => auth::check_call(
                &**auth,
                self.peer.as_deref(),
                self.service.descriptor().name,
                method,
                metadata,
            ),
            None => Ok(()),
        }
    }

    /// The typed request; a call with a streaming argument starts receiving it.
    #[inline]
    fn decode(
        &self,
        id: u64,
        method: &'static MethodInfo,
        body: &[u8],
        frame: &Bytes,
        streams: &mut StreamEngine,
    ) -> Result<S::Request, RpcError> {
        let input = method.client_streaming.then(|| streams.receive(id));
        let request = decode_caught(&*self.service, method, body, frame, input);
        if let Err(err) = &request {
            // The error response tells the client to stop sending it.
            streams.end_receiving(id, Err(err.clone()));
        }
        request
    }

    /// The handler of a call with middleware: the chain of them around the service's
    /// future. It needs a context (made `Some` here) for the middleware to pass metadata on
    /// to the handler.
    #[inline(never)]
    pub(crate) fn layered(
        &self,
        method: &'static MethodInfo,
        deferred: Deferred,
        context: &mut Option<CallContext>,
        body_len: usize,
    ) -> Handler<S::Response> {
        let context = context.get_or_insert_with(CallContext::default);
        let call = ServerCall {
            service: self.service.descriptor().name,
            method,
            peer: self.peer.clone(),
            metadata: context.metadata().clone(),
            deadline: context.deadline(),
            body_len,
        };
        let service = Arc::clone(&self.service);
        let Deferred { stack, body, input } = deferred;
        Handler::layered(stack.run(
            call,
            Box::new(
                move |call: ServerCall| -> BoxFuture<Result<Reply, RpcError>> {
                    // Runs inside the handler's poll, so within the call's context.
                    context::set_metadata(call.metadata);
                    match decode_caught(&*service, method, &body, &body, input) {
                        Ok(request) => {
                            let handler = service.call(request);
                            Box::pin(async move { Ok(Reply::value(handler.await)) })
                        }
                        Err(err) => Box::pin(std::future::ready(Err(err))),
                    }
                },
            ),
        ))
    }

    /// Who the client is, for the context of its calls.
    pub(crate) fn peer(&self) -> Option<&Arc<Peer>> {
        self.peer.as_ref()
    }
}

/// A request left for its middleware. Out of line: services without middleware never come
/// here.
#[inline(never)]
fn defer<Q>(
    stack: &Stack<ServerCall>,
    request: &Incoming<'_>,
    method: &'static MethodInfo,
    streams: &mut StreamEngine,
) -> Request<Q> {
    Request::Layered(Box::new(Deferred {
        stack: stack.clone(),
        body: request.body_owner.slice_ref(request.body),
        input: method.client_streaming.then(|| streams.receive(request.id)),
    }))
}

/// Decodes a request's arguments. A user's `Deserialize` impl may panic too: that fails
/// this call, not the connection.
#[inline]
fn decode_caught<S: Service>(
    service: &S,
    method: &'static MethodInfo,
    body: &[u8],
    frame: &Bytes,
    input: Option<RemoteStream>,
) -> Result<S::Request, RpcError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        service.decode_request_in(method.fingerprint, body, frame, input)
    }))
    .unwrap_or_else(|_| {
        Err(RpcError::protocol(format!(
            "decoding the arguments of `{}` panicked",
            method.name
        )))
    })
}
