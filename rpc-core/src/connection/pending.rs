//! The state a client connection shares between its callers and its I/O task.
//!
//! Calls are many and concurrent, so the table of pending calls is split into shards by
//! request id, each behind its own lock, and the queue of frames to send has a lock of its
//! own: a caller registering a call, the I/O task completing another, and a third caller
//! queueing its frame rarely wait for each other. No lock is ever held across an `.await`
//! or an I/O call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::compress::{Body, Compression, Packer};
use tokio::sync::Notify;

use super::ConnectionOptions;
use crate::context::Metadata;
use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;
use crate::frame::Frame;
use crate::keepalive::Keepalive;
use crate::load::ReportedLoad;
use crate::lock::lock;
use crate::observe::MethodTable;
use crate::protocol::{self, Message};
use crate::streaming::{ConnectionWindow, Inbox, InboxMaker, ItemSource, StreamEngine};

/// Shards of the pending-call table (a power of two).
const SHARDS: usize = 16;

/// Where a call stands, from the connection's point of view.
pub(crate) enum Slot {
    /// Sent (or queued); the caller's waker, to wake when the response arrives.
    Waiting(Option<Waker>),
    /// The response body (opened by the caller), or why there will be none.
    Done(Result<Body, RpcError>),
}

/// Request ids are this connection's own counter: spread, never chosen by a peer, so they
/// need no DoS-resistant hashing.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: consecutive ids land in different buckets.
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type Calls = HashMap<u64, Slot, BuildHasherDefault<IdHasher>>;

/// The stream engine of a client connection: its stream ids are its own request ids.
pub(crate) type ClientStreams = StreamEngine<BuildHasherDefault<IdHasher>>;

/// Frames waiting for the I/O task, and how to wake it.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) frames: Vec<Frame>,
    /// The I/O task's waker, to wake when `frames` gets one.
    pub(crate) driver: Option<Waker>,
    /// Every handle is gone: the I/O task finishes its queue and closes.
    pub(crate) released: bool,
    /// Streams for the I/O task to start or stop, in the order of `frames`.
    pub(crate) stream_ops: Vec<StreamOp>,
}

/// A change to the streams of a client connection.
pub(crate) enum StreamOp {
    /// Send the items of this source as the stream of call `id` (after its request).
    Send(u64, ItemSource),
    /// Receive the stream that answers call `id` into this inbox.
    Receive(u64, Arc<Inbox>),
    /// Stop sending the stream of call `id`.
    StopSending(u64),
}

/// The shared half of one client connection.
pub(crate) struct Shared {
    pub(crate) desc: &'static ServiceDescriptor,
    pub(crate) max_frame_size: usize,
    pub(crate) keepalive: Option<Keepalive>,
    /// Sent with every call, before the call's own metadata.
    pub(crate) metadata: Metadata,
    /// Metric handles for the calls made on this connection.
    pub(crate) metrics: MethodTable,
    /// The codecs this client offered, if any.
    pub(crate) compression: Option<Compression>,
    /// How requests are compressed, once the server's answer named a codec: set once by
    /// the I/O task, read by callers as they build their frames (requests built before
    /// go uncompressed, which any server reads).
    pub(crate) packer: OnceLock<Packer>,
    /// Makes the inboxes of the streams that answer calls.
    inboxes: InboxMaker,
    /// Woken once the connection is gone (see [`Shared::closed`]).
    closed_notify: Notify,
    next_id: AtomicU64,
    shards: [Mutex<Calls>; SHARDS],
    outbox: Mutex<Outbox>,
    /// Why the connection is gone, once it is: every later call fails with this.
    closed: OnceLock<RpcError>,
    /// Where the server's load reports go, if this client asked for them.
    pub(crate) load: Option<Arc<ReportedLoad>>,
}

impl Shared {
    /// The shared half of a new connection, and the stream engine its I/O task owns.
    pub(crate) fn new(
        desc: &'static ServiceDescriptor,
        options: &ConnectionOptions,
    ) -> (Shared, ClientStreams) {
        let engine = StreamEngine::client(
            ConnectionWindow::new(options.max_buffered_stream_bytes, None),
            options.max_frame_size,
        );
        let shared = Shared {
            desc,
            max_frame_size: options.max_frame_size,
            keepalive: options.keepalive,
            metadata: options.metadata.clone(),
            metrics: options
                .metrics
                .clone()
                .unwrap_or_else(|| MethodTable::client(desc)),
            compression: options.compression.clone(),
            packer: OnceLock::new(),
            inboxes: engine.inbox_maker(),
            closed_notify: Notify::new(),
            next_id: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Mutex::new(Calls::default())),
            outbox: Mutex::new(Outbox {
                frames: vec![
                    Frame::from(protocol::hello_frame(
                        desc,
                        options
                            .compression
                            .as_ref()
                            .map(Compression::offer_entry)
                            .as_deref(),
                    )),
                    StreamEngine::announcement(options.load.is_some()).into(),
                ],
                ..Outbox::default()
            }),
            closed: OnceLock::new(),
            load: options.load.clone(),
        };
        (shared, engine)
    }

    /// The shard holding call `id`.
    fn calls(&self, id: u64) -> MutexGuard<'_, Calls> {
        lock(&self.shards[id as usize & (SHARDS - 1)])
    }

    pub(crate) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new inbox for the stream that answers call `id`.
    pub(crate) fn inbox(&self, id: u64) -> Arc<Inbox> {
        self.inboxes.make(id)
    }

    /// Whether no call is waiting for a response.
    pub(crate) fn idle(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).is_empty())
    }

    /// Queues `frame` (and the stream ops of its call) for the I/O task and wakes it;
    /// `Err` if the connection is gone. Checked under the outbox's lock, which `close`
    /// takes after setting `closed`: what is queued is either seen by `close` or refused.
    #[inline]
    fn queue(&self, frame: Frame, ops: Option<[Option<StreamOp>; 2]>) -> Result<(), RpcError> {
        let driver = {
            let mut outbox = self.outbox();
            if let Some(err) = self.closed.get() {
                return Err(err.clone());
            }
            outbox.frames.push(frame);
            if let Some(ops) = ops {
                outbox.stream_ops.extend(ops.into_iter().flatten());
            }
            outbox.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
        Ok(())
    }

    /// Registers call `id` (waiting for its response, if `waker` is given) and queues its
    /// frame, with the streams it sends and receives; fails at once if the connection is
    /// gone.
    #[inline]
    pub(crate) fn start(
        &self,
        id: u64,
        frame: Frame,
        waker: Option<&Waker>,
        input: Option<ItemSource>,
        output: Option<Arc<Inbox>>,
    ) -> Result<(), RpcError> {
        if let Some(waker) = waker {
            let mut calls = self.calls(id);
            // Checked under the shard's lock: `close` sets `closed` before it drains the
            // shards, so a call either sees it here or is failed by the drain.
            if let Some(err) = self.closed.get() {
                return Err(err.clone());
            }
            calls.insert(id, Slot::Waiting(Some(waker.clone())));
        }
        let ops = (input.is_some() || output.is_some()).then(|| {
            [
                input.map(|input| StreamOp::Send(id, input)),
                output.map(|inbox| StreamOp::Receive(id, inbox)),
            ]
        });
        let queued = self.queue(frame, ops);
        if queued.is_err() && waker.is_some() {
            self.calls(id).remove(&id);
        }
        queued
    }

    /// The response of call `id`, or why there is none; `Pending` registers `cx`'s waker.
    #[inline]
    pub(crate) fn poll_response(
        &self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Body, RpcError>> {
        let mut calls = self.calls(id);
        match calls.get_mut(&id) {
            Some(Slot::Waiting(waker)) => {
                crate::waker::remember(waker, cx.waker());
                Poll::Pending
            }
            Some(Slot::Done(_)) => match calls.remove(&id) {
                Some(Slot::Done(outcome)) => Poll::Ready(outcome),
                _ => Poll::Ready(Err(lost())),
            },
            None => Poll::Ready(Err(lost())),
        }
    }

    /// The caller gave up on `id` (dropped or timed out): forget it and tell the server,
    /// behind the call's own request in the same queue.
    pub(crate) fn cancel(&self, id: u64) {
        let was_waiting = matches!(self.calls(id).remove(&id), Some(Slot::Waiting(_)));
        if was_waiting {
            let _ = self.queue(
                Message::Cancel { id }.to_frame().into(),
                Some([Some(StreamOp::StopSending(id)), None]),
            );
        }
    }

    /// Every handle is gone.
    pub(crate) fn release(&self) {
        let driver = {
            let mut outbox = self.outbox();
            outbox.released = true;
            outbox.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }

    /// Delivers the outcome of call `id`, if its caller still waits for it. `false` if no
    /// caller waits for a response of that id.
    pub(crate) fn complete(&self, id: u64, outcome: Result<Body, RpcError>) -> bool {
        let mut calls = self.calls(id);
        let waker = match calls.get_mut(&id) {
            Some(slot @ Slot::Waiting(_)) => match std::mem::replace(slot, Slot::Done(outcome)) {
                Slot::Waiting(waker) => waker,
                Slot::Done(_) => None,
            },
            _ => return false,
        };
        drop(calls);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Whether the connection is gone (a call started on it now is refused unsent).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get().is_some()
    }

    /// Waits until the connection is gone, and says why.
    pub(crate) async fn closed(&self) -> RpcError {
        loop {
            let notified = self.closed_notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(err) = self.closed.get() {
                return err.clone();
            }
            notified.await;
        }
    }

    /// The connection is gone: fail every waiting call and every later one with `err`.
    /// Streams the I/O task has not taken over yet end with it too.
    pub(crate) fn close(&self, err: RpcError) {
        let _ = self.closed.set(err);
        self.closed_notify.notify_waiters();
        let Some(err) = self.closed.get() else {
            return;
        };
        let ops = {
            let mut outbox = self.outbox();
            outbox.frames.clear();
            std::mem::take(&mut outbox.stream_ops)
        };
        for op in ops {
            if let StreamOp::Receive(_, inbox) = op {
                inbox.end(Err(err.clone()));
            }
        }
        for shard in &self.shards {
            let wakers: Vec<Waker> = lock(shard)
                .values_mut()
                .filter_map(|slot| match slot {
                    Slot::Waiting(waker) => {
                        let waker = waker.take();
                        *slot = Slot::Done(Err(err.clone()));
                        waker
                    }
                    Slot::Done(_) => None,
                })
                .collect();
            for waker in wakers {
                waker.wake();
            }
        }
    }
}

#[cold]
fn lost() -> RpcError {
    RpcError::disconnected("the call was lost by its connection")
}
