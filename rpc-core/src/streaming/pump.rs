//! The sending half of a stream: an [`ItemSource`] turning a `Streaming<T>` into frames, and
//! the [`Pumps`] of a connection that send them as credit allows.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::codec::BodyWriter;
use futures::StreamExt;

use super::run::{item_len, RUN_HEAD_MAX, RUN_ITEM_MAX};
use super::{byte_window, CreditMode, Streaming, ITEM_OVERHEAD, WINDOW};
use crate::compress::{Packer, INLINE_PACK_LIMIT};
use crate::deadline::Deadline;
use crate::error::{ErrorKind, RpcError};
use crate::observe::Observed;
use crate::outgoing::Outgoing;
use crate::protocol::FrameBuilder;
use std::future::Future;
use tokio::task::JoinHandle;

/// A stream being sent, as frames; used by generated code.
pub struct ItemSource(pub(super) Box<dyn Source>);

impl fmt::Debug for ItemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSource").finish_non_exhaustive()
    }
}

/// One encoded item: its `StreamItem` (or `PackedStreamItem`) frame, the length of its
/// body as sent, and the length its frame has uncompressed (what the frame size limit
/// applies to).
pub(crate) struct ItemFrame {
    pub(crate) frame: crate::frame::Frame,
    pub(crate) body: usize,
    pub(crate) plain: usize,
}

impl ItemFrame {
    /// The frame of item `builder` of stream `id`, compressed by `packer` if it is worth
    /// it and fits the frame size limit `max_frame_size` uncompressed.
    fn build(
        mut builder: FrameBuilder,
        id: u64,
        packer: Option<Packer>,
        max_frame_size: usize,
    ) -> ItemFrame {
        let plain = FrameBuilder::stream_item_len(id, builder.body_len());
        if let Some(packer) = packer.filter(|p| p.wants(builder.body_len())) {
            if plain <= max_frame_size {
                if let Some(packed) = packer.pack(builder.body()) {
                    return ItemFrame {
                        body: packed.body_len(),
                        frame: packed.finish_packed_stream_item(id),
                        plain,
                    };
                }
            }
        }
        ItemFrame {
            body: builder.body_len(),
            frame: builder.finish_stream_item(id),
            plain,
        }
    }
}

/// How the items of a connection's streams are compressed, given to each [`Source`].
#[derive(Clone, Copy)]
pub(crate) struct Packing {
    pub(crate) packer: Option<Packer>,
    pub(crate) max_frame_size: usize,
}

pub(super) trait Source: Send {
    /// The next item of stream `id`: a `StreamItem` frame of its own, or (with `scratch`,
    /// when the peer reads runs) a small plain body left in `scratch` for a run; an error
    /// that ends the stream; or its end.
    /// Frames of their own are built in the spare capacity of `arena`, many to an
    /// allocation, when there is no `scratch`.
    fn poll_frame(
        &mut self,
        id: u64,
        packing: Packing,
        arena: &mut BytesMut,
        scratch: Option<&mut FrameBuilder>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Made, RpcError>>>;

    /// Appends items of stream `id` to `run` for as long as they are small (see
    /// [`poll_frame`](Source::poll_frame)) and fit in `room`, which counts them; returns
    /// at the first that does not, as `poll_frame` would (a small one is left in
    /// `scratch`), or when the stream has nothing ready, ends or fails. The per-item path
    /// of a stream of small items: one call for a run, not one per item.
    fn poll_more(
        &mut self,
        id: u64,
        packing: Packing,
        run: &mut FrameBuilder,
        scratch: &mut FrameBuilder,
        room: &mut RunRoom,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Made, RpcError>>>;
}

/// What a run may still take, and what it took, in [`Source::poll_more`].
#[derive(Default)]
pub(super) struct RunRoom {
    /// Charged bytes the stream's byte window allows.
    charge: u64,
    /// Body bytes the connection's pacing allows.
    paced: usize,
    /// Bytes the run may grow by (lengths and bodies).
    bytes: usize,
    /// Taken: items, their body bytes, their charges, the bytes the run grew by.
    items: u32,
    body: usize,
    charged: u64,
    grew: usize,
}

/// What a [`Source`] made of its next item.
pub(super) enum Made {
    /// A frame of its own.
    Frame(ItemFrame),
    /// A body for a run, in the `scratch` builder the source was given.
    Small,
}

/// A `Streaming<T>` with the function that encodes its items.
pub(crate) struct Encoding<T> {
    pub(super) stream: Streaming<T>,
    pub(super) encode: fn(T, &mut BodyWriter<'_>) -> Result<(), RpcError>,
    /// A large item being compressed on the blocking pool (see `INLINE_PACK_LIMIT`): the
    /// stream's next frame, which comes before any later item.
    pub(super) packing: Option<JoinHandle<ItemFrame>>,
}

/// Encodes `item` into `builder`; a panicking encoder is an error, not a dead connection.
fn encode_into<T>(
    encode: fn(T, &mut BodyWriter<'_>) -> Result<(), RpcError>,
    item: T,
    builder: &mut FrameBuilder,
) -> Result<(), RpcError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        encode(item, &mut builder.writer())
    }))
    .unwrap_or_else(|_| {
        Err(RpcError::new(
            ErrorKind::Internal,
            "encoding a stream item panicked",
        ))
    })
}

impl<T> Source for Encoding<T> {
    fn poll_frame(
        &mut self,
        id: u64,
        packing: Packing,
        arena: &mut BytesMut,
        scratch: Option<&mut FrameBuilder>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Made, RpcError>>> {
        if let Some(job) = &mut self.packing {
            let done = std::task::ready!(Pin::new(job).poll(cx));
            self.packing = None;
            return Poll::Ready(Some(done.map(Made::Frame).map_err(|_| {
                RpcError::new(ErrorKind::Internal, "compressing a stream item failed")
            })));
        }
        let item = match self.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(item))) => item,
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let builder = match scratch {
            Some(scratch) => match self.encode_small(item, packing.packer, scratch) {
                Ok(None) => return Poll::Ready(Some(Ok(Made::Small))),
                Ok(Some(builder)) => builder,
                Err(err) => return Poll::Ready(Some(Err(err))),
            },
            None => {
                let mut builder = FrameBuilder::in_arena(arena);
                let encoded = encode_into(self.encode, item, &mut builder);
                builder.detach(arena);
                if let Err(err) = encoded {
                    return Poll::Ready(Some(Err(err)));
                }
                builder
            }
        };
        self.own_frame(builder, id, packing, arena, cx)
    }

    fn poll_more(
        &mut self,
        id: u64,
        packing: Packing,
        run: &mut FrameBuilder,
        scratch: &mut FrameBuilder,
        room: &mut RunRoom,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Made, RpcError>>> {
        if self.packing.is_some() {
            return self.poll_frame(id, packing, &mut BytesMut::new(), Some(scratch), cx);
        }
        loop {
            let item = match self.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(item))) => item,
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let builder = match self.encode_small(item, packing.packer, scratch) {
                Ok(None) => {
                    let body = scratch.body_len();
                    let need = item_len(body);
                    let charged = charge(body);
                    if charged > room.charge || body > room.paced || need > room.bytes {
                        return Poll::Ready(Some(Ok(Made::Small)));
                    }
                    run.append_item(scratch);
                    room.charge -= charged;
                    room.paced -= body;
                    room.bytes -= need;
                    room.items += 1;
                    room.body += body;
                    room.charged += charged;
                    room.grew += need;
                    continue;
                }
                Ok(Some(builder)) => builder,
                Err(err) => return Poll::Ready(Some(Err(err))),
            };
            return self.own_frame(builder, id, packing, &mut BytesMut::new(), cx);
        }
    }
}

impl<T> Encoding<T> {
    /// Encodes `item` into `scratch`: `None` if it is a small plain body that stays there
    /// for a run, else the builder holding it (and `scratch` starts over).
    #[inline]
    fn encode_small(
        &self,
        item: T,
        packer: Option<Packer>,
        scratch: &mut FrameBuilder,
    ) -> Result<Option<FrameBuilder>, RpcError> {
        if let Err(err) = encode_into(self.encode, item, scratch) {
            scratch.reset();
            return Err(err);
        }
        if scratch.is_plain_under(RUN_ITEM_MAX)
            && !packer.is_some_and(|p| p.wants(scratch.body_len()))
        {
            return Ok(None);
        }
        Ok(Some(std::mem::replace(scratch, FrameBuilder::new())))
    }

    /// The frame of its own of an item encoded in `builder`: compressed if it is worth it,
    /// on the blocking pool if it is large.
    fn own_frame(
        &mut self,
        builder: FrameBuilder,
        id: u64,
        packing: Packing,
        arena: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Made, RpcError>>> {
        let Packing {
            packer,
            max_frame_size,
        } = packing;
        let large = packer.is_some_and(|p| p.wants(builder.body_len()))
            && builder.body_len() > INLINE_PACK_LIMIT;
        if !large {
            return Poll::Ready(Some(Ok(Made::Frame(ItemFrame::build(
                builder,
                id,
                packer,
                max_frame_size,
            )))));
        }
        // This runs on the connection's I/O task: a large item is compressed on the
        // blocking pool instead, and this stream waits for it (its later items cannot
        // overtake it), while the connection's other calls go on.
        let job = tokio::task::spawn_blocking(move || {
            ItemFrame::build(builder, id, packer, max_frame_size)
        });
        self.packing = Some(job);
        self.poll_frame(id, packing, arena, None, cx)
    }
}

/// What a pump sends per stream per wake-up, so one bulk stream cannot fill a whole batch
/// while other calls wait: at least this many items, and on until this many bytes of frames
/// (a stream of small items then goes out thousands at a time, not eight per wake-up).
const PUMP_BURST: u32 = 8;
const PUMP_BURST_BYTES: usize = 64 << 10;

/// How many bytes of items this side's streams may have sent that the peer has not granted
/// credit back for, when the peer grants credit whenever a consumer waits (it said so; see
/// `StreamEngine::announcement`): in all, and per stream. One item may always be out, even
/// a larger one. The peer's buffer then never holds more than this, half its default
/// `max_buffered_stream_bytes`; a consumer that stops reading holds up the connection's
/// other streams once its stream holds what the connection may send (as HTTP/2's
/// connection window does), never its unary calls. The per-stream figure applies to
/// item-credited streams only: a byte-credited stream has its own window,
/// [`super::BYTE_WINDOW`], counted in charged bytes.
pub(super) const PACED_CONNECTION_BYTES: usize = 16 << 20;
pub(super) const PACED_STREAM_BYTES: usize = 4 << 20;

/// The totals of a stream up to and including one item it sent, for the item's credit to
/// come back: its charged bytes (byte credit) and its body bytes (the connection's pacing).
#[derive(Clone, Copy)]
struct SentThrough {
    charge: u64,
    body: u64,
}

/// A stream this side sends, with its credit.
struct Pump {
    id: u64,
    source: ItemSource,
    /// Items it may still send (item credit; unused once the peer credits bytes).
    credit: u32,
    deadline: Option<Pin<Box<Deadline>>>,
    /// The call whose result this stream is, observed until the stream ends (server side);
    /// dropped unfinished, when the stream is cancelled, it records `cancelled`.
    observed: Observed,
    /// Bytes of items sent, for the call's metrics.
    bytes: usize,
    /// For each frame sent (an item, or a run of items) that the receiver has not granted
    /// credit back for, oldest first: the stream's totals through it (so a credit is one
    /// look-up and an O(1) drain, not a pop per item); the totals of everything sent; the
    /// charged bytes credited back. A run is released when credit covers all its items.
    unacked: VecDeque<SentThrough>,
    /// Items were recorded since the last entry of `unacked`.
    unmarked: bool,
    sent: SentThrough,
    acked_charge: u64,
    /// The receiver granted byte credit once: the stream's window is open to its full size.
    opened: bool,
    /// Body bytes of the items not credited back yet (what the connection's pacing counts).
    unacked_bytes: usize,
    /// An item made while the stream had to wait for credit or the connection's pacing.
    held: Option<ItemFrame>,
}

impl Pump {
    fn end(&mut self, end: Result<(), &RpcError>) -> Bytes {
        self.observed.finish_with(end, self.bytes);
        crate::protocol::stream_end_frame(self.id, end)
    }

    /// Charged bytes sent and not credited back: what the stream's byte window counts.
    fn outstanding(&self) -> u64 {
        self.sent.charge - self.acked_charge
    }

    /// Whether the stream's credit lets it make another item: it has item credit, or
    /// room in its byte window, or both while the peer's way is not known yet.
    fn has_room(&self, mode: CreditMode) -> bool {
        let bytes = || self.outstanding() < byte_window(self.opened);
        match mode {
            CreditMode::Items => self.credit > 0,
            CreditMode::Bytes => bytes(),
            CreditMode::Pending => self.credit > 0 && bytes(),
        }
    }

    /// Whether the byte window and the pacing (if `paced`) let `item` go now, given `sent`
    /// unacknowledged body bytes on the connection. One item may always be out alone.
    fn allows(&self, mode: CreditMode, paced: bool, body: usize, sent: usize) -> bool {
        let stream = match mode {
            CreditMode::Items if !paced => return true,
            CreditMode::Items => {
                self.unacked_bytes == 0 || self.unacked_bytes + body <= PACED_STREAM_BYTES
            }
            CreditMode::Bytes | CreditMode::Pending => {
                let outstanding = self.outstanding();
                outstanding == 0 || outstanding + charge(body) <= byte_window(self.opened)
            }
        };
        stream && (!paced || sent == 0 || sent + body <= PACED_CONNECTION_BYTES)
    }

    /// Counts items sent and not credited back yet: their charges and body bytes (one
    /// item, or those [`Source::poll_more`] put in a run).
    #[inline]
    fn record(&mut self, charged: u64, body: usize) {
        self.sent.charge += charged;
        self.sent.body += body as u64;
        self.unacked_bytes += body;
        self.unmarked = true;
    }

    /// Closes what was recorded since the last mark as one entry of `unacked`: an item
    /// sent in a frame of its own, or a run, whose items are credited back together.
    #[inline]
    fn mark(&mut self) {
        if std::mem::take(&mut self.unmarked) {
            self.unacked.push_back(self.sent);
        }
    }

    /// The oldest `n` items unacknowledged were credited back (or `n` is how many items
    /// the charged bytes credited so far cover): the body bytes they held, now released.
    fn ack(&mut self, n: usize) -> usize {
        let n = n.min(self.unacked.len());
        if n == 0 {
            return 0;
        }
        let through = self.unacked[n - 1];
        self.unacked.drain(..n);
        // What is still unacknowledged: the bytes sent after the last item acked.
        let left = usize::try_from(self.sent.body - through.body).unwrap_or(usize::MAX);
        let released = self.unacked_bytes - left;
        self.unacked_bytes = left;
        released
    }
}

/// What an item of `body` bytes takes from a byte-credited stream's window.
pub(super) fn charge(body: usize) -> u64 {
    body as u64 + u64::from(ITEM_OVERHEAD)
}

/// The streams a connection sends.
pub(crate) struct Pumps {
    list: Vec<Pump>,
    /// Unacknowledged item bytes of all pumps.
    unacked_bytes: usize,
    /// The peer grants credit whenever a consumer waits: pace by bytes too.
    pub(super) paced: bool,
    /// Whether the peer credits items or bytes (see `CreditMode`).
    pub(super) mode: CreditMode,
    /// The largest frame this side sends: a larger item fails its stream, not the
    /// connection.
    pub(super) max_frame_size: usize,
    /// How items are compressed, once the connection agreed on a codec.
    pub(super) packer: Option<Packer>,
    /// Spare buffer space that item frames and runs are built in (see
    /// `FrameBuilder::in_arena`).
    arena: BytesMut,
    /// The peer reads runs of items (`StreamItems`): small items are encoded into
    /// `scratch`, one at a time, and copied into their stream's run.
    pub(super) runs: bool,
    scratch: Option<FrameBuilder>,
}

impl Pumps {
    pub(super) fn new(max_frame_size: usize) -> Pumps {
        Pumps {
            list: Vec::new(),
            unacked_bytes: 0,
            paced: false,
            mode: CreditMode::Pending,
            max_frame_size,
            packer: None,
            arena: BytesMut::new(),
            runs: false,
            scratch: None,
        }
    }

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
            deadline: timeout.map(|t| Box::pin(Deadline::after(Some(t)))),
            observed,
            bytes: 0,
            unacked: VecDeque::new(),
            unmarked: false,
            sent: SentThrough { charge: 0, body: 0 },
            acked_charge: 0,
            opened: false,
            unacked_bytes: 0,
            held: None,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The receiver of `id` granted `amount` more: items, or charged bytes once the peer
    /// credits bytes.
    pub(crate) fn credit(&mut self, id: u64, amount: u32) {
        let mode = self.mode;
        if let Some(pump) = self.list.iter_mut().find(|p| p.id == id) {
            let released = if mode == CreditMode::Bytes {
                // Credit beyond what was sent is not saved up: the window is what it is.
                pump.opened = true;
                pump.acked_charge = (pump.acked_charge + u64::from(amount)).min(pump.sent.charge);
                let acked = pump.acked_charge;
                let n = pump.unacked.partition_point(|sent| sent.charge <= acked);
                pump.ack(n)
            } else {
                pump.credit = pump.credit.saturating_add(amount);
                pump.ack(amount as usize)
            };
            self.unacked_bytes -= released;
        }
    }

    /// The receiver of `id` is gone: stop sending it. Whether there was such a stream.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        let Some(i) = self.list.iter().position(|p| p.id == id) else {
            return false;
        };
        let pump = self.list.swap_remove(i);
        self.unacked_bytes -= pump.unacked_bytes;
        true
    }

    /// Polls every stream that has credit, queueing its frames on `unsent` while that holds
    /// less than `limit` bytes; a stream that ended (its `StreamEnd` queued) is dropped.
    /// Whether a stream has an item waiting for the pacing by bytes.
    #[inline]
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        unsent: &mut Outgoing,
        limit: usize,
    ) -> bool {
        if !self.list.is_empty() {
            let waiting = self.poll_streams(cx, unsent, limit);
            if self.list.is_empty() {
                // A connection without streams pins no buffer.
                self.arena = BytesMut::new();
                self.scratch = None;
            }
            waiting
        } else {
            false
        }
    }

    /// Out of line, so that the connection loops of unary calls stay small.
    #[inline(never)]
    fn poll_streams(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) -> bool {
        let mut waiting = false;
        let (paced, mode, max_frame_size) = (self.paced, self.mode, self.max_frame_size);
        let packing = Packing {
            packer: self.packer,
            max_frame_size,
        };
        // A run's frame stays within the frame size limit, as every frame does.
        let run_room = max_frame_size.saturating_sub(RUN_HEAD_MAX);
        let mut sent = self.unacked_bytes;
        let arena = &mut self.arena;
        let mut scratch = if self.runs {
            Some(self.scratch.get_or_insert_with(FrameBuilder::new))
        } else {
            None
        };
        self.list.retain_mut(|pump| {
            if let Some(deadline) = &mut pump.deadline {
                if let Poll::Ready(err) = deadline.as_mut().poll_expired(cx) {
                    sent -= pump.unacked_bytes;
                    unsent.push(pump.end(Err(&err)));
                    return false;
                }
            }
            // The run this turn's small items go into, sent before anything else of the
            // stream and at the end of its turn.
            let mut run: Option<FrameBuilder> = None;
            let (mut items, mut bytes) = (0, 0);
            let spent = |items: u32, bytes: usize| items >= PUMP_BURST && bytes >= PUMP_BURST_BYTES;
            let ended = loop {
                if !(pump.has_room(mode) && !spent(items, bytes) && unsent.bytes() < limit) {
                    break None;
                }
                let polled = match (pump.held.take(), run.as_mut(), scratch.as_deref_mut()) {
                    (Some(item), _, _) => Poll::Ready(Some(Ok(Made::Frame(item)))),
                    // A run is open (so credit is in bytes): fill it in one call.
                    (None, Some(open), Some(scratch)) => {
                        let mut room = RunRoom {
                            charge: byte_window(pump.opened).saturating_sub(pump.outstanding()),
                            paced: if paced {
                                PACED_CONNECTION_BYTES.saturating_sub(sent)
                            } else {
                                usize::MAX
                            },
                            bytes: (run_room.saturating_sub(open.body_len()))
                                .min(open.spare())
                                .min(PUMP_BURST_BYTES.saturating_sub(bytes)),
                            ..RunRoom::default()
                        };
                        let polled = pump
                            .source
                            .0
                            .poll_more(pump.id, packing, open, scratch, &mut room, cx);
                        if room.items > 0 {
                            pump.record(room.charged, room.body);
                        }
                        sent += room.body;
                        items += room.items;
                        bytes += room.grew;
                        pump.bytes += room.grew;
                        polled
                    }
                    (None, _, scratch) => pump
                        .source
                        .0
                        .poll_frame(pump.id, packing, arena, scratch, cx),
                };
                let made = match polled {
                    Poll::Ready(Some(Ok(made))) => made,
                    Poll::Ready(Some(Err(err))) => break Some(Err(err)),
                    Poll::Ready(None) => break Some(Ok(())),
                    Poll::Pending => break None,
                };
                let (body, plain) = match (&made, scratch.as_deref()) {
                    (Made::Frame(item), _) => (item.body, item.plain),
                    (Made::Small, Some(scratch)) => {
                        let body = scratch.body_len();
                        (body, FrameBuilder::stream_item_len(pump.id, body))
                    }
                    (Made::Small, None) => unreachable!("a run item without a scratch builder"),
                };
                // Uncompressed size: compression does not loosen the limit.
                if plain > max_frame_size {
                    if let Some(scratch) = scratch.as_deref_mut() {
                        scratch.reset();
                    }
                    break Some(Err(item_too_large(plain, max_frame_size)));
                }
                // A byte-credited stream counts what it sends even if the connection is not
                // paced (it always is: the byte credit comes with the announcement).
                if paced || mode != CreditMode::Items {
                    if !pump.allows(mode, paced, body, sent) {
                        // Credit for what the peer holds comes back as it is read; that
                        // wakes this task. A small item waits as a frame of its own.
                        pump.held = Some(match made {
                            Made::Frame(item) => item,
                            Made::Small => own_frame(&mut scratch, pump.id, max_frame_size),
                        });
                        waiting = true;
                        break None;
                    }
                    pump.record(charge(body), body);
                    sent += body;
                }
                if mode != CreditMode::Bytes {
                    pump.credit -= 1;
                }
                items += 1;
                let len = match made {
                    Made::Small if item_len(body) <= run_room => {
                        let need = item_len(body);
                        if let Some(open) = &run {
                            if open.body_len() + need > run_room || open.spare() < need {
                                // The entry closed takes this item in too: it is credited
                                // back with the run before it, a little later than it might.
                                close_run(&mut run, arena, pump.id, unsent);
                                pump.mark();
                            }
                        }
                        let open = run.get_or_insert_with(|| FrameBuilder::in_arena(arena));
                        if let Some(scratch) = scratch.as_deref_mut() {
                            open.append_item(scratch);
                        }
                        need
                    }
                    made => {
                        let item = match made {
                            Made::Frame(item) => item,
                            Made::Small => own_frame(&mut scratch, pump.id, max_frame_size),
                        };
                        if close_run(&mut run, arena, pump.id, unsent) {
                            pump.mark();
                        }
                        let len = item.frame.len();
                        unsent.push(item.frame);
                        pump.mark();
                        len
                    }
                };
                bytes += len;
                pump.bytes += len;
            };
            if close_run(&mut run, arena, pump.id, unsent) {
                pump.mark();
            }
            if let Some(end) = ended {
                sent -= pump.unacked_bytes;
                unsent.push(pump.end(end.as_ref().map(|_| ())));
                return false;
            }
            if spent(items, bytes) && pump.has_room(mode) {
                // More is ready: come back after the others had their turn.
                cx.waker().wake_by_ref();
            }
            true
        });
        self.unacked_bytes = sent;
        waiting
    }
}

/// Sends the run being built, if any, as a `StreamItems` frame of stream `id`; whether
/// there was one.
#[inline]
fn close_run(
    run: &mut Option<FrameBuilder>,
    arena: &mut BytesMut,
    id: u64,
    unsent: &mut Outgoing,
) -> bool {
    let Some(mut open) = run.take() else {
        return false;
    };
    open.detach(arena);
    unsent.push(open.finish_stream_items(id));
    true
}

/// The small item in `scratch` as a frame of its own (one that must wait for credit, or
/// does not fit in a run under a tiny frame size limit).
#[cold]
fn own_frame(scratch: &mut Option<&mut FrameBuilder>, id: u64, max_frame_size: usize) -> ItemFrame {
    let builder = match scratch.as_deref_mut() {
        Some(scratch) => std::mem::replace(scratch, FrameBuilder::new()),
        None => FrameBuilder::new(),
    };
    ItemFrame::build(builder, id, None, max_frame_size)
}

#[cold]
fn item_too_large(len: usize, limit: usize) -> RpcError {
    RpcError::new(
        ErrorKind::Protocol,
        format!(
            "a stream item of {len} bytes is more than the frame size limit of {limit} bytes; \
             send large data as more, smaller items"
        ),
    )
}
