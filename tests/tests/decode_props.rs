//! Property tests of the protocol's decoders, the quick versions of the cargo-fuzz targets in
//! `fuzz/` that run in every `cargo test`:
//! - every message kind, with arbitrary fields, encoded as docs/protocol.md ("Encoding",
//!   "Messages") describes it (the independent encoder in `common::wire`), decodes to the same
//!   message through the decoder the runtime runs, and the runtime encodes it to the same
//!   bytes;
//! - the frame builders the runtime sends with give the same frames;
//! - a valid frame cut short, or with bytes after it, is an error, not another message;
//! - arbitrary bytes into every decoder (message, body, byte vector, `traceparent`, the
//!   framer) never panic, and what decodes round-trips;
//! - a valid stream of frames read in chunks of arbitrary sizes gives the same frames;
//! - a client fed arbitrary replies by a fake server never panics, and every call ends.

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::wire::{self, Status, Wire};
use futures::{FutureExt, SinkExt, StreamExt};
use proptest::collection::vec;
use proptest::prelude::*;
use rpc_core::__fuzz::{self, codec, WireMessage, WireStatus};
use rpc_core::context::{Metadata, TraceContext};
use rpc_core::{service, ErrorKind, RpcError, Streaming};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The runtime's owned view of a message written with the independent encoder's type.
fn expected(message: &Wire) -> WireMessage {
    let status = |status: &Status| match status {
        Status::Ok => WireStatus::Ok,
        Status::Error { kind, message } => WireStatus::Error {
            kind: *kind,
            message: message.clone(),
        },
    };
    match message.clone() {
        Wire::Hello {
            magic,
            version,
            service,
            methods,
        } => WireMessage::Hello {
            magic,
            version,
            service,
            methods,
        },
        Wire::Request {
            id,
            method,
            timeout_us,
            metadata,
            body,
        } => WireMessage::Request {
            id,
            method,
            timeout_us,
            metadata,
            body,
        },
        Wire::Response {
            id,
            status: s,
            body,
        } => WireMessage::Response {
            id,
            status: status(&s),
            body,
        },
        Wire::Cancel { id } => WireMessage::Cancel { id },
        Wire::Goodbye { kind, message } => WireMessage::Goodbye { kind, message },
        Wire::StreamItem { id, body } => WireMessage::StreamItem { id, body },
        Wire::StreamEnd { id, status: s } => WireMessage::StreamEnd {
            id,
            status: status(&s),
        },
        Wire::Credit { id, items } => WireMessage::Credit { id, items },
        Wire::Ping { nonce } => WireMessage::Ping { nonce },
        Wire::Pong { nonce } => WireMessage::Pong { nonce },
        Wire::PackedRequest {
            id,
            method,
            timeout_us,
            metadata,
            body,
        } => WireMessage::PackedRequest {
            id,
            method,
            timeout_us,
            metadata,
            body,
        },
        Wire::PackedResponse { id, body } => WireMessage::PackedResponse { id, body },
        Wire::PackedStreamItem { id, body } => WireMessage::PackedStreamItem { id, body },
        Wire::StreamItems { id, items } => WireMessage::StreamItems { id, items },
        Wire::Load {
            in_flight,
            utilization,
        } => WireMessage::Load {
            in_flight,
            utilization,
        },
    }
}

fn text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Ok),
        (any::<u8>(), text()).prop_map(|(kind, message)| Status::Error { kind, message }),
    ]
}

/// Every message kind, with arbitrary fields (integers across all their varint widths).
fn message() -> impl Strategy<Value = Wire> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u32>(),
            text(),
            vec((text(), any::<u64>()), 0..5)
        )
            .prop_map(|(magic, version, service, methods)| Wire::Hello {
                magic,
                version,
                service,
                methods,
            }),
        (
            any::<u64>(),
            any::<u32>(),
            proptest::option::of(any::<u64>()),
            vec((text(), bytes(8)), 0..4),
            bytes(300),
        )
            .prop_map(|(id, method, timeout_us, metadata, body)| Wire::Request {
                id,
                method,
                timeout_us,
                metadata,
                body,
            }),
        (any::<u64>(), status(), bytes(300)).prop_map(|(id, status, body)| Wire::Response {
            id,
            status,
            body
        }),
        any::<u64>().prop_map(|id| Wire::Cancel { id }),
        (any::<u8>(), text()).prop_map(|(kind, message)| Wire::Goodbye { kind, message }),
        (any::<u64>(), bytes(300)).prop_map(|(id, body)| Wire::StreamItem { id, body }),
        (any::<u64>(), status()).prop_map(|(id, status)| Wire::StreamEnd { id, status }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, items)| Wire::Credit { id, items }),
        any::<u64>().prop_map(|nonce| Wire::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Wire::Pong { nonce }),
        (any::<u64>(), vec(bytes(40), 0..6)).prop_map(|(id, bodies)| Wire::StreamItems {
            id,
            items: wire::run(&bodies)
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(in_flight, utilization)| Wire::Load {
            in_flight,
            utilization
        }),
    ]
}

/// Decodes `frame` with both decoders, which must agree; the message if they accept it.
fn decode_both(frame: &[u8]) -> Option<WireMessage> {
    let decoded = __fuzz::decode(frame).ok();
    assert_eq!(
        decoded,
        __fuzz::decode_general(frame).ok(),
        "the runtime's decoder and bincode's derived one disagree on {frame:?}"
    );
    decoded
}

#[test]
fn one_message_of_each_kind_round_trips() {
    let one_of_each = [
        wire::hello(&common::LabClient::DESCRIPTOR),
        wire::request(7, 1, Some(5_000), vec![2, 4]),
        Wire::Request {
            id: 8,
            method: 0,
            timeout_us: None,
            metadata: vec![("tenant".into(), b"a".to_vec())],
            body: vec![],
        },
        Wire::Response {
            id: 7,
            status: Status::Ok,
            body: vec![6],
        },
        Wire::Response {
            id: 7,
            status: Status::Error {
                kind: wire::PROTOCOL,
                message: "no".into(),
            },
            body: vec![],
        },
        Wire::Cancel { id: 7 },
        Wire::Goodbye {
            kind: wire::INCOMPATIBLE,
            message: "bye".into(),
        },
        Wire::StreamItem {
            id: 7,
            body: vec![1],
        },
        Wire::StreamEnd {
            id: 7,
            status: Status::Ok,
        },
        Wire::Credit { id: 7, items: 32 },
        Wire::Ping { nonce: 1 },
        Wire::Pong { nonce: 1 },
        Wire::Load {
            in_flight: 3,
            utilization: 5_000,
        },
    ];
    let mut kinds = std::collections::HashSet::new();
    for message in &one_of_each {
        let frame = wire::encode(message);
        let decoded = decode_both(&frame).expect("a valid frame decodes");
        assert_eq!(decoded, expected(message));
        assert_eq!(decoded.encode(), frame);
        kinds.insert(decoded.name());
    }
    assert_eq!(kinds.len(), 11, "a message kind is missing: {kinds:?}");
}

#[test]
fn the_runtimes_frame_builders_give_the_messages_they_name() {
    let metadata: Metadata = [("k", &b"v"[..])].into_iter().collect();
    let err = RpcError::new(ErrorKind::Overloaded, "busy");
    let cases = [
        (
            __fuzz::request_frame(
                9,
                2,
                Some(Duration::from_micros(70)),
                &Metadata::new(),
                b"ab",
            ),
            wire::request(9, 2, Some(70), b"ab".to_vec()),
        ),
        (
            __fuzz::request_frame(9, 2, None, &metadata, b"ab"),
            Wire::Request {
                id: 9,
                method: 2,
                timeout_us: None,
                metadata: vec![("k".into(), b"v".to_vec())],
                body: b"ab".to_vec(),
            },
        ),
        (
            __fuzz::response_frame(u64::MAX, &[1; 300]),
            Wire::Response {
                id: u64::MAX,
                status: Status::Ok,
                body: vec![1; 300],
            },
        ),
        (
            __fuzz::error_response_frame(3, &err),
            Wire::Response {
                id: 3,
                status: Status::Error {
                    kind: __fuzz::error_kind_to_wire(ErrorKind::Overloaded),
                    message: "busy".into(),
                },
                body: vec![],
            },
        ),
        (
            __fuzz::stream_item_frame(4, b"x"),
            Wire::StreamItem {
                id: 4,
                body: b"x".to_vec(),
            },
        ),
        (
            __fuzz::stream_end_frame(4, Err(&err)),
            Wire::StreamEnd {
                id: 4,
                status: Status::Error {
                    kind: __fuzz::error_kind_to_wire(ErrorKind::Overloaded),
                    message: "busy".into(),
                },
            },
        ),
        (
            __fuzz::stream_end_frame(4, Ok(())),
            Wire::StreamEnd {
                id: 4,
                status: Status::Ok,
            },
        ),
        (
            __fuzz::goodbye_frame(ErrorKind::Disconnected, "later"),
            Wire::Goodbye {
                kind: __fuzz::error_kind_to_wire(ErrorKind::Disconnected),
                message: "later".into(),
            },
        ),
        (
            __fuzz::hello_frame(&common::LabClient::DESCRIPTOR),
            wire::hello_with_schema(&common::LabClient::DESCRIPTOR),
        ),
    ];
    for (built, message) in cases {
        assert_eq!(built, wire::encode(&message), "{message:?}");
    }
}

/// Arguments and results of the kinds services use, for the body decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Newtype(u16),
    Tuple(i8, String),
    Struct {
        name: String,
        tags: Vec<Option<u32>>,
        scores: HashMap<String, i64>,
    },
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        any::<u16>().prop_map(Shape::Newtype),
        (any::<i8>(), text()).prop_map(|(a, b)| Shape::Tuple(a, b)),
        (
            text(),
            vec(proptest::option::of(any::<u32>()), 0..5),
            proptest::collection::hash_map(text(), any::<i64>(), 0..4)
        )
            .prop_map(|(name, tags, scores)| Shape::Struct { name, tags, scores }),
    ]
}

/// Decodes `body` as `T`; what decodes encodes and decodes back to the same value.
fn body_round_trips<T>(body: &[u8])
where
    T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = codec::decode_value::<T>(body) {
        let mut again = BytesMut::new();
        codec::encode_value(&value, &mut again).unwrap();
        assert_eq!(codec::decode_value::<T>(&again).unwrap(), value);
        // The shortest spelling of every integer: never longer than what came.
        assert!(again.len() <= body.len());
    }
}

/// Sets this thread's flag when a panic happens on it: a panic in a task that the runtime
/// catches (the client's connection task) fails the test that caused it.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            default(info);
        }));
    });
    PANICKED.with(|p| p.set(false));
}

thread_local! {
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

/// A service with a unary method and a stream each way, for the client's side.
#[service]
pub trait Probe {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn count(&self, n: u32) -> Streaming<u32>;
    async fn sum(&self, items: Streaming<i64>) -> i64;
}

/// One reply of the fake server.
#[derive(Debug, Clone)]
enum Reply {
    /// A message for the id of the `pick`th request seen (or any id, past those).
    Message { pick: u8, kind: u8, body: Vec<u8> },
    /// Any bytes.
    Raw(Vec<u8>),
    /// Any message, id and all.
    Any(Wire),
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>(), bytes(12))
            .prop_map(|(pick, kind, body)| Reply::Message { pick, kind, body }),
        1 => bytes(24).prop_map(Reply::Raw),
        1 => message().prop_map(Reply::Any),
    ]
}

impl Reply {
    fn frame(&self, ids: &[u64]) -> Bytes {
        let (pick, kind, body) = match self {
            Reply::Raw(bytes) => return Bytes::from(bytes.clone()),
            Reply::Any(message) => return wire::encode(message),
            Reply::Message { pick, kind, body } => (*pick, *kind, body.clone()),
        };
        let id = ids
            .get(usize::from(pick))
            .copied()
            .unwrap_or(u64::from(pick));
        // Half the bodies are valid encodings of what the calls expect.
        let body = if kind & 1 == 0 {
            wire::body(&i64::from(body.first().copied().unwrap_or(0)))
        } else {
            body
        };
        let message = match kind % 16 / 2 {
            0 => Wire::Response {
                id,
                status: Status::Ok,
                body,
            },
            1 => Wire::Response {
                id,
                status: Status::Error {
                    kind: kind / 16,
                    message: "no".into(),
                },
                body: vec![],
            },
            2 => Wire::StreamItem { id, body },
            3 => Wire::StreamEnd {
                id,
                status: Status::Ok,
            },
            4 => Wire::Credit {
                id,
                items: u32::from(kind),
            },
            5 => Wire::Cancel { id },
            6 => Wire::Ping {
                nonce: u64::from(kind),
            },
            _ => Wire::Goodbye {
                kind: kind / 16,
                message: "bye".into(),
            },
        };
        wire::encode(&message)
    }
}

/// Runs a client's calls against a fake server that answers with `replies`, then closes.
/// The client must not panic, every call must end (with whatever outcome), and every `Pong`
/// it sends must answer a `Ping` it was sent.
fn client_against(replies: Vec<Reply>) {
    watch_panics();
    runtime().block_on(async {
        let (client_end, mut server_end) = rpc_transport::memory::pair();
        let client = ProbeClient::new(client_end);
        let calls = async {
            let add = client.add(1, 2).into_future();
            let count = async {
                if let Ok(mut items) = client.count(3).await {
                    while items.next().await.is_some() {}
                }
            };
            let sum = client.sum(Streaming::iter(vec![1i64, 2, 3])).into_future();
            let _ = futures::join!(add, count, sum);
        };
        let server = async move {
            let mut ids = Vec::new();
            let mut pinged = Vec::new();
            for reply in &replies {
                tokio::task::yield_now().await;
                // Whatever the client has sent so far, without waiting for more.
                while let Some(Some(Ok(frame))) = server_end.next().now_or_never() {
                    match bincode::decode_from_slice::<Wire, _>(&frame, wire::config()) {
                        Ok((Wire::Request { id, .. }, _)) => ids.push(id),
                        Ok((Wire::Pong { nonce }, _)) => {
                            assert!(pinged.contains(&nonce), "a Pong for no Ping")
                        }
                        _ => {}
                    }
                }
                let frame = reply.frame(&ids);
                if let Ok((Wire::Ping { nonce }, _)) =
                    bincode::decode_from_slice::<Wire, _>(&frame, wire::config())
                {
                    pinged.push(nonce);
                }
                if server_end.send(frame).await.is_err() {
                    break;
                }
            }
            // Closing the connection ends every call still waiting.
            drop(server_end);
        };
        common::guard(async { futures::join!(calls, server) }).await;
    });
    assert!(
        !PANICKED.with(|p| p.get()),
        "the client panicked on these replies"
    );
}

proptest! {
    #[test]
    fn every_message_kind_round_trips(message in message()) {
        let frame = wire::encode(&message);
        let decoded = decode_both(&frame);
        prop_assert_eq!(decoded.as_ref(), Some(&expected(&message)));
        prop_assert_eq!(decoded.unwrap().encode(), frame);
    }

    #[test]
    fn a_frame_cut_short_or_with_trailing_bytes_is_an_error(
        message in message(),
        cut in any::<usize>(),
        extra in vec(any::<u8>(), 1..4),
    ) {
        let frame = wire::encode(&message);
        let short = &frame[..cut % frame.len()];
        prop_assert!(decode_both(short).is_none(), "{:?} decodes", short);
        let mut long = frame.to_vec();
        long.extend_from_slice(&extra);
        prop_assert!(decode_both(&long).is_none(), "{:?} decodes", long);
    }

    #[test]
    fn arbitrary_frames_never_panic_and_round_trip(frame in bytes(200)) {
        if let Some(message) = decode_both(&frame) {
            let again = message.encode();
            prop_assert_eq!(decode_both(&again), Some(message));
            prop_assert!(again.len() <= frame.len());
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic_and_round_trip(
        message in message(),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut frame = wire::encode(&message).to_vec();
        for (at, value) in flips {
            let at = at % frame.len();
            frame[at] = value;
        }
        if let Some(message) = decode_both(&frame) {
            prop_assert_eq!(decode_both(&message.encode()), Some(message));
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_round_trip(body in bytes(200)) {
        body_round_trips::<(i64, String)>(&body);
        body_round_trips::<Vec<Shape>>(&body);
        body_round_trips::<Result<Option<Vec<u8>>, String>>(&body);
        body_round_trips::<HashMap<String, Vec<u64>>>(&body);
        body_round_trips::<(u128, char, bool, [u16; 3])>(&body);
        if let Ok(bytes) = codec::decode_byte_vec(&body) {
            let mut again = BytesMut::new();
            codec::encode_byte_vec(&bytes, &mut again).unwrap();
            prop_assert_eq!(codec::decode_byte_vec(&again).unwrap(), bytes);
        }
        if let Some(trace) = TraceContext::parse_bytes(&body) {
            prop_assert_eq!(TraceContext::parse(&trace.to_string()), Some(trace));
        }
    }

    #[test]
    fn user_values_round_trip_through_the_body_codec(values in vec(shape(), 0..4)) {
        let mut body = BytesMut::new();
        codec::encode_value(&values, &mut body).unwrap();
        prop_assert_eq!(codec::decode_value::<Vec<Shape>>(&body).unwrap(), values);
    }

    #[test]
    fn frames_read_in_chunks_of_any_sizes_are_the_frames_written(
        frames in vec(bytes(300), 0..10),
        sizes in vec(1usize..64, 1..16),
        limit in 300usize..1000,
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            stream.extend_from_slice(frame);
        }
        runtime().block_on(async {
            let (mut peer, ours) = tokio::io::duplex(1 << 16);
            let mut ours = rpc_transport::framing::framed(ours).with_max_frame_size(limit);
            let mut rest = &stream[..];
            // The chunk sizes, over and over, until the stream is written.
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at((*size).min(rest.len()));
                peer.write_all(chunk).await.unwrap();
                rest = after;
            }
            drop(peer);
            for frame in &frames {
                assert_eq!(&ours.next().await.unwrap().unwrap()[..], &frame[..]);
            }
            assert!(ours.next().await.is_none());
        });
    }

    #[test]
    fn a_frame_over_the_limit_ends_the_stream_after_those_before_it(
        frames in vec(bytes(100), 0..5),
        over in 1u32..u32::MAX - 100,
        size in 1usize..32,
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            stream.extend_from_slice(frame);
        }
        stream.extend_from_slice(&(100 + over).to_le_bytes());
        runtime().block_on(async {
            let (mut peer, ours) = tokio::io::duplex(1 << 16);
            let mut ours = rpc_transport::framing::framed(ours).with_max_frame_size(100);
            for chunk in stream.chunks(size) {
                peer.write_all(chunk).await.unwrap();
            }
            for frame in &frames {
                assert_eq!(&ours.next().await.unwrap().unwrap()[..], &frame[..]);
            }
            let err = ours.next().await.unwrap().unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        });
    }
}

proptest! {
    // Each case runs a client and a fake server: fewer of them.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_client_fed_arbitrary_replies_never_panics(replies in vec(reply(), 0..24)) {
        client_against(replies);
    }
}
