//! Connections through a real NATS server: servers `rpc_transport::nats::bind` a subject in a
//! queue group, clients reach one member by the subject alone.
//!
//! Each test starts its own `nats-server` (Debian's `nats-server`, or the one `NATS_BIN`
//! names) on a free loopback port, and kills it when done. Built only with the feature
//! `nats` of this crate (`cargo test --workspace --all-features`). Tests wait for conditions
//! under a hang guard; none sleeps to let something happen, and none asserts on timing.

#[path = "common/cuttable.rs"]
mod cuttable;

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rpc_core::{service, ErrorKind, Keepalive, Server, Streaming};
use rpc_examples::nats_process::{NatsProcess, StartError};
use rpc_transport::nats::{self, async_nats};

use cuttable::Cuttable;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Long enough never to fire on a slow, busy machine (NATS restarts included); short enough
/// that a hang fails the test instead of blocking the suite.
const HANG_GUARD: Duration = Duration::from_secs(60);
const SUBJECT: &str = "rpc-tests.depot";

async fn guard<F: std::future::IntoFuture>(fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .expect("hang guard: the operation did not complete")
}

/// Starts a nats-server for one test: the `nats-server` binary, or the one `NATS_BIN` names.
async fn start_nats(max_payload: Option<usize>) -> NatsProcess {
    let binary =
        std::env::var_os("NATS_BIN").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
    started(NatsProcess::start_with(binary, HANG_GUARD, max_payload).await)
}

fn started<T>(result: Result<T, StartError>) -> T {
    result.unwrap_or_else(|err| match err {
        err if err.is_not_installed() => {
            panic!(
                "the NATS tests need the `nats-server` binary, which was not found: install it \
                 with `apt-get install nats-server` (or set NATS_BIN to its path)"
            )
        }
        err => panic!("{err}"),
    })
}

async fn nats_client(url: &str) -> async_nats::Client {
    guard(async_nats::connect(url))
        .await
        .unwrap_or_else(|err| panic!("connecting to NATS at {url}: {err}"))
}

// ---------------------------------------------------------------------------------------
// The service

#[service]
pub trait Depot {
    /// The member's name.
    #[rpc(idempotent)]
    async fn name(&self) -> String;
    /// On a holding member, waits forever (reporting `Started` and, when dropped,
    /// `Dropped`); elsewhere, answers the member's name.
    #[rpc(idempotent)]
    async fn hold_idempotent(&self, tag: u64) -> String;
    /// As `hold_idempotent`, but a call of it is not retried.
    async fn hold(&self, tag: u64) -> String;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    async fn count(&self, up_to: u32) -> Streaming<u32>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Started(u64),
    Dropped(u64),
}

#[derive(Clone)]
struct Member {
    name: String,
    holds: bool,
    events: mpsc::UnboundedSender<Event>,
}

struct DropReport(mpsc::UnboundedSender<Event>, u64);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send(Event::Dropped(self.1));
    }
}

impl Member {
    async fn held(&self, tag: u64) -> String {
        if !self.holds {
            return self.name.clone();
        }
        let _report = DropReport(self.events.clone(), tag);
        let _ = self.events.send(Event::Started(tag));
        std::future::pending::<String>().await
    }
}

impl Depot for Member {
    async fn name(&self) -> String {
        self.name.clone()
    }

    async fn hold_idempotent(&self, tag: u64) -> String {
        self.held(tag).await
    }

    async fn hold(&self, tag: u64) -> String {
        self.held(tag).await
    }

    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    async fn count(&self, up_to: u32) -> Streaming<u32> {
        Streaming::iter(0..up_to)
    }
}

/// A member of the group serving [`SUBJECT`], with its own connection to NATS.
struct Running {
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(url: &str, name: &str, holds: bool) -> Running {
    serve_with(url, name, holds, Server::new()).await
}

async fn serve_with(url: &str, name: &str, holds: bool, server: Server) -> Running {
    let client = nats_client(url).await;
    let listener = guard(nats::bind(&client, SUBJECT)).await.expect("bind");
    let (tx, events) = mpsc::unbounded_channel();
    let member = Member {
        name: name.to_owned(),
        holds,
        events: tx,
    };
    let server = server.add_service(DepotServer::new(member));
    let task = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    Running { events, task }
}

/// A reconnecting client of the subject, with keepalive pings after a quarter second of
/// silence, so that a vanished member is found out quickly.
fn depot_client(nats: &async_nats::Client) -> DepotClient {
    DepotClient::builder()
        .keepalive(Some(Keepalive::new(
            Duration::from_millis(250),
            Duration::from_secs(5),
        )))
        .wait_for_ready(true)
        .connect(nats::connector(nats, SUBJECT))
}

// ---------------------------------------------------------------------------------------
// Everything above the transport works unchanged

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_streams_deadlines_and_cancellation_work_over_nats() {
    let server = start_nats(None).await;
    let mut member = serve(&server.url(), "a", true).await;
    let nats = nats_client(&server.url()).await;
    let client = depot_client(&nats);

    assert_eq!(guard(client.name()).await.unwrap(), "a");
    // Many calls at once, multiplexed over the one connection.
    let calls = (0..200u32).map(|i| {
        let client = client.clone();
        async move { client.echo(vec![i as u8; i as usize]).await }
    });
    for (i, echoed) in guard(futures::future::join_all(calls))
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(echoed.unwrap(), vec![i as u8; i]);
    }
    // A server stream, in order.
    let items: Vec<u32> = guard(async {
        let stream = client.count(10_000).await.unwrap();
        stream.map(|item| item.unwrap()).collect::<Vec<_>>().await
    })
    .await;
    assert_eq!(items, (0..10_000).collect::<Vec<_>>());
    // A deadline: the call fails, and the handler is cancelled on the server.
    let err = guard(client.hold(1).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert_eq!(guard(member.events.recv()).await, Some(Event::Started(1)));
    assert_eq!(guard(member.events.recv()).await, Some(Event::Dropped(1)));
    // Cancellation: a call dropped by the client is dropped on the server.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.hold(2).await }
    });
    assert_eq!(guard(member.events.recv()).await, Some(Event::Started(2)));
    call.abort();
    assert_eq!(guard(member.events.recv()).await, Some(Event::Dropped(2)));
    // The connection is still good.
    assert_eq!(guard(client.name()).await.unwrap(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_max_payload_are_split_and_joined() {
    // A NATS that takes messages of at most 16 KiB.
    let server = start_nats(Some(16 * 1024)).await;
    let _member = serve(&server.url(), "a", false).await;
    let nats = nats_client(&server.url()).await;
    assert_eq!(nats.max_payload(), 16 * 1024);
    let client = depot_client(&nats);

    for len in [0, 1, 16 * 1024 - 5, 16 * 1024, 100_000, 3 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let echoed = guard(client.echo(data.clone())).await.unwrap();
        assert!(echoed == data, "a {len}-byte echo came back different");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_receivers_limit_fails_that_connection_only() {
    let server = start_nats(Some(16 * 1024)).await;
    let _member = serve_with(
        &server.url(),
        "a",
        false,
        Server::new().max_frame_size(64 * 1024),
    )
    .await;
    let nats = nats_client(&server.url()).await;
    let client = depot_client(&nats);

    // The server says why before it closes the connection, as over any transport.
    let err = guard(client.echo(vec![7; 200_000])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    // The server serves the next connection.
    assert_eq!(
        guard(client.echo(vec![7; 1000])).await.unwrap(),
        vec![7; 1000]
    );
}

// ---------------------------------------------------------------------------------------
// Clear errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_subject_nobody_serves_is_refused_clearly() {
    let server = start_nats(None).await;
    let nats = nats_client(&server.url()).await;
    let err = guard(nats::connect(&nats, "rpc-tests.nobody"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("rpc-tests.nobody") && text.contains("nats::bind"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_served_by_something_else_is_a_clear_error() {
    let server = start_nats(None).await;
    let nats = nats_client(&server.url()).await;
    // Someone else's responder on the subject: it answers everything with "pong".
    let mut other = nats.subscribe("rpc-tests.other").await.unwrap();
    let responder = tokio::spawn({
        let nats = nats.clone();
        async move {
            while let Some(message) = other.next().await {
                if let Some(reply) = message.reply {
                    let _ = nats.publish(reply, "pong".into()).await;
                }
            }
        }
    });
    let err = guard(nats::connect(&nats, "rpc-tests.other"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("not an rpc server"), "{err}");
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_other_versions_on_the_subject_do_no_harm() {
    let server = start_nats(None).await;
    let _member = serve(&server.url(), "a", false).await;
    let nats = nats_client(&server.url()).await;

    // A hello of a later version is refused with a reason.
    let answer = guard(nats.request(SUBJECT, "rpc-nats/9 hello".into()))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.payload).into_owned();
    assert!(text.starts_with("rpc-nats refuse:"), "{text}");
    // Messages that are not hellos are ignored.
    nats.publish(SUBJECT, "GET / HTTP/1.1\r\n\r\n".into())
        .await
        .unwrap();
    nats.publish_with_reply(SUBJECT, "rpc-tests.void", vec![0xff; 64].into())
        .await
        .unwrap();
    // Garbage sent into one connection's inbox breaks that connection, and only that one.
    let mut victim = guard(nats::connect(&nats, SUBJECT)).await.unwrap();
    let inbox = victim.peer_subject().to_owned();
    nats.publish(inbox, vec![1, 2].into()).await.unwrap();
    guard(victim.send(rpc_core::Frame::from(vec![0u8; 3])))
        .await
        .unwrap();
    let client = depot_client(&nats);
    assert_eq!(guard(client.name()).await.unwrap(), "a");
}

// ---------------------------------------------------------------------------------------
// Failure modes

fn addr_of(url: &str) -> String {
    url.trim_start_matches("nats://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_call_retries_idempotent_calls_elsewhere_and_fails_the_rest() {
    let server = start_nats(None).await;
    // A network cut between member "a" and NATS: NATS sees its connection close, as it
    // would at a crash, while its handlers still run.
    let relay = Cuttable::to(addr_of(&server.url())).await;
    // Member "a" holds every call; it is alone when the client connects, so it is the one.
    let mut doomed = serve(&format!("nats://{}", relay.addr()), "a", true).await;
    let nats = nats_client(&server.url()).await;
    let client = depot_client(&nats);
    assert_eq!(guard(client.name()).await.unwrap(), "a");
    let _survivor = serve(&server.url(), "b", false).await;

    let idempotent = tokio::spawn({
        let client = client.clone();
        async move { client.hold_idempotent(1).await }
    });
    let other = tokio::spawn({
        let client = client.clone();
        async move { client.hold(2).await }
    });
    let mut started = vec![
        guard(doomed.events.recv()).await,
        guard(doomed.events.recv()).await,
    ];
    started.sort_by_key(|event| format!("{event:?}"));
    assert_eq!(
        started,
        vec![Some(Event::Started(1)), Some(Event::Started(2))]
    );

    relay.cut();
    // The idempotent call is retried on a new connection, which only "b" can take.
    assert_eq!(guard(idempotent).await.unwrap().unwrap(), "b");
    let err = guard(other).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert_eq!(guard(client.name()).await.unwrap(), "b");
}

/// The name of the member that answers, once one does: calls in between may fail with
/// `Disconnected` (a connection that lost a message while NATS was away), nothing else.
async fn answered_again(client: &DepotClient) -> String {
    guard(async {
        loop {
            match client.name().await {
                Ok(name) => return name,
                Err(err) => assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_is_survived() {
    let mut server = start_nats(None).await;
    let mut member = serve(&server.url(), "a", false).await;
    let nats = nats_client(&server.url()).await;
    let client = depot_client(&nats);
    assert_eq!(guard(client.name()).await.unwrap(), "a");

    guard(server.restart())
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    // Whatever was lost in the restart, the client finds the member again: either the
    // connection survived (nothing was lost) or it failed and a new one was opened once
    // both sides were back on NATS.
    assert_eq!(answered_again(&client).await, "a");
    let echoed = guard(client.echo(vec![5; 300_000])).await.unwrap();
    assert_eq!(echoed, vec![5; 300_000]);
    assert!(member.events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_a_nats_restart_ends_in_an_error_never_with_a_hole() {
    const ITEMS: u32 = 2_000_000;
    let mut server = start_nats(None).await;
    let _member = serve(&server.url(), "a", false).await;
    let nats = nats_client(&server.url()).await;
    let client = depot_client(&nats);

    let mut stream = guard(client.count(ITEMS)).await.unwrap();
    for expected in 0..1000 {
        assert_eq!(guard(stream.next()).await.unwrap().unwrap(), expected);
    }
    guard(server.restart())
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    // Items in flight during the restart may be lost: the stream must then fail (with
    // `Disconnected`), not skip them, and not wait forever.
    let mut expected = 1000;
    let ended = guard(async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(n) => {
                    assert_eq!(n, expected, "an item was skipped");
                    expected += 1;
                }
                Err(err) => return Some(err),
            }
        }
        None
    })
    .await;
    match ended {
        None => assert_eq!(expected, ITEMS, "the stream ended early without an error"),
        Some(err) => assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}"),
    }
    // And the client goes on, on a new connection if it needed one.
    assert_eq!(answered_again(&client).await, "a");
}
