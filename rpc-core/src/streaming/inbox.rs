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
use super::pump::charge;
use super::run;
use super::{byte_window, ITEM_OVERHEAD, WINDOW};
use crate::deadline::Deadline;
use crate::error::RpcError;
use crate::lock::lock;
use crate::observe::Observed;

/// Item credit is granted back in batches of this many taken items (fewer frames), and
/// whenever the consumer waits for more: a sender pacing itself by bytes (see `Pumps`) must
/// never wait for credit that a consumer with nothing left to read would withhold. Byte
/// credit goes back in batches of a quarter of the stream's byte window, by the same rule.
pub(super) const CREDIT_BATCH: u32 = WINDOW / 2;

/// What a connection must tell the peer on behalf of its streams' consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The consumer of stream `id` took `amount` more (items, or charged bytes once the
    /// peer credits bytes): grant the sender that much credit.
    Credit { id: u64, amount: u64 },
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

/// Items as they arrived: one item's frame, or a run of them (see `super::run`), which
/// stays one buffer until its consumer takes the items one by one.
pub(crate) enum Arrived {
    One(Body),
    /// A run, with what it held when it was taken in (the consumer splits it, and reads
    /// only its bytes).
    Run(Bytes, run::RunStats),
}

/// The next item of `queue`, taken off its front.
#[inline]
fn next_item(queue: &mut VecDeque<Arrived>) -> Option<Body> {
    loop {
        match queue.front_mut()? {
            Arrived::One(_) => {
                return match queue.pop_front() {
                    Some(Arrived::One(body)) => Some(body),
                    _ => None,
                }
            }
            Arrived::Run(run, _) => {
                let item = run::split_next(run);
                if run.is_empty() || item.is_none() {
                    queue.pop_front();
                }
                // A run was checked whole when it arrived: `None` cannot happen.
                if let Some(item) = item {
                    return Some(Body::Plain(item));
                }
            }
        }
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
/// consumer (which takes them all at once, into its [`RemoteStream`]'s own queue, and tells
/// the inbox how much it took only when it comes back for more or grants credit: the two
/// sides meet once per batch, not once per item).
pub(crate) struct Inbox {
    id: u64,
    notices: Arc<Notices>,
    window: Arc<ConnectionWindow>,
    /// The stream was failed for a sender beyond its credit: the items the consumer
    /// already moved to its own queue are dropped too, as those still here are.
    failed: AtomicBool,
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    /// Items pushed and not yet moved to the consumer.
    items: VecDeque<Arrived>,
    /// Body bytes counted in the connection's window: of the items received that the
    /// consumer has not reported taken (those here and those in its queue).
    held: usize,
    /// The same items in the unit of the stream's credit (items, or charged bytes): what a
    /// sender within its credit keeps within the window.
    held_credit: u64,
    /// The peer credits bytes (settled before the first item arrives).
    bytes: bool,
    /// The consumer granted byte credit once: the sender's window is open to its full size.
    opened: bool,
    /// How the stream ended, once it has.
    end: Option<Result<(), RpcError>>,
    consumer: Option<Waker>,
}

impl InboxState {
    /// Counts in items admitted: their body bytes, and their cost in the stream's credit
    /// (credited in bytes if `bytes`).
    #[inline]
    fn count_in(&mut self, bytes: bool, body: usize, cost: u64) {
        self.bytes = bytes;
        self.held += body;
        self.held_credit += cost;
    }
}

impl Inbox {
    pub(crate) fn new(id: u64, notices: Arc<Notices>, window: Arc<ConnectionWindow>) -> Arc<Inbox> {
        Arc::new(Inbox {
            id,
            notices,
            window,
            failed: AtomicBool::new(false),
            state: Mutex::new(InboxState::default()),
        })
    }

    /// Items arrived, of a stream credited in bytes (`bytes`) or items: all those the
    /// connection read for it in one pass, taken in with one lock and one wake-up. On `Err`
    /// the stream is failed: the sender must be told to stop.
    pub(crate) fn push(
        &self,
        items: impl IntoIterator<Item = Arrived>,
        bytes: bool,
    ) -> Result<(), Refused> {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return Ok(());
        }
        let mut admission = self.window.admission();
        let mut refused = None;
        'items: for arrived in items {
            match arrived {
                Arrived::One(item) => {
                    // Counted as received: a compressed item is held compressed until its
                    // consumer takes (and opens) it.
                    if let Err(why) =
                        self.take_in(&mut state, &mut admission, item.wire_len(), bytes)
                    {
                        refused = Some(why);
                        break;
                    }
                    state.items.push_back(Arrived::One(item));
                }
                Arrived::Run(items, stats) => {
                    if self.take_in_run(&mut state, &mut admission, stats, bytes) {
                        state.items.push_back(Arrived::Run(items, stats));
                        continue;
                    }
                    // Not all of it fits: item by item, to find the first that does not.
                    let mut rest = &items[..];
                    let mut before = run::RunStats::default();
                    while !rest.is_empty() {
                        let taken = items.len() - rest.len();
                        let Some(item) = run::next(&mut rest) else {
                            break; // cannot happen: the run was checked whole
                        };
                        if let Err(why) =
                            self.take_in(&mut state, &mut admission, item.len(), bytes)
                        {
                            if matches!(why, Refused::OverWindow) && taken > 0 {
                                // The items before it are still delivered.
                                let run = items.slice(..taken);
                                state.items.push_back(Arrived::Run(run, before));
                            }
                            refused = Some(why);
                            break 'items;
                        }
                        before.items += 1;
                        before.body += item.len();
                    }
                    state.items.push_back(Arrived::Run(items, stats));
                }
            }
        }
        drop(admission);
        if matches!(refused, Some(Refused::OverCredit)) {
            state.items.clear();
            self.window.release(std::mem::take(&mut state.held));
        }
        let waker = state.consumer.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        refused.map_or(Ok(()), Err)
    }

    /// Counts a whole run in at once if all its items fit (as [`take_in`](Self::take_in)
    /// would find them one by one); whether it did.
    #[inline]
    fn take_in_run(
        &self,
        state: &mut InboxState,
        admission: &mut super::engine::Admission<'_>,
        stats: run::RunStats,
        bytes: bool,
    ) -> bool {
        let cost = if bytes {
            stats.body as u64 + stats.items * u64::from(ITEM_OVERHEAD)
        } else {
            stats.items
        };
        let within = if bytes {
            state.held_credit + cost <= byte_window(state.opened)
        } else {
            state.held_credit + cost <= u64::from(WINDOW)
        };
        if !within || !admission.admit_all(stats.body) {
            return false;
        }
        state.count_in(bytes, stats.body, cost);
        true
    }

    /// Counts an item of `len` body bytes in, credited in bytes (`bytes`) or items; on
    /// `Err` the stream is ended with the error, and takes nothing more.
    fn take_in(
        &self,
        state: &mut InboxState,
        admission: &mut super::engine::Admission<'_>,
        len: usize,
        bytes: bool,
    ) -> Result<(), Refused> {
        let cost = if bytes { charge(len) } else { 1 };
        // What the consumer took is reported before credit for it is granted, so a
        // sender within its credit never finds this count past the window (one item
        // alone always fits).
        let over = if bytes {
            state.held_credit > 0 && state.held_credit + cost > byte_window(state.opened)
        } else {
            state.held_credit >= u64::from(WINDOW)
        };
        if over {
            state.end = Some(Err(over_credit(bytes, state.opened)));
            self.failed.store(true, Ordering::Release);
            return Err(Refused::OverCredit);
        }
        if !admission.admit(len) {
            // The items already here are still delivered; the error comes after them.
            state.end = Some(Err(self.window.full_error()));
            return Err(Refused::OverWindow);
        }
        state.count_in(bytes, len, cost);
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

    fn ended(&self) -> bool {
        lock(&self.state).end.is_some()
    }
}

/// The credit the consumer grants now (all it took, nothing once the stream has ended); a
/// first byte credit opens the stream's window, which the inbox (`state`, locked) learns
/// before the sender can.
fn credit_due(state: &mut InboxState, taken: &mut Taken) -> u64 {
    if state.end.is_some() || taken.uncredited == 0 {
        return 0;
    }
    if taken.bytes {
        state.opened = true;
        taken.opened = true;
    }
    std::mem::take(&mut taken.uncredited)
}

#[cold]
fn over_credit(bytes: bool, opened: bool) -> RpcError {
    RpcError::protocol(if bytes {
        format!(
            "the peer sent stream items beyond its credit: more than {} bytes (each item's \
             body plus {ITEM_OVERHEAD}) not yet taken",
            byte_window(opened)
        )
    } else {
        format!("the peer sent more than {WINDOW} stream items without credit")
    })
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

/// The consumer's side of an inbox: the batch it moved out, and what it took from it that
/// the inbox (and the sender) have not heard of yet.
#[derive(Default)]
struct Taken {
    /// Items moved out of the inbox, not taken yet.
    batch: VecDeque<Arrived>,
    /// The peer credits bytes.
    bytes: bool,
    /// Byte credit was granted once (see `InboxState::opened`).
    opened: bool,
    /// Taken and not yet reported to the inbox: body bytes, and credit units.
    unreported_bytes: usize,
    unreported_credit: u64,
    /// Taken and reported, not yet credited to the sender (credit units).
    uncredited: u64,
}

impl Taken {
    /// Credit is granted once this much is taken (fewer `Credit` frames), and whenever the
    /// consumer waits for more.
    fn batch_credit(&self) -> u64 {
        if self.bytes {
            byte_window(self.opened) / 4
        } else {
            u64::from(CREDIT_BATCH)
        }
    }
}

impl Inbox {
    /// The next item for the consumer, whose own queue and counts are `taken`.
    fn poll_item(
        &self,
        taken: &mut Taken,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Body, RpcError>>> {
        if !taken.batch.is_empty() && !self.failed.load(Ordering::Acquire) {
            if let Some(item) = next_item(&mut taken.batch) {
                let len = item.wire_len();
                let cost = if taken.bytes { charge(len) } else { 1 };
                taken.unreported_bytes += len;
                taken.unreported_credit += cost;
                if taken.uncredited + taken.unreported_credit >= taken.batch_credit() {
                    let mut state = lock(&self.state);
                    self.report(&mut state, taken);
                    let credit = credit_due(&mut state, taken);
                    drop(state);
                    self.grant(credit);
                }
                return Poll::Ready(Some(Ok(item)));
            }
        }
        let mut credit = 0;
        let result = {
            let mut state = lock(&self.state);
            self.report(&mut state, taken);
            if self.failed.load(Ordering::Relaxed) {
                taken.batch.clear();
            }
            std::mem::swap(&mut taken.batch, &mut state.items);
            taken.bytes = state.bytes;
            if let Some(item) = next_item(&mut taken.batch) {
                let len = item.wire_len();
                taken.unreported_bytes += len;
                taken.unreported_credit += if taken.bytes { charge(len) } else { 1 };
                if taken.uncredited >= taken.batch_credit() {
                    credit = credit_due(&mut state, taken);
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
                        // It waits: nothing it took may stay uncredited.
                        credit = credit_due(&mut state, taken);
                        Poll::Pending
                    }
                }
            }
        };
        self.grant(credit);
        result
    }

    /// Tells the inbox what the consumer took since it last did: those items leave the
    /// connection's window and the stream's count, and may be credited.
    fn report(&self, state: &mut InboxState, taken: &mut Taken) {
        // A failed stream released everything it held at once.
        let bytes = std::mem::take(&mut taken.unreported_bytes).min(state.held);
        state.held -= bytes;
        self.window.release(bytes);
        let credit = std::mem::take(&mut taken.unreported_credit);
        state.held_credit = state.held_credit.saturating_sub(credit);
        taken.uncredited += credit;
    }

    fn grant(&self, amount: u64) {
        if amount > 0 {
            self.notices.push(Notice::Credit {
                id: self.id,
                amount,
            });
        }
    }
}

/// The consumer's handle on a received stream; used by generated code. Dropping it before
/// the stream ended tells the sender to stop.
pub struct RemoteStream {
    inbox: Arc<Inbox>,
    taken: Taken,
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
        RemoteStream {
            inbox,
            taken: Taken::default(),
            watch: None,
        }
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
            .poll_item(&mut self.taken, cx)
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
