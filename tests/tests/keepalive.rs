//! Keepalive pings: a connection whose peer has silently gone (no FIN, no RST: a dead host,
//! a broken path) is noticed and closed, on the client and on the server, while a live idle
//! connection stays usable. Tests observe the pings on the wire (by counting frames through a
//! wrapping transport, or by playing the peer by hand) rather than by waiting for time.

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::wire::{self, Status};
use common::{connected_pair, guard, lab, next_event, Event, Harness, Kind, LabClient, KINDS};
use futures::future::join_all;
use futures::{Sink, SinkExt, Stream, StreamExt};
use rpc_core::{ErrorKind, Keepalive, Listener, Server, Transport};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use common::wire::Wire as Frame;

/// The first byte of a frame is its message's tag (a varint, one byte for these).
const HELLO: u8 = 0;
const REQUEST: u8 = 1;
const PING: u8 = 8;
const PONG: u8 = 9;

fn decode(frame: &[u8]) -> Frame {
    let (message, used) = bincode::decode_from_slice::<Frame, _>(frame, wire::config())
        .unwrap_or_else(|e| panic!("undecodable frame {frame:?}: {e}"));
    assert_eq!(used, frame.len(), "trailing bytes in {frame:?}");
    message
}

/// The next frame from `transport`, less the peer's stream-credit announcements (a `Credit`
/// for the connection's id, see docs/protocol.md), which say nothing about keepalive.
async fn next_frame<T: Stream<Item = io::Result<Bytes>> + Unpin>(
    transport: &mut T,
) -> Option<io::Result<Bytes>> {
    loop {
        let frame = transport.next().await;
        match &frame {
            Some(Ok(bytes)) if matches!(decode(bytes), Frame::Credit { id: u64::MAX, .. }) => {
                continue
            }
            _ => return frame,
        }
    }
}

fn encode(frame: &Frame) -> Bytes {
    wire::encode(frame)
}

/// Frames sent and received through a [`Counted`] transport, by message tag.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    sent: [usize; 16],
    received: [usize; 16],
}

fn tag(frame: &[u8]) -> usize {
    frame.first().map_or(15, |&t| usize::from(t).min(15))
}

/// A transport that counts the frames going through it, by message tag.
struct Counted<T> {
    inner: T,
    tally: watch::Sender<Tally>,
}

impl<T> Counted<T> {
    fn new(inner: T) -> (Counted<T>, watch::Receiver<Tally>) {
        let (tally, rx) = watch::channel(Tally::default());
        (Counted { inner, tally }, rx)
    }
}

impl<T: Transport> Stream for Counted<T> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let t = tag(frame);
            self.tally.send_modify(|tally| tally.received[t] += 1);
        }
        polled
    }
}

impl<T: Transport> Sink<rpc_core::Frame> for Counted<T> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: rpc_core::Frame) -> io::Result<()> {
        let t = frame.parts().next().map_or(0, |head| tag(head));
        self.tally.send_modify(|tally| tally.sent[t] += 1);
        Pin::new(&mut self.inner).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Waits until the tally satisfies `cond`.
async fn wait_for(tally: &mut watch::Receiver<Tally>, cond: impl FnMut(&Tally) -> bool) {
    guard(tally.wait_for(cond))
        .await
        .expect("the connection was dropped");
}

/// Waits until `cond` holds, checking it every few milliseconds (polling a condition, not
/// waiting for a time).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(common::HANG_GUARD, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "hang guard: never {what}");
}

/// A keepalive short enough for a test: ping after 100 ms of silence, give up 200 ms later.
fn short() -> Keepalive {
    Keepalive::new(Duration::from_millis(100), Duration::from_millis(200))
}

/// A keepalive that pings often and gives a live peer ample time to answer.
///
/// Not longer: after an answered ping the next one comes only `interval + timeout` later
/// (see `after_a_pong_the_next_ping_comes_one_interval_of_silence_later`), and the tests that
/// count pings would take that long.
fn chatty() -> Keepalive {
    Keepalive::new(Duration::from_millis(20), Duration::from_secs(2))
}

/// Plays a dead peer: reads and drops every frame, never writes, never closes; returns the
/// tags of what it read once the other side closes the connection.
async fn swallow<T: Transport>(mut transport: T) -> Vec<u8> {
    let mut tags = Vec::new();
    while let Some(Ok(frame)) = transport.next().await {
        tags.push(frame[0]);
    }
    tags
}

fn lab_server() -> (Server, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (imp, events) = lab();
    (
        Server::new().add_service(common::LabServer::new(imp)),
        events,
    )
}

fn assert_presumed_dead(err: &rpc_core::RpcError, kind: Kind) {
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{kind:?}: {err}");
    assert!(err.to_string().contains("keepalive"), "{kind:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_presumes_a_silent_server_dead() {
    join_all(KINDS.map(|kind| async move {
        let (client_end, server_end) = connected_pair(kind).await;
        let silent = tokio::spawn(swallow(server_end));
        let client = LabClient::builder()
            .keepalive(Some(short()))
            .transport(client_end);
        // No timeout: without keepalive this call would wait forever.
        let err = guard(client.add(1, 2)).await.unwrap_err();
        assert_presumed_dead(&err, kind);
        // The connection is gone for good: later calls fail at once.
        let err = guard(client.add(1, 2)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{kind:?}: {err}");
        // The silent peer saw the Hello, the request and a ping, then the client closed.
        let tags = guard(silent).await.unwrap();
        assert_eq!(tags.first(), Some(&HELLO), "{kind:?}: {tags:?}");
        assert!(tags.contains(&REQUEST), "{kind:?}: {tags:?}");
        assert!(tags.contains(&PING), "{kind:?}: {tags:?}");
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_presumes_a_dead_tcp_host_dead() {
    // A raw socket that accepts, reads whatever comes, never writes and never closes: what a
    // client sees of a host that died after the connection was made.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dead_host = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    });
    let client = LabClient::builder()
        .keepalive(Some(short()))
        .transport(rpc_transport::tcp::connect(addr).await.unwrap());
    let err = guard(client.div(1, 1)).await.unwrap_err();
    assert_presumed_dead(&err, Kind::Tcp);
    // The client closed its end: the dead host reads EOF after the Hello and the request.
    let received = guard(dead_host).await.unwrap();
    assert!(received.len() > 8, "{received:?}");
}

/// Accepts every connection from `listener` and plays a dead peer on each.
async fn black_hole<L: Listener>(mut listener: L) {
    while let Some(Ok(transport)) = listener.accept().await {
        tokio::spawn(swallow(transport));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_presumes_a_silent_server_dead() {
    for kind in [Kind::MemoryListener, Kind::Tcp] {
        let client = match kind {
            Kind::MemoryListener => {
                let (listener, connector) = rpc_transport::memory::listener();
                tokio::spawn(black_hole(listener));
                LabClient::builder()
                    .keepalive(Some(short()))
                    .connect(connector)
            }
            _ => {
                let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(black_hole(listener));
                LabClient::builder()
                    .keepalive(Some(short()))
                    .connect(rpc_transport::tcp::connector(addr))
            }
        };
        // `add` is not idempotent: it is not retried, and fails with what happened.
        let err = guard(client.add(1, 2)).await.unwrap_err();
        assert_presumed_dead(&err, kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_pings_and_its_connection_stays_usable() {
    // The transports side by side: each waits for two rounds of pings.
    join_all(KINDS.map(|kind| async move {
        let (server, _events) = lab_server();
        let mut harness = Harness::start(kind, server).await;
        let (transport, mut tally) = Counted::new(harness.connect().await);
        let client = LabClient::builder()
            .keepalive(Some(chatty()))
            .transport(transport);
        assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3, "{kind:?}");
        // Idle: the client pings, the server answers each ping.
        wait_for(&mut tally, |t| {
            t.sent[PING as usize] >= 2 && t.received[PONG as usize] >= 2
        })
        .await;
        assert_eq!(guard(client.add(2, 3)).await.unwrap(), 5, "{kind:?}");
        assert_eq!(guard(client.div(9, 3)).await.unwrap(), Ok(3), "{kind:?}");
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_keepalive_answers_the_servers_pings() {
    join_all(KINDS.map(|kind| async move {
        let (server, _events) = lab_server();
        let stats = server.stats();
        let mut harness = Harness::start(kind, server.keepalive(Some(chatty()))).await;
        let (transport, mut tally) = Counted::new(harness.connect().await);
        let client = LabClient::builder().keepalive(None).transport(transport);
        assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3, "{kind:?}");
        wait_for(&mut tally, |t| {
            t.received[PING as usize] >= 2 && t.sent[PONG as usize] >= 2
        })
        .await;
        assert_eq!(tally.borrow().sent[PING as usize], 0, "{kind:?}");
        assert_eq!(guard(client.add(2, 3)).await.unwrap(), 5, "{kind:?}");
        assert_eq!(stats.open_connections(), 1, "{kind:?}");
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_outlives_many_keepalive_rounds_on_both_sides() {
    join_all(KINDS.map(|kind| async move {
        let (imp, mut events) = lab();
        let release = imp.release.clone();
        let server = Server::new()
            .add_service(common::LabServer::new(imp))
            .keepalive(Some(chatty()));
        let mut harness = Harness::start(kind, server).await;
        let (transport, mut tally) = Counted::new(harness.connect().await);
        let client = LabClient::builder()
            .keepalive(Some(chatty()))
            .transport(transport);
        // No frame of the call moves while its handler waits: only pings and pongs do.
        let slow = tokio::spawn(std::future::IntoFuture::into_future(client.block(1)));
        assert_eq!(next_event(&mut events).await, Event::Started(1), "{kind:?}");
        wait_for(&mut tally, |t| {
            t.sent[PING as usize] >= 2
                && t.received[PONG as usize] >= 2
                && t.received[PING as usize] >= 2
                && t.sent[PONG as usize] >= 2
        })
        .await;
        assert!(!slow.is_finished(), "{kind:?}");
        release.notify_one();
        assert_eq!(guard(slow).await.unwrap().unwrap(), 1, "{kind:?}");
        assert_eq!(
            next_event(&mut events).await,
            Event::Finished(1),
            "{kind:?}"
        );
    }))
    .await;
}

/// Says `Hello` for `Lab` on a raw transport and starts `block(tag)` as request 1.
async fn hello_and_block(raw: &mut common::AnyTransport, tag: u64) {
    raw.send(rpc_core::Frame::from(wire::encode(&wire::hello(
        &LabClient::DESCRIPTOR,
    ))))
    .await
    .unwrap();
    raw.send(rpc_core::Frame::from(wire::encode(&wire::request(
        1,
        common::lab_method("block"),
        None,
        wire::body(&(tag,)),
    ))))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closes_the_connection_of_a_client_that_went_silent() {
    // Short, but with a second for the well-behaved client to answer each ping.
    let keepalive = Keepalive::new(Duration::from_millis(50), Duration::from_secs(1));
    join_all(KINDS.map(|kind| async move {
        let (server, mut events) = lab_server();
        let stats = server.stats();
        let mut harness = Harness::start(kind, server.keepalive(Some(keepalive))).await;

        // A well-behaved client, idle but answering pings, on the same server.
        let good = if harness.multi() {
            let (transport, tally) = Counted::new(harness.connect().await);
            let client = LabClient::builder().keepalive(None).transport(transport);
            assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3, "{kind:?}");
            Some((client, tally))
        } else {
            None
        };

        // A client that says Hello, starts a call, and then never sends another frame.
        let mut raw = harness.connect().await;
        hello_and_block(&mut raw, 5).await;
        assert_eq!(next_event(&mut events).await, Event::Started(5), "{kind:?}");
        let mut received = Vec::new();
        while let Some(Ok(frame)) = guard(next_frame(&mut raw)).await {
            received.push(decode(&frame));
        }
        assert!(
            received.iter().any(|f| matches!(f, Frame::Ping { .. })),
            "{kind:?}: {received:?}"
        );
        assert!(
            received
                .iter()
                .all(|f| matches!(f, Frame::Ping { .. } | Frame::Goodbye { .. })),
            "{kind:?}: {received:?}"
        );
        // Its handler is dropped with the connection, and the connection is no longer counted.
        assert_eq!(next_event(&mut events).await, Event::Dropped(5), "{kind:?}");
        let expected = usize::from(good.is_some());
        until("the silent connection was closed", || {
            stats.open_connections() == expected
        })
        .await;

        match good {
            Some((client, mut tally)) => {
                // The good client was pinged too, answered, and carries on.
                wait_for(&mut tally, |t| {
                    t.received[PING as usize] >= 1 && t.sent[PONG as usize] >= 1
                })
                .await;
                assert_eq!(guard(client.add(2, 3)).await.unwrap(), 5, "{kind:?}");
                assert_eq!(stats.open_connections(), 1, "{kind:?}");
                drop(client);
                until("the good connection was closed", || {
                    stats.open_connections() == 0
                })
                .await;
            }
            None => {
                // `serve_connection` ends, saying why.
                let err = guard(harness.server).await.unwrap().unwrap_err();
                assert!(err.to_string().contains("keepalive"), "{kind:?}: {err}");
            }
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_that_answers_pings_is_kept() {
    join_all(KINDS.map(|kind| async move {
        let (server, _events) = lab_server();
        let stats = server.stats();
        let mut harness = Harness::start(kind, server.keepalive(Some(chatty()))).await;
        let mut raw = harness.connect().await;
        raw.send(rpc_core::Frame::from(wire::encode(&wire::hello(
            &LabClient::DESCRIPTOR,
        ))))
        .await
        .unwrap();
        // Answer pings, and nothing else, until well past the keepalive's timeout.
        let mut nonces = Vec::new();
        while nonces.len() < 2 {
            let frame = guard(next_frame(&mut raw))
                .await
                .expect("the server closed a connection that answers its pings")
                .unwrap();
            match decode(&frame) {
                Frame::Ping { nonce } => {
                    nonces.push(nonce);
                    raw.send(rpc_core::Frame::from(encode(&Frame::Pong { nonce })))
                        .await
                        .unwrap();
                }
                other => panic!("{kind:?}: unexpected {other:?}"),
            }
        }
        let mut distinct = nonces.clone();
        distinct.dedup();
        assert_eq!(distinct, nonces, "{kind:?}: each ping has a fresh nonce");
        assert_eq!(stats.open_connections(), 1, "{kind:?}");
        // The connection still serves calls.
        let add = common::lab_method("add");
        raw.send(rpc_core::Frame::from(wire::encode(&wire::request(
            7,
            add,
            None,
            wire::body(&(20i64, 22i64)),
        ))))
        .await
        .unwrap();
        loop {
            match decode(&guard(next_frame(&mut raw)).await.unwrap().unwrap()) {
                Frame::Ping { nonce } => raw
                    .send(rpc_core::Frame::from(encode(&Frame::Pong { nonce })))
                    .await
                    .unwrap(),
                Frame::Response {
                    id: 7,
                    status: Status::Ok,
                    body,
                } => {
                    assert_eq!(wire::decode_body::<i64>(&body), 42, "{kind:?}");
                    break;
                }
                other => panic!("{kind:?}: unexpected {other:?}"),
            }
        }
    }))
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_server_without_keepalive_never_pings() {
    // Over memory in virtual time (it advances while every task is idle): the client pings
    // every few (virtual) seconds; the server only answers.
    let (server, _events) = lab_server();
    let (client_end, server_end) = rpc_transport::memory::pair();
    let (server_end, mut server_tally) = Counted::new(server_end);
    tokio::spawn(server.keepalive(None).serve_connection(server_end));
    let (client_end, mut tally) = Counted::new(client_end);
    let client = LabClient::builder()
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
        )))
        .transport(client_end);
    assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);
    wait_for(&mut tally, |t| {
        t.sent[PING as usize] >= 3 && t.received[PONG as usize] >= 3
    })
    .await;
    wait_for(&mut server_tally, |t| t.sent[PONG as usize] >= 3).await;
    assert_eq!(server_tally.borrow().sent[PING as usize], 0);
    assert_eq!(tally.borrow().received[PING as usize], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_answers_each_ping_with_its_nonce() {
    for kind in KINDS {
        let (client_end, mut server_end) = connected_pair(kind).await;
        let client = LabClient::builder().keepalive(None).transport(client_end);
        let call = tokio::spawn(std::future::IntoFuture::into_future(client.add(1, 1)));
        // The Hello and the request come first.
        let hello = decode(&guard(next_frame(&mut server_end)).await.unwrap().unwrap());
        assert!(matches!(hello, Frame::Hello { .. }), "{kind:?}: {hello:?}");
        let request = decode(&guard(next_frame(&mut server_end)).await.unwrap().unwrap());
        let Frame::Request { id, .. } = request else {
            panic!("{kind:?}: expected a request, got {request:?}")
        };
        for nonce in [0, 12_345, u64::MAX] {
            server_end
                .send(rpc_core::Frame::from(encode(&Frame::Ping { nonce })))
                .await
                .unwrap();
            let pong = decode(&guard(next_frame(&mut server_end)).await.unwrap().unwrap());
            assert_eq!(pong, Frame::Pong { nonce }, "{kind:?}");
        }
        // Pings do not disturb the call waiting for its response.
        server_end
            .send(rpc_core::Frame::from(encode(&Frame::Response {
                id,
                status: Status::Ok,
                body: wire::body(&2i64),
            })))
            .await
            .unwrap();
        assert_eq!(guard(call).await.unwrap().unwrap(), 2, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_pong_the_next_ping_comes_one_interval_of_silence_later() {
    // Virtual time (paused, advanced only when every task is idle) over memory: the instants
    // below are exact, not measurements.
    let interval = Duration::from_secs(10);
    let timeout = Duration::from_secs(1000);
    let (client_end, mut server_end) = rpc_transport::memory::pair();
    let _client = LabClient::builder()
        .keepalive(Some(Keepalive::new(interval, timeout)))
        .transport(client_end);
    let hello = decode(&next_frame(&mut server_end).await.unwrap().unwrap());
    assert!(matches!(hello, Frame::Hello { .. }), "{hello:?}");
    let mut pings = Vec::new();
    while pings.len() < 3 {
        match decode(&next_frame(&mut server_end).await.unwrap().unwrap()) {
            Frame::Ping { nonce } => {
                let at = tokio::time::Instant::now();
                server_end
                    .send(rpc_core::Frame::from(encode(&Frame::Pong { nonce })))
                    .await
                    .unwrap();
                pings.push(at);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        // "Ping after `interval` of silence": the pong ends the silence, so the next ping is
        // due one interval after it (two at most, if the timer checks only once an interval).
        assert!(
            gap <= 2 * interval,
            "{gap:?} between pings answered at once"
        );
    }
}
