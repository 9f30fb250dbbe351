//! The connection-level bound on buffered stream data (`max_buffered_stream_bytes`, 32 MiB
//! by default, on servers and on clients): a peer that sends more stream items than the
//! receiver's consumers take, within each stream's credit but past the bound, gets those
//! streams failed with `Overloaded` and cancelled instead of buffered; a conforming peer
//! stays within the bound by itself and loses nothing.
//!
//! Per-stream credit alone bounds nothing per connection: 16 streams of a 32-item window of
//! 1 MiB items are 512 MiB, which is what the hostile peers here send.

mod common;

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::sync::Arc;

use bytes::Bytes;
use common::replica::eventually;
use common::wire::{self, Status, Wire};
use common::{connected_pair, guard, AnyTransport, Harness, Kind};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rpc_core::{service, ErrorKind, RpcError, Server, ServerStats, Streaming, STREAM_WINDOW};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Streams per test.
const STREAMS: u64 = 16;
/// The size of every item.
const ITEM: usize = 1 << 20;
/// The default `max_buffered_stream_bytes`.
const DEFAULT_LIMIT: usize = 32 << 20;
/// A small limit, to keep the hostile tests cheap.
const SMALL_LIMIT: usize = 8 << 20;

/// What a handler made of the stream it was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub items: u64,
    pub bytes: u64,
    /// The error that ended the stream, if one did: its kind and message.
    pub error: Option<String>,
}

#[service]
pub trait Buffers {
    /// Holds `chunks` unread until the test releases the handler, then reads it to its end.
    async fn hold(&self, tag: u64, chunks: Streaming<Vec<u8>>) -> Tally;
    /// `count` chunks of `size` bytes.
    async fn chunks(&self, count: u32, size: u32) -> Streaming<Vec<u8>>;
    async fn add(&self, a: u64, b: u64) -> u64;
}

#[derive(Clone)]
struct Impl {
    /// Each `hold` handler sends its tag once it runs (and holds its stream).
    started: mpsc::UnboundedSender<u64>,
    /// One permit per `hold` handler allowed to read its stream; none are given in the
    /// hostile tests, whose handlers never read.
    release: Arc<Semaphore>,
}

impl Buffers for Impl {
    async fn hold(&self, tag: u64, mut chunks: Streaming<Vec<u8>>) -> Tally {
        let _ = self.started.send(tag);
        let _permit = self
            .release
            .acquire()
            .await
            .expect("the release semaphore is never closed");
        let mut tally = Tally::default();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    tally.items += 1;
                    tally.bytes += chunk.len() as u64;
                }
                Err(err) => tally.error = Some(format!("{:?}: {}", err.kind(), err.message())),
            }
        }
        tally
    }

    async fn chunks(&self, count: u32, size: u32) -> Streaming<Vec<u8>> {
        Streaming::iter((0..count).map(move |i| vec![i as u8; size as usize]))
    }

    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// A fresh service, the receiver of its handlers' start reports, and the handlers' release.
fn buffers() -> (Impl, mpsc::UnboundedReceiver<u64>, Arc<Semaphore>) {
    let (started, reports) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    (
        Impl {
            started,
            release: Arc::clone(&release),
        },
        reports,
        release,
    )
}

/// The index of `Buffers`' method `name`, as raw requests name it.
fn method(name: &str) -> u32 {
    common::method_index(&BuffersClient::DESCRIPTOR, name)
}

/// One `StreamItem` frame of stream `id` carrying a `Vec<u8>` of [`ITEM`] bytes.
fn item_frame(id: u64) -> Bytes {
    wire::encode(&Wire::StreamItem {
        id,
        body: wire::body(&vec![7u8; ITEM]),
    })
}

/// Splits a raw peer's connection: the half it writes with, and every message it receives,
/// decoded, on a channel fed by a task of its own, so that the other side's writes never
/// wait for this peer to read. The connection closes once both the writing half and the
/// receiver are dropped.
fn split_peer(
    transport: AnyTransport,
) -> (
    SplitSink<AnyTransport, rpc_core::Frame>,
    mpsc::UnboundedReceiver<Wire>,
) {
    let (sink, mut frames): (_, SplitStream<AnyTransport>) = transport.split();
    let (heard, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = frames.next() => frame,
                () = heard.closed() => return,
            };
            let Some(Ok(frame)) = frame else {
                return;
            };
            let (message, _) = bincode::decode_from_slice::<Wire, _>(&frame, wire::config())
                .expect("the peer sent an undecodable frame");
            if heard.send(message).is_err() {
                return;
            }
        }
    });
    (sink, received)
}

/// Reads `received` until the `Pong` of `nonce`, collecting the ids of the `Cancel`s before
/// it (and failing on anything but cancels, credit, pings and pongs).
async fn cancels_until_pong(
    received: &mut mpsc::UnboundedReceiver<Wire>,
    nonce: u64,
) -> BTreeSet<u64> {
    let mut cancelled = BTreeSet::new();
    guard(async {
        loop {
            match received.recv().await {
                Some(Wire::Pong { nonce: got }) if got == nonce => return,
                Some(Wire::Cancel { id }) => {
                    cancelled.insert(id);
                }
                Some(Wire::Credit { .. } | Wire::Ping { .. } | Wire::Pong { .. }) => {}
                other => panic!("expected cancels, credit and a Pong, got {other:?}"),
            }
        }
    })
    .await;
    cancelled
}

/// Whole `StreamItem` frames that fit within `limit` when every one is buffered: a receiver
/// whose consumers take nothing refuses an item only when it would cross the limit, so it
/// ends up holding at least this much minus one frame, and never more than the limit.
fn frame_len() -> usize {
    item_frame(1).len()
}

/// A hostile client: says `Hello` and starts 16 calls of `hold` (whose handlers never read),
/// then sends each call's whole window of 1 MiB items at once, 512 MiB in all, then a
/// `Ping`. The server reads frames in order: once the `Pong` is back, it has handled every
/// item. It must have kept at most `limit` bytes of them, failed (and cancelled) the streams
/// whose items it could not keep, and let go of what it kept once the client is gone.
async fn a_hostile_client_cannot_make_the_server_buffer_past(limit: usize, server: Server) {
    let (imp, mut started, _release) = buffers();
    let server = server.add_service(BuffersServer::new(imp));
    let stats: ServerStats = server.stats();
    let mut harness = Harness::start(Kind::Tcp, server).await;
    let (mut sink, mut received) = split_peer(harness.connect().await);

    sink.feed(rpc_core::Frame::from(wire::encode(&wire::hello(
        &BuffersClient::DESCRIPTOR,
    ))))
    .await
    .expect("send Hello");
    // A generous deadline: nothing here may expire.
    let timeout_us = Some(600_000_000);
    for id in 1..=STREAMS {
        let request = wire::request(id, method("hold"), timeout_us, wire::body(&(id,)));
        sink.feed(rpc_core::Frame::from(wire::encode(&request)))
            .await
            .expect("send a request");
    }
    sink.flush().await.expect("flush");
    for _ in 1..=STREAMS {
        guard(started.recv()).await.expect("a handler runs");
    }
    for id in 1..=STREAMS {
        let frame = item_frame(id);
        // Within the stream's credit: only a bound on the connection stops these.
        for _ in 0..STREAM_WINDOW {
            guard(sink.send(rpc_core::Frame::from(frame.clone())))
                .await
                .expect("send an item");
        }
    }
    guard(sink.send(rpc_core::Frame::from(wire::encode(&Wire::Ping {
        nonce: 1,
    }))))
    .await
    .expect("send a Ping");
    let mut cancelled = cancels_until_pong(&mut received, 1).await;
    let buffered = stats.buffered_stream_bytes();
    // One more round trip: a `Cancel` the server decided on before the first `Ping` but
    // queued after its `Pong` (in the same pass) is out before the second `Pong`.
    guard(sink.send(rpc_core::Frame::from(wire::encode(&Wire::Ping {
        nonce: 2,
    }))))
    .await
    .expect("send a Ping");
    cancelled.extend(cancels_until_pong(&mut received, 2).await);

    assert!(
        buffered <= limit,
        "the server buffers {buffered} bytes of stream items, more than its limit of {limit}"
    );
    assert!(
        buffered + frame_len() > limit,
        "the server buffers only {buffered} bytes of stream items with a limit of {limit}: it \
         refused items that fitted"
    );
    // Each stream's window alone (32 items of over 1 MiB) exceeds either limit, so every
    // stream had an item refused.
    let all: BTreeSet<u64> = (1..=STREAMS).collect();
    assert_eq!(
        cancelled, all,
        "the server must cancel every stream it could not buffer (limit {limit})"
    );

    // The held items go with the connection.
    drop(sink);
    drop(received);
    eventually(|| stats.buffered_stream_bytes() == 0 && stats.open_connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_cannot_make_the_server_buffer_past_a_small_limit() {
    a_hostile_client_cannot_make_the_server_buffer_past(
        SMALL_LIMIT,
        Server::new().max_buffered_stream_bytes(SMALL_LIMIT),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_cannot_make_the_server_buffer_past_the_default_limit() {
    a_hostile_client_cannot_make_the_server_buffer_past(DEFAULT_LIMIT, Server::new()).await;
}

/// A hostile server: answers each of 16 calls of `chunks` with a whole window of 1 MiB items
/// and its end, without waiting for credit, then sends a `Ping`. Reports once the `Pong` is
/// back (the client answers it after handling every frame before it), then keeps reading
/// until the client closes. Returns the ids of the requests and those of the `Cancel`s.
async fn hostile_server(
    transport: AnyTransport,
    done: oneshot::Sender<()>,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut sink, mut received) = split_peer(transport);
    match guard(received.recv()).await {
        Some(Wire::Hello { .. }) => {}
        other => panic!("expected Hello, got {other:?}"),
    }
    let (mut requested, mut cancelled) = (BTreeSet::new(), BTreeSet::new());
    while (requested.len() as u64) < STREAMS {
        match guard(received.recv()).await {
            Some(Wire::Request { id, method: m, .. }) => {
                assert_eq!(m, method("chunks"), "a request of another method");
                requested.insert(id);
                let frame = item_frame(id);
                for _ in 0..STREAM_WINDOW {
                    sink.feed(rpc_core::Frame::from(frame.clone()))
                        .await
                        .expect("send an item");
                }
                let end = Wire::StreamEnd {
                    id,
                    status: Status::Ok,
                };
                sink.feed(rpc_core::Frame::from(wire::encode(&end)))
                    .await
                    .expect("send the end");
                sink.flush().await.expect("flush");
            }
            Some(Wire::Cancel { id }) => {
                cancelled.insert(id);
            }
            Some(Wire::Credit { .. } | Wire::Ping { .. } | Wire::Pong { .. }) => {}
            other => panic!("expected requests, got {other:?}"),
        }
    }
    sink.send(rpc_core::Frame::from(wire::encode(&Wire::Ping {
        nonce: 1,
    })))
    .await
    .expect("send a Ping");
    cancelled.extend(cancels_until_pong(&mut received, 1).await);
    done.send(()).expect("the test waits for the server");
    // A cancel may come after the `Pong`: it is not the client's answer to anything.
    while let Some(message) = received.recv().await {
        if let Wire::Cancel { id } = message {
            cancelled.insert(id);
        }
    }
    (requested, cancelled)
}

/// How one received stream went: item bytes, and the error that ended it, if any.
async fn drain(mut stream: Streaming<Vec<u8>>) -> (usize, Option<RpcError>) {
    let mut bytes = 0;
    while let Some(item) = guard(stream.next()).await {
        match item {
            Ok(chunk) => {
                assert_eq!(chunk.len(), ITEM, "a torn item");
                bytes += chunk.len();
            }
            Err(err) => {
                assert!(
                    guard(stream.next()).await.is_none(),
                    "a stream went on after its error"
                );
                return (bytes, Some(err));
            }
        }
    }
    (bytes, None)
}

/// The client's side of the bound: against [`hostile_server`], a client whose consumers
/// read nothing until the server is done holds at most its limit of items, and fails (and
/// cancels) the streams past it with `Overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_cannot_make_the_client_buffer_past_its_limit() {
    for kind in [Kind::Tcp, Kind::MemoryPair] {
        let (client_end, server_end) = connected_pair(kind).await;
        let (done, server_done) = oneshot::channel();
        let server = tokio::spawn(hostile_server(server_end, done));
        let client = BuffersClient::builder()
            .max_buffered_stream_bytes(SMALL_LIMIT)
            .transport(client_end);

        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            streams.push(
                guard(client.chunks(STREAM_WINDOW, ITEM as u32))
                    .await
                    .expect("chunks"),
            );
        }
        guard(server_done)
            .await
            .expect("the hostile server stopped early");

        // Nothing was consumed before this: everything delivered was buffered at once.
        let mut delivered = 0;
        let mut overloaded = Vec::new();
        for (i, stream) in streams.into_iter().enumerate() {
            let (bytes, end) = drain(stream).await;
            delivered += bytes;
            match end {
                Some(err) => {
                    assert_eq!(err.kind(), ErrorKind::Overloaded, "{kind:?}: {err}");
                    assert!(
                        err.message().contains("max_buffered_stream_bytes"),
                        "{kind:?}: {err}"
                    );
                    overloaded.push(i);
                }
                None => panic!(
                    "{kind:?}: stream {i} ended well with {bytes} bytes, but no stream's \
                     window fits within the limit"
                ),
            }
        }
        assert!(
            delivered <= SMALL_LIMIT,
            "{kind:?}: {delivered} bytes of items were buffered, past the limit of {SMALL_LIMIT}"
        );
        assert!(
            delivered + 2 * frame_len() > SMALL_LIMIT,
            "{kind:?}: only {delivered} bytes of items were kept under a limit of {SMALL_LIMIT}"
        );
        assert_eq!(overloaded.len() as u64, STREAMS, "{kind:?}");

        drop(client);
        let (requested, cancelled) = guard(server).await.expect("the hostile server panicked");
        assert_eq!(
            cancelled, requested,
            "{kind:?}: the server must be told to stop every stream that failed"
        );
    }
}

/// Conforming peers at the default limit: a real client sending 16 streams of 40 items of 1
/// MiB to handlers that read nothing until all 16 run, and a real server sending 16 such
/// streams to a client that reads nothing until all are open. Senders keep within the
/// bound by themselves, so every item arrives and no stream fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforming_peers_lose_nothing_at_the_default_limit() {
    const ITEMS: u32 = 40;
    for kind in [Kind::Tcp, Kind::MemoryPair] {
        let (imp, mut started, release) = buffers();
        let server = Server::new().add_service(BuffersServer::new(imp));
        let stats = server.stats();
        let mut harness = Harness::start(kind, server).await;
        let client = BuffersClient::new(harness.connect().await);

        // Client streams.
        let calls: Vec<_> = (0..STREAMS)
            .map(|tag| {
                let chunks =
                    Streaming::new(futures::stream::iter(0..ITEMS).map(|i| vec![i as u8; ITEM]));
                tokio::spawn(client.hold(tag, chunks).into_future())
            })
            .collect();
        for _ in 0..STREAMS {
            guard(started.recv()).await.expect("a handler runs");
            let buffered = stats.buffered_stream_bytes();
            assert!(
                buffered <= DEFAULT_LIMIT,
                "{kind:?}: {buffered} bytes buffered"
            );
        }
        // Round trips let the connection carry what the senders may send unread.
        for i in 0..10 {
            assert_eq!(guard(client.add(i, 1)).await.expect("add"), i + 1);
            let buffered = stats.buffered_stream_bytes();
            assert!(
                buffered <= DEFAULT_LIMIT,
                "{kind:?}: {buffered} bytes buffered"
            );
        }
        release.add_permits(STREAMS as usize);
        for call in calls {
            let tally = guard(call)
                .await
                .expect("a call's task panicked")
                .unwrap_or_else(|err| panic!("{kind:?}: a client stream failed: {err}"));
            assert_eq!(
                tally,
                Tally {
                    items: u64::from(ITEMS),
                    bytes: u64::from(ITEMS) * ITEM as u64,
                    error: None,
                },
                "{kind:?}"
            );
        }

        // Server streams. Read at once, not one after the other: a stream's consumer may
        // need the others to take their items before its sender may send more.
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            streams.push(
                guard(client.chunks(ITEMS, ITEM as u32))
                    .await
                    .expect("chunks"),
            );
        }
        for i in 0..10 {
            assert_eq!(guard(client.add(i, 2)).await.expect("add"), i + 2);
        }
        let readers: Vec<_> = streams
            .into_iter()
            .map(|stream| tokio::spawn(drain(stream)))
            .collect();
        for reader in readers {
            let (bytes, end) = guard(reader).await.expect("a reader panicked");
            if let Some(err) = end {
                panic!("{kind:?}: a server stream failed: {err}");
            }
            assert_eq!(bytes, ITEMS as usize * ITEM, "{kind:?}");
        }
    }
}
