//! Wire protocol version 1: the messages, and how they become frames.
//!
//! Every frame is one bincode-encoded [`Message`] (see [`crate::codec`] for the
//! configuration). A request's or response's body — the method's arguments or result, itself
//! bincode — is the message's last field, so a frame is built by encoding the body first,
//! into a buffer with [`HEADROOM`] free bytes in front, and then writing the envelope's head
//! into that room: one allocation and no copy of the body. Received bodies are borrowed from
//! the frame (`Bytes::slice_ref`), never copied.

use std::time::Duration;

use bincode::error::DecodeError;
use bincode::{BorrowDecode, Encode};

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{with_limit_for, CONFIG};
use crate::context::Metadata;
use crate::descriptor::ServiceDescriptor;
use crate::error::{ErrorKind, RpcError};
use crate::frame::Frame;
use crate::varint;

/// First bytes of every `Hello` after the message tag: says "this is our protocol".
pub(crate) const MAGIC: [u8; 4] = *b"tRPC";
/// The protocol version this build speaks.
pub(crate) const VERSION: u32 = 1;
/// Room reserved in front of a body for the envelope's head.
pub(crate) const HEADROOM: usize = 48;
/// Size of the buffers small response frames are carved from.
const ARENA_CHUNK: usize = 16 << 10;

/// Tags of the messages, in the order of [`Message`]'s variants.
const TAG_REQUEST: u32 = 1;
const TAG_RESPONSE: u32 = 2;
const TAG_STREAM_ITEM: u32 = 5;
const TAG_PACKED_REQUEST: u32 = 10;
const TAG_PACKED_RESPONSE: u32 = 11;
const TAG_PACKED_STREAM_ITEM: u32 = 12;
const TAG_STREAM_ITEMS: u32 = 13;

/// One method of the client's table in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub(crate) struct WireMethod<'a> {
    pub name: &'a str,
    pub fingerprint: u64,
}

/// Whether a call succeeded; an error carries a kind and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub(crate) enum Status<'a> {
    Ok,
    Error { kind: u8, message: &'a str },
}

impl Status<'_> {
    /// The outcome the peer reported: the one place a wire status becomes an error.
    pub(crate) fn into_result(self) -> Result<(), RpcError> {
        match self {
            Status::Ok => Ok(()),
            Status::Error { kind, message } => {
                Err(RpcError::new(ErrorKind::from_wire(kind), message))
            }
        }
    }
}

/// The stream id no call uses (ids count up from 0), for messages about the connection as a
/// whole rather than one stream: `Credit { id: CONNECTION_ID, items: 0 }` announces that
/// this side grants credit back whenever its consumer has drained a stream's buffer (see
/// `docs/protocol.md`, "Connection window"). A peer of the first protocol revision ignores
/// credit for an id it does not send on.
pub(crate) const CONNECTION_ID: u64 = u64::MAX;

/// Every message of protocol version 1. The variant order is the wire tag: append only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub(crate) enum Message<'a> {
    /// Client → server, first frame: which protocol, which service, which methods.
    Hello {
        magic: [u8; 4],
        version: u32,
        service: &'a str,
        methods: Vec<WireMethod<'a>>,
    },
    /// A call. `method` indexes the client's table from `Hello`; `timeout_us` is the time
    /// remaining (not a wall-clock deadline, so clock skew does not matter).
    Request {
        id: u64,
        method: u32,
        timeout_us: Option<u64>,
        metadata: Vec<(&'a str, &'a [u8])>,
        body: &'a [u8],
    },
    /// The answer to `Request { id }`; `body` is the result when `status` is `Ok`.
    Response {
        id: u64,
        status: Status<'a>,
        body: &'a [u8],
    },
    /// The caller gave up on `id`: the server drops its handler.
    Cancel { id: u64 },
    /// Either side, before closing for a reason the peer should hear.
    Goodbye { kind: u8, message: &'a str },
    /// One item of the stream of call `id`: from the client, of the method's streaming
    /// argument; from the server, of its streaming result.
    StreamItem { id: u64, body: &'a [u8] },
    /// The end of the stream of call `id` in the sender's direction, or its error.
    StreamEnd { id: u64, status: Status<'a> },
    /// The receiver of stream `id` can take `items` more (each side starts with a window).
    Credit { id: u64, items: u32 },
    /// Are you there? Answered with `Pong` carrying the same nonce.
    Ping { nonce: u64 },
    /// The answer to `Ping`.
    Pong { nonce: u64 },
    /// `Request` with a packed (compressed) body: sent only once the server said which
    /// codec it accepts (see `crate::compress`), so a peer that knows no compression never
    /// receives one.
    PackedRequest {
        id: u64,
        method: u32,
        timeout_us: Option<u64>,
        metadata: Vec<(&'a str, &'a [u8])>,
        body: &'a [u8],
    },
    /// A successful `Response` with a packed body (errors are never compressed): only to a
    /// client that offered the codec.
    PackedResponse { id: u64, body: &'a [u8] },
    /// `StreamItem` with a packed body, under the same rule.
    PackedStreamItem { id: u64, body: &'a [u8] },
    /// A run of items of the stream of call `id`, in order: `items` is each item's body
    /// length (a varint) followed by the body, back to back. Sent only to a peer that said
    /// it reads runs (see `streaming::ITEM_RUNS`), so a peer that predates them never
    /// receives one.
    StreamItems { id: u64, items: &'a [u8] },
    /// Server → client: the server's load, on the replies it sends anyway (see
    /// `crate::load`): calls its handlers are running, over all connections, and the
    /// utilization its service set, in ten-thousandths. Sent only to a client that said it
    /// reads it (`streaming::LOAD_REPORTS`), so a peer that predates it never receives one.
    Load { in_flight: u32, utilization: u32 },
}

impl<'a> Message<'a> {
    /// Decodes one whole frame, bounded by its length; trailing bytes are an error.
    pub(crate) fn decode(frame: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        match fast::decode(frame) {
            Some(message) => Ok(message),
            None => Message::decode_general(frame),
        }
    }

    /// [`decode`](Message::decode) through bincode's derived decoder, for every message.
    pub(crate) fn decode_general(frame: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let (message, used) = with_limit_for!(frame.len(), |config| {
            bincode::borrow_decode_from_slice::<Message<'a>, _>(frame, config)
        })?;
        if used != frame.len() {
            return Err(DecodeError::OtherString(format!(
                "{} trailing bytes after the message",
                frame.len() - used
            )));
        }
        Ok(message)
    }

    /// Encodes a message without a large body into a fresh frame.
    pub(crate) fn to_frame(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        // Encoding into a growable buffer cannot fail for these types.
        if bincode::encode_into_std_write(self, &mut BufWrite(&mut buf), CONFIG).is_err() {
            unreachable!("encoding a protocol message into memory failed");
        }
        buf.freeze()
    }

    /// A short name for messages in errors and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Request { .. } => "Request",
            Message::Response { .. } => "Response",
            Message::Cancel { .. } => "Cancel",
            Message::Goodbye { .. } => "Goodbye",
            Message::StreamItem { .. } => "StreamItem",
            Message::StreamEnd { .. } => "StreamEnd",
            Message::Credit { .. } => "Credit",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::PackedRequest { .. } => "PackedRequest",
            Message::PackedResponse { .. } => "PackedResponse",
            Message::PackedStreamItem { .. } => "PackedStreamItem",
            Message::StreamItems { .. } => "StreamItems",
            Message::Load { .. } => "Load",
        }
    }
}

struct BufWrite<'a>(&'a mut BytesMut);

impl std::io::Write for BufWrite<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The name of the entry of `Hello`'s method table that carries the client's schema: this
/// prefix, then the schema as JSON. A version 1 server that does not know it takes it for a
/// method it lacks, which fails only if it is called, and it never is.
pub(crate) const SCHEMA_ENTRY: &str = "rpc.schema:";
/// The fingerprint of that entry: FNV-1a 64 of `rpc.schema`.
pub(crate) const SCHEMA_ENTRY_FINGERPRINT: u64 = crate::descriptor::fnv1a(b"rpc.schema");

/// The client's `Hello` for `desc`: its method table, then its codec offer if it has one
/// (`offer`, see `crate::compress`), then its schema if it has one. The schema stays last,
/// where a server that predates the offer looks for it.
pub(crate) fn hello_frame(desc: &ServiceDescriptor, offer: Option<&str>) -> Bytes {
    let schema = desc.compiled_schema();
    Message::Hello {
        magic: MAGIC,
        version: VERSION,
        service: desc.name,
        methods: desc
            .methods
            .iter()
            .map(|m| WireMethod {
                name: m.name,
                fingerprint: m.fingerprint,
            })
            .chain(offer.map(|offer| WireMethod {
                name: offer,
                fingerprint: crate::compress::OFFER_ENTRY_FINGERPRINT,
            }))
            .chain(schema.map(|schema| WireMethod {
                name: schema.hello_entry(),
                fingerprint: SCHEMA_ENTRY_FINGERPRINT,
            }))
            .collect(),
    }
    .to_frame()
}

/// A `Hello`'s method table without its schema entry, and the schema's JSON if it had one
/// (it is the last entry).
pub(crate) fn split_schema_entry<'m, 'a>(
    methods: &'m [WireMethod<'a>],
) -> (&'m [WireMethod<'a>], Option<&'a str>) {
    split_entry(methods, SCHEMA_ENTRY, SCHEMA_ENTRY_FINGERPRINT)
}

/// A `Hello`'s method table without its last entry when that is the extension `prefix`
/// (with `fingerprint`), and the text after the prefix.
pub(crate) fn split_entry<'m, 'a>(
    methods: &'m [WireMethod<'a>],
    prefix: &str,
    fingerprint: u64,
) -> (&'m [WireMethod<'a>], Option<&'a str>) {
    match methods.split_last() {
        Some((last, rest)) if last.fingerprint == fingerprint => {
            match last.name.strip_prefix(prefix) {
                Some(text) => (rest, Some(text)),
                None => (methods, None),
            }
        }
        _ => (methods, None),
    }
}

/// A `Goodbye` frame.
pub(crate) fn goodbye_frame(kind: ErrorKind, message: &str) -> Bytes {
    Message::Goodbye {
        kind: kind.to_wire(),
        message,
    }
    .to_frame()
}

/// The `StreamEnd` frame of stream `id`: its success or its error.
pub(crate) fn stream_end_frame(id: u64, outcome: Result<(), &RpcError>) -> Bytes {
    let status = match outcome {
        Ok(()) => Status::Ok,
        Err(err) => Status::Error {
            kind: err.kind().to_wire(),
            message: err.message(),
        },
    };
    Message::StreamEnd { id, status }.to_frame()
}

/// An error `Response` frame.
pub(crate) fn error_response_frame(id: u64, err: &RpcError) -> Bytes {
    let detail = ErrorDetail::of(err);
    Message::Response {
        id,
        status: Status::Error {
            kind: err.kind().to_wire(),
            message: err.message(),
        },
        body: detail.as_ref().map_or(&[], |detail| &detail[..]),
    }
    .to_frame()
}

/// What an error response says beyond its kind and message, in its body (which is empty
/// otherwise, and which clients of earlier versions ignore): `01`, the precise kind's code,
/// and the milliseconds to wait before retrying (`u32`, little-endian; 0 for "not said").
pub(crate) struct ErrorDetail;

impl ErrorDetail {
    const VERSION: u8 = 1;
    const LEN: usize = 6;

    /// The detail `err` needs, if it needs one.
    pub(crate) fn of(err: &RpcError) -> Option<[u8; ErrorDetail::LEN]> {
        let precise = err.kind().detail_code();
        if precise == err.kind().to_wire() && err.retry_after().is_none() {
            return None;
        }
        let ms = err.retry_after().map_or(0, |after| {
            u32::try_from(after.as_millis()).unwrap_or(u32::MAX)
        });
        let mut detail = [0; ErrorDetail::LEN];
        detail[0] = ErrorDetail::VERSION;
        detail[1] = precise;
        detail[2..].copy_from_slice(&ms.to_le_bytes());
        Some(detail)
    }

    /// `err` as the detail in `body` makes it precise; a body this version does not
    /// understand changes nothing.
    pub(crate) fn apply(err: RpcError, body: &[u8]) -> RpcError {
        let [ErrorDetail::VERSION, precise, ms @ ..] = body else {
            return err;
        };
        let Ok(ms) = <[u8; 4]>::try_from(ms) else {
            return err;
        };
        let kind = ErrorKind::from_wire(*precise);
        let mut precise =
            if kind != ErrorKind::Protocol || *precise == ErrorKind::Protocol.to_wire() {
                RpcError::new(kind, err.message())
            } else {
                err
            };
        let ms = u32::from_le_bytes(ms);
        if ms > 0 {
            precise = precise.with_retry_after(std::time::Duration::from_millis(u64::from(ms)));
        }
        precise
    }
}

/// The two messages of every call, `Request` (without metadata) and `Response` (success),
/// and the message of every stream item, `StreamItem`, parsed by hand: bincode's derived decoder spends ~500 instructions on a 20-byte frame,
/// this ~50. It accepts exactly what the derived decoder accepts and gives the same
/// message (a property test checks it); anything else it leaves to that decoder.
mod fast {
    use super::{Message, Status, TAG_REQUEST, TAG_RESPONSE, TAG_STREAM_ITEM, TAG_STREAM_ITEMS};

    use crate::varint::read as varint;

    /// The body: a length, then exactly that many bytes to the end of the frame.
    fn body<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = varint(buf, u64::MAX)?;
        (len == buf.len() as u64).then_some(*buf)
    }

    pub(super) fn decode(frame: &[u8]) -> Option<Message<'_>> {
        let mut buf = frame;
        let tag = varint(&mut buf, u64::from(u32::MAX))?;
        if tag == u64::from(TAG_STREAM_ITEM) {
            let id = varint(&mut buf, u64::MAX)?;
            let body = body(&mut buf)?;
            Some(Message::StreamItem { id, body })
        } else if tag == u64::from(TAG_STREAM_ITEMS) {
            let id = varint(&mut buf, u64::MAX)?;
            let items = body(&mut buf)?;
            Some(Message::StreamItems { id, items })
        } else if tag == u64::from(TAG_REQUEST) {
            let id = varint(&mut buf, u64::MAX)?;
            let method = varint(&mut buf, u64::from(u32::MAX))? as u32;
            let (&has_timeout, rest) = buf.split_first()?;
            buf = rest;
            let timeout_us = match has_timeout {
                0 => None,
                1 => Some(varint(&mut buf, u64::MAX)?),
                _ => return None,
            };
            if varint(&mut buf, u64::MAX)? != 0 {
                return None; // metadata: the general decoder
            }
            let body = body(&mut buf)?;
            Some(Message::Request {
                id,
                method,
                timeout_us,
                metadata: Vec::new(),
                body,
            })
        } else if tag == u64::from(TAG_RESPONSE) {
            let id = varint(&mut buf, u64::MAX)?;
            if varint(&mut buf, u64::from(u32::MAX))? != 0 {
                return None; // an error status: the general decoder
            }
            let body = body(&mut buf)?;
            Some(Message::Response {
                id,
                status: Status::Ok,
                body,
            })
        } else {
            None
        }
    }
}

/// A frame under construction: [`HEADROOM`] bytes for the head, then the body.
///
/// A body may have large byte buffers spliced into it ([`splice`](FrameBuilder::splice)):
/// they stay in their own allocations and become parts of the finished [`Frame`], so they
/// are written to the transport without being copied into the frame.
pub(crate) struct FrameBuilder {
    buf: BytesMut,
    /// Buffers to insert at offsets of `buf`, in order. Boxed: most frames have none, and
    /// a builder is moved along with every call (a `Vec` inline made it larger than what
    /// the compiler moves without a `memcpy` call).
    #[allow(clippy::box_collection)]
    splices: Option<Box<Vec<(usize, Bytes)>>>,
}

impl FrameBuilder {
    pub(crate) fn new() -> FrameBuilder {
        let mut buf = BytesMut::with_capacity(HEADROOM + 64);
        buf.resize(HEADROOM, 0);
        FrameBuilder::of(buf)
    }

    fn of(buf: BytesMut) -> FrameBuilder {
        FrameBuilder { buf, splices: None }
    }

    /// A builder writing into the spare capacity of `arena` (which must be empty), so that
    /// many small frames share one allocation; once the body is written, give what is left
    /// back with [`detach`](FrameBuilder::detach).
    pub(crate) fn in_arena(arena: &mut BytesMut) -> FrameBuilder {
        debug_assert!(arena.is_empty());
        if arena.capacity() < HEADROOM + 256 {
            *arena = BytesMut::with_capacity(ARENA_CHUNK);
        }
        let mut buf = std::mem::take(arena);
        buf.resize(HEADROOM, 0);
        FrameBuilder::of(buf)
    }

    /// Empties the body, keeping the buffer (a builder reused for item after item).
    pub(crate) fn reset(&mut self) {
        self.buf.truncate(HEADROOM);
        self.splices = None;
    }

    /// Whether the body is one piece (nothing spliced) of fewer than `max` bytes.
    #[inline]
    pub(crate) fn is_plain_under(&self, max: usize) -> bool {
        self.splices.is_none() && self.buf.len() - HEADROOM < max
    }

    /// Room left in the buffer before it must grow.
    #[inline]
    pub(crate) fn spare(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// Appends `item`'s body (one piece, see [`is_plain_under`](Self::is_plain_under)) to
    /// this body as one item of a run, its length first, and empties `item` for the next.
    #[inline]
    pub(crate) fn append_item(&mut self, item: &mut FrameBuilder) {
        debug_assert!(item.splices.is_none());
        let body = &item.buf[HEADROOM..];
        let mut len = [0; 9];
        let n = varint::write(&mut len, 0, body.len() as u64);
        self.buf.extend_from_slice(&len[..n]);
        self.buf.extend_from_slice(body);
        item.buf.truncate(HEADROOM);
    }

    /// Where the body is written.
    pub(crate) fn body_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Where the body is written, splices included.
    pub(crate) fn writer(&mut self) -> crate::codec::BodyWriter<'_> {
        crate::codec::BodyWriter::new(self)
    }

    /// Inserts `part` at the end of the body written so far, as a part of its own.
    pub(crate) fn splice(&mut self, part: Bytes) {
        let at = self.buf.len();
        self.splices.get_or_insert_default().push((at, part));
    }

    #[inline]
    pub(crate) fn body_len(&self) -> usize {
        self.buf.len() - HEADROOM + self.spliced()
    }

    /// The bytes of the spliced buffers.
    #[inline]
    fn spliced(&self) -> usize {
        self.splices
            .iter()
            .flat_map(|splices| splices.iter())
            .map(|(_, part)| part.len())
            .sum()
    }

    /// Copies spliced buffers into the body, for the rare paths that need it in one piece
    /// (compression, middleware, a request with metadata).
    pub(crate) fn flatten(&mut self) {
        let spliced = self.spliced();
        let Some(splices) = self.splices.take() else {
            return;
        };
        let mut joined = BytesMut::with_capacity(self.buf.len() + spliced);
        let mut copied = 0;
        for (at, part) in *splices {
            joined.extend_from_slice(&self.buf[copied..at]);
            joined.extend_from_slice(&part);
            copied = at;
        }
        joined.extend_from_slice(&self.buf[copied..]);
        self.buf = joined;
    }

    /// The body written so far, in one piece (spliced buffers are copied in first).
    pub(crate) fn body(&mut self) -> &[u8] {
        self.flatten();
        &self.buf[HEADROOM..]
    }

    /// A copy of the body in one piece (a middleware's view of a request).
    pub(crate) fn body_copy(&mut self) -> Bytes {
        self.flatten();
        Bytes::copy_from_slice(&self.buf[HEADROOM..])
    }

    /// The body, as bytes of its own (no copy unless buffers were spliced into it).
    pub(crate) fn into_body(mut self) -> Bytes {
        self.flatten();
        let mut buf = self.buf;
        buf.advance(HEADROOM);
        buf.freeze()
    }

    /// Finishes a `Request` frame (without metadata).
    pub(crate) fn finish_request(self, id: u64, method: u32, timeout: Option<Duration>) -> Frame {
        self.finish_request_tagged(TAG_REQUEST, id, method, timeout)
    }

    fn finish_request_tagged(
        self,
        tag: u32,
        id: u64,
        method: u32,
        timeout: Option<Duration>,
    ) -> Frame {
        let mut head = Head::new();
        head.varint(u64::from(tag))
            .varint(id)
            .varint(u64::from(method));
        match timeout {
            // Option: a 0 or 1 byte, then the value.
            None => head.varint(0),
            Some(t) => head
                .varint(1)
                .varint(u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
        };
        // No metadata (an empty sequence), then the body's length.
        head.varint(0).varint(self.body_len() as u64);
        self.finish(&head)
    }

    /// Finishes a `Request` frame carrying `first`'s metadata, then `second`'s. Without any,
    /// this is [`finish_request`](FrameBuilder::finish_request); with some, the frame is
    /// encoded afresh (one copy of the body), as metadata goes in front of it.
    #[inline]
    pub(crate) fn finish_request_with(
        self,
        id: u64,
        method: u32,
        timeout: Option<Duration>,
        first: &Metadata,
        second: &Metadata,
    ) -> Frame {
        if first.is_empty() && second.is_empty() {
            self.finish_request(id, method, timeout)
        } else {
            self.finish_request_with_metadata(false, id, method, timeout, first, second)
        }
    }

    /// [`finish_request_with`](FrameBuilder::finish_request_with) for a packed body: a
    /// `PackedRequest` frame.
    pub(crate) fn finish_packed_request_with(
        self,
        id: u64,
        method: u32,
        timeout: Option<Duration>,
        first: &Metadata,
        second: &Metadata,
    ) -> Frame {
        if first.is_empty() && second.is_empty() {
            self.finish_request_tagged(TAG_PACKED_REQUEST, id, method, timeout)
        } else {
            self.finish_request_with_metadata(true, id, method, timeout, first, second)
        }
    }

    /// The length of the `Request` frame [`finish_request_with`] would make of a body of
    /// `body_len` bytes: the size a packed request is checked against, as if unpacked.
    ///
    /// [`finish_request_with`]: FrameBuilder::finish_request_with
    pub(crate) fn request_len(
        id: u64,
        method: u32,
        timeout: Option<Duration>,
        first: &Metadata,
        second: &Metadata,
        body_len: usize,
    ) -> usize {
        let timeout = match timeout {
            None => 1,
            Some(t) => 1 + varint::len(u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
        };
        let pairs = first.iter().chain(second.iter());
        let metadata = varint::len((first.len() + second.len()) as u64)
            + pairs
                .map(|(key, value)| {
                    varint::len(key.len() as u64)
                        + key.len()
                        + varint::len(value.len() as u64)
                        + value.len()
                })
                .sum::<usize>();
        1 + varint::len(id)
            + varint::len(u64::from(method))
            + timeout
            + metadata
            + varint::len(body_len as u64)
            + body_len
    }

    /// The length of the successful `Response` frame of a body of `body_len` bytes.
    pub(crate) fn response_len(id: u64, body_len: usize) -> usize {
        1 + varint::len(id) + 1 + varint::len(body_len as u64) + body_len
    }

    /// The length of the `StreamItem` frame of a body of `body_len` bytes.
    pub(crate) fn stream_item_len(id: u64, body_len: usize) -> usize {
        1 + varint::len(id) + varint::len(body_len as u64) + body_len
    }

    #[cold]
    fn finish_request_with_metadata(
        mut self,
        packed: bool,
        id: u64,
        method: u32,
        timeout: Option<Duration>,
        first: &Metadata,
        second: &Metadata,
    ) -> Frame {
        let metadata = first
            .iter()
            .chain(second.iter())
            .map(|(key, value)| (key, &value[..]))
            .collect();
        let timeout_us = timeout.map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
        // The head is the message with an empty body, whose length (a 0) is replaced by the
        // real one: the body itself, spliced buffers and all, is not copied.
        let body: &[u8] = &[];
        let message = if packed {
            Message::PackedRequest {
                id,
                method,
                timeout_us,
                metadata,
                body,
            }
        } else {
            Message::Request {
                id,
                method,
                timeout_us,
                metadata,
                body,
            }
        };
        let mut head = BytesMut::with_capacity(HEADROOM + 64);
        if bincode::encode_into_std_write(&message, &mut BufWrite(&mut head), CONFIG).is_err() {
            unreachable!("encoding a protocol message into memory failed");
        }
        head.truncate(head.len() - 1);
        let mut len = [0; 10];
        let n = varint::write(&mut len, 0, self.body_len() as u64);
        head.extend_from_slice(&len[..n]);
        self.buf.advance(HEADROOM);
        self.into_frame(head.freeze(), HEADROOM)
    }

    /// A builder around `body`, to send an encoded body again: its large parts are spliced
    /// in again, the rest copied.
    pub(crate) fn with_body_parts(body: &Frame) -> FrameBuilder {
        let mut builder = FrameBuilder::new();
        for part in body.parts() {
            if part.len() >= crate::codec::SPLICE_MIN {
                builder.splice(part.clone());
            } else {
                builder.buf.extend_from_slice(part);
            }
        }
        builder
    }

    /// A builder holding a copy of `body` (the fuzz targets' frames).
    #[cfg(any(test, feature = "__internal-hooks"))]
    pub(crate) fn with_body(body: &[u8]) -> FrameBuilder {
        let mut buf = BytesMut::with_capacity(HEADROOM + body.len());
        buf.resize(HEADROOM, 0);
        buf.extend_from_slice(body);
        FrameBuilder::of(buf)
    }

    /// Finishes a `StreamItem` frame of stream `id`.
    pub(crate) fn finish_stream_item(self, id: u64) -> Frame {
        self.finish_item_tagged(TAG_STREAM_ITEM, id)
    }

    /// Finishes a `StreamItems` frame of stream `id`, whose body is the run of items.
    pub(crate) fn finish_stream_items(self, id: u64) -> Frame {
        self.finish_item_tagged(TAG_STREAM_ITEMS, id)
    }

    /// Finishes a `PackedStreamItem` frame of stream `id` (the body is packed).
    pub(crate) fn finish_packed_stream_item(self, id: u64) -> Frame {
        self.finish_item_tagged(TAG_PACKED_STREAM_ITEM, id)
    }

    /// Finishes a `PackedResponse` frame (the body is packed).
    pub(crate) fn finish_packed_response(self, id: u64) -> Frame {
        self.finish_item_tagged(TAG_PACKED_RESPONSE, id)
    }

    /// A message of two fields, `id` and the body.
    fn finish_item_tagged(self, tag: u32, id: u64) -> Frame {
        let mut head = Head::new();
        head.varint(u64::from(tag))
            .varint(id)
            .varint(self.body_len() as u64);
        self.finish(&head)
    }

    /// Finishes a successful `Response` frame.
    pub(crate) fn finish_response(self, id: u64) -> Frame {
        let mut head = Head::new();
        // The tag, the id, `Status::Ok` (variant 0), the body's length.
        head.varint(u64::from(TAG_RESPONSE))
            .varint(id)
            .varint(0)
            .varint(self.body_len() as u64);
        self.finish(&head)
    }

    /// Gives the capacity this builder took [`in_arena`](FrameBuilder::in_arena) and did
    /// not use back to the arena; call it once the body is written.
    pub(crate) fn detach(&mut self, arena: &mut BytesMut) {
        *arena = self.buf.split_off(self.buf.len());
    }

    /// Writes the message's head (its fields before the body, ending with the body's length,
    /// exactly as the derived encoding of [`Message`] writes them) right before the body.
    fn finish(mut self, head: &Head) -> Frame {
        let start = HEADROOM - head.len;
        self.buf[start..HEADROOM].copy_from_slice(&head.bytes[..head.len]);
        self.buf.advance(start);
        if self.splices.is_none() {
            return Frame::new(self.buf.freeze());
        }
        self.into_frame(Bytes::new(), start)
    }

    /// `first`, then what is left of the buffer (which starts at offset `start` of the
    /// original) with the spliced buffers in their places. Out of line: most frames are
    /// one buffer.
    #[inline(never)]
    fn into_frame(self, first: Bytes, start: usize) -> Frame {
        let mut rest = self.buf.freeze();
        let mut frame = Frame::new(first);
        let Some(splices) = self.splices else {
            frame.push(rest);
            return frame;
        };
        let mut taken = start;
        for (at, part) in *splices {
            frame.push(rest.split_to(at - taken));
            frame.push(part);
            taken = at;
        }
        frame.push(rest);
        frame
    }
}

/// A message head written by hand in bincode's varint format: for the two messages of
/// every call, a tuple encoded through bincode costs ten times as much.
struct Head {
    bytes: [u8; HEADROOM],
    len: usize,
}

impl Head {
    fn new() -> Head {
        Head {
            bytes: [0; HEADROOM],
            len: 0,
        }
    }

    /// An unsigned integer (any width) as a bincode varint.
    fn varint(&mut self, value: u64) -> &mut Head {
        self.len += varint::write(&mut self.bytes, self.len, value);
        self
    }
}

/// Explains why a frame could not be parsed, with what it started with.
pub(crate) fn describe_bad_frame(frame: &[u8], err: &DecodeError) -> String {
    let shown: Vec<String> = frame.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let mut text = format!(
        "a frame of {} bytes is not a protocol message ({err}); it starts with [{}]",
        frame.len(),
        shown.join(" ")
    );
    if !frame.is_empty()
        && frame
            .iter()
            .take(16)
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        text.push_str(&format!(
            " (\"{}\"): is the peer speaking another protocol?",
            String::from_utf8_lossy(&frame[..frame.len().min(16)])
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(message: &Message<'_>) -> Vec<u8> {
        bincode::encode_to_vec(message, CONFIG).unwrap()
    }

    #[test]
    fn request_frames_match_the_derived_encoding() {
        for (id, timeout) in [
            (0, None),
            (1, Some(Duration::from_millis(50))),
            (u64::MAX, Some(Duration::MAX)),
        ] {
            let mut b = FrameBuilder::new();
            b.body_mut().extend_from_slice(b"\x02\x04");
            let frame = b.finish_request(id, 3, timeout).into_bytes();
            let expected = Message::Request {
                id,
                method: 3,
                timeout_us: timeout.map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
                metadata: vec![],
                body: b"\x02\x04",
            };
            assert_eq!(&frame[..], &encode(&expected)[..]);
            assert_eq!(Message::decode(&frame).unwrap(), expected);
        }
    }

    #[test]
    fn spliced_buffers_are_parts_of_their_own_and_the_bytes_are_the_same() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let small = Bytes::from_static(b"tiny");
        let tagged: Metadata = [("tenant", "a")].into_iter().collect();
        for metadata in [Metadata::new(), tagged] {
            let mut spliced = FrameBuilder::new();
            let mut body = spliced.writer();
            body.value(&5u32).unwrap();
            body.bytes(big.clone());
            body.bytes(small.clone());
            body.byte_vec(vec![1u8; 5000]);
            body.value("tail").unwrap();
            let mut copied = FrameBuilder::new();
            let tuple = (5u32, &big, &small, &Bytes::from(vec![1u8; 5000]), "tail");
            crate::codec::encode_value(&tuple, copied.body_mut()).unwrap();
            assert_eq!(spliced.body_len(), copied.body_len());
            let none = Metadata::new();
            let frame = spliced.finish_request_with(3, 1, None, &metadata, &none);
            assert!(
                frame.parts().any(|part| part.as_ptr() == big.as_ptr()),
                "the large buffer is a part as it is"
            );
            assert_eq!(frame.parts().count(), 5 + usize::from(!metadata.is_empty()));
            let whole = copied.finish_request_with(3, 1, None, &metadata, &none);
            assert_eq!(frame.into_bytes(), whole.into_bytes());
        }
    }

    #[test]
    fn request_frames_with_metadata_decode_with_both_lists_in_order() {
        let client: Metadata = [("tenant", "a")].into_iter().collect();
        let call: Metadata = [("token", &b"\xff\x00"[..])].into_iter().collect();
        let mut b = FrameBuilder::new();
        b.body_mut().extend_from_slice(b"\x05");
        let frame = b
            .finish_request_with(9, 1, Some(Duration::from_micros(7)), &client, &call)
            .into_bytes();
        let expected = Message::Request {
            id: 9,
            method: 1,
            timeout_us: Some(7),
            metadata: vec![("tenant", &b"a"[..]), ("token", &b"\xff\x00"[..])],
            body: b"\x05",
        };
        assert_eq!(Message::decode(&frame).unwrap(), expected);
        // Without metadata it is the hand-built frame.
        let mut b = FrameBuilder::new();
        b.body_mut().extend_from_slice(b"\x05");
        let plain = b
            .finish_request_with(9, 1, None, &Metadata::new(), &Metadata::new())
            .into_bytes();
        let mut b = FrameBuilder::new();
        b.body_mut().extend_from_slice(b"\x05");
        assert_eq!(plain, b.finish_request(9, 1, None).into_bytes());
        // A body kept from a sent frame can be framed again.
        let again = FrameBuilder::with_body(&frame[frame.len() - 1..])
            .finish_request(10, 1, None)
            .into_bytes();
        assert!(matches!(
            Message::decode(&again),
            Ok(Message::Request {
                id: 10,
                body: b"\x05",
                ..
            })
        ));
    }

    #[test]
    fn response_frames_match_the_derived_encoding() {
        let mut b = FrameBuilder::new();
        b.body_mut().extend_from_slice(&[7; 300]);
        let frame = b.finish_response(42).into_bytes();
        let expected = Message::Response {
            id: 42,
            status: Status::Ok,
            body: &[7; 300],
        };
        assert_eq!(&frame[..], &encode(&expected)[..]);
    }

    #[test]
    fn a_rate_limited_error_reads_as_overloaded_to_earlier_clients() {
        let err = RpcError::rate_limited("slow down", std::time::Duration::from_millis(250));
        let frame = error_response_frame(5, &err);
        let Ok(Message::Response { status, body, .. }) = Message::decode(&frame) else {
            panic!("not a response");
        };
        assert_eq!(body, [1, 9, 250, 0, 0, 0]);
        // What a client of an earlier version makes of it: the status alone.
        let earlier = status.clone().into_result().unwrap_err();
        assert_eq!(earlier.kind(), ErrorKind::Overloaded);
        let now = ErrorDetail::apply(earlier.clone(), body);
        assert_eq!(now.kind(), ErrorKind::RateLimited);
        assert_eq!(now.message(), "slow down");
        assert_eq!(
            now.retry_after(),
            Some(std::time::Duration::from_millis(250))
        );
        // A detail of another version or length changes nothing.
        assert_eq!(
            ErrorDetail::apply(earlier.clone(), &[2, 9, 0, 0, 0, 0]),
            earlier
        );
        assert_eq!(ErrorDetail::apply(earlier.clone(), &[1, 9]), earlier);
        // Errors with nothing more to say keep an empty body.
        let plain = error_response_frame(5, &RpcError::protocol("bad"));
        let Ok(Message::Response { body, .. }) = Message::decode(&plain) else {
            panic!("not a response");
        };
        assert!(body.is_empty());
    }

    #[test]
    fn packed_frames_match_the_derived_encoding_and_plain_lengths_are_exact() {
        let body = &[2u8, 0xfb, 0x10, 0x27, 9, 9][..];
        let build = || FrameBuilder::with_body(body);
        let expected = Message::PackedResponse { id: 300, body };
        assert_eq!(
            &build().finish_packed_response(300).into_bytes()[..],
            &encode(&expected)[..]
        );
        let expected = Message::PackedStreamItem { id: 1, body };
        assert_eq!(
            &build().finish_packed_stream_item(1).into_bytes()[..],
            &encode(&expected)[..]
        );
        let none = Metadata::new();
        let some: Metadata = [("k", "v")].into_iter().collect();
        for (first, timeout) in [(&none, None), (&some, Some(Duration::from_secs(1)))] {
            let frame = build()
                .finish_packed_request_with(5, 2, timeout, first, &none)
                .into_bytes();
            let expected = Message::PackedRequest {
                id: 5,
                method: 2,
                timeout_us: timeout.map(|t| t.as_micros() as u64),
                metadata: first.iter().map(|(k, v)| (k, &v[..])).collect(),
                body,
            };
            assert_eq!(&frame[..], &encode(&expected)[..]);
            assert_eq!(Message::decode(&frame).unwrap(), expected);
            // The length the plain request would have.
            for len in [0, 250, 251, 70_000] {
                let plain = FrameBuilder::with_body(&vec![0; len])
                    .finish_request_with(5, 2, timeout, first, &none)
                    .into_bytes();
                assert_eq!(
                    FrameBuilder::request_len(5, 2, timeout, first, &none, len),
                    plain.len()
                );
            }
        }
        for len in [0, 250, 251, 70_000] {
            let plain = FrameBuilder::with_body(&vec![0; len])
                .finish_response(u64::MAX)
                .into_bytes();
            assert_eq!(FrameBuilder::response_len(u64::MAX, len), plain.len());
            let plain = FrameBuilder::with_body(&vec![0; len])
                .finish_stream_item(9)
                .into_bytes();
            assert_eq!(FrameBuilder::stream_item_len(9, len), plain.len());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for frame in [
            &b""[..],
            b"GET / HTTP/1.1\r\n",
            &[0xff; 9],
            &[0, 0xff, 0xff],
        ] {
            assert!(Message::decode(frame).is_err());
        }
        // A Hello whose method table claims 2^60 entries.
        let mut frame = vec![0];
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&[1, 0, 0xff]);
        frame.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Message::decode(&frame).is_err());
    }

    #[test]
    fn text_frames_are_described_as_another_protocol() {
        let err = Message::decode(b"GET / HTTP/1.1").unwrap_err();
        let text = describe_bad_frame(b"GET / HTTP/1.1", &err);
        assert!(text.contains("another protocol"), "{text}");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&frame);
        }

        #[test]
        fn decoding_mutated_valid_frames_never_panics(
            id in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut b = FrameBuilder::new();
            b.body_mut().extend_from_slice(&body);
            let mut frame = b
                .finish_request(id, 1, Some(Duration::from_millis(5)))
                .into_bytes()
                .to_vec();
            for (at, value) in flips {
                let at = at % frame.len();
                frame[at] = value;
            }
            frame.truncate(cut % (frame.len() + 1));
            let general = Message::decode_general(&frame).ok();
            if let Some(fast) = fast::decode(&frame) {
                prop_assert_eq!(Some(fast), general);
            }
        }

        #[test]
        fn the_fast_decoder_agrees_with_the_general_one(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(fast) = fast::decode(&frame) {
                prop_assert_eq!(Some(fast), Message::decode_general(&frame).ok());
            }
        }

        #[test]
        fn the_fast_decoder_takes_every_request_response_and_stream_item(
            id in any::<u64>(),
            method in any::<u32>(),
            timeout_us in proptest::option::of(any::<u64>()),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let build = || {
                let mut b = FrameBuilder::new();
                b.body_mut().extend_from_slice(&body);
                b
            };
            for frame in [
                build()
                    .finish_request(id, method, timeout_us.map(Duration::from_micros))
                    .into_bytes(),
                build().finish_response(id).into_bytes(),
                build().finish_stream_item(id).into_bytes(),
            ] {
                prop_assert!(fast::decode(&frame).is_some());
                prop_assert_eq!(fast::decode(&frame), Message::decode_general(&frame).ok());
            }
        }

        #[test]
        fn request_frames_round_trip(
            id in any::<u64>(),
            method in any::<u32>(),
            timeout_us in proptest::option::of(any::<u64>()),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut b = FrameBuilder::new();
            b.body_mut().extend_from_slice(&body);
            let frame = b.finish_request(id, method, timeout_us.map(Duration::from_micros)).into_bytes();
            let expected = Message::Request { id, method, timeout_us, metadata: vec![], body: &body };
            prop_assert_eq!(Message::decode(&frame).unwrap(), expected);
        }
    }
}
