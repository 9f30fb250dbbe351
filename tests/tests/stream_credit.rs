//! Stream credit counted in bytes (docs/protocol.md, "Credit" and "Connection window"):
//! fast streams of small items, the bound a consumer that stops reading puts on its
//! producer and on its receiver's memory, a sender beyond its byte credit, and peers of the
//! previous revision, which are credited by items (`STREAM_WINDOW`) exactly as before, in
//! both directions; runs of small items in one frame (`StreamItems`), only to a peer that
//! reads them.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::wire::{self, RawPeer, Status, Wire};
use common::{guard, Harness, Kind, KINDS};
use rpc_core::{
    service, Server, ServerStats, Streaming, STREAM_BYTE_WINDOW, STREAM_INITIAL_BYTE_WINDOW,
    STREAM_ITEM_OVERHEAD, STREAM_WINDOW,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify, Semaphore};

/// What a handler made of the stream it was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub items: u64,
    pub sum: u64,
    /// The error that ended the stream, if one did: its kind.
    pub error: Option<String>,
}

#[service]
pub trait Credits {
    /// `0..n`.
    async fn count(&self, n: u64) -> Streaming<u64>;
    /// The numbers sent, added up.
    async fn sum(&self, numbers: Streaming<u64>) -> Tally;
    /// Reads `first` chunks, then waits for the test's permit before reading the rest.
    async fn hold(&self, first: u64, chunks: Streaming<Vec<u8>>) -> Tally;
    /// Numbers without end, counted as they are made.
    async fn endless(&self) -> Streaming<u64>;
    async fn add(&self, a: u64, b: u64) -> u64;
}

#[derive(Clone)]
struct Impl {
    /// Items `endless` made so far, and a wake-up whenever it makes one.
    produced: Arc<AtomicU64>,
    progress: Arc<Notify>,
    /// Each `hold` handler says here when it has read its first chunks and stops.
    holding: mpsc::UnboundedSender<u64>,
    release: Arc<Semaphore>,
}

impl Credits for Impl {
    async fn count(&self, n: u64) -> Streaming<u64> {
        Streaming::iter(0..n)
    }

    async fn sum(&self, numbers: Streaming<u64>) -> Tally {
        tally(numbers, u64::MAX, None).await
    }

    async fn hold(&self, first: u64, chunks: Streaming<Vec<u8>>) -> Tally {
        tally(chunks, first, Some(self)).await
    }

    async fn endless(&self) -> Streaming<u64> {
        let (produced, progress) = (Arc::clone(&self.produced), Arc::clone(&self.progress));
        Streaming::new(futures::stream::unfold(0u64, move |n| {
            produced.fetch_add(1, Ordering::SeqCst);
            progress.notify_waiters();
            async move { Some((n, n + 1)) }
        }))
    }

    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Something a [`Tally`] can count.
trait Counted {
    fn value(&self) -> u64;
}

impl Counted for u64 {
    fn value(&self) -> u64 {
        *self
    }
}

impl Counted for Vec<u8> {
    fn value(&self) -> u64 {
        self.len() as u64
    }
}

/// Reads `items` to its end; after `first` items, if `holder` is given, says so and waits
/// for a permit.
async fn tally<T: Counted>(mut items: Streaming<T>, first: u64, holder: Option<&Impl>) -> Tally {
    let mut tally = Tally::default();
    let mut held = false;
    loop {
        if let Some(holder) = holder.filter(|_| !held && tally.items == first) {
            held = true;
            let _ = holder.holding.send(first);
            let permit = holder
                .release
                .acquire()
                .await
                .expect("the semaphore is open");
            permit.forget();
        }
        match items.next().await {
            Some(Ok(item)) => {
                tally.items += 1;
                tally.sum = tally.sum.wrapping_add(item.value());
            }
            Some(Err(err)) => {
                tally.error = Some(format!("{:?}", err.kind()));
                return tally;
            }
            None => return tally,
        }
    }
}

struct Served {
    client: CreditsClient,
    stats: ServerStats,
    produced: Arc<AtomicU64>,
    progress: Arc<Notify>,
    holding: mpsc::UnboundedReceiver<u64>,
    release: Arc<Semaphore>,
    harness: Harness,
}

async fn start(kind: Kind) -> Served {
    let (holding_tx, holding) = mpsc::unbounded_channel();
    let imp = Impl {
        produced: Arc::default(),
        progress: Arc::default(),
        holding: holding_tx,
        release: Arc::new(Semaphore::new(0)),
    };
    let (produced, progress, release) = (
        Arc::clone(&imp.produced),
        Arc::clone(&imp.progress),
        Arc::clone(&imp.release),
    );
    let server = Server::new().add_service(CreditsServer::new(imp));
    let stats = server.stats();
    let mut harness = Harness::start(kind, server).await;
    let client = CreditsClient::new(harness.connect().await);
    Served {
        client,
        stats,
        produced,
        progress,
        holding,
        release,
        harness,
    }
}

/// Waits until `endless` has made at least `at_least` items; returns how many it made.
async fn produced(served: &Served, at_least: u64) -> u64 {
    guard(async {
        loop {
            let notified = served.progress.notified();
            let n = served.produced.load(Ordering::SeqCst);
            if n >= at_least {
                return n;
            }
            notified.await;
        }
    })
    .await
}

/// The charge of an item whose body is `body` bytes: what it takes from a byte window.
fn charge(body: u64) -> u64 {
    body + u64::from(STREAM_ITEM_OVERHEAD)
}

/// The index of `Credits`' method `name`, as raw requests name it.
fn method(name: &str) -> u32 {
    common::method_index(&CreditsClient::DESCRIPTOR, name)
}

/// What a client of this revision sends after its `Hello`: the announcement, offering byte
/// credit (flag 256) and reading runs of items (flag 512).
const BYTE_CREDIT: u32 = 256;
const ITEM_RUNS: u32 = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_stream_of_small_items_arrives_whole_and_in_order_both_ways() {
    const N: u64 = 100_000;
    for kind in KINDS {
        let served = start(kind).await;
        let mut numbers = guard(served.client.count(N)).await.expect("count");
        let mut expected = 0;
        while let Some(n) = guard(numbers.next()).await {
            assert_eq!(n.expect("an item"), expected, "{kind:?}");
            expected += 1;
        }
        assert_eq!(expected, N, "{kind:?}");
        let tally = guard(served.client.sum(Streaming::iter(0..N)))
            .await
            .expect("sum");
        assert_eq!(
            tally,
            Tally {
                items: N,
                sum: N * (N - 1) / 2,
                error: None
            },
            "{kind:?}"
        );
    }
}

/// A consumer that took `TAKEN` items and stopped: its producer can be ahead of it by no
/// more than the full byte window (opened by the credit the consumer granted), with each
/// item charged at least one byte of body, plus the one item it made and holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_holds_its_producer_to_the_byte_window() {
    const TAKEN: u64 = 20_000;
    let ahead = u64::from(STREAM_BYTE_WINDOW) / charge(1);
    for kind in KINDS {
        let served = start(kind).await;
        let mut numbers = guard(served.client.endless()).await.expect("endless");
        for expected in 0..TAKEN {
            let n = guard(numbers.next())
                .await
                .expect("an item")
                .expect("a number");
            assert_eq!(n, expected, "{kind:?}");
        }
        // Well within what its credit lets the producer make: it gets there.
        produced(&served, TAKEN + 1_000).await;
        // Round trips on the same connection let the server run its loop many times over.
        for i in 0..50 {
            assert_eq!(guard(served.client.add(i, 1)).await.expect("add"), i + 1);
        }
        let made = served.produced.load(Ordering::SeqCst);
        assert!(
            made <= TAKEN + ahead + 1,
            "{kind:?}: the producer made {made} items for a consumer that took {TAKEN} (a \
             window of {STREAM_BYTE_WINDOW} bytes is {ahead} items)"
        );
        // Reading on makes it go on.
        for expected in TAKEN..TAKEN + 2 * ahead {
            let n = guard(numbers.next())
                .await
                .expect("an item")
                .expect("a number");
            assert_eq!(n, expected, "{kind:?}");
        }
    }
}

/// The receiver's memory: a handler that reads some chunks (its window is then open) and
/// stops holds at most the byte window of them, whatever the client has to send; none is
/// lost once it reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_stops_reading_holds_at_most_the_byte_window() {
    const CHUNK: usize = 1_000;
    const FIRST: u64 = 1_000;
    const TOTAL: u64 = 20_000;
    // A chunk's body: its length (a 3-byte varint), then its bytes.
    let per_chunk = charge(CHUNK as u64 + 3);
    let ahead = u64::from(STREAM_BYTE_WINDOW) / per_chunk;
    for kind in KINDS {
        let mut served = start(kind).await;
        let sent = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let chunks = {
            let (sent, progress) = (Arc::clone(&sent), Arc::clone(&progress));
            Streaming::iter((0..TOTAL).map(move |_| {
                sent.fetch_add(1, Ordering::SeqCst);
                progress.notify_waiters();
                vec![7u8; CHUNK]
            }))
        };
        let call = tokio::spawn(served.client.hold(FIRST, chunks).into_future());
        assert_eq!(guard(served.holding.recv()).await, Some(FIRST), "{kind:?}");
        // The client gets well into the window it was granted.
        guard(async {
            loop {
                let notified = progress.notified();
                if sent.load(Ordering::SeqCst) >= FIRST + ahead / 2 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        for i in 0..50 {
            assert_eq!(guard(served.client.add(i, 1)).await.expect("add"), i + 1);
        }
        let buffered = served.stats.buffered_stream_bytes();
        assert!(
            buffered as u64 <= ahead * (CHUNK as u64 + 3),
            "{kind:?}: the server holds {buffered} bytes of one stream's items, more than \
             its byte window of {STREAM_BYTE_WINDOW} allows ({ahead} chunks)"
        );
        let made = sent.load(Ordering::SeqCst);
        assert!(
            made <= FIRST + ahead + 1,
            "{kind:?}: the client made {made} chunks for a handler that read {FIRST}"
        );
        served.release.add_permits(1);
        let tally = guard(call).await.expect("the call's task").expect("hold");
        assert_eq!(
            tally,
            Tally {
                items: TOTAL,
                sum: TOTAL * CHUNK as u64,
                error: None
            },
            "{kind:?}"
        );
    }
}

/// The body of a chunk of `len` bytes, as `hold` reads it.
fn chunk_body(len: usize) -> Vec<u8> {
    wire::body(&vec![7u8; len])
}

/// Says `Hello` for `Credits` and announces with `items`; returns the server's
/// announcements: its first, and, if it sent one, its answer to byte credit (which comes
/// before anything else: the server answers the client's first frame at once).
async fn handshake(peer: &mut RawPeer, items: u32) -> Vec<Wire> {
    peer.send(&wire::hello(&CreditsClient::DESCRIPTOR)).await;
    peer.send(&Wire::Credit {
        id: u64::MAX,
        items,
    })
    .await;
    // A round trip: whatever the server answers to the announcement comes before the Pong.
    peer.send(&Wire::Ping { nonce: 99 }).await;
    let mut announcements = Vec::new();
    loop {
        match peer.recv_any().await {
            Some(Wire::Pong { nonce: 99 }) => return announcements,
            Some(announcement @ Wire::Credit { id: u64::MAX, .. }) => {
                announcements.push(announcement)
            }
            other => panic!("expected the server's announcements, got {other:?}"),
        }
    }
}

/// What a server of this revision announces to a client that offered `flags` (byte credit,
/// and runs): its first announcement, then its answer with the same flags.
fn answered(flags: u32) -> [Wire; 2] {
    [
        Wire::Credit {
            id: u64::MAX,
            items: 0,
        },
        Wire::Credit {
            id: u64::MAX,
            items: flags,
        },
    ]
}

/// The transports a second client can connect over (a memory pair has one client end, the
/// typed client's).
const LISTENERS: [Kind; 3] = [Kind::MemoryListener, Kind::Tcp, Kind::Unix];

async fn raw_client(kind: Kind) -> (RawPeer, Served) {
    let mut served = start(kind).await;
    let peer = RawPeer(served.harness.connect().await);
    (peer, served)
}

/// A sender beyond its byte credit: two chunks of 40,000 bytes without any credit are more
/// than the initial window of 64 KiB (the first alone fits, as one item always does). The
/// server cuts the stream (`Cancel`) and its consumer gets `Protocol`, without the items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_beyond_its_byte_credit_is_cut() {
    let big = chunk_body(40_000);
    assert!(charge(big.len() as u64) <= u64::from(STREAM_INITIAL_BYTE_WINDOW));
    assert!(2 * charge(big.len() as u64) > u64::from(STREAM_INITIAL_BYTE_WINDOW));
    for kind in LISTENERS {
        let (mut peer, mut served) = raw_client(kind).await;
        let announced = handshake(&mut peer, BYTE_CREDIT).await;
        assert_eq!(
            announced,
            answered(BYTE_CREDIT),
            "{kind:?}: a server of this revision answers byte credit"
        );
        peer.send(&wire::request(
            1,
            method("hold"),
            None,
            wire::body(&(0u64,)),
        ))
        .await;
        assert_eq!(guard(served.holding.recv()).await, Some(0), "{kind:?}");
        for _ in 0..2 {
            peer.send(&Wire::StreamItem {
                id: 1,
                body: big.clone(),
            })
            .await;
        }
        assert_eq!(peer.recv().await, Some(Wire::Cancel { id: 1 }), "{kind:?}");
        served.release.add_permits(1);
        let tally: Tally = peer.expect_ok(1).await;
        assert_eq!(
            tally,
            Tally {
                items: 0,
                sum: 0,
                error: Some("Protocol".into())
            },
            "{kind:?}"
        );
    }
}

/// Reads frames until the `Pong` of `nonce`, counting the stream items of `id` (which must
/// be `0..` in order, continuing from `seen`); anything else but a `Credit` from the
/// connection's id is an error. Returns the new count.
async fn items_until_pong(peer: &mut RawPeer, id: u64, mut seen: u64, nonce: u64) -> u64 {
    loop {
        match peer.recv_any().await {
            Some(Wire::Pong { nonce: got }) if got == nonce => return seen,
            Some(Wire::StreamItem { id: got, body }) if got == id => {
                assert_eq!(wire::decode_body::<u64>(&body), seen);
                seen += 1;
            }
            Some(Wire::Credit {
                id: u64::MAX,
                items,
            }) => assert_eq!(items, 0, "a server answered byte credit it was not offered"),
            other => panic!("expected items of stream {id}, got {other:?}"),
        }
    }
}

/// Reads frames until `at_least` items of stream `id` arrived in all (from `seen`).
async fn items_until(peer: &mut RawPeer, id: u64, mut seen: u64, at_least: u64) -> u64 {
    while seen < at_least {
        match peer.recv_any().await {
            Some(Wire::StreamItem { id: got, body }) if got == id => {
                assert_eq!(wire::decode_body::<u64>(&body), seen);
                seen += 1;
            }
            Some(Wire::Credit {
                id: u64::MAX,
                items,
            }) => assert_eq!(items, 0, "a server answered byte credit it was not offered"),
            other => panic!("expected items of stream {id}, got {other:?}"),
        }
    }
    seen
}

/// A client of the previous revision (its announcement has no flags) is credited by items:
/// the server sends 32 items of a stream and waits, as it always did, gets 16 more for a
/// `Credit` of 16, and cuts an argument stream at its 33rd item without credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_previous_revision_is_credited_by_items() {
    let window = u64::from(STREAM_WINDOW);
    for kind in LISTENERS {
        let (mut peer, mut served) = raw_client(kind).await;
        let announced = handshake(&mut peer, 0).await;
        assert_eq!(
            announced,
            [Wire::Credit {
                id: u64::MAX,
                items: 0
            }],
            "{kind:?}: no answer to a flag that was not sent"
        );
        peer.send(&wire::request(
            1,
            method("count"),
            None,
            wire::body(&(1_000u64,)),
        ))
        .await;
        let seen = items_until(&mut peer, 1, 0, window).await;
        peer.send(&Wire::Ping { nonce: 1 }).await;
        let seen = items_until_pong(&mut peer, 1, seen, 1).await;
        assert_eq!(
            seen, window,
            "{kind:?}: the window of a previous-revision peer"
        );
        peer.send(&Wire::Credit { id: 1, items: 16 }).await;
        let seen = items_until(&mut peer, 1, seen, window + 16).await;
        peer.send(&Wire::Ping { nonce: 2 }).await;
        let seen = items_until_pong(&mut peer, 1, seen, 2).await;
        assert_eq!(seen, window + 16, "{kind:?}: 16 items for a credit of 16");
        peer.send(&Wire::Cancel { id: 1 }).await;

        // Its argument stream: 32 items go without credit, the 33rd is beyond it.
        peer.send(&wire::request(
            2,
            method("hold"),
            None,
            wire::body(&(0u64,)),
        ))
        .await;
        assert_eq!(guard(served.holding.recv()).await, Some(0), "{kind:?}");
        for _ in 0..=window {
            peer.send(&Wire::StreamItem {
                id: 2,
                body: chunk_body(10),
            })
            .await;
        }
        loop {
            match peer.recv().await {
                Some(Wire::Cancel { id: 2 }) => break,
                // Items of the cancelled stream still in flight.
                Some(Wire::StreamItem { id: 1, .. } | Wire::StreamEnd { id: 1, .. }) => {}
                other => panic!("{kind:?}: expected the Cancel of stream 2, got {other:?}"),
            }
        }
        served.release.add_permits(1);
        let tally: Tally = peer.expect_ok(2).await;
        assert_eq!(tally.error.as_deref(), Some("Protocol"), "{kind:?}");
    }
}

/// The other direction: today's client and a server of the previous revision, played by
/// hand. It offers byte credit, gets no answer, and so keeps to items: its argument stream
/// stops at 32 items without credit, and it grants credit for a result stream in items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_previous_revision_is_credited_by_items() {
    let window = u64::from(STREAM_WINDOW);
    for kind in KINDS {
        let (client_end, server_end) = common::connected_pair(kind).await;
        let client = CreditsClient::new(client_end);
        let mut server = RawPeer(server_end);
        let sum = tokio::spawn(client.sum(Streaming::iter(0..1_000u64)).into_future());
        assert!(matches!(server.recv_any().await, Some(Wire::Hello { .. })));
        match server.recv_any().await {
            Some(Wire::Credit {
                id: u64::MAX,
                items,
            }) => assert_eq!(items & BYTE_CREDIT, BYTE_CREDIT, "{kind:?}"),
            other => panic!("{kind:?}: expected the client's announcement, got {other:?}"),
        }
        // The server of the previous revision: its announcement, and nothing more about it.
        server
            .send(&Wire::Credit {
                id: u64::MAX,
                items: 0,
            })
            .await;
        let Some(Wire::Request { id, .. }) = server.recv().await else {
            panic!("{kind:?}: expected the request of `sum`");
        };
        let mut seen = items_until(&mut server, id, 0, window).await;
        server.send(&Wire::Ping { nonce: 1 }).await;
        loop {
            match server.recv().await {
                Some(Wire::Pong { nonce: 1 }) => break,
                Some(Wire::StreamItem { .. }) => seen += 1,
                other => panic!("{kind:?}: expected the Pong, got {other:?}"),
            }
        }
        assert_eq!(
            seen, window,
            "{kind:?}: the client kept to 32 items without credit"
        );
        server.send(&Wire::Credit { id, items: 1_000 }).await;
        let seen = items_until(&mut server, id, seen, 1_000).await;
        assert_eq!(
            server.recv().await,
            Some(Wire::StreamEnd {
                id,
                status: Status::Ok
            }),
            "{kind:?}"
        );
        let tally = Tally {
            items: seen,
            sum: (0..seen).sum(),
            error: None,
        };
        server
            .send(&Wire::Response {
                id,
                status: Status::Ok,
                body: wire::body(&tally),
            })
            .await;
        assert_eq!(
            guard(sum).await.expect("the call's task").expect("sum"),
            tally,
            "{kind:?}"
        );

        // A result stream: the client grants credit in items, no more than it took.
        let count = tokio::spawn(async move {
            let mut numbers = client.count(window).await?;
            let mut got = Vec::new();
            while let Some(n) = numbers.next().await {
                got.push(n?);
            }
            Ok::<_, rpc_core::RpcError>(got)
        });
        let Some(Wire::Request { id, .. }) = server.recv().await else {
            panic!("{kind:?}: expected the request of `count`");
        };
        for n in 0..window {
            server
                .send(&Wire::StreamItem {
                    id,
                    body: wire::body(&n),
                })
                .await;
        }
        let mut credited = 0;
        while credited < window {
            match server.recv().await {
                Some(Wire::Credit { id: got, items }) if got == id => credited += u64::from(items),
                other => panic!("{kind:?}: expected credit for the items, got {other:?}"),
            }
        }
        assert_eq!(
            credited, window,
            "{kind:?}: credit in items, for the items taken"
        );
        server
            .send(&Wire::StreamEnd {
                id,
                status: Status::Ok,
            })
            .await;
        let got = guard(count).await.expect("the call's task").expect("count");
        assert_eq!(got, (0..window).collect::<Vec<_>>(), "{kind:?}");
    }
}

/// Reads the frames of stream `id` to its end: its items' bodies in order, and how many
/// `StreamItems` frames (runs) and `StreamItem` frames carried them.
async fn stream_frames(peer: &mut RawPeer, id: u64) -> (Vec<Vec<u8>>, usize, usize) {
    let (mut bodies, mut runs, mut singles) = (Vec::new(), 0, 0);
    loop {
        match peer.recv().await {
            Some(Wire::StreamItems { id: got, items }) if got == id => {
                runs += 1;
                bodies.extend(wire::run_items(&items));
            }
            Some(Wire::StreamItem { id: got, body }) if got == id => {
                singles += 1;
                bodies.push(body);
            }
            Some(Wire::StreamEnd {
                id: got,
                status: Status::Ok,
            }) if got == id => return (bodies, runs, singles),
            other => panic!("expected the items of stream {id}, got {other:?}"),
        }
    }
}

/// A client that reads runs (flag 512 beside 256) is answered with both flags and gets a
/// stream of small items many to a frame; one of the byte-credit revision without runs (256
/// alone) gets a frame per item, as before. Either way every item arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_items_go_in_runs_only_to_a_peer_that_reads_them() {
    // 500 items of a few bytes stay within the initial byte window: no credit is needed.
    const N: u64 = 500;
    for kind in LISTENERS {
        for flags in [BYTE_CREDIT | ITEM_RUNS, BYTE_CREDIT] {
            let (mut peer, _served) = raw_client(kind).await;
            let announced = handshake(&mut peer, flags).await;
            assert_eq!(
                announced,
                answered(flags),
                "{kind:?}: the answer names what the client offered"
            );
            peer.send(&wire::request(1, method("count"), None, wire::body(&(N,))))
                .await;
            let (bodies, runs, singles) = stream_frames(&mut peer, 1).await;
            let numbers: Vec<u64> = bodies.iter().map(|b| wire::decode_body(b)).collect();
            assert_eq!(
                numbers,
                (0..N).collect::<Vec<_>>(),
                "{kind:?}, flags {flags}"
            );
            if flags & ITEM_RUNS != 0 {
                assert_eq!(singles, 0, "{kind:?}: small items go in runs");
                assert!(
                    runs < N as usize / 2,
                    "{kind:?}: {runs} runs for {N} items: a run holds many"
                );
            } else {
                assert_eq!(
                    (runs, singles),
                    (0, N as usize),
                    "{kind:?}: no runs to a peer that did not ask for them"
                );
            }
        }
    }
}

/// The server takes an argument stream sent in runs, whole and in order, and a run whose
/// last item is cut short is a protocol error that closes the connection with `Goodbye`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reads_runs_and_refuses_one_cut_short() {
    for kind in LISTENERS {
        let (mut peer, _served) = raw_client(kind).await;
        handshake(&mut peer, BYTE_CREDIT | ITEM_RUNS).await;
        peer.send(&wire::request(1, method("sum"), None, wire::body(&())))
            .await;
        let bodies: Vec<Vec<u8>> = (0..100u64).map(|n| wire::body(&n)).collect();
        for chunk in bodies.chunks(30) {
            peer.send(&Wire::StreamItems {
                id: 1,
                items: wire::run(chunk),
            })
            .await;
        }
        peer.send(&Wire::StreamEnd {
            id: 1,
            status: Status::Ok,
        })
        .await;
        // The handler grants credit for what it took as it waits for more, before its answer.
        let tally: Tally = loop {
            match peer.recv().await {
                Some(Wire::Credit { id: 1, .. }) => {}
                Some(Wire::Response {
                    id: 1,
                    status: Status::Ok,
                    body,
                }) => break wire::decode_body(&body),
                other => panic!("{kind:?}: expected the answer to the call, got {other:?}"),
            }
        };
        assert_eq!(
            tally,
            Tally {
                items: 100,
                sum: 4950,
                error: None
            },
            "{kind:?}"
        );

        peer.send(&wire::request(2, method("sum"), None, wire::body(&())))
            .await;
        let mut cut = wire::run(&[wire::body(&1u64), wire::body(&2u64)]);
        cut.pop();
        peer.send(&Wire::StreamItems { id: 2, items: cut }).await;
        loop {
            match peer.recv().await {
                Some(Wire::Goodbye {
                    kind: code,
                    message,
                }) => {
                    assert_eq!(code, wire::PROTOCOL, "{kind:?}: {message}");
                    assert!(message.contains("cut short"), "{kind:?}: {message}");
                    break;
                }
                // Credit for what the handler took, or the call's own answer, as the
                // connection goes.
                Some(Wire::Response { id: 2, .. } | Wire::Credit { id: 2, .. }) => {}
                other => panic!("{kind:?}: expected a Goodbye, got {other:?}"),
            }
        }
        assert_eq!(
            peer.recv().await,
            None,
            "{kind:?}: the connection is closed"
        );
    }
}
