//! The client connection's I/O task: writes queued frames in batches, routes responses, and
//! runs the connection's streams.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::pending::{ClientStreams, Shared, StreamOp};
use crate::compress::{Body, Codec};
use crate::error::{ErrorKind, RpcError};
use crate::keepalive::KeepaliveTimer;
use crate::observe::Observed;
use crate::outgoing::{close_with, Outgoing, CLOSE_TIMEOUT};
use crate::protocol::{self, ErrorDetail, Message, Status};
use crate::streaming::Notice;
use crate::transport::Transport;
use crate::waker;

/// Frames read per wake-up before yielding, so one busy connection cannot starve the
/// runtime's other tasks.
const READ_BUDGET: usize = 128;

/// The most frames still delivered once writing to the server has failed.
const DRAIN_AFTER_WRITE_FAILURE: usize = 8 * READ_BUDGET;

/// Runs the connection until it breaks or every handle is gone.
pub(super) fn run<T: Transport>(
    shared: Arc<Shared>,
    streams: ClientStreams,
    transport: T,
) -> impl Future<Output = ()> + Send {
    // A task is as large as its largest state, and this one spends its life polling the
    // driver. So the driver is built here and moved into the future as is (an async fn
    // would keep room for its arguments, or for a `mut self`, next to it), and the close,
    // whose timer and write are larger than the driver, is boxed.
    let mut driver = Driver {
        keepalive: shared.keepalive.map(KeepaliveTimer::new),
        shared,
        transport,
        unsent: Outgoing::default(),
        peer_left: false,
        heard: false,
        streams,
    };
    async move {
        let outcome = poll_fn(|cx| driver.poll(cx)).await;
        let close = Box::pin(driver.close(outcome));
        close.await;
    }
}

struct Driver<T> {
    shared: Arc<Shared>,
    transport: T,
    /// Frames taken from the shared outbox that the transport has not accepted yet.
    unsent: Outgoing,
    /// The server said `Goodbye`: nothing more to tell it.
    peer_left: bool,
    /// A frame came from the server already.
    heard: bool,
    keepalive: Option<KeepaliveTimer>,
    /// The streams of this connection's calls, both ways.
    streams: ClientStreams,
}

impl<T: Transport> Driver<T> {
    /// Fails what is still waiting with the reason the connection ended, tells the server
    /// about a protocol error (unless it left), and closes the transport.
    async fn close(self, outcome: Result<(), RpcError>) {
        let Driver {
            shared,
            mut transport,
            peer_left,
            mut streams,
            ..
        } = self;
        let (err, goodbye) = match outcome {
            Ok(()) => (RpcError::disconnected("the client was dropped"), None),
            Err(err) => {
                let goodbye = (err.kind() == ErrorKind::Protocol && !peer_left)
                    .then(|| protocol::goodbye_frame(ErrorKind::Protocol, err.message()));
                (err, goodbye)
            }
        };
        streams.close(&err);
        shared.close(err);
        close_with(&mut transport, goodbye, CLOSE_TIMEOUT).await;
    }

    /// `Ready(Ok)` once released and drained; `Ready(Err)` when the connection is gone.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RpcError>> {
        loop {
            let released = self.take_outbox(cx) && self.shared.idle() && self.streams.is_idle();

            self.poll_write(cx)?;

            let mut budget = READ_BUDGET;
            let mut heard = false;
            let mut yielded = false;
            loop {
                match Pin::new(&mut self.transport).poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        heard = true;
                        self.handle(frame)?;
                    }
                    Poll::Ready(Some(Err(err))) => {
                        let kind = match err.kind() {
                            std::io::ErrorKind::InvalidData => ErrorKind::Protocol,
                            // A transport that authenticates (TLS) reports a refused
                            // credential this way.
                            std::io::ErrorKind::PermissionDenied => ErrorKind::Unauthenticated,
                            _ => ErrorKind::Disconnected,
                        };
                        return Poll::Ready(Err(RpcError::new(
                            kind,
                            format!("the connection to the server failed: {err}"),
                        )));
                    }
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(RpcError::disconnected(
                            "the server closed the connection",
                        )));
                    }
                    Poll::Pending => break,
                }
                budget -= 1;
                if budget == 0 {
                    // Yield after this turn, but finish it first: the credit and cancels
                    // the consumers are waiting to send must not wait for a quiet moment.
                    yielded = true;
                    break;
                }
            }

            if let Some(keepalive) = &mut self.keepalive {
                if let Err(waited) = keepalive.tick(heard, &mut self.unsent, cx) {
                    return Poll::Ready(Err(RpcError::disconnected(format!(
                        "the server did not answer a keepalive ping within {waited:?}; the \
                         connection is presumed dead"
                    ))));
                }
            }
            self.poll_streams(cx);
            if !self.unsent.is_empty() {
                // Reading queued a reply (a Pong), the keepalive a ping or the streams
                // their frames: write them now.
                self.poll_write(cx)?;
            }
            if released && self.unsent.is_done() {
                return Poll::Ready(Ok(()));
            }
            if yielded {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let more = {
                let outbox = self.shared.outbox();
                !outbox.frames.is_empty() || !outbox.stream_ops.is_empty()
            };
            if !more {
                return Poll::Pending;
            }
        }
    }

    /// Moves the callers' queued frames into `unsent` and their streams into the engine, in
    /// order, and registers for the next; whether every handle is gone.
    #[inline]
    fn take_outbox(&mut self, cx: &mut Context<'_>) -> bool {
        let mut outbox = self.shared.outbox();
        self.unsent.extend(outbox.frames.drain(..));
        waker::remember(&mut outbox.driver, cx.waker());
        if !outbox.stream_ops.is_empty() {
            adopt_streams(&mut self.streams, &mut outbox.stream_ops);
        }
        outbox.released
    }

    /// Tells the server what the consumers of its streams want, and sends the items of the
    /// streams this side produces, as far as credit allows.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        let notices = self.streams.take_notices(cx);
        if !notices.is_empty() {
            // A consumer may have been handed its stream, and dropped it, after this turn
            // took the outbox: its request (and its inbox) go first, or the `Cancel` below
            // would overtake the `Request` it is about, and the server would ignore it. (A
            // `Credit` cannot: its items came after the request was sent.)
            if notices.iter().any(Notice::is_dropped) {
                self.take_outbox(cx);
            }
            self.streams.answer(notices, &mut self.unsent);
        }
        // Up to about a frame's worth queued: the server's credit bounds each stream anyway.
        let limit = self.shared.max_frame_size.max(1 << 20);
        self.streams.pump(cx, &mut self.unsent, limit);
    }

    /// Hands every queued frame to the transport and flushes them as one batch.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), RpcError> {
        match self.unsent.poll_send(Pin::new(&mut self.transport), cx) {
            Ok(()) => Ok(()),
            Err(err) => Err(self.write_failed(cx, err)),
        }
    }

    /// The connection can no longer be written to. A server that sent its last frames and
    /// closed (a stream's end, say, while this side still had credit to grant) left them
    /// readable: deliver what is there before the connection is declared gone, rather than
    /// fail calls the server did answer. Reads only what is ready, and a bounded amount.
    #[cold]
    fn write_failed(&mut self, cx: &mut Context<'_>, err: std::io::Error) -> RpcError {
        for _ in 0..DRAIN_AFTER_WRITE_FAILURE {
            match Pin::new(&mut self.transport).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if self.handle(frame).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        RpcError::disconnected(format!("writing to the server failed: {err}"))
    }

    fn handle(&mut self, frame: Bytes) -> Result<(), RpcError> {
        if frame.len() > self.shared.max_frame_size {
            return Err(RpcError::protocol(format!(
                "the server sent a frame of {} bytes, more than the limit of {} bytes",
                frame.len(),
                self.shared.max_frame_size
            )));
        }
        let message = Message::decode(&frame).map_err(|err| {
            RpcError::protocol(format!(
                "the server sent {}",
                protocol::describe_bad_frame(&frame, &err)
            ))
        })?;
        if !self.heard {
            // A server of this version says first that it grants credit whenever a
            // consumer waits; one of the first revision says anything else first.
            self.heard = true;
            let announced = match message {
                Message::Credit {
                    id: protocol::CONNECTION_ID,
                    items,
                } => {
                    self.accept_codec(items)?;
                    true
                }
                _ => false,
            };
            self.streams.first_frame(announced);
        }
        if self.streams.settling() {
            self.streams.settle(&message, &mut self.unsent);
        }
        match message {
            Message::Response { id, status, body } => {
                // Answered: a stream still being sent for it is no longer wanted.
                self.streams.stop_sending(id);
                if self.streams.is_receiving(id) {
                    // A stream call answered with one response: an error before any item
                    // (or a server breaking the rules), which ends the stream.
                    let outcome = status.into_result().and_then(|()| {
                        Err(RpcError::protocol(
                            "the server answered a streaming call with a single response",
                        ))
                    });
                    self.streams.end_receiving(id, outcome);
                } else {
                    let outcome = match status {
                        Status::Ok => Ok(Body::Plain(frame.slice_ref(body))),
                        status => status
                            .into_result()
                            .map(|()| Body::Plain(Bytes::new()))
                            .map_err(|err| ErrorDetail::apply(err, body)),
                    };
                    self.shared.complete(id, outcome);
                }
                Ok(())
            }
            Message::PackedResponse { id, body } => {
                // Routed as it is: the caller decompresses it, in its own task.
                let body = Body::packed(&frame, body, self.shared.max_frame_size);
                self.streams.stop_sending(id);
                if self.streams.is_receiving(id) {
                    self.streams.end_receiving(
                        id,
                        Err(RpcError::protocol(
                            "the server answered a streaming call with a single response",
                        )),
                    );
                } else {
                    self.shared.complete(id, Ok(body));
                }
                Ok(())
            }
            Message::PackedStreamItem { id, body } => {
                let body = Body::packed(&frame, body, self.shared.max_frame_size);
                self.streams.on_item(id, body, &mut self.unsent);
                Ok(())
            }
            Message::Goodbye { kind, message } => {
                self.peer_left = true;
                Err(RpcError::new(
                    match ErrorKind::from_wire(kind) {
                        // Calls still waiting will get no answer; `Overloaded` (a server at
                        // its connection limit) says none of them ran, so it is kept.
                        ErrorKind::Internal => ErrorKind::Disconnected,
                        kind => kind,
                    },
                    format!("the server closed the connection: {message}"),
                ))
            }
            Message::Ping { nonce } => {
                self.unsent.push(Message::Pong { nonce }.to_frame());
                Ok(())
            }
            Message::Pong { .. } => Ok(()),
            Message::Load {
                in_flight,
                utilization,
            } => {
                // Sent only to a client that asked; one that did not ignores it all the same.
                if let Some(load) = &self.shared.load {
                    load.record(in_flight, utilization);
                }
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
                let stats = crate::streaming::check_run(items)
                    .map_err(|what| RpcError::protocol(format!("the server sent {what}")))?;
                let span = crate::streaming::span(&frame, items);
                let run = crate::streaming::narrow(frame, span);
                self.streams.on_run(id, run, stats, &mut self.unsent);
                Ok(())
            }
            Message::StreamEnd { id, status } => {
                // The server ended its side: whatever this side still sends is moot.
                self.streams.on_end(id, status, true);
                Ok(())
            }
            Message::Credit { id, items } => {
                self.streams.on_credit(id, items);
                Ok(())
            }
            Message::Cancel { id } => {
                // The server wants no more of the stream this side sends for `id`.
                self.streams.stop_sending(id);
                Ok(())
            }
            other => Err(RpcError::protocol(format!(
                "the server sent a {} message, which a client never expects",
                other.name()
            ))),
        }
    }
}

impl<T> Driver<T> {
    /// The server's announcement carries, in `items`, the codec it picked from this
    /// client's offer (0: none; a server that predates compression always sends 0). From
    /// now on requests and stream items may go compressed.
    fn accept_codec(&mut self, items: u32) -> Result<(), RpcError> {
        // A client that offered nothing reads the announcement as version 1 always did,
        // whatever its `items`.
        if items == 0 || self.shared.compression.is_none() {
            return Ok(());
        }
        let offered = self.shared.compression.as_ref().and_then(|compression| {
            let codec = u8::try_from(items).ok().and_then(Codec::from_wire)?;
            compression
                .codecs()
                .contains(&codec)
                .then(|| compression.packer(codec))
        });
        match offered {
            Some(packer) => {
                let _ = self.shared.packer.set(packer);
                self.streams.set_packer(packer);
                Ok(())
            }
            None => Err(RpcError::protocol(format!(
                "the server picked compression codec {items}, which this client did not offer"
            ))),
        }
    }
}

/// Starts and stops the streams callers asked for. Out of line: unary calls have none.
#[inline(never)]
fn adopt_streams(streams: &mut ClientStreams, ops: &mut Vec<StreamOp>) {
    for op in ops.drain(..) {
        match op {
            StreamOp::Send(id, source) => streams.send(id, source, None, Observed::off()),
            StreamOp::Receive(id, inbox) => streams.adopt(id, inbox),
            StreamOp::StopSending(id) => {
                streams.stop_sending(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ConnectionOptions;
    use crate::descriptor::ServiceDescriptor;

    /// An idle connection keeps its I/O task for its whole life: the task must stay about
    /// the size of the driver, not of its close (which is boxed) or of its arguments.
    #[tokio::test]
    async fn the_io_task_is_about_the_size_of_the_driver() {
        static DESC: ServiceDescriptor = ServiceDescriptor::new("Nothing", &[]);
        let (transport, _server) = crate::memory::pair();
        let (shared, streams) = Shared::new(&DESC, &ConnectionOptions::default());
        let task = run(Arc::new(shared), streams, transport);
        let driver = std::mem::size_of::<Driver<crate::memory::MemoryTransport>>();
        assert!(
            std::mem::size_of_val(&task) <= driver + 64,
            "the task is {} bytes, the driver {driver}",
            std::mem::size_of_val(&task)
        );
    }
}
