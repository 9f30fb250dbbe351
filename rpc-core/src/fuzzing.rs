//! Hooks for fuzz targets and property tests of the wire protocol. **Not a public API**: no
//! stability promise, hidden from the docs, and free to change with the protocol.
//!
//! The protocol's `Message` borrows from its frame and is crate-private, so that it can
//! change without a semver break. Fuzz targets (`fuzz/` at the repository root) and the
//! workspace's property tests still need to reach the very decoder the server and the client
//! run, and the encoders both sides send with; this module gives them exactly that, through
//! an owned mirror of the message (`WireMessage`) that only this module converts.

use std::time::Duration;

use bytes::Bytes;

use crate::context::Metadata;
use crate::descriptor::ServiceDescriptor;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::{self, FrameBuilder, Message, Status, WireMethod};

/// The body codec (a method's arguments, results and stream items) as generated code runs
/// it: the crate's `codec` module is private, and its bincode configuration not exported.
pub mod codec {
    pub use crate::codec::{
        decode_byte_vec, decode_value, encode_byte_vec, encode_value, AsBytes, ByteBuf,
    };
}

/// An owned copy of one protocol message, field for field as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// Client → server, first frame.
    Hello {
        /// The protocol's magic bytes.
        magic: [u8; 4],
        /// The protocol version.
        version: u32,
        /// The service's wire name.
        service: String,
        /// The client's method table: name and fingerprint, in the client's order.
        methods: Vec<(String, u64)>,
    },
    /// A call.
    Request {
        /// The call's id.
        id: u64,
        /// Index into the client's method table.
        method: u32,
        /// Time remaining, in microseconds.
        timeout_us: Option<u64>,
        /// Metadata pairs, in order.
        metadata: Vec<(String, Vec<u8>)>,
        /// The encoded arguments.
        body: Vec<u8>,
    },
    /// The answer to a call.
    Response {
        /// The call's id.
        id: u64,
        /// Success, or the error's wire kind and message.
        status: WireStatus,
        /// The encoded result.
        body: Vec<u8>,
    },
    /// The caller gave up on a call.
    Cancel {
        /// The call's id.
        id: u64,
    },
    /// Either side, before closing.
    Goodbye {
        /// The error kind's wire code.
        kind: u8,
        /// Why.
        message: String,
    },
    /// One item of a stream.
    StreamItem {
        /// The call's id.
        id: u64,
        /// The encoded item.
        body: Vec<u8>,
    },
    /// The end of a stream.
    StreamEnd {
        /// The call's id.
        id: u64,
        /// Success, or the error's wire kind and message.
        status: WireStatus,
    },
    /// Flow-control credit.
    Credit {
        /// The call's id.
        id: u64,
        /// How many more items the receiver takes.
        items: u32,
    },
    /// Are you there?
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// A call whose body is packed (compressed).
    PackedRequest {
        /// The call's id.
        id: u64,
        /// Index into the client's method table.
        method: u32,
        /// Time remaining, in microseconds.
        timeout_us: Option<u64>,
        /// Metadata pairs, in order.
        metadata: Vec<(String, Vec<u8>)>,
        /// The packed body: codec byte, uncompressed length (varint), compressed bytes.
        body: Vec<u8>,
    },
    /// A successful answer whose body is packed.
    PackedResponse {
        /// The call's id.
        id: u64,
        /// The packed body.
        body: Vec<u8>,
    },
    /// One stream item whose body is packed.
    PackedStreamItem {
        /// The call's id.
        id: u64,
        /// The packed body.
        body: Vec<u8>,
    },
    /// A run of stream items: each a varint length, then that many bytes.
    StreamItems {
        /// The call's id.
        id: u64,
        /// The items, back to back.
        items: Vec<u8>,
    },
    /// The server's load report.
    Load {
        /// Calls its handlers were running.
        in_flight: u32,
        /// Its utilization, in ten-thousandths.
        utilization: u32,
    },
    /// The answer to `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
}

/// An owned copy of a call's or stream's outcome on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireStatus {
    /// Success.
    Ok,
    /// Failure.
    Error {
        /// The error kind's wire code.
        kind: u8,
        /// What went wrong.
        message: String,
    },
}

impl WireStatus {
    fn owned(status: &Status<'_>) -> WireStatus {
        match *status {
            Status::Ok => WireStatus::Ok,
            Status::Error { kind, message } => WireStatus::Error {
                kind,
                message: message.to_owned(),
            },
        }
    }

    fn borrowed(&self) -> Status<'_> {
        match self {
            WireStatus::Ok => Status::Ok,
            WireStatus::Error { kind, message } => Status::Error {
                kind: *kind,
                message,
            },
        }
    }
}

impl WireMessage {
    fn owned(message: &Message<'_>) -> WireMessage {
        match message {
            Message::Hello {
                magic,
                version,
                service,
                methods,
            } => WireMessage::Hello {
                magic: *magic,
                version: *version,
                service: (*service).to_owned(),
                methods: methods
                    .iter()
                    .map(|m| (m.name.to_owned(), m.fingerprint))
                    .collect(),
            },
            Message::Request {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => WireMessage::Request {
                id: *id,
                method: *method,
                timeout_us: *timeout_us,
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                    .collect(),
                body: body.to_vec(),
            },
            Message::Response { id, status, body } => WireMessage::Response {
                id: *id,
                status: WireStatus::owned(status),
                body: body.to_vec(),
            },
            Message::Cancel { id } => WireMessage::Cancel { id: *id },
            Message::Goodbye { kind, message } => WireMessage::Goodbye {
                kind: *kind,
                message: (*message).to_owned(),
            },
            Message::StreamItem { id, body } => WireMessage::StreamItem {
                id: *id,
                body: body.to_vec(),
            },
            Message::StreamEnd { id, status } => WireMessage::StreamEnd {
                id: *id,
                status: WireStatus::owned(status),
            },
            Message::Credit { id, items } => WireMessage::Credit {
                id: *id,
                items: *items,
            },
            Message::Ping { nonce } => WireMessage::Ping { nonce: *nonce },
            Message::Pong { nonce } => WireMessage::Pong { nonce: *nonce },
            Message::PackedRequest {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => WireMessage::PackedRequest {
                id: *id,
                method: *method,
                timeout_us: *timeout_us,
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                    .collect(),
                body: body.to_vec(),
            },
            Message::PackedResponse { id, body } => WireMessage::PackedResponse {
                id: *id,
                body: body.to_vec(),
            },
            Message::PackedStreamItem { id, body } => WireMessage::PackedStreamItem {
                id: *id,
                body: body.to_vec(),
            },
            Message::StreamItems { id, items } => WireMessage::StreamItems {
                id: *id,
                items: items.to_vec(),
            },
            Message::Load {
                in_flight,
                utilization,
            } => WireMessage::Load {
                in_flight: *in_flight,
                utilization: *utilization,
            },
        }
    }

    /// Encodes the message as the runtime encodes messages without a large body (bincode's
    /// derived encoding of the protocol's message type).
    pub fn encode(&self) -> Bytes {
        // Borrow everything back: this is the same value the runtime would build.
        let message = match self {
            WireMessage::Hello {
                magic,
                version,
                service,
                methods,
            } => Message::Hello {
                magic: *magic,
                version: *version,
                service,
                methods: methods
                    .iter()
                    .map(|(name, fingerprint)| WireMethod {
                        name,
                        fingerprint: *fingerprint,
                    })
                    .collect(),
            },
            WireMessage::Request {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => Message::Request {
                id: *id,
                method: *method,
                timeout_us: *timeout_us,
                metadata: metadata.iter().map(|(k, v)| (&k[..], &v[..])).collect(),
                body,
            },
            WireMessage::Response { id, status, body } => Message::Response {
                id: *id,
                status: status.borrowed(),
                body,
            },
            WireMessage::Cancel { id } => Message::Cancel { id: *id },
            WireMessage::Goodbye { kind, message } => Message::Goodbye {
                kind: *kind,
                message,
            },
            WireMessage::StreamItem { id, body } => Message::StreamItem { id: *id, body },
            WireMessage::StreamEnd { id, status } => Message::StreamEnd {
                id: *id,
                status: status.borrowed(),
            },
            WireMessage::Credit { id, items } => Message::Credit {
                id: *id,
                items: *items,
            },
            WireMessage::Ping { nonce } => Message::Ping { nonce: *nonce },
            WireMessage::Pong { nonce } => Message::Pong { nonce: *nonce },
            WireMessage::PackedRequest {
                id,
                method,
                timeout_us,
                metadata,
                body,
            } => Message::PackedRequest {
                id: *id,
                method: *method,
                timeout_us: *timeout_us,
                metadata: metadata.iter().map(|(k, v)| (&k[..], &v[..])).collect(),
                body,
            },
            WireMessage::PackedResponse { id, body } => Message::PackedResponse { id: *id, body },
            WireMessage::PackedStreamItem { id, body } => {
                Message::PackedStreamItem { id: *id, body }
            }
            WireMessage::StreamItems { id, items } => Message::StreamItems { id: *id, items },
            WireMessage::Load {
                in_flight,
                utilization,
            } => Message::Load {
                in_flight: *in_flight,
                utilization: *utilization,
            },
        };
        message.to_frame()
    }

    /// The message kind's name, as errors and logs say it.
    pub fn name(&self) -> &'static str {
        match self {
            WireMessage::Hello { .. } => "Hello",
            WireMessage::Request { .. } => "Request",
            WireMessage::Response { .. } => "Response",
            WireMessage::Cancel { .. } => "Cancel",
            WireMessage::Goodbye { .. } => "Goodbye",
            WireMessage::StreamItem { .. } => "StreamItem",
            WireMessage::StreamEnd { .. } => "StreamEnd",
            WireMessage::Credit { .. } => "Credit",
            WireMessage::Ping { .. } => "Ping",
            WireMessage::Pong { .. } => "Pong",
            WireMessage::PackedRequest { .. } => "PackedRequest",
            WireMessage::PackedResponse { .. } => "PackedResponse",
            WireMessage::PackedStreamItem { .. } => "PackedStreamItem",
            WireMessage::StreamItems { .. } => "StreamItems",
            WireMessage::Load { .. } => "Load",
        }
    }
}

/// Decodes one frame the way the server and the client do (the hand-written fast path for
/// plain requests and responses, bincode's derived decoder for the rest). The error is the
/// text the peer would be sent in its `Goodbye`.
/// The id of `Credit { id: CONNECTION_ID, items: 0 }`, each side's announcement that it
/// grants credit whenever a consumer waits (see docs/protocol.md, "Connection window").
pub const CONNECTION_ID: u64 = crate::protocol::CONNECTION_ID;

pub fn decode(frame: &[u8]) -> Result<WireMessage, String> {
    Message::decode(frame)
        .map(|message| {
            // The name is used in errors: it must agree with the owned copy's.
            let owned = WireMessage::owned(&message);
            debug_assert_eq!(owned.name(), message.name());
            owned
        })
        .map_err(|err| protocol::describe_bad_frame(frame, &err))
}

/// Decodes one frame through bincode's derived decoder only (never the fast path): where
/// the fast path takes a frame, [`decode`] must give exactly what this gives.
pub fn decode_general(frame: &[u8]) -> Result<WireMessage, String> {
    Message::decode_general(frame)
        .map(|message| WireMessage::owned(&message))
        .map_err(|err| err.to_string())
}

/// A `Request` frame as the client builds it: the envelope's head written in front of the
/// body by hand, or encoded afresh when there is metadata.
pub fn request_frame(
    id: u64,
    method: u32,
    timeout: Option<Duration>,
    metadata: &Metadata,
    body: &[u8],
) -> Bytes {
    FrameBuilder::with_body(body)
        .finish_request_with(id, method, timeout, metadata, &Metadata::new())
        .into_bytes()
}

/// A successful `Response` frame as the server builds it.
pub fn response_frame(id: u64, body: &[u8]) -> Bytes {
    FrameBuilder::with_body(body)
        .finish_response(id)
        .into_bytes()
}

/// A `StreamItem` frame as either side builds it.
pub fn stream_item_frame(id: u64, body: &[u8]) -> Bytes {
    FrameBuilder::with_body(body)
        .finish_stream_item(id)
        .into_bytes()
}

/// An error `Response` frame as the server builds it.
pub fn error_response_frame(id: u64, err: &RpcError) -> Bytes {
    protocol::error_response_frame(id, err)
}

/// A `StreamEnd` frame as either side builds it.
pub fn stream_end_frame(id: u64, outcome: Result<(), &RpcError>) -> Bytes {
    protocol::stream_end_frame(id, outcome)
}

/// A `Goodbye` frame as either side builds it.
pub fn goodbye_frame(kind: ErrorKind, message: &str) -> Bytes {
    protocol::goodbye_frame(kind, message)
}

/// The client's `Hello` for a service.
pub fn hello_frame(desc: &ServiceDescriptor) -> Bytes {
    protocol::hello_frame(desc, None)
}

/// The client's `Hello` for a service, offering the comma-separated `codecs` (names, as
/// the offer entry carries them).
pub fn hello_frame_offering(desc: &ServiceDescriptor, codecs: &str) -> Bytes {
    let entry = format!("{}{codecs}", crate::compress::OFFER_ENTRY);
    protocol::hello_frame(desc, Some(&entry))
}

/// The server's announcement, answering a client's offer with `codec` (or none).
pub fn announcement_frame(codec: Option<crate::compress::Codec>) -> Bytes {
    crate::streaming::StreamEngine::announcement_with(codec)
}

/// A `PackedResponse` frame as the server builds it around a packed body.
pub fn packed_response_frame(id: u64, packed: &[u8]) -> Bytes {
    FrameBuilder::with_body(packed)
        .finish_packed_response(id)
        .into_bytes()
}

/// A packed body decompressed as the runtime does it, its body field allowed `room` bytes
/// (the frame size limit less the message's head).
pub fn unpack(packed: &[u8], room: usize) -> Result<Vec<u8>, String> {
    crate::compress::unpack(packed, room).map_err(|err| err.message().to_string())
}

/// `data` compressed by `codec` as the runtime compresses bodies (without the packed
/// body's codec byte and length); `None` if the codec is not compiled in.
pub fn compress(codec: crate::compress::Codec, data: &[u8]) -> Option<Vec<u8>> {
    crate::compress::Compression::builder()
        .codecs([codec])
        .build()
        .ok()?
        .packer(codec)
        .compress(data)
}

/// The error kind a wire code stands for (unknown codes are `Protocol`).
pub fn error_kind_from_wire(code: u8) -> ErrorKind {
    ErrorKind::from_wire(code)
}

/// An error kind's wire code.
pub fn error_kind_to_wire(kind: ErrorKind) -> u8 {
    kind.to_wire()
}
