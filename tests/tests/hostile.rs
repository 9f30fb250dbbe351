//! Hostile and broken peers over real TCP: each offending connection gets a clear error or
//! is closed, the server's connection count returns to where it was, and a well-behaved
//! client on the same server sees no error.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::wire::{self, Status, Wire};
use common::{guard, lab, next_event, Event, LabClient, LabServer};
use rpc_core::{ErrorKind, Server, ServerStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    addr: std::net::SocketAddr,
    stats: ServerStats,
    good: LabClient,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

async fn setup(configure: impl FnOnce(Server) -> Server) -> Setup {
    let (imp, events) = lab();
    let server = configure(Server::new().add_service(LabServer::new(imp)));
    let stats = server.stats();
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let good = LabClient::new(rpc_transport::tcp::connect(addr).await.unwrap());
    assert_eq!(guard(good.add(1, 1)).await.unwrap(), 2);
    Setup {
        addr,
        stats,
        good,
        events,
    }
}

impl Setup {
    /// The good client still works, and only its connection is left open.
    async fn check_unharmed(&self) {
        assert_eq!(guard(self.good.add(20, 22)).await.unwrap(), 42);
        guard(async {
            while self.stats.open_connections() != 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}

/// Reads frames until the server closes the connection.
/// Every message the server sent until it closed, less its stream-credit announcement.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<Wire> {
    let mut all = Vec::new();
    guard(stream.read_to_end(&mut all)).await.unwrap();
    let mut frames = Vec::new();
    let mut rest = &all[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let (message, _) =
            bincode::decode_from_slice::<Wire, _>(&rest[4..4 + len], wire::config()).unwrap();
        if !matches!(message, Wire::Credit { id: u64::MAX, .. }) {
            frames.push(message);
        }
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "a partial frame at the end: {rest:?}");
    frames
}

fn framed(message: &Wire) -> Vec<u8> {
    let body = wire::encode(message);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn goodbye(frames: &[Wire]) -> (u8, String) {
    match frames.last() {
        Some(Wire::Goodbye { kind, message }) => (*kind, message.clone()),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
}

use common::lab_method as method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sent_to_the_port_is_refused_by_name() {
    let s = setup(|s| s).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    peer.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (kind, message) = goodbye(&read_until_closed(&mut peer).await);
    assert_eq!(kind, wire::PROTOCOL);
    assert!(message.contains("HTTP"), "{message}");
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_length_prefix_is_refused_before_buffering() {
    let s = setup(|s| s).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    peer.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let (kind, message) = goodbye(&read_until_closed(&mut peer).await);
    assert_eq!(kind, wire::PROTOCOL);
    assert!(message.contains("4294967295"), "{message}");
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_cut_short_then_closed_is_dropped() {
    let s = setup(|s| s).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    let hello = framed(&wire::hello(&LabClient::DESCRIPTOR));
    peer.write_all(&hello[..hello.len() / 2]).await.unwrap();
    peer.shutdown().await.unwrap();
    let frames = read_until_closed(&mut peer).await;
    assert!(frames.is_empty(), "{frames:?}");
    s.check_unharmed().await;

    // The same after a good Hello, in the middle of a request.
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    peer.write_all(&hello).await.unwrap();
    let request = framed(&wire::request(
        1,
        method("add"),
        None,
        wire::body(&(1i64, 2i64)),
    ));
    peer.write_all(&request[..request.len() - 1]).await.unwrap();
    peer.shutdown().await.unwrap();
    let _ = read_until_closed(&mut peer).await;
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_random_bytes_is_refused() {
    let s = setup(|s| s).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    let noise: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut frame = (noise.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&noise);
    peer.write_all(&frame).await.unwrap();
    let (kind, message) = goodbye(&read_until_closed(&mut peer).await);
    assert_eq!(kind, wire::PROTOCOL);
    assert!(message.contains("expected a Hello"), "{message}");
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_frame_with_an_undecodable_body_fails_only_that_call() {
    let s = setup(|s| s).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    peer.write_all(&framed(&wire::hello(&LabClient::DESCRIPTOR)))
        .await
        .unwrap();
    peer.write_all(&framed(&wire::request(
        1,
        method("add"),
        None,
        vec![0xff, 0xff],
    )))
    .await
    .unwrap();
    peer.write_all(&framed(&wire::request(
        2,
        method("add"),
        None,
        wire::body(&(2i64, 3i64)),
    )))
    .await
    .unwrap();
    peer.shutdown().await.unwrap();
    let frames = read_until_closed(&mut peer).await;
    assert!(
        matches!(
            &frames[0],
            Wire::Response {
                id: 1,
                status: Status::Error {
                    kind: wire::PROTOCOL,
                    ..
                },
                ..
            }
        ),
        "{frames:?}"
    );
    match &frames[1] {
        Wire::Response {
            id: 2,
            status: Status::Ok,
            body,
        } => {
            assert_eq!(wire::decode_body::<i64>(body), 5)
        }
        other => panic!("{other:?}"),
    }
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_is_closed_and_blocks_nobody() {
    let s = setup(|s| s.hello_timeout(Duration::from_millis(200))).await;
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // While it sits there, other clients connect and call.
    let other = LabClient::new(rpc_transport::tcp::connect(s.addr).await.unwrap());
    assert_eq!(guard(other.add(1, 2)).await.unwrap(), 3);
    drop(other);
    let (kind, message) = goodbye(&read_until_closed(&mut silent).await);
    assert_eq!(kind, wire::PROTOCOL);
    assert!(message.contains("no Hello"), "{message}");
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_before_the_answer_stops_its_handler() {
    let mut s = setup(|s| s).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    peer.write_all(&framed(&wire::hello(&LabClient::DESCRIPTOR)))
        .await
        .unwrap();
    peer.write_all(&framed(&wire::request(
        1,
        method("block"),
        None,
        wire::body(&(5u64,)),
    )))
    .await
    .unwrap();
    assert_eq!(next_event(&mut s.events).await, Event::Started(5));
    drop(peer);
    assert_eq!(next_event(&mut s.events).await, Event::Dropped(5));
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_servers_limit_closes_that_connection() {
    let s = setup(|s| s.max_frame_size(64 << 10)).await;
    let mut peer = TcpStream::connect(s.addr).await.unwrap();
    peer.write_all(&framed(&wire::hello(&LabClient::DESCRIPTOR)))
        .await
        .unwrap();
    peer.write_all(&(100_000u32).to_le_bytes()).await.unwrap();
    let (kind, message) = goodbye(&read_until_closed(&mut peer).await);
    assert_eq!(kind, wire::PROTOCOL);
    assert!(message.contains("100000"), "{message}");
    // Through the real client: the call fails with Protocol.
    let client = LabClient::new(rpc_transport::tcp::connect(s.addr).await.unwrap());
    let err = guard(client.echo(vec![7; 100_000])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    drop(client);
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_clients_limit_fails_the_client_with_protocol() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake_server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Announce a 100 MiB response, way past the client's 8 MiB limit.
        socket
            .write_all(&(100u32 << 20).to_le_bytes())
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    let client = LabClient::new(rpc_transport::tcp::connect(addr).await.unwrap());
    let err = guard(client.add(1, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("104857600"), "{err}");
    drop(client);
    guard(fake_server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_told_overloaded() {
    let s = setup(|s| s.max_connections(2)).await;
    let second = LabClient::new(rpc_transport::tcp::connect(s.addr).await.unwrap());
    assert_eq!(guard(second.add(1, 2)).await.unwrap(), 3);
    let third = LabClient::new(rpc_transport::tcp::connect(s.addr).await.unwrap());
    let err = guard(third.add(1, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    assert!(err.to_string().contains("max_connections"), "{err}");
    assert_eq!(s.stats.refused_connections(), 1);
    drop(second);
    drop(third);
    s.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_count_returns_to_zero() {
    let s = setup(|s| s).await;
    let clients: Vec<LabClient> = futures::future::join_all(
        (0..20)
            .map(|_| async { LabClient::new(rpc_transport::tcp::connect(s.addr).await.unwrap()) }),
    )
    .await;
    for c in &clients {
        assert_eq!(guard(c.add(1, 1)).await.unwrap(), 2);
    }
    assert_eq!(s.stats.open_connections(), 21);
    drop(clients);
    s.check_unharmed().await;
    let Setup { good, stats, .. } = s;
    drop(good);
    guard(async {
        while stats.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

#[allow(dead_code)]
fn _unused(_: Bytes) {}
