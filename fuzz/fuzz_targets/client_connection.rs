//! A real client (`rpc_core::Client`, through a generated client over the in-memory
//! transport) making unary and streaming calls against a fake server that answers with a
//! session of arbitrary frames: replies to the calls' ids with any status and body, stream
//! items, ends, credit, cancels, pings, goodbyes, messages a client never expects, and raw
//! bytes. The client's side of the decoder: `Message::decode` in its connection task.
//!
//! Checked on every input:
//! - nothing panics (libFuzzer aborts on any panic, caught or not);
//! - every call ends once the fake server has closed the connection;
//! - every frame the client sends decodes; the first is its `Hello`; request ids are never
//!   reused; its `Cancel`, `Credit`, `StreamItem` and `StreamEnd` name calls it made (but its
//!   connection-wide credit announcement); each `Pong` answers a `Ping` it was sent.
//!
//! The clock is paused, so deadlines fire as soon as every task waits.
#![no_main]

use std::collections::HashSet;
use std::future::IntoFuture;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use rpc_core::__fuzz::{self, codec, WireMessage, WireStatus};
use rpc_core::{service, Streaming};
use rpc_transport::memory::MemoryTransport;

/// Far longer than any session can legitimately take on the paused clock.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// A service with a unary method and each kind of stream.
#[service]
pub trait Probe {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    async fn count(&self, n: u32) -> Streaming<u32>;
    async fn sum(&self, items: Streaming<i64>) -> i64;
    async fn chat(&self, lines: Streaming<String>) -> Streaming<String>;
}

#[derive(Arbitrary, Debug)]
struct Session {
    calls: Vec<Call>,
    replies: Vec<Reply>,
}

#[derive(Arbitrary, Debug)]
struct Call {
    kind: CallKind,
    timeout_ms: Option<u16>,
}

#[derive(Arbitrary, Debug)]
enum CallKind {
    Add(i64, i64),
    Echo(Vec<u8>),
    Count(u8),
    Sum(Vec<i64>),
    Chat(Vec<String>),
}

#[derive(Arbitrary, Debug)]
enum Reply {
    /// A message about the `pick`th call the client made (or any id, past those).
    About {
        pick: u8,
        message: About,
    },
    Ping(u64),
    Pong(u64),
    Goodbye(u8, String),
    /// A message a client never expects.
    Hello,
    Request(u8),
    Raw(Vec<u8>),
    /// Lets the client run (on the paused clock) before the next frame.
    Wait(u16),
}

#[derive(Arbitrary, Debug)]
enum About {
    Response(Status, Body),
    StreamItem(Body),
    StreamEnd(Status),
    Credit(u32),
    Cancel,
}

#[derive(Arbitrary, Debug)]
enum Status {
    Ok,
    Error(u8, String),
}

/// A body: of the type some call expects, or anything.
#[derive(Arbitrary, Debug)]
enum Body {
    Number(i64),
    Count(u32),
    Bytes(Vec<u8>),
    Line(String),
    Raw(Vec<u8>),
}

impl Body {
    fn encode(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let encoded = match self {
            Body::Number(n) => codec::encode_value(n, &mut buf),
            Body::Count(n) => codec::encode_value(n, &mut buf),
            Body::Bytes(bytes) => codec::encode_byte_vec(bytes, &mut buf),
            Body::Line(line) => codec::encode_value(line, &mut buf),
            Body::Raw(bytes) => return bytes.clone(),
        };
        encoded.expect("a body encodes");
        buf.to_vec()
    }
}

impl Status {
    fn wire(&self) -> WireStatus {
        match self {
            Status::Ok => WireStatus::Ok,
            Status::Error(kind, message) => WireStatus::Error {
                kind: *kind,
                message: message.clone(),
            },
        }
    }
}

impl Reply {
    fn frame(&self, ids: &[u64]) -> Option<Bytes> {
        let message = match self {
            Reply::About { pick, message } => {
                let id = ids
                    .get(usize::from(*pick))
                    .copied()
                    .unwrap_or(u64::from(*pick));
                match message {
                    About::Response(status, body) => WireMessage::Response {
                        id,
                        status: status.wire(),
                        body: body.encode(),
                    },
                    About::StreamItem(body) => WireMessage::StreamItem {
                        id,
                        body: body.encode(),
                    },
                    About::StreamEnd(status) => WireMessage::StreamEnd {
                        id,
                        status: status.wire(),
                    },
                    About::Credit(items) => WireMessage::Credit { id, items: *items },
                    About::Cancel => WireMessage::Cancel { id },
                }
            }
            Reply::Ping(nonce) => WireMessage::Ping { nonce: *nonce },
            Reply::Pong(nonce) => WireMessage::Pong { nonce: *nonce },
            Reply::Goodbye(kind, message) => WireMessage::Goodbye {
                kind: *kind,
                message: message.clone(),
            },
            Reply::Hello => return Some(__fuzz::hello_frame(&ProbeClient::DESCRIPTOR)),
            Reply::Request(id) => WireMessage::Request {
                id: u64::from(*id),
                method: 0,
                timeout_us: None,
                metadata: Vec::new(),
                body: Vec::new(),
            },
            Reply::Raw(bytes) => return Some(Bytes::from(bytes.clone())),
            Reply::Wait(_) => return None,
        };
        Some(message.encode())
    }
}

/// The fake server's record of what the client sent, checked as it comes.
#[derive(Default)]
struct Heard {
    frames: usize,
    /// Request ids, in order.
    ids: Vec<u64>,
    seen: HashSet<u64>,
    pinged: HashSet<u64>,
}

impl Heard {
    fn note(&mut self, frame: &[u8]) {
        let message = __fuzz::decode(frame)
            .unwrap_or_else(|err| panic!("the client sent a frame that does not decode: {err}"));
        let first = self.frames == 0;
        self.frames += 1;
        assert_eq!(
            first,
            matches!(message, WireMessage::Hello { .. }),
            "the client's Hello is its first frame, and only that"
        );
        match &message {
            WireMessage::Request { id, .. } => {
                assert!(self.seen.insert(*id), "the client reused request id {id}");
                self.ids.push(*id);
            }
            // Its announcement that it grants credit whenever a consumer waits for items.
            // (Its `items` are flags: byte credit, runs; or the codec picked.)
            WireMessage::Credit {
                id: __fuzz::CONNECTION_ID,
                ..
            } => {}
            WireMessage::Cancel { id }
            | WireMessage::Credit { id, .. }
            | WireMessage::StreamItem { id, .. }
            | WireMessage::StreamItems { id, .. }
            | WireMessage::StreamEnd { id, .. } => assert!(
                self.seen.contains(id),
                "the client sent a {} for call {id}, which it never made",
                message.name()
            ),
            WireMessage::Pong { nonce } => assert!(
                self.pinged.contains(nonce),
                "the client answered a Ping it was never sent"
            ),
            WireMessage::Response { .. } => panic!("the client sent a Response"),
            WireMessage::Load { .. } => panic!("the client sent a load report"),
            // This client offers no compression: it must never send a compressed message.
            WireMessage::PackedRequest { .. }
            | WireMessage::PackedResponse { .. }
            | WireMessage::PackedStreamItem { .. } => {
                panic!("the client sent a {} without compression", message.name())
            }
            WireMessage::Hello { .. } | WireMessage::Goodbye { .. } | WireMessage::Ping { .. } => {}
        }
    }

    /// Everything the client has sent so far, without waiting for more.
    fn drain(&mut self, end: &mut MemoryTransport) {
        while let Some(Some(Ok(frame))) = end.next().now_or_never() {
            self.note(&frame);
        }
    }
}

fn with_timeout<R>(call: rpc_core::Call<R>, timeout_ms: Option<u16>) -> rpc_core::Call<R> {
    match timeout_ms {
        Some(ms) => call.timeout(Duration::from_millis(ms.into())),
        None => call,
    }
}

async fn call(client: &ProbeClient, call: &Call) {
    let t = call.timeout_ms;
    match &call.kind {
        CallKind::Add(a, b) => {
            let _ = with_timeout(client.add(*a, *b), t).into_future().await;
        }
        CallKind::Echo(data) => {
            let _ = with_timeout(client.echo(data.clone()), t)
                .into_future()
                .await;
        }
        CallKind::Count(n) => {
            let call = with_timeout(client.count(u32::from(*n)), t);
            if let Ok(mut items) = call.into_future().await {
                while items.next().await.is_some() {}
            }
        }
        CallKind::Sum(items) => {
            let call = with_timeout(client.sum(Streaming::iter(items.clone())), t);
            let _ = call.into_future().await;
        }
        CallKind::Chat(lines) => {
            let call = with_timeout(client.chat(Streaming::iter(lines.clone())), t);
            if let Ok(mut replies) = call.into_future().await {
                while replies.next().await.is_some() {}
            }
        }
    }
}

fn run(session: Session) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let (client_end, mut server_end) = rpc_transport::memory::pair();
        let client = ProbeClient::new(client_end);
        let calls = futures::future::join_all(session.calls.iter().map(|c| call(&client, c)));
        let server = async move {
            let mut heard = Heard::default();
            for reply in &session.replies {
                tokio::task::yield_now().await;
                heard.drain(&mut server_end);
                if let Reply::Wait(ms) = reply {
                    tokio::time::sleep(Duration::from_millis((*ms).into())).await;
                }
                let Some(frame) = reply.frame(&heard.ids) else {
                    continue;
                };
                // Raw bytes may spell a Ping too.
                if let Ok(WireMessage::Ping { nonce }) = __fuzz::decode(&frame) {
                    heard.pinged.insert(nonce);
                }
                if server_end.send(frame).await.is_err() {
                    break;
                }
            }
            heard.drain(&mut server_end);
            // Closing the connection ends every call still waiting.
        };
        tokio::time::timeout(HANG, async { futures::join!(calls, server) })
            .await
            .expect("a call did not end after the server closed the connection");
    });
}

fuzz_target!(|session: Session| {
    run(session);
});
