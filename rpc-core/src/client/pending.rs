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
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::Notify;

use super::ConnectionOptions;
use crate::context::Metadata;
use crate::keepalive::Keepalive;
use crate::observe::MethodTable;
use crate::streaming::{Inbox, ItemSource, Notices};

use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;
use crate::protocol::{self, Message};

/// Shards of the pending-call table (a power of two).
const SHARDS: usize = 16;

/// Where a call stands, from the connection's point of view.
pub(crate) enum Slot {
    /// Sent (or queued); the caller's waker, to wake when the response arrives.
    Waiting(Option<Waker>),
    /// The response body, or why there will be none.
    Done(Result<Bytes, RpcError>),
    /// A call answered with a stream: its items go to this inbox.
    Stream(Arc<Inbox>),
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

/// Frames waiting for the I/O task, and how to wake it.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) frames: Vec<Bytes>,
    /// The I/O task's waker, to wake when `frames` gets one.
    pub(crate) driver: Option<Waker>,
    /// Every `Client` clone is gone: the I/O task finishes its queue and closes.
    pub(crate) released: bool,
    /// Streams for the I/O task to start or stop sending.
    pub(crate) pump_ops: Vec<PumpOp>,
}

/// A change to the streams a client connection sends.
pub(crate) enum PumpOp {
    /// Send the items of this source as the stream of call `id` (after its request).
    Add(u64, ItemSource),
    /// Stop sending the stream of call `id`.
    Remove(u64),
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
    /// Woken once the connection is gone (see [`Shared::closed`]).
    closed_notify: Notify,
    /// What the consumers of this connection's received streams want the server told.
    pub(crate) notices: Arc<Notices>,
    next_id: AtomicU64,
    shards: [Mutex<Calls>; SHARDS],
    outbox: Mutex<Outbox>,
    /// Why the connection is gone, once it is: every later call fails with this.
    closed: OnceLock<RpcError>,
}

/// Locks `mutex`, using the data as it is if a panic poisoned it: every update under these
/// locks leaves the data consistent, so a panic elsewhere cannot make it wrong.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(desc: &'static ServiceDescriptor, options: &ConnectionOptions) -> Shared {
        Shared {
            desc,
            max_frame_size: options.max_frame_size,
            keepalive: options.keepalive,
            metadata: options.metadata.clone(),
            metrics: options
                .metrics
                .clone()
                .unwrap_or_else(|| MethodTable::client(desc)),
            closed_notify: Notify::new(),
            notices: Arc::default(),
            next_id: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Mutex::new(Calls::default())),
            outbox: Mutex::new(Outbox {
                frames: vec![protocol::hello_frame(desc)],
                ..Outbox::default()
            }),
            closed: OnceLock::new(),
        }
    }

    /// The shard holding call `id`.
    pub(crate) fn calls(&self, id: u64) -> MutexGuard<'_, Calls> {
        lock(&self.shards[id as usize & (SHARDS - 1)])
    }

    pub(crate) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether no call is waiting for a response.
    pub(crate) fn idle(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).is_empty())
    }

    /// Queues `frame` for the I/O task and wakes it.
    fn send(&self, frame: Bytes) {
        let driver = {
            let mut outbox = self.outbox();
            outbox.frames.push(frame);
            outbox.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }

    /// Registers call `id` and queues its frame; fails at once if the connection is gone.
    pub(crate) fn start(&self, id: u64, frame: Bytes, waker: &Waker) -> Result<(), RpcError> {
        {
            let mut calls = self.calls(id);
            // Checked under the shard's lock: `close` sets `closed` before it drains the
            // shards, so a call either sees it here or is failed by the drain.
            if let Some(err) = self.closed.get() {
                return Err(err.clone());
            }
            calls.insert(id, Slot::Waiting(Some(waker.clone())));
        }
        self.send(frame);
        Ok(())
    }

    /// Registers call `id` in `slot`, queues its frame and, if the call sends a stream
    /// too, that stream; fails at once if the connection is gone.
    pub(crate) fn start_stream(
        &self,
        id: u64,
        frame: Bytes,
        slot: Slot,
        input: Option<ItemSource>,
    ) -> Result<(), RpcError> {
        {
            let mut calls = self.calls(id);
            if let Some(err) = self.closed.get() {
                return Err(err.clone());
            }
            calls.insert(id, slot);
        }
        let driver = {
            let mut outbox = self.outbox();
            outbox.frames.push(frame);
            if let Some(input) = input {
                outbox.pump_ops.push(PumpOp::Add(id, input));
            }
            outbox.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
        Ok(())
    }

    /// The caller gave up on `id` (dropped or timed out): forget it and tell the server.
    pub(crate) fn cancel(&self, id: u64) {
        let was_waiting = matches!(
            self.calls(id).remove(&id),
            Some(Slot::Waiting(_) | Slot::Stream(_))
        );
        if was_waiting && self.closed.get().is_none() {
            let driver = {
                let mut outbox = self.outbox();
                outbox.frames.push(Message::Cancel { id }.to_frame());
                outbox.pump_ops.push(PumpOp::Remove(id));
                outbox.driver.take()
            };
            if let Some(driver) = driver {
                driver.wake();
            }
        }
    }

    /// The inbox of stream call `id`, if its consumer still waits for items.
    pub(crate) fn inbox(&self, id: u64) -> Option<Arc<Inbox>> {
        match self.calls(id).get(&id) {
            Some(Slot::Stream(inbox)) => Some(Arc::clone(inbox)),
            _ => None,
        }
    }

    /// Stream call `id` is over (or its consumer is gone): forget it.
    pub(crate) fn forget(&self, id: u64) -> Option<Arc<Inbox>> {
        let mut calls = self.calls(id);
        if !matches!(calls.get(&id), Some(Slot::Stream(_))) {
            return None;
        }
        match calls.remove(&id) {
            Some(Slot::Stream(inbox)) => Some(inbox),
            _ => None,
        }
    }

    /// Every `Client` clone is gone.
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

    /// Delivers the outcome of call `id`, if its caller still waits for it.
    pub(crate) fn complete(&self, id: u64, outcome: Result<Bytes, RpcError>) {
        let mut calls = self.calls(id);
        let waker = match calls.get_mut(&id) {
            Some(slot @ Slot::Waiting(_)) => match std::mem::replace(slot, Slot::Done(outcome)) {
                Slot::Waiting(waker) => waker,
                _ => None,
            },
            Some(Slot::Stream(_)) => {
                // A stream call answered with one response: an error before any item (or
                // a server breaking the rules), which ends the stream.
                if let Some(Slot::Stream(inbox)) = calls.remove(&id) {
                    drop(calls);
                    inbox.end(outcome.map(|_| ()));
                }
                return;
            }
            _ => None,
        };
        drop(calls);
        if let Some(waker) = waker {
            waker.wake();
        }
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
    pub(crate) fn close(&self, err: RpcError) {
        let _ = self.closed.set(err);
        self.closed_notify.notify_waiters();
        let Some(err) = self.closed.get() else {
            return;
        };
        self.outbox().frames.clear();
        for shard in &self.shards {
            let mut streams = Vec::new();
            let wakers: Vec<Waker> = {
                let mut shard = lock(shard);
                shard.retain(|_, slot| match slot {
                    Slot::Stream(inbox) => {
                        streams.push(Arc::clone(inbox));
                        false
                    }
                    _ => true,
                });
                shard
                    .values_mut()
                    .filter_map(|slot| match slot {
                        Slot::Waiting(waker) => {
                            let waker = waker.take();
                            *slot = Slot::Done(Err(err.clone()));
                            waker
                        }
                        Slot::Done(_) | Slot::Stream(_) => None,
                    })
                    .collect()
            };
            for inbox in streams {
                inbox.end(Err(err.clone()));
            }
            for waker in wakers {
                waker.wake();
            }
        }
    }
}
