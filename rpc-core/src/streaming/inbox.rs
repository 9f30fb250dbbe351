//! The receiving half of a stream: the items a connection has read for one consumer
//! ([`Inbox`]), the consumer's handle on them ([`RemoteStream`]), and what the consumers
//! want the peer told ([`Notices`]).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use crate::compress::Body;

use super::engine::ConnectionWindow;
use super::WINDOW;
use crate::deadline::Deadline;
use crate::error::RpcError;
use crate::lock::lock;
use crate::observe::Observed;

/// Credit is granted back in batches of this many taken items (fewer frames), and whenever
/// the consumer waits for more: a sender pacing itself by bytes (see `Pumps`) must never
/// wait for credit that a consumer with nothing left to read would withhold.
pub(super) const CREDIT_BATCH: u32 = WINDOW / 2;

/// What a connection must tell the peer on behalf of its streams' consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The consumer of stream `id` took `items` more: grant the sender that much credit.
    Credit { id: u64, items: u32 },
    /// The consumer of stream `id` is gone before its end: the sender should stop.
    Dropped { id: u64 },
}

impl Notice {
    pub(crate) fn is_dropped(&self) -> bool {
        matches!(self, Notice::Dropped { .. })
    }
}

/// Notices from a connection's stream consumers to its I/O task.
#[derive(Default)]
pub(crate) struct Notices {
    state: Mutex<(Vec<Notice>, Option<Waker>)>,
    /// Notices are waiting: lets the I/O task skip the lock on every other wake-up.
    pending: AtomicBool,
}

impl Notices {
    fn push(&self, notice: Notice) {
        let waker = {
            let mut state = lock(&self.state);
            state.0.push(notice);
            self.pending.store(true, Ordering::Release);
            state.1.clone()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether [`take`](Notices::take) has anything to do: notices are waiting, or the I/O
    /// task's waker is not the one registered (`registered` is the one it last gave). The
    /// common answer, no, costs a pointer comparison and an atomic load.
    #[inline]
    pub(crate) fn due(&self, registered: &Option<Waker>, waker: &Waker) -> bool {
        !registered.as_ref().is_some_and(|w| w.will_wake(waker))
            || self.pending.load(Ordering::Acquire)
    }

    /// Takes the notices and registers `waker` for the next one.
    pub(crate) fn take(&self, registered: &mut Option<Waker>, waker: &Waker) -> Vec<Notice> {
        let changed = crate::waker::remember(registered, waker);
        if !changed && !self.pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut state = lock(&self.state);
        if changed {
            state.1 = Some(waker.clone());
        }
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut state.0)
    }
}

/// Why an arriving item was not taken into an inbox.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The sender went past its credit: it breaks the protocol.
    OverCredit,
    /// The connection already buffers as much stream data as it may.
    OverWindow,
}

/// The received items of one stream, shared by the connection (which pushes) and the
/// consumer (which takes).
pub(crate) struct Inbox {
    id: u64,
    notices: Arc<Notices>,
    window: Arc<ConnectionWindow>,
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<Body>,
    /// Bytes of `items`, counted in the connection's window until taken.
    held: usize,
    /// How the stream ended, once it has.
    end: Option<Result<(), RpcError>>,
    consumer: Option<Waker>,
    /// Items taken since credit was last granted.
    taken: u32,
}

impl Inbox {
    pub(crate) fn new(id: u64, notices: Arc<Notices>, window: Arc<ConnectionWindow>) -> Arc<Inbox> {
        Arc::new(Inbox {
            id,
            notices,
            window,
            state: Mutex::new(InboxState::default()),
        })
    }

    /// An item arrived. On `Err` the stream is failed: the sender must be told to stop.
    pub(crate) fn push(&self, item: Body) -> Result<(), Refused> {
        let waker = {
            let mut state = lock(&self.state);
            if state.end.is_some() {
                return Ok(());
            }
            if state.items.len() >= WINDOW as usize {
                state.end = Some(Err(RpcError::protocol(format!(
                    "the peer sent more than {WINDOW} stream items without credit"
                ))));
                let held = std::mem::take(&mut state.held);
                state.items.clear();
                self.window.release(held);
                let waker = state.consumer.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return Err(Refused::OverCredit);
            }
            // Counted as received: a compressed item is held compressed until its consumer
            // takes (and opens) it.
            let len = item.wire_len();
            if !self.window.admit(len) {
                // The items already here are still delivered; the error comes after them.
                state.end = Some(Err(self.window.full_error()));
                let waker = state.consumer.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return Err(Refused::OverWindow);
            }
            state.held += len;
            state.items.push_back(item);
            state.consumer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The stream ended (after the items already pushed).
    pub(crate) fn end(&self, outcome: Result<(), RpcError>) {
        let waker = {
            let mut state = lock(&self.state);
            if state.end.is_none() {
                state.end = Some(outcome);
            }
            state.consumer.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_item(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Body, RpcError>>> {
        let mut credit = None;
        let result = {
            let mut state = lock(&self.state);
            if let Some(item) = state.items.pop_front() {
                state.held -= item.wire_len();
                self.window.release(item.wire_len());
                state.taken += 1;
                if state.taken >= CREDIT_BATCH && state.end.is_none() {
                    credit = Some(std::mem::take(&mut state.taken));
                }
                Poll::Ready(Some(Ok(item)))
            } else {
                match &mut state.end {
                    Some(Ok(())) => Poll::Ready(None),
                    Some(Err(err)) => {
                        let err = err.clone();
                        // Yield the error once, then the end.
                        state.end = Some(Ok(()));
                        Poll::Ready(Some(Err(err)))
                    }
                    None => {
                        crate::waker::remember(&mut state.consumer, cx.waker());
                        if state.taken > 0 {
                            credit = Some(std::mem::take(&mut state.taken));
                        }
                        Poll::Pending
                    }
                }
            }
        };
        if let Some(items) = credit {
            self.notices.push(Notice::Credit { id: self.id, items });
        }
        result
    }

    fn ended(&self) -> bool {
        lock(&self.state).end.is_some()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Items nobody will take no longer count against the connection's window.
        let held = self
            .state
            .get_mut()
            .map_or_else(|poisoned| poisoned.into_inner().held, |state| state.held);
        self.window.release(held);
    }
}

/// The consumer's handle on a received stream; used by generated code. Dropping it before
/// the stream ended tells the sender to stop.
pub struct RemoteStream {
    inbox: Arc<Inbox>,
    /// Told how the stream ended (or that it was dropped first): the call's observation and
    /// the balancing client's accounting of the attempt. Boxed, and only when someone
    /// watches, so that `Streaming<T>`, and so every request and response enum holding
    /// one, stays small to move on the unary path.
    watch: Option<Box<Watch>>,
}

/// Whoever wants to know how a received stream ended.
struct Watch {
    /// The call's deadline, which ends the stream too.
    deadline: Option<Pin<Box<Deadline>>>,
    observed: Observed,
    /// Bytes of items received so far, for the call's metrics.
    bytes: usize,
    on_end: Option<Box<dyn StreamEnded>>,
}

/// Told once how a received stream ended: `None` if its consumer dropped it first.
pub(crate) trait StreamEnded: Send {
    fn ended(self: Box<Self>, outcome: Option<Result<(), &RpcError>>);
}

impl RemoteStream {
    pub(crate) fn new(inbox: Arc<Inbox>) -> RemoteStream {
        RemoteStream { inbox, watch: None }
    }

    fn watch(&mut self) -> &mut Watch {
        self.watch.get_or_insert_with(|| {
            Box::new(Watch {
                deadline: None,
                observed: Observed::off(),
                bytes: 0,
                on_end: None,
            })
        })
    }

    /// Keeps observing the call this stream answers until the stream ends: its span's
    /// outcome and duration, and its metrics, then cover the whole stream.
    pub(crate) fn observing(mut self, observed: Observed) -> RemoteStream {
        if observed.is_active() {
            self.watch().observed = observed;
        }
        self
    }

    /// Ends the stream with `DeadlineExceeded` if it is not over `timeout` from now.
    pub(crate) fn with_deadline(mut self, timeout: Option<Duration>) -> RemoteStream {
        if let Some(timeout) = timeout {
            self.watch().deadline = Some(Box::pin(Deadline::after(Some(timeout))));
        }
        self
    }

    /// Calls `on_end` once the stream ends, or with `None` when it is dropped first.
    pub(crate) fn on_end(mut self, on_end: Box<dyn StreamEnded>) -> RemoteStream {
        self.watch().on_end = Some(on_end);
        self
    }

    pub(crate) fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, RpcError>>> {
        // A compressed item is opened here, by its consumer, not by the connection's I/O
        // task; one that does not open is an error item, as one that does not decode is.
        let item = self
            .inbox
            .poll_item(cx)
            .map(|item| item.map(|item| item.and_then(Body::open)));
        match &item {
            Poll::Ready(Some(Ok(body))) => {
                if let Some(watch) = self.watch.as_deref_mut() {
                    watch.bytes += body.len();
                }
            }
            Poll::Ready(Some(Err(err))) => self.ended(Err(err)),
            Poll::Ready(None) => self.ended(Ok(())),
            Poll::Pending => {
                let expired = self
                    .watch
                    .as_deref_mut()
                    .and_then(|watch| watch.deadline.as_mut())
                    .and_then(|deadline| match deadline.as_mut().poll_expired(cx) {
                        Poll::Ready(err) => Some(err),
                        Poll::Pending => None,
                    });
                if let Some(err) = expired {
                    self.ended(Err(&err));
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
        item
    }

    /// The stream ended this way (its deadline, say, ended it on the consumer's side).
    pub(crate) fn ended(&mut self, end: Result<(), &RpcError>) {
        if let Some(watch) = self.watch.as_deref_mut() {
            watch.observed.finish_with(end, watch.bytes);
            if let Some(on_end) = watch.on_end.take() {
                on_end.ended(Some(end));
            }
        }
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        if let Some(on_end) = self.watch.as_deref_mut().and_then(|w| w.on_end.take()) {
            on_end.ended(None);
        }
        if !self.inbox.ended() {
            self.inbox
                .notices
                .push(Notice::Dropped { id: self.inbox.id });
        }
    }
}

impl fmt::Debug for RemoteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStream")
            .field("id", &self.inbox.id)
            .finish_non_exhaustive()
    }
}
