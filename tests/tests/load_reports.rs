//! Server load reports (`rpc_core::load`): a server tells balancing clients how many calls
//! it runs and the utilization its service set, on the replies it sends; clients that did
//! not ask (single connections, peers of earlier versions) get nothing.

mod common;

use common::wire::{self, RawPeer, Wire};
use common::{guard, lab, lab_method, next_event, Event, Harness, Kind, LabClient, LabServer};
use rpc_core::balance::{Endpoint, LeastLoaded};
use rpc_core::load::ServerLoad;
use rpc_core::Server;

/// Starts `blocked` calls of `block` on `client` and waits until their handlers run.
async fn block_calls(
    client: &LabClient,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    blocked: u64,
) -> Vec<tokio::task::JoinHandle<Result<u64, rpc_core::RpcError>>> {
    let calls: Vec<_> = (0..blocked)
        .map(|tag| {
            let client = client.clone();
            tokio::spawn(async move { client.block(tag).await })
        })
        .collect();
    for _ in 0..blocked {
        assert!(matches!(next_event(events).await, Event::Started(_)));
    }
    calls
}

#[tokio::test]
async fn a_balancing_client_sees_the_load_its_server_reports_over_each_transport() {
    let (listener, connector) = rpc_transport::memory::listener();
    sees_reports(
        "memory",
        |server| tokio::spawn(server.serve(listener)),
        connector,
    )
    .await;

    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let connector = rpc_transport::tcp::connector(listener.local_addr().unwrap());
    sees_reports(
        "tcp",
        |server| tokio::spawn(server.serve(listener)),
        connector,
    )
    .await;

    let path = common::socket_path();
    let listener = rpc_transport::unix::bind(&path).await.unwrap();
    let connector = rpc_transport::unix::connector(&path);
    sees_reports(
        "unix",
        |server| tokio::spawn(server.serve(listener)),
        connector,
    )
    .await;
}

async fn sees_reports<K: rpc_core::Connect>(
    transport: &str,
    serve: impl FnOnce(Server) -> tokio::task::JoinHandle<std::io::Result<()>>,
    connector: K,
) {
    let (imp, mut events) = lab();
    let release = imp.release.clone();
    let server = Server::new().add_service(LabServer::new(imp));
    let reporter = server.load_reporter();
    reporter.set_utilization(0.25);
    let _server = serve(server);
    let client = LabClient::builder()
        .strategy(LeastLoaded::new())
        .balance([Endpoint::new("a", connector)]);

    let blocked = block_calls(&client, &mut events, 3).await;
    assert_eq!(reporter.calls_in_progress(), 3, "{transport}");
    // The reply to the first quick call carries the report; it is read before the reply
    // to the second.
    for _ in 0..2 {
        assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);
    }
    let stats = client.client().stats().expect("a balancing client");
    assert_eq!(
        stats.endpoints[0].reported,
        Some(ServerLoad {
            in_flight: 3,
            utilization: 0.25
        }),
        "{transport}"
    );

    release.notify_waiters();
    for call in blocked {
        guard(call).await.unwrap().unwrap();
    }
    assert_eq!(reporter.calls_in_progress(), 0, "{transport}");
}

/// Says `Hello` for `Lab` and announces `flags`.
async fn raw_client(harness: &mut Harness, flags: u32) -> RawPeer {
    let mut peer = RawPeer(harness.connect().await);
    peer.send(&wire::hello(&LabClient::DESCRIPTOR)).await;
    peer.send(&Wire::Credit {
        id: u64::MAX,
        items: flags,
    })
    .await;
    peer
}

#[tokio::test]
async fn only_a_client_that_asks_gets_reports_and_they_follow_the_replies() {
    for kind in [Kind::MemoryListener, Kind::Tcp, Kind::Unix] {
        let (imp, _events) = lab();
        let server = Server::new().add_service(LabServer::new(imp));
        server.load_reporter().set_utilization(0.5);
        let mut harness = Harness::start(kind, server).await;

        for (flags, reported) in [
            (wire::BYTE_CREDIT | wire::ITEM_RUNS, false),
            (0, false),
            (
                wire::BYTE_CREDIT | wire::ITEM_RUNS | wire::LOAD_REPORTS,
                true,
            ),
            (wire::LOAD_REPORTS, true),
        ] {
            let mut peer = raw_client(&mut harness, flags).await;
            let add = lab_method("add");
            // A report goes out in the same write as the reply; a ping sent once the reply
            // is here is answered after it, so what comes before the pong is all the reply
            // brought.
            peer.send(&wire::request(1, add, None, wire::body(&(2i64, 2i64))))
                .await;
            assert_eq!(peer.expect_ok::<i64>(1).await, 4);
            peer.send(&Wire::Ping { nonce: 9 }).await;
            let report = Wire::Load {
                in_flight: 0,
                utilization: 5_000,
            };
            let expected = if reported { vec![report] } else { vec![] };
            assert_eq!(
                until_pong(&mut peer, 9).await,
                expected,
                "{kind:?} {flags:#x}"
            );

            // Unchanged figures are not reported again.
            peer.send(&wire::request(2, add, None, wire::body(&(3i64, 3i64))))
                .await;
            assert_eq!(peer.expect_ok::<i64>(2).await, 6);
            peer.send(&Wire::Ping { nonce: 10 }).await;
            assert_eq!(until_pong(&mut peer, 10).await, [], "{kind:?} {flags:#x}");
        }
    }
}

/// The messages before `Pong { nonce }`.
async fn until_pong(peer: &mut RawPeer, nonce: u64) -> Vec<Wire> {
    let mut got = Vec::new();
    loop {
        match peer.recv().await {
            Some(Wire::Pong { nonce: n }) if n == nonce => return got,
            Some(message) => got.push(message),
            None => panic!("the server closed the connection after {got:?}"),
        }
    }
}
