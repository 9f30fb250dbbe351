//! The server's per-call pipeline: admit → route → authorize → decode → start.
//!
//! The connection (`connection.rs`) does I/O and scheduling; for each request it reads, it
//! asks its [`Dispatcher`] for an [`Admitted`] call, or the error to answer with, and starts
//! the call it is given (its context, its observation, its handler's first poll: the last
//! step, which is the connection's because it schedules).
//! Policies that decide whether and how a call runs (middleware, rate limits, load
//! shedding, other front ends) belong here, as further steps of [`Dispatcher::dispatch`],
//! never in the I/O loop.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::CatchUnwind;

use super::auth::{self, Authorize};
use super::service::{BoxFuture, Service};
use super::ServerConfig;
use crate::context::Metadata;
use crate::descriptor::MethodInfo;
use crate::error::{ErrorKind, RpcError};
use crate::health::HealthClient;
use crate::observe::ServerObserver;
use crate::peer::Peer;
use crate::streaming::StreamEngine;

/// How the client's method at some index maps onto this server: the method, or why not.
pub(crate) type Route = Result<&'static MethodInfo, Arc<str>>;

/// A handler's future, with its panics caught.
pub(crate) type Handler<R> = CatchUnwind<AssertUnwindSafe<BoxFuture<R>>>;

/// One request as the connection read it.
pub(crate) struct Incoming<'a> {
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
    pub(crate) request: Q,
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
}

impl<S: Service> Dispatcher<S> {
    pub(crate) fn new(
        service: Arc<S>,
        routes: Vec<Route>,
        config: Arc<ServerConfig>,
        observe: ServerObserver,
        peer: Option<Arc<Peer>>,
        auth: Option<Arc<dyn Authorize>>,
    ) -> Dispatcher<S> {
        Dispatcher {
            service,
            routes,
            config,
            observe,
            peer,
            auth,
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
        let decoded = self.decode(request.id, method, request.body, streams)?;
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
        streams: &mut StreamEngine,
    ) -> Result<S::Request, RpcError> {
        let input = method.client_streaming.then(|| streams.receive(id));
        // A user's `Deserialize` impl may panic too: that fails this call, not the connection.
        let service = &self.service;
        let request = std::panic::catch_unwind(AssertUnwindSafe(|| {
            service.decode_request(method.fingerprint, body, input)
        }))
        .unwrap_or_else(|_| {
            Err(RpcError::protocol(format!(
                "decoding the arguments of `{}` panicked",
                method.name
            )))
        });
        if let Err(err) = &request {
            // The error response tells the client to stop sending it.
            streams.end_receiving(id, Err(err.clone()));
        }
        request
    }

    /// Who the client is, for the context of its calls.
    pub(crate) fn peer(&self) -> Option<&Arc<Peer>> {
        self.peer.as_ref()
    }
}
