//! The state a client connection shares between its callers and its I/O task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;

use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;
use crate::protocol::{self, Message};

/// Where a call stands, from the connection's point of view.
pub(crate) enum Slot {
    /// Sent (or queued); the caller's waker, to wake when the response arrives.
    Waiting(Option<Waker>),
    /// The response body, or why there will be none.
    Done(Result<Bytes, RpcError>),
}

/// Everything behind the lock. The lock is only ever held for a few map or queue
/// operations, never across an `.await` or an I/O call.
pub(crate) struct State {
    pub(crate) pending: HashMap<u64, Slot>,
    /// Frames waiting for the I/O task to write them.
    pub(crate) outbox: Vec<Bytes>,
    /// The I/O task's waker, to wake when `outbox` gets frames.
    pub(crate) driver: Option<Waker>,
    /// Why the connection is gone, once it is: every later call fails with this.
    pub(crate) closed: Option<RpcError>,
    /// Every `Client` clone is gone: the I/O task finishes its queue and closes.
    pub(crate) released: bool,
}

/// The shared half of one client connection.
pub(crate) struct Shared {
    pub(crate) desc: &'static ServiceDescriptor,
    pub(crate) max_frame_size: usize,
    next_id: AtomicU64,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(desc: &'static ServiceDescriptor, max_frame_size: usize) -> Shared {
        Shared {
            desc,
            max_frame_size,
            next_id: AtomicU64::new(0),
            state: Mutex::new(State {
                pending: HashMap::new(),
                outbox: vec![protocol::hello_frame(desc)],
                driver: None,
                closed: None,
                released: false,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers call `id` and queues its frame; fails at once if the connection is gone.
    pub(crate) fn start(&self, id: u64, frame: Bytes, waker: &Waker) -> Result<(), RpcError> {
        let driver = {
            let mut state = self.lock();
            if let Some(err) = &state.closed {
                return Err(err.clone());
            }
            state.pending.insert(id, Slot::Waiting(Some(waker.clone())));
            state.outbox.push(frame);
            state.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
        Ok(())
    }

    /// The caller gave up on `id` (dropped or timed out): forget it and tell the server.
    pub(crate) fn cancel(&self, id: u64) {
        let driver = {
            let mut state = self.lock();
            match state.pending.remove(&id) {
                Some(Slot::Waiting(_)) if state.closed.is_none() => {
                    state.outbox.push(Message::Cancel { id }.to_frame());
                    state.driver.take()
                }
                _ => None,
            }
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }

    /// Every `Client` clone is gone.
    pub(crate) fn release(&self) {
        let driver = {
            let mut state = self.lock();
            state.released = true;
            state.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }

    /// Delivers the outcome of call `id`, if its caller still waits for it.
    pub(crate) fn complete(&self, id: u64, outcome: Result<Bytes, RpcError>) {
        let waker = {
            let mut state = self.lock();
            match state.pending.get_mut(&id) {
                Some(slot @ Slot::Waiting(_)) => {
                    match std::mem::replace(slot, Slot::Done(outcome)) {
                        Slot::Waiting(waker) => waker,
                        Slot::Done(_) => None,
                    }
                }
                _ => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The connection is gone: fail every waiting call and every later one with `err`.
    pub(crate) fn close(&self, err: RpcError) {
        let wakers: Vec<Waker> = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(err.clone());
            }
            state.outbox.clear();
            state
                .pending
                .values_mut()
                .filter_map(|slot| match slot {
                    Slot::Waiting(waker) => {
                        let waker = waker.take();
                        *slot = Slot::Done(Err(err.clone()));
                        waker
                    }
                    Slot::Done(_) => None,
                })
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }
}
