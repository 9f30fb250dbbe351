//! Streams of items in either direction of a call: [`Streaming<T>`].
//!
//! A method may take one `Streaming<T>` argument (the client sends items), return
//! `Streaming<T>` (the server sends items), or both. Items travel as `StreamItem` frames of
//! the call's id, and a stream ends with `StreamEnd` (success or an error).
//!
//! Flow control is by credit, per stream and direction: a sender may have at most
//! [`WINDOW`] items that the receiver has not yet taken; the receiver grants more
//! (`Credit`) as its consumer takes them. So a consumer that stops reading makes the
//! producer wait, and a stream never holds more than `WINDOW` received items (each at most
//! the frame size limit) plus what the sender has encoded but not yet written. Dropping
//! either end stops the other: the receiver's drop sends `Cancel` to the sender.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::time::Sleep;

use crate::error::{ErrorKind, RpcError};
use crate::observe::Observed;
use crate::outgoing::Outgoing;
use crate::protocol::FrameBuilder;

/// The most items a receiver holds per stream before the sender must wait for credit.
pub const WINDOW: u32 = 32;

/// Credit is granted back in batches of this many taken items (fewer frames).
const CREDIT_BATCH: u32 = WINDOW / 2;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stream of `T`s passed to or returned from an RPC method; it yields
/// `Result<T, RpcError>`.
///
/// Build one from any stream to send it ([`Streaming::new`], [`Streaming::from_results`],
/// [`Streaming::iter`]); one received from the peer yields its items as they arrive, in
/// order, and ends with the peer's end: `None` after success, or an `Err` item followed by
/// `None` when the peer (or the connection, or the deadline) failed it.
///
/// ```
/// use futures::StreamExt;
/// use rpc_core::Streaming;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut numbers = Streaming::iter(1..=3);
/// let mut seen = Vec::new();
/// while let Some(n) = numbers.next().await {
///     seen.push(n.expect("a local stream of plain items never fails"));
/// }
/// assert_eq!(seen, [1, 2, 3]);
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct Streaming<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Local(Pin<Box<dyn Stream<Item = Result<T, RpcError>> + Send>>),
    Remote {
        stream: RemoteStream,
        decode: fn(&[u8]) -> Result<T, RpcError>,
        deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    },
    Done,
}

impl<T> Streaming<T> {
    /// A stream that sends the items of `stream`.
    pub fn new<S>(stream: S) -> Streaming<T>
    where
        S: Stream<Item = T> + Send + 'static,
        T: 'static,
    {
        Streaming {
            inner: Inner::Local(Box::pin(stream.map(Ok))),
        }
    }

    /// A stream that sends the items of `stream` and ends at its first `Err`, which the
    /// receiver gets as its last item.
    pub fn from_results<S>(stream: S) -> Streaming<T>
    where
        S: Stream<Item = Result<T, RpcError>> + Send + 'static,
    {
        Streaming {
            inner: Inner::Local(Box::pin(stream)),
        }
    }

    /// A stream that sends the items of `items`.
    pub fn iter<I>(items: I) -> Streaming<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: 'static,
    {
        Streaming::new(futures::stream::iter(items))
    }

    /// A stream fed by the connection; used by generated code.
    #[doc(hidden)]
    pub fn from_remote(stream: RemoteStream, decode: fn(&[u8]) -> Result<T, RpcError>) -> Self {
        Streaming {
            inner: Inner::Remote {
                stream,
                decode,
                deadline: None,
            },
        }
    }

    pub(crate) fn with_deadline(mut self, timeout: Option<Duration>) -> Streaming<T> {
        if let (Inner::Remote { deadline, .. }, Some(timeout)) = (&mut self.inner, timeout) {
            *deadline = Some((Box::pin(tokio::time::sleep(timeout)), timeout));
        }
        self
    }

    /// What sends this stream's items as frames; used by generated code.
    #[doc(hidden)]
    pub fn into_source(self, encode: fn(&T, &mut BytesMut) -> Result<(), RpcError>) -> ItemSource
    where
        T: 'static,
    {
        ItemSource(Box::new(Encoding {
            stream: self,
            encode,
        }))
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match &mut self.inner {
            Inner::Local(stream) => match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => return Poll::Ready(Some(Ok(item))),
                Poll::Ready(Some(Err(err))) => Some(Err(err)),
                Poll::Ready(None) => None,
                Poll::Pending => return Poll::Pending,
            },
            Inner::Remote {
                stream,
                decode,
                deadline,
            } => match stream.poll_item(cx) {
                Poll::Ready(Some(Ok(body))) => return Poll::Ready(Some(decode(&body))),
                Poll::Ready(Some(Err(err))) => Some(Err(err)),
                Poll::Ready(None) => None,
                Poll::Pending => {
                    let expired = match deadline {
                        Some((sleep, timeout)) => {
                            sleep.as_mut().poll(cx).is_ready().then_some(*timeout)
                        }
                        None => None,
                    };
                    match expired {
                        Some(timeout) => {
                            let err = RpcError::deadline(timeout);
                            stream.observed_end(Err(&err));
                            Some(Err(err))
                        }
                        None => return Poll::Pending,
                    }
                }
            },
            Inner::Done => return Poll::Ready(None),
        };
        // An error or the end: the stream is over (a remote one tells its peer, if needed,
        // when it is dropped here).
        self.inner = Inner::Done;
        Poll::Ready(item)
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Local(_) => "local",
            Inner::Remote { .. } => "remote",
            Inner::Done => "done",
        };
        f.debug_struct("Streaming").field("kind", &kind).finish()
    }
}

/// Streams travel as stream frames, never inside a message body: these impls exist so that
/// `FooRequest` and `FooResponse` can derive serde's traits, and always fail.
impl<T> serde::Serialize for Streaming<T> {
    fn serialize<S: serde::Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "a Streaming<T> is sent as stream items, not serialized inside a message",
        ))
    }
}

impl<'de, T> serde::Deserialize<'de> for Streaming<T> {
    fn deserialize<D: serde::Deserializer<'de>>(_deserializer: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a Streaming<T> is received as stream items, not deserialized from a message",
        ))
    }
}

/// What a connection must tell the peer on behalf of its streams' consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The consumer of stream `id` took `items` more: grant the sender that much credit.
    Credit { id: u64, items: u32 },
    /// The consumer of stream `id` is gone before its end: the sender should stop.
    Dropped { id: u64 },
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
    pub(crate) fn due(&self, registered: &mut Option<Waker>, waker: &Waker) -> bool {
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

/// The received items of one stream, shared by the connection (which pushes) and the
/// consumer (which takes).
pub(crate) struct Inbox {
    id: u64,
    notices: Arc<Notices>,
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<Bytes>,
    /// How the stream ended, once it has.
    end: Option<Result<(), RpcError>>,
    consumer: Option<Waker>,
    /// Items taken since credit was last granted.
    taken: u32,
}

impl Inbox {
    pub(crate) fn new(id: u64, notices: Arc<Notices>) -> Arc<Inbox> {
        Arc::new(Inbox {
            id,
            notices,
            state: Mutex::new(InboxState::default()),
        })
    }

    /// An item arrived. `Err` if the sender exceeded its credit (the stream is then failed).
    pub(crate) fn push(&self, item: Bytes) -> Result<(), ()> {
        let waker = {
            let mut state = lock(&self.state);
            if state.end.is_some() {
                return Ok(());
            }
            if state.items.len() >= WINDOW as usize {
                state.end = Some(Err(RpcError::protocol(format!(
                    "the peer sent more than {WINDOW} stream items without credit"
                ))));
                state.items.clear();
                let waker = state.consumer.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return Err(());
            }
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

    fn poll_item(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RpcError>>> {
        let mut credit = None;
        let result = {
            let mut state = lock(&self.state);
            if let Some(item) = state.items.pop_front() {
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
                        if !state
                            .consumer
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            state.consumer = Some(cx.waker().clone());
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

/// The consumer's handle on a received stream; used by generated code. Dropping it before
/// the stream ended tells the sender to stop.
#[doc(hidden)]
pub struct RemoteStream {
    inbox: Arc<Inbox>,
    /// The call this stream answers, observed until the stream ends (client side), and the
    /// bytes of items received so far, for its metrics. Boxed,
    /// and only when observed, so that `Streaming<T>`, and so every request and response
    /// enum holding one, stays small to move on the unary path.
    observed: Option<Box<(Observed, usize)>>,
}

impl RemoteStream {
    pub(crate) fn new(inbox: Arc<Inbox>) -> RemoteStream {
        RemoteStream {
            inbox,
            observed: None,
        }
    }

    /// Keeps observing the call this stream answers until the stream ends: its span's
    /// outcome and duration, and its metrics, then cover the whole stream.
    pub(crate) fn observing(mut self, observed: Observed) -> RemoteStream {
        self.observed = observed.is_active().then(|| Box::new((observed, 0)));
        self
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RpcError>>> {
        let item = self.inbox.poll_item(cx);
        match &item {
            Poll::Ready(Some(Ok(body))) => {
                if let Some((_, bytes)) = self.observed.as_deref_mut() {
                    *bytes += body.len();
                }
            }
            Poll::Ready(Some(Err(err))) => self.observed_end(Err(err)),
            Poll::Ready(None) => self.observed_end(Ok(())),
            Poll::Pending => {}
        }
        item
    }

    /// The stream ended this way: so did the call observed with it.
    fn observed_end(&mut self, end: Result<(), &RpcError>) {
        if let Some((observed, bytes)) = self.observed.as_deref_mut() {
            observed.finish_with(end, *bytes);
        }
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
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

/// A stream being sent, as frames; used by generated code.
#[doc(hidden)]
pub struct ItemSource(Box<dyn Source>);

impl fmt::Debug for ItemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSource").finish_non_exhaustive()
    }
}

trait Source: Send {
    /// The next item as a `StreamItem` frame of stream `id`, an error that ends the stream,
    /// or its end.
    fn poll_frame(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, RpcError>>>;
}

struct Encoding<T> {
    stream: Streaming<T>,
    encode: fn(&T, &mut BytesMut) -> Result<(), RpcError>,
}

impl<T> Source for Encoding<T> {
    fn poll_frame(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, RpcError>>> {
        match self.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(item))) => {
                let mut builder = FrameBuilder::new();
                let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (self.encode)(&item, builder.body_mut())
                }))
                .unwrap_or_else(|_| {
                    Err(RpcError::new(
                        ErrorKind::Internal,
                        "encoding a stream item panicked",
                    ))
                });
                Poll::Ready(Some(encoded.map(|()| builder.finish_stream_item(id))))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

// `Streaming<T>` holds only boxed streams, fn pointers and handles: it can move freely.
impl<T> Unpin for Streaming<T> {}

/// Items a pump sends per stream per wake-up, so one bulk stream cannot fill a whole batch
/// while other calls wait.
const PUMP_BURST: u32 = 8;

/// A stream this side sends, with its credit.
struct Pump {
    id: u64,
    source: ItemSource,
    credit: u32,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    /// The call whose result this stream is, observed until the stream ends (server side);
    /// dropped unfinished, when the stream is cancelled, it records `cancelled`.
    observed: Observed,
    /// Bytes of items sent, for the call's metrics.
    bytes: usize,
}

impl Pump {
    fn end(&mut self, end: Result<(), &RpcError>) -> Bytes {
        self.observed.finish_with(end, self.bytes);
        crate::protocol::stream_end_frame(self.id, end)
    }
}

/// The streams a connection sends.
#[derive(Default)]
pub(crate) struct Pumps {
    list: Vec<Pump>,
}

impl Pumps {
    /// Starts sending `source` as stream `id`, within `timeout`; `observed` is the call it
    /// answers (or nothing, for an argument stream), finished when the stream ends.
    pub(crate) fn add(
        &mut self,
        id: u64,
        source: ItemSource,
        timeout: Option<Duration>,
        observed: Observed,
    ) {
        self.list.push(Pump {
            id,
            source,
            credit: WINDOW,
            deadline: timeout.map(|t| (Box::pin(tokio::time::sleep(t)), t)),
            observed,
            bytes: 0,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The receiver of `id` granted `items` more.
    pub(crate) fn credit(&mut self, id: u64, items: u32) {
        if let Some(pump) = self.list.iter_mut().find(|p| p.id == id) {
            pump.credit = pump.credit.saturating_add(items);
        }
    }

    /// The receiver of `id` is gone: stop sending it. Whether there was such a stream.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        let before = self.list.len();
        self.list.retain(|p| p.id != id);
        self.list.len() != before
    }

    /// Polls every stream that has credit, queueing its frames on `unsent` while that holds
    /// less than `limit` bytes; a stream that ended (its `StreamEnd` queued) is dropped.
    #[inline]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) {
        if !self.list.is_empty() {
            self.poll_streams(cx, unsent, limit);
        }
    }

    /// Out of line, so that the connection loops of unary calls stay small.
    #[inline(never)]
    fn poll_streams(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) {
        self.list.retain_mut(|pump| {
            if let Some((sleep, timeout)) = &mut pump.deadline {
                if sleep.as_mut().poll(cx).is_ready() {
                    let err = RpcError::deadline(*timeout);
                    let frame = pump.end(Err(&err));
                    unsent.push(frame);
                    return false;
                }
            }
            let mut burst = PUMP_BURST;
            while pump.credit > 0 && burst > 0 && unsent.bytes() < limit {
                match pump.source.0.poll_frame(pump.id, cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        pump.credit -= 1;
                        burst -= 1;
                        pump.bytes += frame.len();
                        unsent.push(frame);
                    }
                    Poll::Ready(Some(Err(err))) => {
                        unsent.push(pump.end(Err(&err)));
                        return false;
                    }
                    Poll::Ready(None) => {
                        unsent.push(pump.end(Ok(())));
                        return false;
                    }
                    Poll::Pending => break,
                }
            }
            if burst == 0 && pump.credit > 0 {
                // More is ready: come back after the others had their turn.
                cx.waker().wake_by_ref();
            }
            true
        });
    }
}
