//! The stream engine one connection owns, on either side: the streams it receives (their
//! inboxes, bounded per connection by a [`ConnectionWindow`]) and the streams it sends (its
//! pumps), and the frames that keep both in step with the peer (`StreamItem`, `StreamEnd`,
//! `Credit`, `Cancel`).
//!
//! The client's I/O task and the server's connection both own one and feed it every stream
//! frame they read; what it has to say goes into the connection's write queue, behind
//! whatever was queued before (a call's `Cancel` can never overtake its `Request`).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Sleep;

use super::inbox::{Inbox, Notice, Notices, Refused, RemoteStream};
use super::pump::{ItemSource, Pumps};
use crate::error::{ErrorKind, RpcError};
use crate::observe::Observed;
use crate::outgoing::Outgoing;
use crate::protocol::{Message, Status, CONNECTION_ID};

/// How long a client's streams wait for the pacing, before the server's first frame, until
/// they are sent unpaced (a silent server of the first protocol revision).
const PROVISIONAL_PACING: Duration = Duration::from_secs(1);

/// The bound on the stream data one connection buffers for its consumers: bytes of items
/// received and not yet taken, over all its streams (HTTP/2 has a connection window for the
/// same reason: per-stream windows alone let a peer make a receiver hold streams × window ×
/// frame size).
///
/// An item that would take the connection past its bound, while it buffers anything, fails
/// its stream with `Overloaded` (after the items already buffered) and the sender is told
/// to stop. Senders of this version never get there: they pace their streams by the credit
/// coming back (see `Pumps`), once the peer said it grants credit as consumers drain.
#[derive(Debug)]
pub(crate) struct ConnectionWindow {
    held: AtomicUsize,
    limit: usize,
    /// The server-wide sum, for `ServerStats::buffered_stream_bytes`.
    total: Option<Arc<AtomicUsize>>,
}

impl ConnectionWindow {
    pub(crate) fn new(limit: usize, total: Option<Arc<AtomicUsize>>) -> Arc<ConnectionWindow> {
        Arc::new(ConnectionWindow {
            held: AtomicUsize::new(0),
            limit,
            total,
        })
    }

    /// Counts `bytes` more if they fit (or if nothing is buffered: one item always fits).
    pub(super) fn admit(&self, bytes: usize) -> bool {
        // Only the connection's own task adds; consumers only take away, so the check
        // cannot be raced past the limit.
        let held = self.held.load(Ordering::Acquire);
        if held > 0 && held.saturating_add(bytes) > self.limit {
            return false;
        }
        self.held.fetch_add(bytes, Ordering::AcqRel);
        if let Some(total) = &self.total {
            total.fetch_add(bytes, Ordering::Relaxed);
        }
        true
    }

    /// `bytes` were taken by a consumer, or dropped with it.
    pub(super) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(total) = &self.total {
            total.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub(super) fn full_error(&self) -> RpcError {
        RpcError::new(
            ErrorKind::Overloaded,
            format!(
                "the stream was cut: its connection already buffers {} bytes of stream items \
                 that were not read yet, its limit (max_buffered_stream_bytes: {} bytes); read \
                 streams as they arrive, or raise the limit",
                self.held.load(Ordering::Relaxed),
                self.limit
            ),
        )
    }
}

/// Makes inboxes that report to one engine.
pub(crate) struct InboxMaker {
    notices: Arc<Notices>,
    window: Arc<ConnectionWindow>,
}

impl InboxMaker {
    pub(crate) fn make(&self, id: u64) -> Arc<Inbox> {
        Inbox::new(id, Arc::clone(&self.notices), Arc::clone(&self.window))
    }
}

/// The streams of one connection, in both directions. `H` hashes the call ids of the
/// streams received: the client's own ids need no protection from a peer choosing them
/// (its engine takes a cheap hasher), the server's do (the default, SipHash).
pub(crate) struct StreamEngine<H = RandomState> {
    /// The streams this side receives, by call id.
    inboxes: HashMap<u64, Arc<Inbox>, H>,
    /// The streams this side sends.
    pumps: Pumps,
    /// What the consumers of `inboxes` want the peer told.
    notices: Arc<Notices>,
    /// The waker last given to `notices`.
    notices_waker: Option<Waker>,
    window: Arc<ConnectionWindow>,
    /// The client paces its streams by bytes before it knows whether the server grants
    /// credit whenever a consumer waits (its first frame says: the announcement, or anything
    /// else from a server of the first revision). A server of that revision that stays
    /// silent while this side waits is given [`PROVISIONAL_PACING`], then streams go
    /// unpaced.
    provisional: bool,
    fallback: Option<Pin<Box<Sleep>>>,
    /// Whether a consumer dropping its stream ends the whole call, so that this side stops
    /// sending for it too: on the client (whose consumer is the caller), not on the server
    /// (a handler may drop its argument stream and go on streaming its result).
    drop_ends_call: bool,
}

impl StreamEngine {
    /// The engine of a server connection that sends frames of at most `max_frame_size`.
    pub(crate) fn server(window: Arc<ConnectionWindow>, max_frame_size: usize) -> StreamEngine {
        StreamEngine::new(window, max_frame_size, false)
    }

    /// The frame that tells the peer this side grants credit whenever a consumer waits (so
    /// the peer may pace by bytes); the first frame each side sends after `Hello`.
    pub(crate) fn announcement() -> Bytes {
        StreamEngine::announcement_with(None)
    }

    /// The server's announcement, which also answers the client's codec offer: `items` is
    /// the codec picked, 0 for none (what a peer that predates compression sends, and
    /// ignores: a `Credit` with this id is the announcement whatever its `items`).
    pub(crate) fn announcement_with(codec: Option<crate::compress::Codec>) -> Bytes {
        Message::Credit {
            id: CONNECTION_ID,
            items: codec.map_or(0, |codec| u32::from(codec.to_wire())),
        }
        .to_frame()
    }
}

impl<H: BuildHasher + Default> StreamEngine<H> {
    /// The engine of a client connection that sends frames of at most `max_frame_size`.
    /// It paces its streams by bytes until the server's first frame says otherwise: its
    /// streams may start before the server's announcement arrives.
    pub(crate) fn client(window: Arc<ConnectionWindow>, max_frame_size: usize) -> StreamEngine<H> {
        let mut engine = StreamEngine::new(window, max_frame_size, true);
        engine.pumps.paced = true;
        engine.provisional = true;
        engine
    }

    /// The peer's first frame arrived: whether it was its announcement. Settles whether
    /// this side paces its streams by bytes.
    #[inline]
    pub(crate) fn first_frame(&mut self, announced: bool) {
        if self.provisional {
            self.provisional = false;
            self.fallback = None;
            self.pumps.paced = announced;
        }
    }

    fn new(
        window: Arc<ConnectionWindow>,
        max_frame_size: usize,
        drop_ends_call: bool,
    ) -> StreamEngine<H> {
        StreamEngine {
            inboxes: HashMap::default(),
            pumps: Pumps::new(max_frame_size),
            notices: Arc::default(),
            notices_waker: None,
            window,
            provisional: false,
            fallback: None,
            drop_ends_call,
        }
    }

    /// What makes inboxes for this engine on another thread (a client's callers register
    /// the streams that answer their calls before the I/O task hears of them).
    pub(crate) fn inbox_maker(&self) -> InboxMaker {
        InboxMaker {
            notices: Arc::clone(&self.notices),
            window: Arc::clone(&self.window),
        }
    }

    /// Receives the stream of call `id` into `inbox`, made by this engine's [`InboxMaker`].
    pub(crate) fn adopt(&mut self, id: u64, inbox: Arc<Inbox>) {
        self.inboxes.insert(id, inbox);
    }

    /// No stream is received or sent.
    pub(crate) fn is_idle(&self) -> bool {
        self.inboxes.is_empty() && self.pumps.is_empty()
    }

    /// Starts receiving the stream of call `id`; the consumer reads it through the result.
    pub(crate) fn receive(&mut self, id: u64) -> RemoteStream {
        let inbox = Inbox::new(id, Arc::clone(&self.notices), Arc::clone(&self.window));
        self.inboxes.insert(id, Arc::clone(&inbox));
        RemoteStream::new(inbox)
    }

    /// Starts sending `source` as the stream of call `id`, within `timeout`; `observed` is
    /// the call it answers, finished when the stream ends.
    pub(crate) fn send(
        &mut self,
        id: u64,
        source: ItemSource,
        timeout: Option<Duration>,
        observed: Observed,
    ) {
        self.pumps.add(id, source, timeout, observed);
    }

    /// Streams being sent.
    pub(crate) fn sending(&self) -> usize {
        self.pumps.len()
    }

    pub(crate) fn is_sending(&self) -> bool {
        !self.pumps.is_empty()
    }

    #[inline]
    pub(crate) fn is_receiving(&self, id: u64) -> bool {
        !self.inboxes.is_empty() && self.inboxes.contains_key(&id)
    }

    /// A `StreamItem` of call `id` with `body` (a slice of its frame) arrived.
    pub(crate) fn on_item(&mut self, id: u64, body: crate::compress::Body, unsent: &mut Outgoing) {
        let Some(inbox) = self.inboxes.get(&id) else {
            // A stream already over (cancelled, failed): items in flight are dropped.
            return;
        };
        match inbox.push(body) {
            Ok(()) => {}
            Err(Refused::OverCredit | Refused::OverWindow) => {
                // That stream is failed; the sender stops.
                self.inboxes.remove(&id);
                unsent.push(Message::Cancel { id }.to_frame());
            }
        }
    }

    /// The peer ended its stream of call `id`: its consumer gets `status` after the items.
    /// Whatever this side still sends for `id` is moot once the peer is done with the call,
    /// so `stop_sending` says whether to stop that too.
    pub(crate) fn on_end(&mut self, id: u64, status: Status<'_>, stop_sending: bool) {
        if stop_sending {
            self.pumps.cancel(id);
        }
        if let Some(inbox) = self.inboxes.remove(&id) {
            inbox.end(status.into_result());
        }
    }

    /// The receiver of this side's stream `id` granted `items` more (or, with the
    /// connection's id, announced that it grants credit as it drains).
    pub(crate) fn on_credit(&mut self, id: u64, items: u32) {
        if id == CONNECTION_ID {
            self.pumps.paced = true;
        } else {
            self.pumps.credit(id, items);
        }
    }

    /// Stops sending the stream of call `id` (the peer cancelled it, or answered the call).
    /// Whether there was one.
    #[inline]
    pub(crate) fn stop_sending(&mut self, id: u64) -> bool {
        !self.pumps.is_empty() && self.pumps.cancel(id)
    }

    /// Ends the received stream of call `id` with `outcome` (the call failed, or was
    /// cancelled), if it is still received.
    pub(crate) fn end_receiving(&mut self, id: u64, outcome: Result<(), RpcError>) {
        if let Some(inbox) = self.inboxes.remove(&id) {
            inbox.end(outcome);
        }
    }

    /// Tells the peer what this side's consumers want (credit, or stop), and sends the items
    /// of this side's streams as far as credit allows and `unsent` holds less than `limit`
    /// bytes. (The server's whole turn; the client splits it to move requests registered
    /// meanwhile into `unsent` first, so a `Cancel` or `Credit` never overtakes its
    /// `Request`.)
    #[inline]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) {
        let notices = self.take_notices(cx);
        if !notices.is_empty() {
            self.answer(notices, unsent);
        }
        self.pump(cx, unsent, limit);
    }

    /// The notices of the consumers, if any (the client's half of [`poll`](Self::poll)).
    #[inline]
    pub(crate) fn take_notices(&mut self, cx: &mut Context<'_>) -> Vec<Notice> {
        if self.notices.due(&self.notices_waker, cx.waker()) {
            self.notices.take(&mut self.notices_waker, cx.waker())
        } else {
            Vec::new()
        }
    }

    /// Sends the items of this side's streams as far as credit allows and `unsent` holds
    /// less than `limit` bytes.
    #[inline]
    pub(crate) fn pump(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) {
        if self.pumps.poll(cx, unsent, limit) && self.provisional {
            self.wait_for_announcement(cx, unsent, limit);
        }
    }

    /// Streams wait for the pacing while the server has not said whether it grants credit
    /// whenever a consumer waits: give it a while, then send them unpaced.
    #[cold]
    fn wait_for_announcement(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) {
        let timer = self
            .fallback
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(PROVISIONAL_PACING)));
        if timer.as_mut().poll(cx).is_ready() {
            self.first_frame(false);
            self.pumps.poll(cx, unsent, limit);
        }
    }

    /// Queues what the consumers' `notices` call for.
    #[inline(never)]
    pub(crate) fn answer(&mut self, notices: Vec<Notice>, unsent: &mut Outgoing) {
        for notice in notices {
            match notice {
                Notice::Credit { id, items } => {
                    if self.inboxes.contains_key(&id) {
                        unsent.push(Message::Credit { id, items }.to_frame());
                    }
                }
                Notice::Dropped { id } => {
                    // The consumer let go before the end: the sender stops.
                    if self.inboxes.remove(&id).is_some() {
                        if self.drop_ends_call {
                            self.pumps.cancel(id);
                        }
                        unsent.push(Message::Cancel { id }.to_frame());
                    }
                }
            }
        }
    }

    /// The connection is gone: every stream still received ends with `err`; the streams
    /// being sent are dropped.
    pub(crate) fn close(&mut self, err: &RpcError) {
        for (_, inbox) in self.inboxes.drain() {
            inbox.end(Err(err.clone()));
        }
        self.pumps = Pumps::new(self.pumps.max_frame_size);
    }

    /// The connection agreed on a codec: stream items from now on may go compressed.
    pub(crate) fn set_packer(&mut self, packer: crate::compress::Packer) {
        self.pumps.packer = Some(packer);
    }
}
