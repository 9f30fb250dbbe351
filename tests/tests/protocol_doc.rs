//! The hex dumps in `docs/protocol.md` are what this implementation sends, byte for byte.
//!
//! Every dump the document pins is a ```text block right after a marker line
//! `<!-- pinned by tests/tests/protocol_doc.rs: NAME -->`. Its frame lines read
//!
//! ```text
//! c> 0b 00 00 00 | 07 fd ff ff ff ff ff ff ff ff 00
//! s> 05 00 00 00 | 02 00 00 01 06
//! c> end of stream
//! ```
//!
//! `c>` is written by the client, `s>` by the server; then the 4-byte length prefix, `|`, and
//! the message: hex bytes and `"quoted"` ASCII text. A line starting with `|` (after spaces)
//! continues the previous frame; every other line explains and is ignored here.
//!
//! - **Connections** (`unary`, `stream`): a real client and a real server, each behind the
//!   length-prefixed framer over an in-memory pipe, with this test in the middle as a relay.
//!   The relay follows the dump line by line: it reads the next frame of the side the line
//!   names, compares it with the line, and only then passes it on. So the interleaving of the
//!   two directions is the dump's own, whatever the scheduler does (which is what makes the
//!   client's stream credit in `stream` exact: an item is passed on only after the credit for
//!   the one before it came back). No `traceparent`, whose ids are random, is sent: see
//!   `assert_untraced`.
//! - **Refusals** (`version`, `magic`): the test plays the client and sends the dump's `c>`
//!   frames as they are; the server's answer must be the `s>` frames, then its end of stream.
//! - **Single messages** (`messages`): each frame must be what the runtime's own frame
//!   builders produce for the message the test names, and decode back to that message.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use rpc_core::__fuzz::{self, WireMessage};
use rpc_core::context::Metadata;
use rpc_core::health::HealthClient;
use rpc_core::{service, ErrorKind, RpcError, Server, Streaming};
use rpc_transport::framing::framed;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const DOC: &str = include_str!("../../docs/protocol.md");
const DOC_PATH: &str = "docs/protocol.md";

/// Only a hang guard: every step normally takes microseconds.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// The service of the unary dump (and of the refusals).
#[service]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
}

struct Calc;

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

/// The service of the streaming dump.
#[service]
pub trait Counter {
    async fn count(&self, n: u32) -> Streaming<u32>;
}

struct Count;

impl Counter for Count {
    async fn count(&self, n: u32) -> Streaming<u32> {
        Streaming::iter(1..=n)
    }
}

// The complete examples are of a client that sends no schema in its `Hello` (a client of
// the first release of version 1, or one in another language that leaves it out): its
// frames are the ones recorded from that release, so these tests also show that the
// current server answers such a client byte for byte as before, and the current client
// reads that server's answers.
const CALCULATOR_WITHOUT_SCHEMA: rpc_core::ServiceDescriptor = rpc_core::ServiceDescriptor::new(
    CalculatorClient::DESCRIPTOR.name,
    CalculatorClient::DESCRIPTOR.methods,
);
const COUNTER_WITHOUT_SCHEMA: rpc_core::ServiceDescriptor = rpc_core::ServiceDescriptor::new(
    CounterClient::DESCRIPTOR.name,
    CounterClient::DESCRIPTOR.methods,
);

const HEALTH_WITHOUT_SCHEMA: rpc_core::ServiceDescriptor = rpc_core::ServiceDescriptor::new(
    HealthClient::DESCRIPTOR.name,
    HealthClient::DESCRIPTOR.methods,
);

/// The schema entry of the health client's `Hello`, shown as JSON in the document, is the
/// one the runtime sends.
#[test]
fn the_schema_entry_is_the_runtime_one() {
    let text = DOC;
    let marker = "<!-- pinned by tests/tests/protocol_doc.rs: schema -->";
    let after = &text[text.find(marker).expect("the schema marker")..];
    let block = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("a json block after the schema marker");
    let documented: serde_json::Value = serde_json::from_str(block).expect("the block is JSON");
    let Ok(WireMessage::Hello { methods, .. }) =
        __fuzz::decode(&__fuzz::hello_frame(&HealthClient::DESCRIPTOR))
    else {
        panic!("the runtime's Hello does not decode");
    };
    let (name, fingerprint) = methods.last().expect("the schema entry");
    assert_eq!(
        *fingerprint, 0xebb5_a684_8c27_7889_u64,
        "FNV-1a 64 of `rpc.schema`"
    );
    let json = name
        .strip_prefix("rpc.schema:")
        .expect("the entry's prefix");
    let sent: serde_json::Value = serde_json::from_str(json).expect("the entry is JSON");
    assert_eq!(
        documented, sent,
        "docs/protocol.md's schema entry differs from the runtime's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unary_dump_is_a_real_connection() {
    assert_untraced();
    let dump = Dump::parse("unary");
    let (client_io, client_side) = tokio::io::duplex(1 << 16);
    let (server_io, server_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(
        Server::new()
            .add_service(CalculatorServer::new(Calc))
            .serve_connection(framed(server_io)),
    );
    let client = tokio::spawn(async move {
        let client = CalculatorClient::from_client(rpc_core::Client::new(
            framed(client_io),
            &CALCULATOR_WITHOUT_SCHEMA,
        ));
        let sum = client.add(1, 2).timeout(Duration::from_secs(30)).await;
        // Dropped, the client is done: it closes the connection.
        drop(client);
        sum
    });
    dump.play(Some(client_side), server_side).await;
    assert_eq!(guard("the call", client).await.unwrap(), Ok(3));
    let served = guard("the server", server).await.unwrap();
    assert!(served.is_ok(), "the server failed: {served:?}");
}

/// The other direction: today's client, which sends its schema, against the server of the
/// first release of version 1, played from the frames recorded from it (the unary dump).
/// That server read the `Hello` as it reads any, so the client's `Hello` must still be one
/// to it: the same method table, then one entry more, which it took for a method it lacked.
/// The server's answer to a client that credits bytes: a second announcement, `Credit`
/// with `CONNECTION_ID` and the flags (256 and 512).
const BYTE_CREDIT_ANSWER: [u8; 17] = [
    0x0d, 0, 0, 0, 0x07, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb, 0x00, 0x03,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_schema_talks_to_a_server_of_the_first_release() {
    let dump = Dump::parse("unary");
    let (client_io, mut server_side) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let client = CalculatorClient::new(framed(client_io));
        let sum = client.add(1, 2).timeout(Duration::from_secs(30)).await;
        drop(client);
        sum
    });
    let mut hello_seen = false;
    for line in &dump.lines {
        match line {
            Line::Frame {
                side: Some(Side::Client),
                bytes,
                ..
            } => {
                let got = guard("a frame from the client", read_frame(&mut server_side))
                    .await
                    .expect("read")
                    .expect("a frame, not the end");
                if hello_seen {
                    assert_eq!(
                        got, *bytes,
                        "after the Hello, the frames are the recorded ones"
                    );
                    continue;
                }
                hello_seen = true;
                let (
                    Ok(WireMessage::Hello { methods: sent, .. }),
                    Ok(WireMessage::Hello {
                        methods: recorded, ..
                    }),
                ) = (__fuzz::decode(&got[4..]), __fuzz::decode(&bytes[4..]))
                else {
                    panic!("the client's first frame is not a version 1 Hello");
                };
                assert_eq!(
                    sent[..recorded.len()],
                    recorded[..],
                    "the recorded method table, as it was"
                );
                assert_eq!(sent.len(), recorded.len() + 1, "one entry more: the schema");
                assert!(sent[recorded.len()].0.starts_with("rpc.schema:"));
            }
            // That server did not answer the client's flag for byte credit: today's does,
            // with a second announcement, which is left out here.
            Line::Frame { bytes, .. } if bytes[..] == BYTE_CREDIT_ANSWER => {}
            Line::Frame { bytes, .. } => server_side.write_all(bytes).await.expect("write"),
            Line::End {
                side: Side::Client, ..
            } => {
                let end = guard("the client's end", read_frame(&mut server_side)).await;
                assert!(matches!(end, Ok(None)), "{end:?}");
            }
            Line::End { .. } => server_side.shutdown().await.expect("close"),
        }
    }
    assert_eq!(guard("the call", client).await.unwrap(), Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_dump_is_a_real_connection() {
    assert_untraced();
    let dump = Dump::parse("stream");
    let (client_io, client_side) = tokio::io::duplex(1 << 16);
    let (server_io, server_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(
        Server::new()
            .add_service(CounterServer::new(Count))
            .serve_connection(framed(server_io)),
    );
    let client = tokio::spawn(async move {
        let client = CounterClient::from_client(rpc_core::Client::new(
            framed(client_io),
            &COUNTER_WITHOUT_SCHEMA,
        ));
        let mut stream = client.count(2).await?;
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item?);
        }
        drop(stream);
        drop(client);
        Ok::<_, RpcError>(items)
    });
    dump.play(Some(client_side), server_side).await;
    assert_eq!(guard("the call", client).await.unwrap(), Ok(vec![1, 2]));
    let served = guard("the server", server).await.unwrap();
    assert!(served.is_ok(), "the server failed: {served:?}");
}

#[tokio::test]
async fn the_version_dump_is_what_a_server_answers() {
    refused(Dump::parse("version")).await;
}

#[tokio::test]
async fn the_magic_dump_is_what_a_server_answers() {
    refused(Dump::parse("magic")).await;
}

/// The test plays the client of `dump`; the server must refuse it, as the dump says.
async fn refused(dump: Dump) {
    let (server_io, server_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(
        Server::new()
            .add_service(CalculatorServer::new(Calc))
            .serve_connection(framed(server_io)),
    );
    dump.play(None, server_side).await;
    let served = guard("the server", server).await.unwrap();
    assert!(
        served.is_err(),
        "the server accepted the connection: {served:?}"
    );
}

#[test]
fn the_single_messages_are_the_runtime_frames() {
    let dump = Dump::parse("messages");
    let traced: Metadata = [(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]
    .into_iter()
    .collect();
    let expected: Vec<Bytes> = vec![
        __fuzz::request_frame(1, 0, None, &traced, &[0x02, 0x04]),
        __fuzz::error_response_frame(
            1,
            &RpcError::new(
                ErrorKind::Overloaded,
                "the server is shutting down; retry on another server",
            ),
        ),
        WireMessage::Cancel { id: 1 }.encode(),
        __fuzz::stream_end_frame(
            1,
            Err(&RpcError::new(
                ErrorKind::Internal,
                "encoding a stream item panicked",
            )),
        ),
        WireMessage::Credit { id: 1, items: 16 }.encode(),
        WireMessage::Ping { nonce: 1 }.encode(),
        WireMessage::Pong { nonce: 1 }.encode(),
        __fuzz::goodbye_frame(ErrorKind::Disconnected, "the server is shutting down"),
        __fuzz::hello_frame(&HEALTH_WITHOUT_SCHEMA),
    ];
    check_single_messages(&dump, "messages", expected);
}

/// The load reports section's frame.
#[test]
fn the_load_report_is_the_runtime_frame() {
    let dump = Dump::parse("load");
    let expected = vec![WireMessage::Load {
        in_flight: 3,
        utilization: 5_000,
    }
    .encode()];
    check_single_messages(&dump, "load", expected);
}

/// The compression section's frames: an offer, an answer and a packed response.
#[test]
fn the_compression_messages_are_the_runtime_frames() {
    let dump = Dump::parse("compression");
    let body = [
        2, 0x20, 0x1f, 0x61, 1, 0, 7, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61,
    ];
    let expected: Vec<Bytes> = vec![
        __fuzz::hello_frame_offering(&HEALTH_WITHOUT_SCHEMA, "zstd,lz4"),
        __fuzz::announcement_frame(Some(rpc_core::compress::Codec::Lz4)),
        __fuzz::packed_response_frame(1, &body),
    ];
    check_single_messages(&dump, "compression", expected);
    // The body is what the document says it is (when this build has lz4).
    if rpc_core::compress::Codec::Lz4.is_available() {
        assert_eq!(__fuzz::unpack(&body, 1 << 20), Ok(vec![b'a'; 32]));
    }
}

/// Each frame of `dump` is the one in `expected`, and decodes back to it.
fn check_single_messages(dump: &Dump, name: &str, expected: Vec<Bytes>) {
    assert_eq!(
        dump.lines.len(),
        expected.len(),
        "{DOC_PATH}, dump `{name}`: {} frames, the test expects {}",
        dump.lines.len(),
        expected.len()
    );
    for (line, expected) in dump.lines.iter().zip(expected) {
        let Line::Frame { line, bytes, .. } = line else {
            panic!("{DOC_PATH}, dump `{name}`: only frames, no end of stream");
        };
        let mut framed = (expected.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&expected);
        if *bytes != framed {
            panic!(
                "{DOC_PATH}, line {line} (dump `{name}`): the frame differs from what the \
                 runtime builds\n  document: {}\n  runtime:  {}",
                describe(bytes),
                describe(&framed)
            );
        }
        // And the runtime's decoder reads it back as that message.
        let decoded = __fuzz::decode(&bytes[4..])
            .unwrap_or_else(|err| panic!("{DOC_PATH}, line {line}: does not decode: {err}"));
        assert_eq!(
            decoded.encode(),
            __fuzz::decode(&expected).unwrap().encode(),
            "{DOC_PATH}, line {line}: decodes to another message"
        );
    }
}

/// The connection dumps show no `traceparent`: a client sends one only for a call that is
/// traced, when a `tracing` subscriber wants the `rpc` spans or the call is made within a
/// traced handler. This test binary installs no subscriber, and its calls are made outside
/// any handler.
fn assert_untraced() {
    assert!(
        !tracing::dispatcher::has_been_set(),
        "a tracing subscriber is installed: calls would carry a random `traceparent`"
    );
}

/// Which end of the connection wrote a line of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// One line of a dump that says what went over the wire.
#[derive(Debug)]
enum Line {
    /// A whole frame, length prefix included.
    Frame {
        line: usize,
        side: Option<Side>,
        bytes: Vec<u8>,
    },
    /// That side closed its direction of the connection.
    End { line: usize, side: Side },
}

/// A pinned dump of the document.
struct Dump {
    name: &'static str,
    lines: Vec<Line>,
}

impl Dump {
    /// The ```text block after `<!-- pinned by tests/tests/protocol_doc.rs: NAME -->`.
    fn parse(name: &'static str) -> Dump {
        let marker = format!("<!-- pinned by tests/tests/protocol_doc.rs: {name} -->");
        let text: Vec<&str> = DOC.lines().collect();
        let at: Vec<usize> = (0..text.len())
            .filter(|&i| text[i].trim() == marker)
            .collect();
        let [at] = at[..] else {
            panic!(
                "{DOC_PATH} must have the line `{marker}` exactly once (found {})",
                at.len()
            );
        };
        assert_eq!(
            text.get(at + 1).map(|l| l.trim_end()),
            Some("```text"),
            "{DOC_PATH}, line {}: a ```text block must follow `{marker}`",
            at + 2
        );
        let mut lines = Vec::new();
        let mut i = at + 2;
        loop {
            let Some(&raw) = text.get(i) else {
                panic!("{DOC_PATH}: the block after `{marker}` is not closed");
            };
            i += 1;
            let number = i; // 1-based
            if raw.trim_end() == "```" {
                break;
            }
            let (side, rest) = if let Some(rest) = raw.strip_prefix("c> ") {
                (Some(Side::Client), rest)
            } else if let Some(rest) = raw.strip_prefix("s> ") {
                (Some(Side::Server), rest)
            } else if let Some(rest) = raw.trim_start().strip_prefix("| ") {
                // More bytes of the frame above.
                let Some(Line::Frame { bytes, .. }) = lines.last_mut() else {
                    panic!("{DOC_PATH}, line {number}: a continuation line follows no frame");
                };
                bytes.extend(parse_bytes(rest, number));
                continue;
            } else if raw.starts_with(|c: char| c.is_ascii_hexdigit()) {
                (None, raw)
            } else {
                continue; // an explanation
            };
            if rest.trim() == "end of stream" {
                let side = side
                    .unwrap_or_else(|| panic!("{DOC_PATH}, line {number}: whose end of stream?"));
                lines.push(Line::End { line: number, side });
                continue;
            }
            let Some((prefix, message)) = rest.split_once('|') else {
                panic!("{DOC_PATH}, line {number}: a frame line is `PREFIX | MESSAGE`");
            };
            let mut bytes = parse_bytes(prefix, number);
            assert_eq!(
                bytes.len(),
                4,
                "{DOC_PATH}, line {number}: the length prefix is 4 bytes"
            );
            bytes.extend(parse_bytes(message, number));
            lines.push(Line::Frame {
                line: number,
                side,
                bytes,
            });
        }
        // Each prefix must say the length of what follows it (checked once the frame's
        // continuation lines are in).
        for line in &lines {
            if let Line::Frame { line, bytes, .. } = line {
                let said = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
                assert_eq!(
                    said,
                    bytes.len() - 4,
                    "{DOC_PATH}, line {line}: the length prefix says {said} bytes, the message \
                     has {}",
                    bytes.len() - 4
                );
            }
        }
        assert!(!lines.is_empty(), "{DOC_PATH}: the dump `{name}` is empty");
        Dump { name, lines }
    }

    /// Runs the connection as the dump shows it: frames of the client are read from
    /// `client` (the pipe of a real client) or, without one, sent as the dump has them; frames
    /// of the server are read from `server`. Each frame read must be the dump's, and is then
    /// passed on; an end of stream must be one, and is passed on as one.
    async fn play(&self, mut client: Option<DuplexStream>, mut server: DuplexStream) {
        for (index, line) in self.lines.iter().enumerate() {
            let step = index + 1;
            match *line {
                Line::Frame {
                    line,
                    side: Some(Side::Client),
                    ref bytes,
                } => match client.as_mut() {
                    Some(from) => {
                        let got = self
                            .expect_frame(line, step, Side::Client, from, bytes)
                            .await;
                        server.write_all(&got).await.expect("pass the frame on");
                    }
                    // The test is the client: its frames are the dump's own.
                    None => server.write_all(bytes).await.expect("write to the server"),
                },
                Line::Frame {
                    line,
                    side: Some(Side::Server),
                    ref bytes,
                } => {
                    let got = self
                        .expect_frame(line, step, Side::Server, &mut server, bytes)
                        .await;
                    if let Some(to) = client.as_mut() {
                        to.write_all(&got).await.expect("pass the frame on");
                    }
                }
                Line::Frame {
                    line, side: None, ..
                } => panic!(
                    "{DOC_PATH}, line {line}: a frame of a connection says who sent it (c> or s>)"
                ),
                Line::End {
                    line,
                    side: Side::Client,
                } => {
                    if let Some(from) = client.as_mut() {
                        self.expect_end(line, step, Side::Client, from).await;
                    }
                    server.shutdown().await.expect("pass the end of stream on");
                }
                Line::End {
                    line,
                    side: Side::Server,
                } => {
                    self.expect_end(line, step, Side::Server, &mut server).await;
                    if let Some(to) = client.as_mut() {
                        to.shutdown().await.expect("pass the end of stream on");
                    }
                }
            }
        }
    }

    fn step(&self, line: usize, step: usize) -> String {
        format!(
            "{DOC_PATH}, line {line} (dump `{}`, step {step})",
            self.name
        )
    }

    /// Reads the next frame `side` sent from `from`; it must be `expected`.
    async fn expect_frame(
        &self,
        line: usize,
        step: usize,
        side: Side,
        from: &mut DuplexStream,
        expected: &[u8],
    ) -> Vec<u8> {
        let what = format!(
            "{}: a frame from the {}",
            self.step(line, step),
            side.name()
        );
        let got = match guard(&what, read_frame(from)).await {
            Ok(Some(got)) => got,
            Ok(None) => panic!("{what}: the {} closed the connection instead", side.name()),
            Err(err) => panic!("{what}: {err}"),
        };
        if got != expected {
            panic!(
                "{what} differs\n  document: {}\n  sent:     {}",
                describe(expected),
                describe(&got)
            );
        }
        got
    }

    /// Reads from `from` until `side`'s end of stream, which must come next.
    async fn expect_end(&self, line: usize, step: usize, side: Side, from: &mut DuplexStream) {
        let what = format!(
            "{}: the {}'s end of stream",
            self.step(line, step),
            side.name()
        );
        match guard(&what, read_frame(from)).await {
            Ok(None) => {}
            Ok(Some(got)) => panic!(
                "{what}: the {} sent another frame instead\n  sent: {}",
                side.name(),
                describe(&got)
            ),
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

/// The bytes of `text`: two-digit hex numbers and `"quoted"` ASCII, separated by spaces.
fn parse_bytes(text: &str, line: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let Some((string, after)) = quoted.split_once('"') else {
                panic!("{DOC_PATH}, line {line}: an unterminated string");
            };
            assert!(
                string.is_ascii(),
                "{DOC_PATH}, line {line}: quoted text is ASCII"
            );
            bytes.extend_from_slice(string.as_bytes());
            rest = after;
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let token = &rest[..end];
            let byte = (token.len() == 2)
                .then(|| u8::from_str_radix(token, 16).ok())
                .flatten()
                .unwrap_or_else(|| {
                    panic!(
                        "{DOC_PATH}, line {line}: `{token}` is neither a hex byte nor a \"string\""
                    )
                });
            bytes.push(byte);
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    bytes
}

/// Reads one length-prefixed frame (prefix included); `None` at the end of the stream.
async fn read_frame(io: &mut DuplexStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut frame = vec![0u8; 4];
    if io.read(&mut frame[..1]).await? == 0 {
        return Ok(None);
    }
    io.read_exact(&mut frame[1..4]).await?;
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    frame.resize(4 + len, 0);
    io.read_exact(&mut frame[4..]).await?;
    Ok(Some(frame))
}

/// A frame as hex, and the message the runtime's decoder reads in it.
fn describe(frame: &[u8]) -> String {
    let mut text = String::new();
    for (i, byte) in frame.iter().enumerate() {
        if i == 4 {
            text.push_str("| ");
        }
        let _ = write!(text, "{byte:02x} ");
    }
    let message = match frame.get(4..) {
        Some(message) => match __fuzz::decode(message) {
            Ok(decoded) => format!("{decoded:?}"),
            Err(err) => format!("not a message: {err}"),
        },
        None => "not a frame".to_string(),
    };
    format!("{}\n            = {message}", text.trim_end())
}

/// Awaits `fut`, failing with `what` if it hangs.
async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: nothing came within {HANG_GUARD:?} (hang guard)"),
    }
}
