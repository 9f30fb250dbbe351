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

use super::inbox::{Arrived, Inbox, Notice, Notices, RemoteStream};
use super::pump::{ItemSource, Pumps};
use super::{CreditMode, BYTE_CREDIT, ITEM_RUNS, LOAD_REPORTS};
use crate::compress::Body;
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

    /// Starts counting a batch of items in: see [`Admission`].
    pub(super) fn admission(&self) -> Admission<'_> {
        Admission {
            // Only the connection's own task adds; consumers only take away, so the check
            // cannot be raced past the limit, and a count read once stays an upper bound.
            held: self.held.load(Ordering::Acquire),
            added: 0,
            window: self,
        }
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

/// Items counted into a [`ConnectionWindow`] one by one, and added to it at once (when
/// dropped): the connection's task reads a batch of items with one atomic update, not one
/// per item.
pub(super) struct Admission<'a> {
    held: usize,
    added: usize,
    window: &'a ConnectionWindow,
}

impl Admission<'_> {
    /// Counts `bytes` more if they fit (or if nothing is buffered: one item always fits).
    pub(super) fn admit(&mut self, bytes: usize) -> bool {
        let held = self.held + self.added;
        if held > 0 && held.saturating_add(bytes) > self.window.limit {
            return false;
        }
        self.added += bytes;
        true
    }

    /// Counts `bytes` more if they fit within the limit, without the exception for an
    /// empty buffer (for many items at once: each but the first must fit).
    pub(super) fn admit_all(&mut self, bytes: usize) -> bool {
        if (self.held + self.added).saturating_add(bytes) > self.window.limit {
            return false;
        }
        self.added += bytes;
        true
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.added > 0 {
            self.window.held.fetch_add(self.added, Ordering::AcqRel);
            if let Some(total) = &self.window.total {
                total.fetch_add(self.added, Ordering::Relaxed);
            }
        }
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
    /// Items read for one stream in this pass of the connection's loop, not yet handed to
    /// its inbox: a run of items of one stream goes in at once (see [`flush`](Self::flush)).
    arrived: Option<u64>,
    arrived_items: Vec<Arrived>,
    /// Streams failed by their items (a sender beyond its credit, or the connection's window
    /// full) whose sender is still to be told to stop.
    refused: Vec<u64>,
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
    /// The client's end (it settles the peer's credit differently; see `settle`).
    client: bool,
}

impl StreamEngine {
    /// The engine of a server connection that sends frames of at most `max_frame_size`.
    pub(crate) fn server(window: Arc<ConnectionWindow>, max_frame_size: usize) -> StreamEngine {
        StreamEngine::new(window, max_frame_size, false)
    }

    /// The client's announcement: it grants credit whenever a consumer waits (so the
    /// server may pace by bytes), credits its streams in bytes if the server does too
    /// ([`BYTE_CREDIT`]), reads runs of items ([`ITEM_RUNS`]), and with `load_reports`
    /// reads the server's load reports ([`LOAD_REPORTS`]). Sent right after `Hello`.
    pub(crate) fn announcement(load_reports: bool) -> Bytes {
        let reports = if load_reports { LOAD_REPORTS } else { 0 };
        Message::Credit {
            id: CONNECTION_ID,
            items: BYTE_CREDIT | ITEM_RUNS | reports,
        }
        .to_frame()
    }

    /// The server's announcement, which also answers the client's codec offer: `items` is
    /// the codec picked, 0 for none (what a peer that predates compression sends, and
    /// ignores: a `Credit` with this id is the announcement whatever its `items`).
    /// It never carries [`BYTE_CREDIT`]: a client that predates it and offered compression
    /// would read the flag as a codec it did not offer.
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
        engine.client = true;
        engine.pumps.paced = true;
        engine.provisional = true;
        engine
    }

    /// The peer's first frame arrived: whether it was its announcement. Settles whether
    /// this side paces its streams by bytes (a server that does not announce credits
    /// items, too).
    #[inline]
    pub(crate) fn first_frame(&mut self, announced: bool) {
        if self.provisional {
            self.provisional = false;
            self.fallback = None;
            self.pumps.paced = announced;
            if !announced {
                self.pumps.mode = CreditMode::Items;
            }
        }
    }

    /// Whether the peer's way of crediting streams is still to be settled by its next
    /// frame (see [`settle`](Self::settle)).
    #[inline]
    pub(crate) fn settling(&self) -> bool {
        self.pumps.mode == CreditMode::Pending
    }

    /// Settles, from the peer's frame `message`, whether it credits this connection's
    /// streams in bytes; called for each frame while [`settling`](Self::settling), before
    /// the frame is handled.
    ///
    /// The server decides on the client's first frame after `Hello`, which precedes all its
    /// calls: its announcement with [`BYTE_CREDIT`] (answered with the same flag, in a
    /// second announcement that goes before anything about a call), or anything else
    /// (items, as before). The client waits for that answer: it credits bytes if it comes,
    /// and items from the first frame about a call without it (a server that does not know
    /// the flag); the server's first announcement and pings settle nothing. Runs of items
    /// ([`ITEM_RUNS`]) are settled the same way, and only together with byte credit: the
    /// server answers with the flag if the client set it, and each sends runs only then.
    #[cold]
    pub(crate) fn settle(&mut self, message: &Message<'_>, unsent: &mut Outgoing) {
        let flags = match *message {
            Message::Credit {
                id: CONNECTION_ID,
                items,
            } => Some(items),
            _ => None,
        };
        let flagged = flags.map(|flags| flags & BYTE_CREDIT != 0);
        // Runs come with byte credit: a peer that reads them credits bytes too.
        let runs =
            flags.is_some_and(|flags| flags & (BYTE_CREDIT | ITEM_RUNS) == BYTE_CREDIT | ITEM_RUNS);
        self.pumps.mode = if !self.client {
            if flagged == Some(true) {
                // The answer says what this side does of what the client offered.
                let answer = BYTE_CREDIT | if runs { ITEM_RUNS } else { 0 };
                unsent.push(
                    Message::Credit {
                        id: CONNECTION_ID,
                        items: answer,
                    }
                    .to_frame(),
                );
                self.pumps.runs = runs;
                CreditMode::Bytes
            } else {
                CreditMode::Items
            }
        } else {
            match (flagged, message) {
                (Some(true), _) => {
                    self.pumps.runs = runs;
                    CreditMode::Bytes
                }
                (Some(false), _) | (None, Message::Ping { .. } | Message::Pong { .. }) => {
                    CreditMode::Pending
                }
                _ => CreditMode::Items,
            }
        };
    }

    fn new(
        window: Arc<ConnectionWindow>,
        max_frame_size: usize,
        drop_ends_call: bool,
    ) -> StreamEngine<H> {
        StreamEngine {
            inboxes: HashMap::default(),
            arrived: None,
            arrived_items: Vec::new(),
            refused: Vec::new(),
            pumps: Pumps::new(max_frame_size),
            notices: Arc::default(),
            notices_waker: None,
            window,
            provisional: false,
            fallback: None,
            drop_ends_call,
            client: false,
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
        self.inboxes.is_empty() && self.pumps.is_empty() && self.refused.is_empty()
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

    /// A `StreamItem` of call `id` with `body` (a slice of its frame) arrived. It reaches
    /// its inbox with the other items of its stream read in the same pass, at the latest
    /// when the connection's loop next polls this engine.
    #[inline]
    pub(crate) fn on_item(&mut self, id: u64, body: Body, unsent: &mut Outgoing) {
        self.arrive(id, Arrived::One(body), unsent);
    }

    /// A `StreamItems` of call `id` arrived: `run` (a slice of its frame, which
    /// [`check_run`](super::check_run) accepted and counted in `stats`) joins the items read for its stream as
    /// [`on_item`](Self::on_item) does.
    #[inline]
    pub(crate) fn on_run(
        &mut self,
        id: u64,
        run: Bytes,
        stats: super::RunStats,
        unsent: &mut Outgoing,
    ) {
        if !run.is_empty() {
            self.arrive(id, Arrived::Run(run, stats), unsent);
        }
    }

    #[inline]
    fn arrive(&mut self, id: u64, items: Arrived, unsent: &mut Outgoing) {
        if self.arrived != Some(id) {
            self.flush(Some(unsent));
            if !self.inboxes.contains_key(&id) {
                // A stream already over (cancelled, failed): items in flight are dropped.
                return;
            }
            self.arrived = Some(id);
        }
        self.arrived_items.push(items);
    }

    /// Hands the items read for one stream to its inbox. Every other way of touching the
    /// inboxes calls this first, so items always arrive in order and before their stream's
    /// end. A stream failed by its items tells its sender to stop: at once with `unsent`,
    /// else with the next frames this engine queues.
    fn flush(&mut self, unsent: Option<&mut Outgoing>) {
        if let Some(id) = self.arrived.take() {
            self.push_arrived(id);
        }
        if let Some(unsent) = unsent {
            if !self.refused.is_empty() {
                for id in self.refused.drain(..) {
                    unsent.push(Message::Cancel { id }.to_frame());
                }
            }
        }
    }

    fn push_arrived(&mut self, id: u64) {
        let items = self.arrived_items.drain(..);
        let Some(inbox) = self.inboxes.get(&id) else {
            return;
        };
        if inbox
            .push(items, self.pumps.mode == CreditMode::Bytes)
            .is_err()
        {
            // That stream is failed; the sender stops.
            self.inboxes.remove(&id);
            self.refused.push(id);
        }
    }

    /// The peer ended its stream of call `id`: its consumer gets `status` after the items.
    /// Whatever this side still sends for `id` is moot once the peer is done with the call,
    /// so `stop_sending` says whether to stop that too.
    pub(crate) fn on_end(&mut self, id: u64, status: Status<'_>, stop_sending: bool) {
        self.flush(None);
        if stop_sending {
            self.pumps.cancel(id);
        }
        if let Some(inbox) = self.inboxes.remove(&id) {
            inbox.end(status.into_result());
        }
    }

    /// The receiver of this side's stream `id` granted `items` more (charged bytes, if it
    /// credits bytes), or, with the connection's id, announced that it grants credit as it
    /// drains.
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
        self.flush(None);
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
        self.flush(Some(unsent));
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
        self.flush(Some(unsent));
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
        self.flush(Some(unsent));
        for notice in notices {
            match notice {
                Notice::Credit { id, mut amount } => {
                    if self.inboxes.contains_key(&id) {
                        // One grant may exceed a `u32` only for items larger than 4 GiB.
                        while amount > 0 {
                            let items = u32::try_from(amount).unwrap_or(u32::MAX);
                            unsent.push(Message::Credit { id, items }.to_frame());
                            amount -= u64::from(items);
                        }
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
        self.flush(None);
        // In the order of their ids, not the map's (seeded per process): whoever waits on
        // them wakes in the same order every run, so a simulation replays exactly.
        let mut inboxes: Vec<_> = self.inboxes.drain().collect();
        inboxes.sort_unstable_by_key(|(id, _)| *id);
        for (_, inbox) in inboxes {
            inbox.end(Err(err.clone()));
        }
        self.pumps = Pumps::new(self.pumps.max_frame_size);
    }

    /// The connection agreed on a codec: stream items from now on may go compressed.
    pub(crate) fn set_packer(&mut self, packer: crate::compress::Packer) {
        self.pumps.packer = Some(packer);
    }
}
