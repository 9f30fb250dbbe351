//! The client connection's I/O task: writes queued frames in batches, routes responses.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::pending::{PumpOp, Shared};
use crate::error::{ErrorKind, RpcError};
use crate::keepalive::KeepaliveTimer;
use crate::outgoing::{close_with, Outgoing, CLOSE_TIMEOUT};
use crate::protocol::{self, Message, Status};
use crate::streaming::{Notice, Pumps};
use crate::transport::Transport;
use crate::waker;

/// Frames read per wake-up before yielding, so one busy connection cannot starve the
/// runtime's other tasks.
const READ_BUDGET: usize = 128;

/// Runs the connection until it breaks or every client handle is gone.
pub(super) async fn run<T: Transport>(shared: Arc<Shared>, transport: T) {
    let mut driver = Driver {
        keepalive: shared.keepalive.map(KeepaliveTimer::new),
        shared,
        transport,
        unsent: Outgoing::default(),
        peer_left: false,
        pumps: Pumps::default(),
        notices_waker: None,
    };
    let outcome = poll_fn(|cx| driver.poll(cx)).await;
    let Driver {
        shared,
        mut transport,
        peer_left,
        ..
    } = driver;
    let goodbye = match outcome {
        Ok(()) => {
            shared.close(RpcError::disconnected("the client was dropped"));
            None
        }
        Err(err) => {
            let goodbye = (err.kind() == ErrorKind::Protocol && !peer_left)
                .then(|| protocol::goodbye_frame(ErrorKind::Protocol, err.message()));
            shared.close(err);
            goodbye
        }
    };
    close_with(&mut transport, goodbye, CLOSE_TIMEOUT).await;
}

struct Driver<T> {
    shared: Arc<Shared>,
    transport: T,
    /// Frames taken from the shared outbox that the transport has not accepted yet.
    unsent: Outgoing,
    /// The server said `Goodbye`: nothing more to tell it.
    peer_left: bool,
    keepalive: Option<KeepaliveTimer>,
    /// The streams this side sends: arguments of calls with a `Streaming<T>` argument.
    pumps: Pumps,
    /// The waker last given to the stream consumers' notices.
    notices_waker: Option<std::task::Waker>,
}

impl<T: Transport> Driver<T> {
    /// `Ready(Ok)` once released and drained; `Ready(Err)` when the connection is gone.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RpcError>> {
        loop {
            let released = {
                let mut outbox = self.shared.outbox();
                self.unsent.extend(outbox.frames.drain(..));
                waker::remember(&mut outbox.driver, cx.waker());
                if !outbox.pump_ops.is_empty() {
                    for op in outbox.pump_ops.drain(..) {
                        match op {
                            PumpOp::Add(id, source) => {
                                self.pumps
                                    .add(id, source, None, crate::observe::Observed::off())
                            }
                            PumpOp::Remove(id) => {
                                self.pumps.cancel(id);
                            }
                        }
                    }
                }
                outbox.released
            } && self.shared.idle();

            self.poll_write(cx)?;

            let mut budget = READ_BUDGET;
            let mut heard = false;
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
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
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
                // Reading queued a reply (a Pong) or the keepalive a ping: write it now.
                self.poll_write(cx)?;
            }
            if released && self.unsent.is_done() {
                return Poll::Ready(Ok(()));
            }
            let more = {
                let outbox = self.shared.outbox();
                !outbox.frames.is_empty() || !outbox.pump_ops.is_empty()
            };
            if !more {
                return Poll::Pending;
            }
        }
    }

    /// Tells the server what the consumers of its streams want, and sends the items of the
    /// streams this side produces, as far as credit allows.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        if !self.shared.notices.due(&mut self.notices_waker, cx.waker()) && self.pumps.is_empty() {
            return;
        }
        for notice in self
            .shared
            .notices
            .take(&mut self.notices_waker, cx.waker())
        {
            match notice {
                Notice::Credit { id, items } => {
                    if self.shared.inbox(id).is_some() {
                        self.unsent.push(Message::Credit { id, items }.to_frame());
                    }
                }
                Notice::Dropped { id } => {
                    if self.shared.forget(id).is_some() {
                        self.pumps.cancel(id);
                        self.unsent.push(Message::Cancel { id }.to_frame());
                    }
                }
            }
        }
        // Up to about a frame's worth queued: the server's credit bounds each stream anyway.
        let limit = self.shared.max_frame_size.max(1 << 20);
        self.pumps.poll(cx, &mut self.unsent, limit);
    }

    /// Hands every queued frame to the transport and flushes them as one batch.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), RpcError> {
        self.unsent
            .poll_send(Pin::new(&mut self.transport), cx)
            .map_err(|err| RpcError::disconnected(format!("writing to the server failed: {err}")))
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
        match message {
            Message::Response { id, status, body } => {
                if !self.pumps.is_empty() {
                    // Answered: a stream still being sent for it is no longer wanted.
                    self.pumps.cancel(id);
                }
                let outcome = match status {
                    Status::Ok => Ok(frame.slice_ref(body)),
                    Status::Error { kind, message } => {
                        Err(RpcError::new(ErrorKind::from_wire(kind), message))
                    }
                };
                self.shared.complete(id, outcome);
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
            Message::StreamItem { id, body } => {
                if let Some(inbox) = self.shared.inbox(id) {
                    if inbox.push(frame.slice_ref(body)).is_err() {
                        // Over its credit: that stream is failed; the server stops.
                        self.shared.forget(id);
                        self.pumps.cancel(id);
                        self.unsent.push(Message::Cancel { id }.to_frame());
                    }
                }
                Ok(())
            }
            Message::StreamEnd { id, status } => {
                // The server ended its side: whatever this side still sends is moot.
                self.pumps.cancel(id);
                if let Some(inbox) = self.shared.forget(id) {
                    inbox.end(match status {
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
            Message::Cancel { id } => {
                // The server wants no more of the stream this side sends for `id`.
                self.pumps.cancel(id);
                Ok(())
            }
            other => Err(RpcError::protocol(format!(
                "the server sent a {} message, which a client never expects",
                other.name()
            ))),
        }
    }
}
