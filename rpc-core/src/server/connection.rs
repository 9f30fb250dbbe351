//! One server connection: reads requests, runs their handlers, writes responses.
//!
//! Handlers are polled inside the connection's own task (a `FuturesUnordered`), not spawned:
//! a call that completes at once is answered in the same wake-up that read it, and dropping
//! the connection drops every handler it runs.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::CatchUnwind;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use pin_project::pin_project;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::auth::{self, Authorize};
use super::service::{BoxFuture, Service};
use super::ServerConfig;
use crate::context::{self, CallContext, Metadata};
use crate::descriptor::MethodInfo;
use crate::error::{ErrorKind, RpcError};
use crate::health::HealthClient;
use crate::keepalive::KeepaliveTimer;
use crate::log;
use crate::observe::{self, MethodTable, Observed, ServerObserver};
use crate::outgoing::{close_with, Outgoing, CLOSE_TIMEOUT};
use crate::peer::Peer;
use crate::protocol::{self, FrameBuilder, Message, Status};
use crate::streaming::{Inbox, Notice, Notices, Pumps, RemoteStream};
use crate::transport::Transport;
use crate::waker;

/// How the client's method at some index maps onto this server: the method, or why not.
pub(crate) type Route = Result<&'static MethodInfo, Arc<str>>;

/// Frames read per wake-up before yielding to other tasks.
const READ_BUDGET: usize = 128;

/// What a connection gets from its server.
pub(crate) struct ConnectionContext {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) shutdown: CancellationToken,
    /// The service's metric handles.
    pub(crate) metrics: MethodTable,
    /// Who the client is, if the listener could tell anything.
    pub(crate) peer: Option<Arc<Peer>>,
    pub(crate) auth: Option<Arc<dyn Authorize>>,
}

/// Why a connection ends.
enum End {
    /// The client closed the connection or said goodbye.
    ClientLeft,
    /// The connection broke.
    Broken(io::Error),
    /// This side closes it, and tells the client why.
    Goodbye(ErrorKind, String),
}

pub(crate) async fn run<S: Service>(
    service: Arc<S>,
    transport: Box<dyn Transport>,
    routes: Vec<Route>,
    context: ConnectionContext,
) -> io::Result<()> {
    let mut conn = Connection {
        observe: ServerObserver::new(
            service.descriptor(),
            &context.metrics,
            &routes,
            context
                .peer
                .as_ref()
                .map(|peer| Arc::from(peer.to_string())),
        ),
        peer: context.peer,
        auth: context.auth,
        service,
        transport,
        routes,
        in_flight: FuturesUnordered::new(),
        unsent: Outgoing::default(),
        arena: BytesMut::new(),
        draining: false,
        shutdown_wait: Box::pin(context.shutdown.clone().cancelled_owned()),
        shutdown_waker: None,
        shutdown: context.shutdown,
        keepalive: context.config.keepalive.map(KeepaliveTimer::new),
        inputs: HashMap::new(),
        pumps: Pumps::default(),
        notices: Arc::default(),
        notices_waker: None,
        config: context.config,
    };
    let end = poll_fn(|cx| conn.poll(cx)).await;
    // Handlers of a connection that ends are dropped, not left running.
    conn.in_flight = FuturesUnordered::new();
    let mut transport = conn.transport;
    match end {
        End::ClientLeft => {
            close_with(&mut transport, conn.unsent.take(), CLOSE_TIMEOUT).await;
            Ok(())
        }
        End::Broken(err) => {
            log::warn(format_args!("connection broke: {err}"));
            Err(err)
        }
        End::Goodbye(kind, message) => {
            if kind != ErrorKind::Disconnected {
                log::warn(format_args!("closing a connection: {kind}: {message}"));
            }
            let goodbye = protocol::goodbye_frame(kind, &message);
            let last = conn.unsent.take().into_iter().chain([goodbye]);
            close_with(&mut transport, last, CLOSE_TIMEOUT).await;
            super::linger(&mut transport).await;
            match kind {
                ErrorKind::Disconnected => Ok(()),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, message)),
            }
        }
    }
}

struct Connection<S: Service> {
    service: Arc<S>,
    transport: Box<dyn Transport>,
    routes: Vec<Route>,
    in_flight: FuturesUnordered<InFlight<S::Response>>,
    /// Encoded frames the transport has not accepted yet.
    unsent: Outgoing,
    /// Spare buffer space that response frames are built in (see `FrameBuilder::in_arena`).
    arena: BytesMut,
    /// Shutting down: new calls are refused, the connection closes once idle.
    draining: bool,
    shutdown: CancellationToken,
    /// Polled with each new waker, to have this task woken on shutdown (and kept, as
    /// dropping it would unregister); in between, the token's flag is enough.
    shutdown_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown_waker: Option<Waker>,
    keepalive: Option<KeepaliveTimer>,
    /// The streams clients are sending to calls with a `Streaming<T>` argument.
    inputs: HashMap<u64, Arc<Inbox>>,
    /// The streams this side sends: results of methods returning `Streaming<T>`.
    pumps: Pumps,
    /// What the consumers of `inputs` want the client told.
    notices: Arc<Notices>,
    /// The waker last given to `notices`.
    notices_waker: Option<Waker>,
    config: Arc<ServerConfig>,
    observe: ServerObserver,
    peer: Option<Arc<Peer>>,
    auth: Option<Arc<dyn Authorize>>,
}

impl<S: Service> Connection<S> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if waker::remember(&mut self.shutdown_waker, cx.waker()) {
            let _ = self.shutdown_wait.as_mut().poll(cx);
        }
        if !self.draining && self.shutdown.is_cancelled() {
            self.draining = true;
        }

        // Read every frame that is ready, up to a budget, unless replies are piling up
        // because the client does not read them.
        let mut yielded = false;
        let mut client_left = false;
        let mut heard = false;
        if self.unsent.len() < self.config.max_concurrent_requests.max(64)
            && self.unsent.bytes() < self.config.max_buffered_bytes
        {
            let mut budget = READ_BUDGET;
            loop {
                match Pin::new(&mut self.transport).poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        heard = true;
                        if let Err(end) = self.on_frame(frame, cx) {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Ready(Some(Err(err))) if err.kind() == io::ErrorKind::InvalidData => {
                        return Poll::Ready(End::Goodbye(ErrorKind::Protocol, err.to_string()));
                    }
                    Poll::Ready(Some(Err(err))) => return Poll::Ready(End::Broken(err)),
                    Poll::Ready(None) => {
                        // The client is gone or has half-closed: answer what is already
                        // answered (below), drop the rest.
                        client_left = true;
                        break;
                    }
                    Poll::Pending => break,
                }
                budget -= 1;
                if budget == 0 {
                    yielded = true;
                    break;
                }
            }
        }

        // Collect finished handlers; their replies go out in the same batch.
        while let Poll::Ready(Some(done)) = self.in_flight.poll_next_unpin(cx) {
            let (id, method, outcome, mut observed, deadline) = done;
            self.finish_call(id, method, outcome, &mut observed, deadline);
        }
        self.poll_streams(cx);

        if client_left {
            return Poll::Ready(End::ClientLeft);
        }
        if let Some(keepalive) = &mut self.keepalive {
            if let Err(waited) = keepalive.tick(heard, &mut self.unsent, cx) {
                return Poll::Ready(End::Broken(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client did not answer a keepalive ping within {waited:?}; closing \
                         its connection"
                    ),
                )));
            }
        }
        if let Err(err) = self.poll_write(cx) {
            return Poll::Ready(End::Broken(err));
        }

        if self.draining
            && self.in_flight.is_empty()
            && self.pumps.is_empty()
            && self.unsent.is_done()
        {
            return Poll::Ready(End::Goodbye(
                ErrorKind::Disconnected,
                "the server is shutting down".to_string(),
            ));
        }
        if yielded {
            cx.waker().wake_by_ref();
        } else if self.in_flight.is_empty() && self.unsent.is_empty() {
            // An idle connection pins no buffer.
            self.arena = BytesMut::new();
        }
        Poll::Pending
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.unsent.poll_send(Pin::new(&mut self.transport), cx)
    }

    /// Handles one received frame; `Err` ends the connection.
    fn on_frame(&mut self, frame: Bytes, cx: &mut Context<'_>) -> Result<(), End> {
        if frame.len() > self.config.max_frame_size {
            return Err(End::Goodbye(
                ErrorKind::Protocol,
                format!(
                    "the client sent a frame of {} bytes, more than this server's limit of {} \
                     bytes (max_frame_size)",
                    frame.len(),
                    self.config.max_frame_size
                ),
            ));
        }
        let message = Message::decode(&frame).map_err(|err| {
            End::Goodbye(
                ErrorKind::Protocol,
                format!(
                    "the client sent {}",
                    protocol::describe_bad_frame(&frame, &err)
                ),
            )
        })?;
        match message {
            Message::Request {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => {
                let metadata = if metadata.is_empty() {
                    Metadata::new()
                } else {
                    metadata
                        .iter()
                        .map(|&(key, value)| (key, frame.slice_ref(value)))
                        .collect()
                };
                if let Err(err) = self.start_call(id, method, timeout_us, metadata, body, cx) {
                    self.observe
                        .rejected(&self.routes, method, id, body.len(), &err);
                    self.queue(protocol::error_response_frame(id, &err));
                }
                Ok(())
            }
            Message::Cancel { id } => {
                // Cancels are rare: a scan beats keeping a map per call.
                if let Some(call) = Pin::new(&mut self.in_flight)
                    .iter_pin_mut()
                    .find(|call| call.id == id && !call.cancelled)
                {
                    call.cancel();
                }
                self.pumps.cancel(id);
                if let Some(input) = self.inputs.remove(&id) {
                    input.end(Err(RpcError::new(
                        ErrorKind::Disconnected,
                        "the client cancelled the call",
                    )));
                }
                Ok(())
            }
            Message::StreamItem { id, body } => {
                if let Some(input) = self.inputs.get(&id) {
                    if input.push(frame.slice_ref(body)).is_err() {
                        // Over its credit: that stream is failed; tell the client to stop.
                        self.inputs.remove(&id);
                        self.queue(Message::Cancel { id }.to_frame());
                    }
                }
                Ok(())
            }
            Message::StreamEnd { id, status } => {
                if let Some(input) = self.inputs.remove(&id) {
                    input.end(match status {
                        Status::Ok => Ok(()),
                        Status::Error { kind, message } => {
                            Err(RpcError::new(ErrorKind::from_wire(kind), message))
                        }
                    });
                }
                Ok(())
            }
            Message::Credit { id, items } => {
                self.pumps.credit(id, items);
                Ok(())
            }
            Message::Goodbye { kind, message } => {
                if kind != ErrorKind::Disconnected.to_wire() {
                    log::warn(format_args!(
                        "a client closed its connection: {}: {message}",
                        ErrorKind::from_wire(kind)
                    ));
                }
                Err(End::ClientLeft)
            }
            Message::Ping { nonce } => {
                self.queue(Message::Pong { nonce }.to_frame());
                Ok(())
            }
            Message::Pong { .. } => Ok(()),
            other => Err(End::Goodbye(
                ErrorKind::Protocol,
                format!(
                    "the client sent a {} message, which this server does not expect here",
                    other.name()
                ),
            )),
        }
    }

    /// Starts the handler of one request, or says why it cannot run.
    fn start_call(
        &mut self,
        id: u64,
        method: u32,
        timeout_us: Option<u64>,
        metadata: Metadata,
        body: &[u8],
        cx: &mut Context<'_>,
    ) -> Result<(), RpcError> {
        let desc = self.service.descriptor();
        // The health check still answers while the server drains: "not serving" is what a
        // balancer asking then needs to hear.
        if self.draining && desc.name != HealthClient::DESCRIPTOR.name {
            return Err(RpcError::new(
                ErrorKind::Overloaded,
                "the server is shutting down; retry on another server",
            ));
        }
        let busy = self.in_flight.len() + self.pumps.len();
        if busy >= self.config.max_concurrent_requests {
            return Err(RpcError::new(
                ErrorKind::Overloaded,
                format!(
                    "this connection already has {busy} calls in progress, the server's limit \
                     (max_concurrent_requests); retry later or elsewhere"
                ),
            ));
        }
        let info = match self.routes.get(method as usize) {
            Some(Ok(info)) => *info,
            Some(Err(why)) => return Err(RpcError::new(ErrorKind::Incompatible, &**why)),
            None => {
                return Err(RpcError::new(
                    ErrorKind::Incompatible,
                    format!(
                        "the request names method {method}, but the client's Hello listed only \
                         {} methods of `{}`",
                        self.routes.len(),
                        desc.name
                    ),
                ))
            }
        };
        if let Some(auth) = &self.auth {
            auth::check_call(&**auth, self.peer.as_deref(), desc.name, info, &metadata)?;
        }
        // A user's `Deserialize` impl may panic too: that fails this call, not the connection.
        let input = info.client_streaming.then(|| {
            let inbox = Inbox::new(id, Arc::clone(&self.notices));
            self.inputs.insert(id, Arc::clone(&inbox));
            RemoteStream::new(inbox)
        });
        let service = &self.service;
        let request = std::panic::catch_unwind(AssertUnwindSafe(|| {
            service.decode_request(info.fingerprint, body, input)
        }))
        .unwrap_or_else(|_| {
            Err(RpcError::protocol(format!(
                "decoding the arguments of `{}` panicked",
                info.name
            )))
        });
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                self.inputs.remove(&id);
                return Err(err);
            }
        };
        let timeout = timeout_us.map(Duration::from_micros);
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        let mut context = CallContext::for_call(deadline, metadata, self.peer.as_ref());
        let mut observed = self
            .observe
            .start(method, info, id, body.len(), &mut context);
        let service = &self.service;
        // One context switch for making the handler and its first poll.
        let (handler, first) = observed.in_span(|| {
            context::enter(&mut context, || {
                let mut handler = AssertUnwindSafe(service.call(request)).catch_unwind();
                let first = Pin::new(&mut handler).poll(cx);
                (handler, first)
            })
        });
        // Most handlers finish in their first poll: answer those at once, and give only the
        // others a place (and a deadline) among the calls in progress.
        if let Poll::Ready(result) = first {
            self.finish_call(id, info, Outcome::of(result, info), &mut observed, deadline);
            return Ok(());
        }
        self.in_flight.push(InFlight {
            id,
            method: info,
            timeout,
            deadline: deadline.map(|deadline| tokio::time::sleep_until(deadline.into())),
            deadline_at: deadline,
            context,
            handler,
            cancelled: false,
            waker: None,
            observed,
        });
        Ok(())
    }

    /// Starts sending the stream a handler returned, under the call's deadline; the call
    /// stays observed until the stream ends. Out of line: the unary path does not need it.
    /// `Some` is the error reply when the handler's result held no stream.
    #[inline(never)]
    fn start_stream(
        &mut self,
        id: u64,
        method: &'static MethodInfo,
        response: S::Response,
        observed: &mut Observed,
        deadline: Option<Instant>,
    ) -> Option<Bytes> {
        match self.service.response_stream(response) {
            Ok(source) => {
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let observed = std::mem::replace(observed, Observed::off());
                self.pumps.add(id, source, timeout, observed);
                None
            }
            Err(_) => Some(error_reply(
                observed,
                id,
                &RpcError::new(
                    ErrorKind::Internal,
                    format!("`{}` returned no stream", method.name),
                ),
            )),
        }
    }

    /// Queues the reply of a finished handler.
    fn finish_call(
        &mut self,
        id: u64,
        method: &'static MethodInfo,
        outcome: Outcome<S::Response>,
        observed: &mut Observed,
        deadline: Option<Instant>,
    ) {
        let desc = self.service.descriptor();
        let frame = match outcome {
            Outcome::Cancelled => {
                self.inputs.remove(&id);
                return;
            }
            Outcome::Failed(err) => error_reply(observed, id, &err),
            Outcome::Done(response) if method.server_streaming => {
                match self.start_stream(id, method, response, observed, deadline) {
                    Some(frame) => frame,
                    None => return,
                }
            }
            Outcome::Done(response) => {
                let mut builder = FrameBuilder::in_arena(&mut self.arena);
                let service = &self.service;
                let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    service.encode_response(&response, builder.body_mut())
                }))
                .unwrap_or_else(|_| {
                    Err(RpcError::new(
                        ErrorKind::Internal,
                        format!("encoding the result of `{}` panicked", method.name),
                    ))
                });
                builder.detach(&mut self.arena);
                match encoded {
                    Err(err) => error_reply(observed, id, &err),
                    Ok(()) => {
                        let body_len = builder.body_len();
                        let frame = builder.finish_response(id);
                        if frame.len() <= self.config.max_frame_size {
                            observed.finish(observe::Outcome::Ok, body_len);
                            frame
                        } else {
                            let err = RpcError::protocol(format!(
                                "the result of `{}::{}` is {} bytes, more than the frame size \
                                 limit of {} bytes; return large data in smaller pieces",
                                desc.name,
                                method.name,
                                frame.len(),
                                self.config.max_frame_size
                            ));
                            error_reply(observed, id, &err)
                        }
                    }
                }
            }
        };
        self.queue(frame);
    }

    fn queue(&mut self, frame: Bytes) {
        self.unsent.push(frame);
    }

    /// Tells the client what the consumers of its streams want, and sends the items of the
    /// streams this side produces, as far as credit and the write buffer allow.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        if !self.notices.due(&mut self.notices_waker, cx.waker()) && self.pumps.is_empty() {
            return;
        }
        for notice in self.notices.take(&mut self.notices_waker, cx.waker()) {
            match notice {
                Notice::Credit { id, items } => {
                    if self.inputs.contains_key(&id) {
                        self.queue(Message::Credit { id, items }.to_frame());
                    }
                }
                Notice::Dropped { id } => {
                    // The handler let go of its input before the end: the client stops.
                    if self.inputs.remove(&id).is_some() {
                        self.queue(Message::Cancel { id }.to_frame());
                    }
                }
            }
        }
        self.pumps
            .poll(cx, &mut self.unsent, self.config.max_buffered_bytes);
    }
}

/// The reply to a call that failed with `err`, recorded as the call's outcome.
fn error_reply(observed: &mut Observed, id: u64, err: &RpcError) -> Bytes {
    observed.finish(observe::Outcome::Failed(err.kind()), 0);
    protocol::error_response_frame(id, err)
}

/// What became of a handler.
enum Outcome<R> {
    Done(R),
    Failed(RpcError),
    /// The caller cancelled: nobody waits for a reply.
    Cancelled,
}

impl<R> Outcome<R> {
    /// The outcome of a handler that ran to its end or panicked.
    fn of(result: std::thread::Result<R>, method: &MethodInfo) -> Outcome<R> {
        match result {
            Ok(response) => Outcome::Done(response),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a non-string panic payload");
                log::warn(format_args!(
                    "the handler of `{}` panicked: {what}",
                    method.name
                ));
                Outcome::Failed(RpcError::new(
                    ErrorKind::Internal,
                    format!(
                        "the handler of `{}` panicked: {what}; the server and the connection \
                         carry on",
                        method.name
                    ),
                ))
            }
        }
    }
}

type Handler<R> = CatchUnwind<AssertUnwindSafe<BoxFuture<R>>>;

/// One running handler, with its deadline.
#[pin_project]
struct InFlight<R> {
    id: u64,
    method: &'static MethodInfo,
    timeout: Option<Duration>,
    #[pin]
    deadline: Option<Sleep>,
    deadline_at: Option<Instant>,
    /// Installed as the thread's current context while the handler is polled.
    context: Option<CallContext>,
    #[pin]
    handler: Handler<R>,
    /// The caller sent `Cancel`: finish without polling the handler again.
    cancelled: bool,
    /// The waker `FuturesUnordered` gave this call, to wake it when it is cancelled.
    waker: Option<Waker>,
    /// The call's span and metrics.
    observed: Observed,
}

impl<R> InFlight<R> {
    fn cancel(self: Pin<&mut Self>) {
        let this = self.project();
        *this.cancelled = true;
        if let Some(waker) = this.waker.take() {
            waker.wake();
        }
    }
}

impl<R> Future for InFlight<R> {
    type Output = (
        u64,
        &'static MethodInfo,
        Outcome<R>,
        Observed,
        Option<Instant>,
    );

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.cancelled {
            let observed = std::mem::replace(this.observed, Observed::off());
            return Poll::Ready((*this.id, *this.method, Outcome::Cancelled, observed, None));
        }
        waker::remember(this.waker, cx.waker());
        let (handler, context) = (this.handler, this.context);
        let polled = this
            .observed
            .in_span(|| context::enter(context, || handler.poll(cx)));
        let outcome = match polled {
            Poll::Ready(result) => Outcome::of(result, this.method),
            Poll::Pending => match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
                Some(Poll::Ready(())) => Outcome::Failed(RpcError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "the handler of `{}` did not finish within the call's deadline of {:?} \
                         and was stopped",
                        this.method.name,
                        this.timeout.unwrap_or_default()
                    ),
                )),
                _ => return Poll::Pending,
            },
        };
        let observed = std::mem::replace(this.observed, Observed::off());
        Poll::Ready((*this.id, *this.method, outcome, observed, *this.deadline_at))
    }
}
