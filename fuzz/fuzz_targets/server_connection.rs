//! A real server (`rpc_core::Server` over the in-memory transport) fed a session of frames:
//! mostly well-formed messages with arbitrary fields (so calls reach handlers, streams,
//! cancellation, deadlines and the concurrency limit), mixed with raw and oversized frames.
//!
//! Checked on every input:
//! - nothing panics, in the server or in a handler (libFuzzer aborts on any panic, caught
//!   or not), and the server task finishes once the client has closed its side;
//! - every frame the server sends decodes, and is about something the client asked: each
//!   `Response`, `StreamItem`, `StreamEnd`, `Credit` and `Cancel` names the id of a request
//!   the client sent (but the connection's credit announcement), each `Pong` the nonce of a
//!   `Ping`, and nothing follows a `Goodbye`.
//!
//! The runtime's clock is paused: whenever every task waits, time jumps to the next timer,
//! so deadlines, naps, keepalive and the server's timeouts fire at once, and a server that
//! waits for nothing at all runs into [`HANG`] instead of hanging the fuzzer.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use rpc_core::__fuzz::{self, codec, WireMessage, WireStatus};
use rpc_core::health::HealthClient;
use rpc_core::{service, Server, ServiceDescriptor, Streaming};

/// The server's frame limit: small, so oversized frames are cheap to make.
const MAX_FRAME: usize = 1024;
/// Far longer than any session can legitimately take on the paused clock.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// A service with every kind of method: unary, failing, sleeping, and each kind of stream.
#[service]
pub trait Fuzzed {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    async fn fail(&self, message: String) -> Result<u32, String>;
    async fn nap(&self, millis: u16) -> u16;
    async fn count(&self, n: u8) -> Streaming<u32>;
    async fn sum(&self, items: Streaming<i64>) -> i64;
    async fn chat(&self, prefix: String, lines: Streaming<String>) -> Streaming<String>;
    /// Whether the call has a deadline, and how many metadata pairs it came with.
    async fn inspect(&self) -> Option<u32>;
}

#[derive(Clone)]
struct Imp;

impl Fuzzed for Imp {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
    async fn fail(&self, message: String) -> Result<u32, String> {
        Err(message)
    }
    async fn nap(&self, millis: u16) -> u16 {
        tokio::time::sleep(Duration::from_millis(millis.into())).await;
        millis
    }
    async fn count(&self, n: u8) -> Streaming<u32> {
        Streaming::iter(0..u32::from(n))
    }
    async fn sum(&self, mut items: Streaming<i64>) -> i64 {
        let mut total = 0i64;
        while let Some(Ok(item)) = items.next().await {
            total = total.wrapping_add(item);
        }
        total
    }
    async fn chat(&self, prefix: String, lines: Streaming<String>) -> Streaming<String> {
        Streaming::new(lines.filter_map(move |line| {
            futures::future::ready(line.ok().map(|line| format!("{prefix}{line}")))
        }))
    }
    async fn inspect(&self) -> Option<u32> {
        let context = rpc_core::context::current()?;
        context.deadline()?;
        Some(context.metadata().len() as u32)
    }
}

#[derive(Arbitrary, Debug)]
struct Session {
    hello: Hello,
    max_concurrent: u8,
    frames: Vec<Frame>,
}

/// The first frame.
#[derive(Arbitrary, Debug)]
enum Hello {
    /// The generated client's `Hello`.
    Ours,
    /// The health service's.
    Health,
    /// Some of this service's methods, in any order, some with a wrong fingerprint.
    Table(Vec<(u8, bool)>),
    /// Any fields.
    Any {
        magic: [u8; 4],
        version: u32,
        service: String,
        methods: Vec<(String, u64)>,
    },
    /// None: the session starts with its first frame.
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Request {
        id: u8,
        /// An index into the client's table; `None`: the index of the method `args` are for.
        method: Option<u8>,
        timeout_us: Option<u32>,
        metadata: Vec<(String, Vec<u8>)>,
        args: Args,
    },
    Cancel {
        id: u8,
    },
    StreamItem {
        id: u8,
        item: Item,
    },
    StreamEnd {
        id: u8,
        error: Option<(u8, String)>,
    },
    Credit {
        id: u8,
        items: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Goodbye {
        kind: u8,
        message: String,
    },
    /// A message only servers send, or a second `Hello`.
    Unexpected(Unexpected),
    /// Any bytes.
    Raw(Vec<u8>),
    /// Over the server's `max_frame_size` by this much (plus one).
    Oversized(u8),
    /// Lets the server and its handlers run (on the paused clock) before the next frame.
    Wait(u16),
}

#[derive(Arbitrary, Debug)]
enum Unexpected {
    Response { id: u8, body: Vec<u8> },
    Hello,
}

/// Arguments of one of `Fuzzed`'s methods (or anything).
#[derive(Arbitrary, Debug)]
enum Args {
    Add(i64, i64),
    Echo(Vec<u8>),
    Fail(String),
    Nap(u16),
    Count(u8),
    Sum,
    Chat(String),
    Context,
    Health(String),
    Raw(Vec<u8>),
}

impl Args {
    /// The method these arguments are for.
    fn method(&self) -> &'static str {
        match self {
            Args::Add(..) => "add",
            Args::Echo(_) => "echo",
            Args::Fail(_) => "fail",
            Args::Nap(_) => "nap",
            Args::Count(_) => "count",
            Args::Sum => "sum",
            Args::Chat(_) => "chat",
            Args::Context | Args::Raw(_) => "inspect",
            Args::Health(_) => "check",
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let encoded = match self {
            Args::Add(a, b) => codec::encode_value(&(a, b), &mut buf),
            Args::Echo(data) => codec::encode_value(&(codec::AsBytes(data),), &mut buf),
            Args::Fail(message) | Args::Chat(message) | Args::Health(message) => {
                codec::encode_value(&(message,), &mut buf)
            }
            Args::Nap(millis) => codec::encode_value(&(millis,), &mut buf),
            Args::Count(n) => codec::encode_value(&(n,), &mut buf),
            Args::Sum | Args::Context => codec::encode_value(&(), &mut buf),
            Args::Raw(bytes) => return bytes.clone(),
        };
        encoded.expect("arguments encode");
        buf.to_vec()
    }
}

/// A stream item: of `sum`'s stream, of `chat`'s, or anything.
#[derive(Arbitrary, Debug)]
enum Item {
    Number(i64),
    Line(String),
    Raw(Vec<u8>),
}

impl Item {
    fn body(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        match self {
            Item::Number(n) => codec::encode_value(n, &mut buf).expect("encodes"),
            Item::Line(line) => codec::encode_value(line, &mut buf).expect("encodes"),
            Item::Raw(bytes) => return bytes.clone(),
        }
        buf.to_vec()
    }
}

fn hello(desc: &ServiceDescriptor) -> WireMessage {
    WireMessage::Hello {
        magic: *b"tRPC",
        version: 1,
        service: desc.name.to_string(),
        methods: desc
            .methods
            .iter()
            .map(|m| (m.name.to_string(), m.fingerprint))
            .collect(),
    }
}

/// The first frame, and the client's method table it announces.
fn first_frame(hello_kind: &Hello) -> (Option<Bytes>, Vec<String>) {
    let message = match hello_kind {
        Hello::Ours => hello(&FuzzedClient::DESCRIPTOR),
        Hello::Health => hello(&HealthClient::DESCRIPTOR),
        Hello::Table(picks) => {
            let ours = FuzzedClient::DESCRIPTOR.methods;
            WireMessage::Hello {
                magic: *b"tRPC",
                version: 1,
                service: FuzzedClient::DESCRIPTOR.name.to_string(),
                methods: picks
                    .iter()
                    .map(|&(pick, wrong)| {
                        let m = &ours[usize::from(pick) % ours.len()];
                        (m.name.to_string(), m.fingerprint ^ u64::from(wrong))
                    })
                    .collect(),
            }
        }
        Hello::Any {
            magic,
            version,
            service,
            methods,
        } => WireMessage::Hello {
            magic: *magic,
            version: *version,
            service: service.clone(),
            methods: methods.clone(),
        },
        Hello::Missing => return (None, Vec::new()),
    };
    let table = match &message {
        WireMessage::Hello { methods, .. } => methods.iter().map(|(n, _)| n.clone()).collect(),
        _ => unreachable!("a Hello was built"),
    };
    (Some(message.encode()), table)
}

fn encode(frame: &Frame, table: &[String]) -> Option<Bytes> {
    let message = match frame {
        Frame::Request {
            id,
            method,
            timeout_us,
            metadata,
            args,
        } => WireMessage::Request {
            id: u64::from(*id),
            method: match method {
                Some(index) => u32::from(*index),
                None => table
                    .iter()
                    .position(|name| name == args.method())
                    .unwrap_or(table.len()) as u32,
            },
            timeout_us: timeout_us.map(u64::from),
            metadata: metadata.clone(),
            body: args.body(),
        },
        Frame::Cancel { id } => WireMessage::Cancel { id: u64::from(*id) },
        Frame::StreamItem { id, item } => WireMessage::StreamItem {
            id: u64::from(*id),
            body: item.body(),
        },
        Frame::StreamEnd { id, error } => WireMessage::StreamEnd {
            id: u64::from(*id),
            status: match error {
                None => WireStatus::Ok,
                Some((kind, message)) => WireStatus::Error {
                    kind: *kind,
                    message: message.clone(),
                },
            },
        },
        Frame::Credit { id, items } => WireMessage::Credit {
            id: u64::from(*id),
            items: *items,
        },
        Frame::Ping { nonce } => WireMessage::Ping { nonce: *nonce },
        Frame::Pong { nonce } => WireMessage::Pong { nonce: *nonce },
        Frame::Goodbye { kind, message } => WireMessage::Goodbye {
            kind: *kind,
            message: message.clone(),
        },
        Frame::Unexpected(Unexpected::Response { id, body }) => WireMessage::Response {
            id: u64::from(*id),
            status: WireStatus::Ok,
            body: body.clone(),
        },
        Frame::Unexpected(Unexpected::Hello) => hello(&FuzzedClient::DESCRIPTOR),
        Frame::Raw(bytes) => return Some(Bytes::from(bytes.clone())),
        Frame::Oversized(extra) => {
            return Some(Bytes::from(vec![0; MAX_FRAME + 1 + usize::from(*extra)]))
        }
        Frame::Wait(_) => return None,
    };
    Some(message.encode())
}

/// What the client has asked, for checking that the server only answers that.
#[derive(Default)]
struct Asked {
    ids: HashSet<u64>,
    pings: HashSet<u64>,
}

impl Asked {
    fn note(&mut self, frame: &[u8]) {
        match __fuzz::decode(frame) {
            Ok(WireMessage::Request { id, .. }) => {
                self.ids.insert(id);
            }
            Ok(WireMessage::Ping { nonce }) => {
                self.pings.insert(nonce);
            }
            _ => {}
        }
    }
}

fn check_replies(replies: &[Bytes], asked: &Asked) {
    let mut said_goodbye = false;
    for frame in replies {
        assert!(!said_goodbye, "the server sent a frame after its Goodbye");
        let message = __fuzz::decode(frame)
            .unwrap_or_else(|err| panic!("the server sent a frame that does not decode: {err}"));
        match &message {
            // Its announcement that it grants credit whenever a handler waits for items.
            // (Its `items` are flags: byte credit, runs; or the codec picked.)
            WireMessage::Credit {
                id: __fuzz::CONNECTION_ID,
                ..
            } => {}
            WireMessage::Response { id, .. }
            | WireMessage::StreamItem { id, .. }
            | WireMessage::StreamItems { id, .. }
            | WireMessage::StreamEnd { id, .. }
            | WireMessage::Credit { id, .. }
            | WireMessage::Cancel { id } => assert!(
                asked.ids.contains(id),
                "the server sent a {} for call {id}, which the client never made",
                message.name()
            ),
            WireMessage::Pong { nonce } => assert!(
                asked.pings.contains(nonce),
                "the server answered a Ping the client never sent"
            ),
            WireMessage::Goodbye { .. } => said_goodbye = true,
            // The server's own keepalive.
            WireMessage::Ping { .. } => {}
            // A load report, for a fuzzed client whose announcement asked for them.
            WireMessage::Load { .. } => {}
            WireMessage::Hello { .. } | WireMessage::Request { .. } => {
                panic!("the server sent a {}", message.name())
            }
            // The fuzzed client offers no compression.
            WireMessage::PackedRequest { .. }
            | WireMessage::PackedResponse { .. }
            | WireMessage::PackedStreamItem { .. } => {
                panic!("the server sent a {} to a client that offered no compression", message.name())
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
        let (client, server_end) = rpc_transport::memory::pair();
        let server = Server::new()
            .add_service(FuzzedServer::new(Imp))
            .max_frame_size(MAX_FRAME)
            .max_concurrent_requests(usize::from(session.max_concurrent % 8) + 1);
        let serving = tokio::spawn(server.serve_connection(server_end));
        let (mut sink, mut stream) = client.split();
        let reading = tokio::spawn(async move {
            let mut replies = Vec::new();
            while let Some(Ok(frame)) = stream.next().await {
                replies.push(frame);
            }
            replies
        });

        let mut asked = Asked::default();
        let (first, table) = first_frame(&session.hello);
        let frames =
            first
                .map(Ok)
                .into_iter()
                .chain(session.frames.iter().map(|frame| match frame {
                    Frame::Wait(millis) => Err(*millis),
                    frame => Ok(encode(frame, &table).expect("a frame")),
                }));
        for frame in frames {
            match frame {
                Ok(frame) => {
                    asked.note(&frame);
                    // The server may have closed the connection: the rest is not heard.
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
                Err(millis) => tokio::time::sleep(Duration::from_millis(millis.into())).await,
            }
        }
        // The client is done: the server answers what it has and ends the connection.
        let _ = sink.close().await;

        let served = tokio::time::timeout(HANG, serving)
            .await
            .expect("the server did not finish after the client closed");
        assert!(served.is_ok(), "the server task panicked: {served:?}");
        let replies = tokio::time::timeout(HANG, reading)
            .await
            .expect("the connection did not close")
            .expect("the reader does not panic");
        check_replies(&replies, &asked);
    });
}

fuzz_target!(|session: Session| {
    run(session);
});
