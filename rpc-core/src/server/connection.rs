//! One server connection: reads frames, schedules the calls its dispatcher starts, writes
//! responses.
//!
//! Handlers are polled inside the connection's own task (a `FuturesUnordered`), not spawned:
//! a call that completes at once is answered in the same wake-up that read it, and dropping
//! the connection drops every handler it runs. Whether and how a request becomes a call is
//! the dispatcher's business (`dispatch.rs`); the streams of calls are the stream engine's.

use std::future::{poll_fn, Future};
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::auth::Authorize;
use super::call::{InFlight, Outcome};
use super::dispatch::{
    Admitted, Answer, ConnectionLoad, Deferred, Dispatcher, Handler, Incoming, Request, Route,
};
use super::service::Service;
use super::ServerConfig;
use crate::compress::{Body, Codec, Packer, INLINE_PACK_LIMIT};
use crate::context::{self, CallContext, Metadata};
use crate::deadline::Deadline;
use crate::descriptor::MethodInfo;
use crate::error::{ErrorKind, RpcError};
use crate::frame::Frame;
use crate::keepalive::KeepaliveTimer;
use crate::load::LoadState;
use crate::log;
use crate::middleware::{ServerCall, Stack};
use crate::observe::{self, MethodTable, Observed, ServerObserver};
use crate::outgoing::{close_with, Outgoing, CLOSE_TIMEOUT};
use crate::peer::Peer;
use crate::protocol::{self, FrameBuilder, Message, CONNECTION_ID};
use crate::streaming::{ConnectionWindow, StreamEngine, LOAD_REPORTS};
use crate::transport::Transport;
use crate::waker;

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
    /// The middleware this service's calls run through, if any.
    pub(crate) layers: Option<Stack<ServerCall>>,
    /// The bound on this connection's buffered stream data, counted into the server's total.
    pub(crate) stream_window: Arc<ConnectionWindow>,
    /// The compression codec agreed in the handshake, if any.
    pub(crate) codec: Option<Codec>,
    /// The server's load, which this connection counts its calls into and reports.
    pub(crate) load: Arc<LoadState>,
}

/// A call's handler, and what its first poll gave.
type FirstPoll<R> = (Handler<R>, Poll<std::thread::Result<Answer<R>>>);

/// A large response being compressed on the blocking pool: its frame, its call's
/// observation and the length of its (uncompressed) body, once done.
type PackJob = Pin<Box<dyn Future<Output = (Frame, Observed, usize)> + Send>>;

/// Why a connection ends.
enum End {
    /// The client closed the connection or said goodbye.
    ClientLeft,
    /// The connection broke.
    Broken(io::Error),
    /// This side closes it, and tells the client why.
    Goodbye(ErrorKind, String),
}

pub(crate) fn run<S: Service>(
    service: Arc<S>,
    transport: Box<dyn Transport>,
    routes: Vec<Route>,
    context: ConnectionContext,
) -> impl Future<Output = io::Result<()>> + Send {
    let observe = ServerObserver::new(
        service.descriptor(),
        &context.metrics,
        &routes,
        context
            .peer
            .as_ref()
            .map(|peer| Arc::from(peer.to_string())),
    );
    let mut unsent = Outgoing::default();
    // This side grants credit as its consumers drain: the client may pace by bytes. The
    // same frame answers the client's codec offer.
    unsent.push(StreamEngine::announcement_with(context.codec));
    let packer = context.codec.and_then(|codec| {
        let compression = context.config.compression.as_ref()?;
        Some(compression.packer(codec))
    });
    let mut streams = StreamEngine::server(context.stream_window, context.config.max_frame_size);
    if let Some(packer) = packer {
        streams.set_packer(packer);
    }
    let mut conn = Connection {
        dispatcher: Dispatcher::new(
            service,
            routes,
            Arc::clone(&context.config),
            observe,
            context.peer,
            context.auth,
            context.layers,
        ),
        transport,
        in_flight: FuturesUnordered::new(),
        packing: FuturesUnordered::new(),
        packer,
        unsent,
        arena: BytesMut::new(),
        draining: false,
        shutdown_wait: Box::pin(context.shutdown.clone().cancelled_owned()),
        shutdown_waker: None,
        shutdown: context.shutdown,
        keepalive: context.config.keepalive.map(KeepaliveTimer::new),
        load: LoadTally {
            state: context.load,
            running: 0,
            reports: false,
            replied: false,
            last: None,
        },
        streams,
        config: context.config,
    };
    // A task is as large as its largest state, and a connection spends its life being
    // polled. So it is built here and moved into the future as is (an async fn would keep
    // room for its arguments next to it), and the close, whose timers and writes are
    // larger than the connection, is boxed.
    async move {
        let end = poll_fn(|cx| conn.poll(cx)).await;
        let close = Box::pin(conn.close(end));
        close.await
    }
}

struct Connection<S: Service> {
    /// Makes calls of requests: admission, routing, authorization, decoding.
    dispatcher: Dispatcher<S>,
    transport: Box<dyn Transport>,
    in_flight: FuturesUnordered<InFlight<S::Response>>,
    /// Large responses being compressed off this task.
    packing: FuturesUnordered<PackJob>,
    /// How responses are compressed, if the client and this server agreed on a codec.
    packer: Option<Packer>,
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
    /// The streams of this connection's calls: arguments received, results sent.
    streams: StreamEngine,
    config: Arc<ServerConfig>,
    load: LoadTally,
}

/// This connection's share of the server's load, and its reports to the client.
struct LoadTally {
    state: Arc<LoadState>,
    /// Handlers of this connection counted into `state`.
    running: usize,
    /// Whether the client reads load reports.
    reports: bool,
    /// Whether a reply went out since the last report.
    replied: bool,
    /// The figures last reported.
    last: Option<(u32, u32)>,
}

impl LoadTally {
    #[inline]
    fn started(&mut self) {
        self.running += 1;
        self.state.started();
    }

    #[inline]
    fn ended(&mut self) {
        self.running -= 1;
        self.state.ended(1);
    }

    /// Queues a report with this turn's replies, if the client reads them and the figures
    /// changed since the last.
    #[inline]
    fn report(&mut self, unsent: &mut Outgoing) {
        if !(self.reports && self.replied) {
            return;
        }
        self.replied = false;
        let figures = self.state.wire();
        if self.last != Some(figures) {
            self.last = Some(figures);
            let (in_flight, utilization) = figures;
            unsent.push(
                Message::Load {
                    in_flight,
                    utilization,
                }
                .to_frame(),
            );
        }
    }
}

impl Drop for LoadTally {
    /// Handlers dropped with the connection end too.
    fn drop(&mut self) {
        self.state.ended(self.running);
    }
}

impl<S: Service> Connection<S> {
    /// Ends the connection as `end` says: drops its handlers, sends what is still queued
    /// (and a `Goodbye` when this side closes), and closes the transport.
    async fn close(mut self, end: End) -> io::Result<()> {
        // Handlers of a connection that ends are dropped, not left running.
        self.in_flight = FuturesUnordered::new();
        let mut transport = self.transport;
        match end {
            End::ClientLeft => {
                close_with(&mut transport, self.unsent.take(), CLOSE_TIMEOUT).await;
                Ok(())
            }
            End::Broken(err) => {
                log::connection_broke(&err);
                Err(err)
            }
            End::Goodbye(kind, message) => {
                if kind != ErrorKind::Disconnected {
                    log::closing_connection(kind, &message);
                }
                let goodbye = protocol::goodbye_frame(kind, &message);
                let last = self.unsent.take().into_iter().chain([goodbye.into()]);
                close_with(&mut transport, last, CLOSE_TIMEOUT).await;
                super::linger(&mut transport).await;
                match kind {
                    ErrorKind::Disconnected => Ok(()),
                    _ => Err(io::Error::new(io::ErrorKind::InvalidData, message)),
                }
            }
        }
    }

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
        let reading = self.may_read();
        if reading {
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
        while let Poll::Ready(Some(mut done)) = self.in_flight.poll_next_unpin(cx) {
            self.load.ended();
            self.finish_call(
                done.id,
                done.method,
                done.outcome,
                &mut done.observed,
                done.deadline,
            );
        }
        // Checked first: polling an empty set still registers the waker, on every turn.
        while !self.packing.is_empty() {
            let Poll::Ready(Some((frame, mut observed, body_len))) =
                self.packing.poll_next_unpin(cx)
            else {
                break;
            };
            observed.finish(observe::Outcome::Ok, body_len);
            self.queue(frame);
        }
        self.streams
            .poll(cx, &mut self.unsent, self.config.max_buffered_bytes);
        self.load.report(&mut self.unsent);

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
            && self.packing.is_empty()
            && !self.streams.is_sending()
            && self.unsent.is_done()
        {
            return Poll::Ready(End::Goodbye(
                ErrorKind::Disconnected,
                "the server is shutting down".to_string(),
            ));
        }
        // A turn that did not read registered no wake-up for the client's next frame: if
        // its writes have made room, read in another turn rather than wait for a wake-up
        // that would never come.
        if yielded || (!reading && self.may_read()) {
            cx.waker().wake_by_ref();
        } else if self.in_flight.is_empty() && self.unsent.is_empty() {
            // An idle connection pins no buffer.
            self.arena = BytesMut::new();
        }
        Poll::Pending
    }

    /// Whether to read the client's requests now: not while replies pile up because the
    /// client does not read them.
    #[inline]
    fn may_read(&self) -> bool {
        self.unsent.len() < self.config.max_concurrent_requests.max(64)
            && self.unsent.bytes() < self.config.max_buffered_bytes
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
        if self.streams.settling() {
            // The client's first frame after `Hello`: its announcement says what it reads.
            if let Message::Credit {
                id: CONNECTION_ID,
                items,
            } = message
            {
                self.load.reports = items & LOAD_REPORTS != 0;
            }
            self.streams.settle(&message, &mut self.unsent);
        }
        match message {
            Message::PackedRequest {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => {
                // Opened here, on the connection's task, as the arguments are decoded here
                // too (see `Dispatcher::decode`); what it may cost is bounded by the frame
                // size limit. A body that does not open fails its call, not the connection.
                let packed = Body::packed(&frame, body, self.config.max_frame_size);
                match packed.open() {
                    Ok(plain) => {
                        self.on_request(
                            id, method, timeout_us, &metadata, &plain, &plain, &frame, cx,
                        );
                    }
                    Err(err) => self.queue(protocol::error_response_frame(id, &err)),
                }
                Ok(())
            }
            Message::Request {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => {
                self.on_request(id, method, timeout_us, &metadata, body, &frame, &frame, cx);
                drop(metadata);
                // Decoded: a large frame's buffer is the next one's, or a payload's.
                crate::buffers::recycle(frame);
                Ok(())
            }
            Message::PackedStreamItem { id, body } => {
                let body = Body::packed(&frame, body, self.config.max_frame_size);
                self.streams.on_item(id, body, &mut self.unsent);
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
                self.streams.stop_sending(id);
                self.streams.end_receiving(
                    id,
                    Err(RpcError::new(
                        ErrorKind::Disconnected,
                        "the client cancelled the call",
                    )),
                );
                Ok(())
            }
            Message::StreamItem { id, body } => {
                // The frame becomes the item's body: no second handle on the read buffer.
                let span = crate::streaming::span(&frame, body);
                let body = crate::streaming::narrow(frame, span);
                self.streams
                    .on_item(id, Body::Plain(body), &mut self.unsent);
                Ok(())
            }
            Message::StreamItems { id, items } => {
                let stats = crate::streaming::check_run(items).map_err(|what| {
                    End::Goodbye(ErrorKind::Protocol, format!("the client sent {what}"))
                })?;
                let span = crate::streaming::span(&frame, items);
                let run = crate::streaming::narrow(frame, span);
                self.streams.on_run(id, run, stats, &mut self.unsent);
                Ok(())
            }
            Message::StreamEnd { id, status } => {
                // The client's argument stream ended; the call goes on.
                self.streams.on_end(id, status, false);
                Ok(())
            }
            Message::Credit { id, items } => {
                self.streams.on_credit(id, items);
                Ok(())
            }
            Message::Goodbye { kind, message } => {
                if kind != ErrorKind::Disconnected.to_wire() {
                    log::client_said_goodbye(ErrorKind::from_wire(kind), message);
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

    /// Handles one request (its body uncompressed): dispatches it, and starts the call or
    /// answers its refusal.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn on_request(
        &mut self,
        id: u64,
        method: u32,
        timeout_us: Option<u64>,
        metadata: &[(&str, &[u8])],
        body: &[u8],
        body_owner: &Bytes,
        frame: &Bytes,
        cx: &mut Context<'_>,
    ) {
        let metadata = if metadata.is_empty() {
            Metadata::new()
        } else {
            metadata
                .iter()
                .map(|&(key, value)| (key, frame.slice_ref(value)))
                .collect()
        };
        let request = Incoming {
            body_owner,
            id,
            method,
            timeout: timeout_us.map(Duration::from_micros),
            metadata,
            body,
        };
        let load = ConnectionLoad {
            calls: self.in_flight.len() + self.packing.len() + self.streams.sending(),
            draining: self.draining,
        };
        match self.dispatcher.dispatch(request, load, &mut self.streams) {
            Ok(call) => self.start(call, cx),
            Err(err) => self.queue(protocol::error_response_frame(id, &err)),
        }
    }

    /// Starts an admitted call: its context, its observation and its handler, polled once
    /// (in the call's context: making the handler may run user code too). Most finish then
    /// and are answered at once; only the others join the calls in progress, with their
    /// deadline.
    #[inline(never)]
    fn start(&mut self, call: Admitted<S::Request>, cx: &mut Context<'_>) {
        let deadline = call
            .timeout
            .and_then(|timeout| crate::clock::now().checked_add(timeout));
        let mut context = CallContext::for_call(deadline, call.metadata, self.dispatcher.peer());
        let mut observed = self.dispatcher.observe.start(
            call.index,
            call.method,
            call.id,
            call.body_len,
            &mut context,
        );
        let (handler, first) = match call.request {
            Request::Decoded(request) => {
                let service = &self.dispatcher.service;
                observed.in_span(|| {
                    context::enter(&mut context, || {
                        let mut handler = Handler::plain(service.call(request));
                        let first = Pin::new(&mut handler).poll(cx);
                        (handler, first)
                    })
                })
            }
            Request::Layered(deferred) => self.start_layered(
                call.method,
                *deferred,
                &mut context,
                &mut observed,
                call.body_len,
                cx,
            ),
        };
        if let Poll::Ready(result) = first {
            let outcome = Outcome::of(result, call.method);
            self.finish_call(call.id, call.method, outcome, &mut observed, deadline);
            return;
        }
        self.load.started();
        self.in_flight.push(InFlight {
            id: call.id,
            method: call.method,
            deadline: Deadline::at(deadline, call.timeout),
            deadline_at: deadline,
            context,
            handler,
            cancelled: false,
            waker: None,
            observed,
        });
    }

    /// The handler of a call with middleware, polled once. Out of line: the plain path does
    /// not need it.
    #[inline(never)]
    fn start_layered(
        &mut self,
        method: &'static MethodInfo,
        deferred: Deferred,
        context: &mut Option<CallContext>,
        observed: &mut Observed,
        body_len: usize,
        cx: &mut Context<'_>,
    ) -> FirstPoll<S::Response> {
        let mut handler = self.dispatcher.layered(method, deferred, context, body_len);
        let first =
            observed.in_span(|| context::enter(context, || Pin::new(&mut handler).poll(cx)));
        (handler, first)
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
    ) -> Option<Frame> {
        match self.dispatcher.service.response_stream(response) {
            Ok(source) => {
                let timeout = deadline.map(|d| d.saturating_duration_since(crate::clock::now()));
                let observed = std::mem::replace(observed, Observed::off());
                self.streams.send(id, source, timeout, observed);
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
        self.load.replied = true;
        let frame = match outcome {
            Outcome::Cancelled => {
                self.streams
                    .end_receiving(id, Err(RpcError::disconnected("the call was cancelled")));
                return;
            }
            Outcome::Failed(err) => error_reply(observed, id, &err),
            Outcome::Encoded(_) if method.server_streaming => error_reply(
                observed,
                id,
                &crate::middleware::reply::mismatched("a value", method.name),
            ),
            Outcome::Encoded(body) => {
                let mut builder = FrameBuilder::in_arena(&mut self.arena);
                builder.writer().bytes_raw(body);
                builder.detach(&mut self.arena);
                match self.response_frame(id, method, builder, observed) {
                    Some(frame) => frame,
                    None => return,
                }
            }
            Outcome::Done(response) if method.server_streaming => {
                match self.start_stream(id, method, response, observed, deadline) {
                    Some(frame) => frame,
                    None => return,
                }
            }
            Outcome::Done(response) => {
                let mut builder = FrameBuilder::in_arena(&mut self.arena);
                let service = &self.dispatcher.service;
                let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    service.encode_response_owned(response, &mut builder.writer())
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
                    Ok(()) => match self.response_frame(id, method, builder, observed) {
                        Some(frame) => frame,
                        None => return,
                    },
                }
            }
        };
        self.queue(frame);
    }

    /// The response frame of a result encoded in `builder` (compressed if the connection
    /// agreed to), or the error reply when it is too large to send; `None` when it is being
    /// compressed off this task and will be queued when done.
    #[inline(always)]
    fn response_frame(
        &mut self,
        id: u64,
        method: &'static MethodInfo,
        builder: FrameBuilder,
        observed: &mut Observed,
    ) -> Option<Frame> {
        let body_len = builder.body_len();
        if let Some(packer) = self.packer.filter(|p| p.wants(body_len)) {
            return self.packed_response_frame(packer, id, method, builder, observed);
        }
        let frame = builder.finish_response(id);
        if frame.len() <= self.config.max_frame_size {
            observed.finish(observe::Outcome::Ok, body_len);
            return Some(frame);
        }
        Some(self.too_large(id, method, frame.len(), observed))
    }

    /// [`response_frame`](Connection::response_frame) for a body worth compressing. Out of
    /// line: most responses are small.
    #[inline(never)]
    fn packed_response_frame(
        &mut self,
        packer: Packer,
        id: u64,
        method: &'static MethodInfo,
        builder: FrameBuilder,
        observed: &mut Observed,
    ) -> Option<Frame> {
        let body_len = builder.body_len();
        // The limit applies to the frame as it would be uncompressed.
        let plain_len = FrameBuilder::response_len(id, body_len);
        if plain_len > self.config.max_frame_size {
            return Some(self.too_large(id, method, plain_len, observed));
        }
        if body_len <= INLINE_PACK_LIMIT {
            observed.finish(observe::Outcome::Ok, body_len);
            return Some(pack_response(packer, builder, id));
        }
        self.pack_off_task(packer, builder, id, observed);
        None
    }

    /// The error reply of a result whose frame would be `len` bytes, over the limit.
    #[cold]
    fn too_large(
        &self,
        id: u64,
        method: &'static MethodInfo,
        len: usize,
        observed: &mut Observed,
    ) -> Frame {
        let err = RpcError::protocol(format!(
            "the result of `{}::{}` is {len} bytes, more than the frame size limit of {} \
             bytes; return large data in smaller pieces",
            self.dispatcher.service.descriptor().name,
            method.name,
            self.config.max_frame_size
        ));
        error_reply(observed, id, &err)
    }

    fn queue(&mut self, frame: impl Into<Frame>) {
        self.unsent.push(frame);
    }

    /// Compresses a large response on tokio's blocking pool rather than on this task, which
    /// does the I/O of every call of the connection: compressing megabytes takes
    /// milliseconds, during which the others would wait. (Compressing inside the handler's
    /// future instead would need the encoded result there, which generated handlers do not
    /// have; the blocking pool keeps this in one place.) The reply is queued when done,
    /// behind whatever was queued meanwhile: responses are not ordered anyway.
    #[cold]
    fn pack_off_task(
        &mut self,
        packer: Packer,
        builder: FrameBuilder,
        id: u64,
        observed: &mut Observed,
    ) {
        let observed = std::mem::replace(observed, Observed::off());
        let body_len = builder.body_len();
        let job = tokio::task::spawn_blocking(move || pack_response(packer, builder, id));
        self.packing.push(Box::pin(async move {
            let frame = job.await.unwrap_or_else(|_| {
                protocol::error_response_frame(
                    id,
                    &RpcError::new(ErrorKind::Internal, "compressing the result failed"),
                )
                .into()
            });
            (frame, observed, body_len)
        }));
    }
}

/// The response frame of `builder`'s body, compressed if that makes it smaller.
fn pack_response(packer: Packer, mut builder: FrameBuilder, id: u64) -> Frame {
    match packer.pack(builder.body()) {
        Some(packed) => packed.finish_packed_response(id),
        None => builder.finish_response(id),
    }
}

/// The reply to a call that failed with `err`, recorded as the call's outcome.
fn error_reply(observed: &mut Observed, id: u64, err: &RpcError) -> Frame {
    observed.finish(observe::Outcome::Failed(err.kind()), 0);
    protocol::error_response_frame(id, err).into()
}
