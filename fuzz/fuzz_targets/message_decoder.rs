//! The protocol's message decoder (`rpc-core`'s `protocol.rs`, reached through
//! `rpc_core::__fuzz`) and the body decoder (`rpc_core::__fuzz::codec`) on arbitrary frames.
//!
//! Checked on every input:
//! - no panic, and no allocation past libFuzzer's `-malloc_limit_mb` (run with it: a length
//!   inside a frame must never decide what is allocated);
//! - the decoder the server and client run (a hand-written fast path for plain requests and
//!   responses, bincode's derived decoder for the rest) accepts exactly what the derived
//!   decoder accepts, and gives the same message;
//! - a decoded message re-encodes to a frame that decodes to the same message, that
//!   re-encodes to the same bytes, and that is no longer than the input (the encoding is the
//!   shortest one: only integers have several spellings);
//! - the frame builders the runtime sends with (request, response, stream item, error
//!   response, stream end, goodbye) give byte for byte the derived encoding of the message;
//! - the input, taken as a method's arguments or result of several types, decodes or fails
//!   cleanly, and what decodes round-trips through the body encoder; a `traceparent` read
//!   from it round-trips too.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpc_core::__fuzz::{self, codec, WireMessage, WireStatus};
use rpc_core::context::{Metadata, TraceContext};
use rpc_core::RpcError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A user type with every shape of enum variant, as `#[service]` arguments often are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Newtype(u16),
    Tuple(i8, String),
    Struct {
        name: String,
        tags: Vec<Option<u32>>,
        weight: f32,
    },
}

fn check_message(frame: &[u8]) {
    let decoded = __fuzz::decode(frame);
    let general = __fuzz::decode_general(frame);
    match (&decoded, &general) {
        (Ok(fast), Ok(general)) => assert_eq!(fast, general, "the two decoders disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!("one decoder accepts what the other refuses: {decoded:?} / {general:?}"),
    }
    let Ok(message) = decoded else { return };

    let encoded = message.encode();
    let again = __fuzz::decode(&encoded).expect("a re-encoded message decodes");
    assert_eq!(
        again, message,
        "a message changed through encode and decode"
    );
    assert_eq!(again.encode(), encoded, "the encoding is not stable");
    assert!(
        encoded.len() <= frame.len(),
        "a re-encoding is longer than the frame it came from"
    );

    // The runtime's hand-built frames are the derived encoding, byte for byte.
    let built = match &message {
        WireMessage::Request {
            id,
            method,
            timeout_us,
            metadata,
            body,
        } => {
            let metadata: Metadata = metadata
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let timeout = timeout_us.map(Duration::from_micros);
            Some(__fuzz::request_frame(
                *id, *method, timeout, &metadata, body,
            ))
        }
        WireMessage::Response {
            id,
            status: WireStatus::Ok,
            body,
        } => Some(__fuzz::response_frame(*id, body)),
        WireMessage::Response {
            id,
            status: WireStatus::Error { kind, message },
            body,
        } if body.is_empty() => {
            error(*kind, message).map(|e| __fuzz::error_response_frame(*id, &e))
        }
        WireMessage::StreamItem { id, body } => Some(__fuzz::stream_item_frame(*id, body)),
        WireMessage::StreamEnd {
            id,
            status: WireStatus::Ok,
        } => Some(__fuzz::stream_end_frame(*id, Ok(()))),
        WireMessage::StreamEnd {
            id,
            status: WireStatus::Error { kind, message },
        } => error(*kind, message).map(|e| __fuzz::stream_end_frame(*id, Err(&e))),
        WireMessage::Goodbye { kind, message } => error(*kind, message)
            .map(|e| __fuzz::goodbye_frame(__fuzz::error_kind_from_wire(*kind), e.message())),
        _ => None,
    };
    if let Some(built) = built {
        assert_eq!(
            built,
            encoded,
            "the runtime builds a {} frame other than the derived encoding",
            message.name()
        );
    }

    // A request's body, and its metadata as the server reads it.
    if let WireMessage::Request { body, metadata, .. } = &message {
        check_bodies(body);
        for (_, value) in metadata {
            check_traceparent(value);
        }
    }
}

/// The error a wire kind and message stand for, when the kind is one this version knows
/// (unknown kinds are read as `Protocol`, so they cannot be sent back as they came).
fn error(kind: u8, message: &str) -> Option<RpcError> {
    let known = __fuzz::error_kind_from_wire(kind);
    (__fuzz::error_kind_to_wire(known) == kind).then(|| RpcError::new(known, message))
}

/// Decodes `body` as `T`; what decodes must encode and decode back to the same value, and
/// the re-encoding must be stable.
fn round_trip<T>(body: &[u8], same: impl Fn(&T, &T) -> bool)
where
    T: DeserializeOwned + Serialize + Debug,
{
    let Ok(value) = codec::decode_value::<T>(body) else {
        return;
    };
    let mut encoded = BytesMut::new();
    codec::encode_value(&value, &mut encoded).expect("a decoded value encodes");
    let again: T = codec::decode_value(&encoded).expect("a re-encoded value decodes");
    assert!(same(&value, &again), "{value:?} came back as {again:?}");
    let mut twice = BytesMut::new();
    codec::encode_value(&again, &mut twice).expect("a decoded value encodes");
    // A `HashMap` may list its entries in another order; the rest must be stable.
    if std::any::type_name::<T>().contains("HashMap") {
        assert_eq!(twice.len(), encoded.len());
    } else {
        assert_eq!(twice, encoded, "the encoding of {value:?} is not stable");
    }
}

fn check_bodies(body: &[u8]) {
    round_trip::<(i64, String)>(body, PartialEq::eq);
    round_trip::<Vec<String>>(body, PartialEq::eq);
    round_trip::<Option<Vec<u8>>>(body, PartialEq::eq);
    round_trip::<HashMap<String, Vec<u64>>>(body, PartialEq::eq);
    round_trip::<BTreeMap<u32, (bool, char)>>(body, PartialEq::eq);
    round_trip::<(u128, i128, char, bool)>(body, PartialEq::eq);
    round_trip::<Result<Vec<Shape>, String>>(body, |a, b| {
        // Floats: NaN is not equal to itself; compare their bits through the encoding.
        format!("{a:?}") == format!("{b:?}")
    });
    round_trip::<(f64, Box<str>, [u16; 3])>(body, |a, b| {
        a.0.to_bits() == b.0.to_bits() && a.1 == b.1 && a.2 == b.2
    });
    // `Vec<u8>` arguments and results take the bytes path.
    if let Ok(bytes) = codec::decode_byte_vec(body) {
        let mut encoded = BytesMut::new();
        codec::encode_byte_vec(&bytes, &mut encoded).expect("bytes encode");
        assert_eq!(codec::decode_byte_vec(&encoded).ok(), Some(bytes));
        assert!(encoded.len() <= body.len());
    }
}

fn check_traceparent(value: &[u8]) {
    if let Some(trace) = TraceContext::parse_bytes(value) {
        assert_eq!(TraceContext::parse(&trace.to_string()), Some(trace));
    }
}

fuzz_target!(|frame: &[u8]| {
    check_message(frame);
    check_bodies(frame);
    check_traceparent(frame);
});
