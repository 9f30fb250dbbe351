//! The sending half of a stream: an [`ItemSource`] turning a `Streaming<T>` into frames, and
//! the [`Pumps`] of a connection that send them as credit allows.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::BodyWriter;
use futures::StreamExt;

use super::{Streaming, WINDOW};
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
    /// The next item as a `StreamItem` frame of stream `id`, an error that ends the stream,
    /// or its end.
    fn poll_frame(
        &mut self,
        id: u64,
        packing: Packing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ItemFrame, RpcError>>>;
}

/// A `Streaming<T>` with the function that encodes its items.
pub(crate) struct Encoding<T> {
    pub(super) stream: Streaming<T>,
    pub(super) encode: fn(T, &mut BodyWriter<'_>) -> Result<(), RpcError>,
    /// A large item being compressed on the blocking pool (see `INLINE_PACK_LIMIT`): the
    /// stream's next frame, which comes before any later item.
    pub(super) packing: Option<JoinHandle<ItemFrame>>,
}

impl<T> Source for Encoding<T> {
    fn poll_frame(
        &mut self,
        id: u64,
        packing: Packing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ItemFrame, RpcError>>> {
        if let Some(job) = &mut self.packing {
            let done = std::task::ready!(Pin::new(job).poll(cx));
            self.packing = None;
            return Poll::Ready(Some(done.map_err(|_| {
                RpcError::new(ErrorKind::Internal, "compressing a stream item failed")
            })));
        }
        match self.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(item))) => {
                let mut builder = FrameBuilder::new();
                let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (self.encode)(item, &mut builder.writer())
                }))
                .unwrap_or_else(|_| {
                    Err(RpcError::new(
                        ErrorKind::Internal,
                        "encoding a stream item panicked",
                    ))
                });
                if let Err(err) = encoded {
                    return Poll::Ready(Some(Err(err)));
                }
                let Packing {
                    packer,
                    max_frame_size,
                } = packing;
                let large = packer.is_some_and(|p| p.wants(builder.body_len()))
                    && builder.body_len() > INLINE_PACK_LIMIT;
                if !large {
                    return Poll::Ready(Some(Ok(ItemFrame::build(
                        builder,
                        id,
                        packer,
                        max_frame_size,
                    ))));
                }
                // This runs on the connection's I/O task: a large item is compressed on the
                // blocking pool instead, and this stream waits for it (its later items
                // cannot overtake it), while the connection's other calls go on.
                let job = tokio::task::spawn_blocking(move || {
                    ItemFrame::build(builder, id, packer, max_frame_size)
                });
                self.packing = Some(job);
                self.poll_frame(id, packing, cx)
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Items a pump sends per stream per wake-up, so one bulk stream cannot fill a whole batch
/// while other calls wait.
const PUMP_BURST: u32 = 8;

/// How many bytes of items this side's streams may have sent that the peer has not granted
/// credit back for, when the peer grants credit whenever a consumer waits (it said so; see
/// `StreamEngine::announcement`): in all, and per stream. One item may always be out, even
/// a larger one. The peer's buffer then never holds more than this, half its default
/// `max_buffered_stream_bytes`; a consumer that stops reading holds up the connection's
/// other streams once its stream holds what the connection may send (as HTTP/2's
/// connection window does), never its unary calls.
pub(super) const PACED_CONNECTION_BYTES: usize = 16 << 20;
pub(super) const PACED_STREAM_BYTES: usize = 4 << 20;

/// A stream this side sends, with its credit.
struct Pump {
    id: u64,
    source: ItemSource,
    credit: u32,
    deadline: Option<Pin<Box<Deadline>>>,
    /// The call whose result this stream is, observed until the stream ends (server side);
    /// dropped unfinished, when the stream is cancelled, it records `cancelled`.
    observed: Observed,
    /// Bytes of items sent, for the call's metrics.
    bytes: usize,
    /// For each item sent that the receiver has not granted credit back for, oldest first:
    /// the stream's bytes sent up to and including it (so a credit of n items is one look-up
    /// and an O(1) drain, not n pops); and the bytes those items hold.
    unacked: VecDeque<u64>,
    sent_bytes: u64,
    unacked_bytes: usize,
    /// An item made while the stream had to wait for the connection's pacing.
    held: Option<ItemFrame>,
}

impl Pump {
    fn end(&mut self, end: Result<(), &RpcError>) -> Bytes {
        self.observed.finish_with(end, self.bytes);
        crate::protocol::stream_end_frame(self.id, end)
    }

    /// Whether pacing lets `item` go now, given `sent` unacknowledged bytes on the connection.
    fn paced_allows(&self, item: usize, sent: usize) -> bool {
        (self.unacked_bytes == 0 || self.unacked_bytes + item <= PACED_STREAM_BYTES)
            && (sent == 0 || sent + item <= PACED_CONNECTION_BYTES)
    }
}

/// The streams a connection sends.
pub(crate) struct Pumps {
    list: Vec<Pump>,
    /// Unacknowledged item bytes of all pumps.
    unacked_bytes: usize,
    /// The peer grants credit whenever a consumer waits: pace by bytes too.
    pub(super) paced: bool,
    /// The largest frame this side sends: a larger item fails its stream, not the
    /// connection.
    pub(super) max_frame_size: usize,
    /// How items are compressed, once the connection agreed on a codec.
    pub(super) packer: Option<Packer>,
}

impl Pumps {
    pub(super) fn new(max_frame_size: usize) -> Pumps {
        Pumps {
            list: Vec::new(),
            unacked_bytes: 0,
            paced: false,
            max_frame_size,
            packer: None,
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
            sent_bytes: 0,
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

    /// The receiver of `id` granted `items` more.
    pub(crate) fn credit(&mut self, id: u64, items: u32) {
        if let Some(pump) = self.list.iter_mut().find(|p| p.id == id) {
            pump.credit = pump.credit.saturating_add(items);
            let acked = (items as usize).min(pump.unacked.len());
            if acked > 0 {
                let acked_through = pump.unacked[acked - 1];
                pump.unacked.drain(..acked);
                // What is still unacknowledged: the bytes sent after the last item acked.
                let left = usize::try_from(pump.sent_bytes - acked_through).unwrap_or(usize::MAX);
                self.unacked_bytes -= pump.unacked_bytes - left;
                pump.unacked_bytes = left;
            }
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
            self.poll_streams(cx, unsent, limit)
        } else {
            false
        }
    }

    /// Out of line, so that the connection loops of unary calls stay small.
    #[inline(never)]
    fn poll_streams(&mut self, cx: &mut Context<'_>, unsent: &mut Outgoing, limit: usize) -> bool {
        let mut waiting = false;
        let (paced, max_frame_size) = (self.paced, self.max_frame_size);
        let packing = Packing {
            packer: self.packer,
            max_frame_size,
        };
        let mut sent = self.unacked_bytes;
        self.list.retain_mut(|pump| {
            if let Some(deadline) = &mut pump.deadline {
                if let Poll::Ready(err) = deadline.as_mut().poll_expired(cx) {
                    sent -= pump.unacked_bytes;
                    unsent.push(pump.end(Err(&err)));
                    return false;
                }
            }
            let mut burst = PUMP_BURST;
            while pump.credit > 0 && burst > 0 && unsent.bytes() < limit {
                let item = match pump.held.take() {
                    Some(item) => item,
                    None => match pump.source.0.poll_frame(pump.id, packing, cx) {
                        Poll::Ready(Some(Ok(item))) => item,
                        Poll::Ready(Some(Err(err))) => {
                            sent -= pump.unacked_bytes;
                            unsent.push(pump.end(Err(&err)));
                            return false;
                        }
                        Poll::Ready(None) => {
                            sent -= pump.unacked_bytes;
                            unsent.push(pump.end(Ok(())));
                            return false;
                        }
                        Poll::Pending => break,
                    },
                };
                // Uncompressed size: compression does not loosen the limit.
                if item.plain > max_frame_size {
                    let err = item_too_large(item.plain, max_frame_size);
                    sent -= pump.unacked_bytes;
                    unsent.push(pump.end(Err(&err)));
                    return false;
                }
                if paced {
                    if !pump.paced_allows(item.body, sent) {
                        // Credit for what the peer holds comes back as it is read; that
                        // wakes this task.
                        pump.held = Some(item);
                        waiting = true;
                        break;
                    }
                    pump.sent_bytes += item.body as u64;
                    pump.unacked.push_back(pump.sent_bytes);
                    pump.unacked_bytes += item.body;
                    sent += item.body;
                }
                pump.credit -= 1;
                burst -= 1;
                pump.bytes += item.frame.len();
                unsent.push(item.frame);
            }
            if burst == 0 && pump.credit > 0 {
                // More is ready: come back after the others had their turn.
                cx.waker().wake_by_ref();
            }
            true
        });
        self.unacked_bytes = sent;
        waiting
    }
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
