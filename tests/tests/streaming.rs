//! Streaming end to end, over every transport: server, client and bidirectional streams,
//! flow control, cancellation from either side, deadlines and errors mid-stream, and unary
//! calls sharing the connection with a bulk stream.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{guard, Harness, Kind, KINDS};
use futures::StreamExt;
use rpc_core::{
    service, ErrorKind, RpcError, Server, Streaming, STREAM_INITIAL_BYTE_WINDOW,
    STREAM_ITEM_OVERHEAD, STREAM_WINDOW,
};
use tokio::sync::{mpsc, Notify};

#[service]
pub trait Streams {
    /// `0..n`.
    async fn count(&self, n: u64) -> Streaming<u64>;
    /// The sum of the numbers sent.
    async fn sum(&self, numbers: Streaming<u64>) -> u64;
    /// Every text sent, upper-cased, as it comes.
    async fn shout(&self, texts: Streaming<String>) -> Streaming<String>;
    /// `0..n`, then an error.
    async fn fail_after(&self, n: u64) -> Streaming<u64>;
    /// Numbers without end; counts what the producer was asked for.
    async fn endless(&self) -> Streaming<u64>;
    /// Takes `n` items of the stream, then returns (dropping the rest).
    async fn take(&self, n: u64, numbers: Streaming<u64>) -> u64;
    /// `chunks` buffers of `size` bytes.
    async fn download(&self, chunks: u32, size: u32) -> Streaming<Vec<u8>>;
    async fn add(&self, a: u64, b: u64) -> u64;
}

#[derive(Clone, Default)]
struct Probe {
    /// Items the `endless` producer has been polled for.
    produced: Arc<AtomicU64>,
    /// Woken whenever `produced` grows.
    progress: Arc<Notify>,
    /// Says when a producer stream is dropped.
    dropped: Option<mpsc::UnboundedSender<&'static str>>,
}

struct Impl {
    probe: Probe,
}

/// Reports its drop on a channel.
struct DropReport(Option<mpsc::UnboundedSender<&'static str>>, &'static str);

impl Drop for DropReport {
    fn drop(&mut self) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(self.1);
        }
    }
}

impl Streams for Impl {
    async fn count(&self, n: u64) -> Streaming<u64> {
        Streaming::iter(0..n)
    }

    async fn sum(&self, mut numbers: Streaming<u64>) -> u64 {
        let mut sum = 0;
        while let Some(n) = numbers.next().await {
            match n {
                Ok(n) => sum += n,
                Err(_) => return u64::MAX,
            }
        }
        sum
    }

    async fn shout(&self, texts: Streaming<String>) -> Streaming<String> {
        Streaming::from_results(texts.map(|text| text.map(|t| t.to_uppercase())))
    }

    async fn fail_after(&self, n: u64) -> Streaming<u64> {
        Streaming::from_results(
            futures::stream::iter(0..n)
                .map(Ok)
                .chain(futures::stream::once(async {
                    Err(RpcError::new(ErrorKind::Internal, "the disk caught fire"))
                })),
        )
    }

    async fn endless(&self) -> Streaming<u64> {
        let probe = self.probe.clone();
        let guard = DropReport(probe.dropped.clone(), "endless");
        Streaming::new(futures::stream::unfold(0u64, move |n| {
            let _keep = &guard;
            probe.produced.fetch_add(1, Ordering::SeqCst);
            probe.progress.notify_waiters();
            async move { Some((n, n + 1)) }
        }))
    }

    async fn take(&self, n: u64, numbers: Streaming<u64>) -> u64 {
        numbers
            .take(n as usize)
            .fold(0, |sum, n| async move { sum + n.unwrap_or(0) })
            .await
    }

    async fn download(&self, chunks: u32, size: u32) -> Streaming<Vec<u8>> {
        Streaming::iter((0..chunks).map(move |i| vec![i as u8; size as usize]))
    }

    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

async fn start(kind: Kind, probe: Probe) -> (StreamsClient, Harness) {
    let server = Server::new().add_service(StreamsServer::new(Impl { probe }));
    let mut harness = Harness::start(kind, server).await;
    let client = StreamsClient::new(harness.connect().await);
    (client, harness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_items_arrive_in_order() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        let stream = guard(client.count(100_000)).await.unwrap();
        let items: Vec<u64> = guard(stream.map(|n| n.unwrap()).collect::<Vec<_>>()).await;
        assert_eq!(items.len(), 100_000, "{kind:?}");
        assert!(
            items.iter().enumerate().all(|(i, &n)| n == i as u64),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_of_a_hundred_thousand_items_is_summed() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        let sum = guard(client.sum(Streaming::iter(0..100_000u64)))
            .await
            .unwrap();
        assert_eq!(sum, (0..100_000u64).sum::<u64>(), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_items_come_back_in_order() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        let texts: Vec<String> = (0..10_000).map(|i| format!("item {i}")).collect();
        let back = guard(client.shout(Streaming::iter(texts.clone())))
            .await
            .unwrap();
        let back: Vec<String> = guard(back.map(|t| t.unwrap()).collect::<Vec<_>>()).await;
        let expected: Vec<String> = texts.iter().map(|t| t.to_uppercase()).collect();
        assert_eq!(back, expected, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_stream_ends_it_with_that_error() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        let mut stream = guard(client.fail_after(5)).await.unwrap();
        for expected in 0..5 {
            assert_eq!(guard(stream.next()).await.unwrap().unwrap(), expected);
        }
        let err = guard(stream.next()).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{kind:?}: {err}");
        assert!(err.message().contains("the disk caught fire"), "{err}");
        assert!(guard(stream.next()).await.is_none(), "{kind:?}");
    }
}

/// Waits until the `endless` producer has been polled for `at_least` items.
async fn produced(probe: &Probe, at_least: u64) -> u64 {
    guard(async {
        loop {
            let notified = probe.progress.notified();
            let n = probe.produced.load(Ordering::SeqCst);
            if n >= at_least {
                return n;
            }
            notified.await;
        }
    })
    .await
}

/// The most items of `endless` a consumer that never granted credit can be sent: its
/// stream's initial byte window, each item charged at least one byte of body (a small
/// varint) plus the per-item overhead.
const INITIAL_ITEMS: u64 = (STREAM_INITIAL_BYTE_WINDOW / (1 + STREAM_ITEM_OVERHEAD)) as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_stops_the_producer_within_the_window() {
    for kind in KINDS {
        let probe = Probe::default();
        let (client, _h) = start(kind, probe.clone()).await;
        let mut stream = guard(client.endless()).await.unwrap();
        assert_eq!(guard(stream.next()).await.unwrap().unwrap(), 0);
        // The producer fills the window and stops there.
        produced(&probe, INITIAL_ITEMS / 2).await;
        // Round trips on the same connection let the server run its loop many times over;
        // the producer must still be held at the window (plus the one item it made and
        // holds until credit comes).
        for i in 0..50 {
            assert_eq!(guard(client.add(i, 1)).await.unwrap(), i + 1);
        }
        let held = probe.produced.load(Ordering::SeqCst);
        assert!(
            held <= INITIAL_ITEMS + 1,
            "{kind:?}: the producer made {held} items for a consumer that took one (window \
             {STREAM_INITIAL_BYTE_WINDOW} bytes: {INITIAL_ITEMS} items)"
        );
        // Reading on makes it go on, past the initial window and the window of a peer of
        // the previous revision.
        let beyond = 3 * INITIAL_ITEMS.max(u64::from(STREAM_WINDOW));
        for expected in 1..beyond {
            assert_eq!(guard(stream.next()).await.unwrap().unwrap(), expected);
        }
        assert!(produced(&probe, beyond).await >= beyond);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_received_stream_stops_the_server_producer() {
    for kind in KINDS {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let probe = Probe {
            dropped: Some(tx),
            ..Probe::default()
        };
        let (client, _h) = start(kind, probe).await;
        let mut stream = guard(client.endless()).await.unwrap();
        guard(stream.next()).await.unwrap().unwrap();
        drop(stream);
        assert_eq!(guard(rx.recv()).await, Some("endless"), "{kind:?}");
        // The connection carries on.
        assert_eq!(guard(client.add(2, 3)).await.unwrap(), 5, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_stops_reading_stops_the_client_producer() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let guard_drop = DropReport(Some(tx), "input");
        let input = Streaming::new(futures::stream::unfold(0u64, move |n| {
            let _keep = &guard_drop;
            async move { Some((n, n + 1)) }
        }));
        // The handler takes 10 items of an endless stream and returns.
        let sum = guard(client.take(10, input)).await.unwrap();
        assert_eq!(sum, 45, "{kind:?}");
        assert_eq!(guard(rx.recv()).await, Some("input"), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_a_stream() {
    for kind in KINDS {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let probe = Probe {
            dropped: Some(tx),
            ..Probe::default()
        };
        let (client, _h) = start(kind, probe).await;
        let mut stream = guard(client.endless().timeout(Duration::from_millis(200)))
            .await
            .unwrap();
        // Read slowly enough never to finish: the deadline ends the stream.
        let err = guard(async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => tokio::task::yield_now().await,
                    Some(Err(err)) => return err,
                    None => panic!("the stream ended without its deadline error"),
                }
            }
        })
        .await;
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
        // The server stops producing too.
        assert_eq!(guard(rx.recv()).await, Some("endless"), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_flow_during_a_bulk_stream() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        // 256 chunks of 64 KiB: 16 MiB, read one chunk per unary call.
        let mut bulk = guard(client.download(256, 64 << 10)).await.unwrap();
        for i in 0..256u64 {
            let chunk = guard(bulk.next()).await.unwrap().unwrap();
            assert_eq!(chunk.len(), 64 << 10);
            assert_eq!(chunk[0], i as u8);
            assert_eq!(guard(client.add(i, i)).await.unwrap(), 2 * i, "{kind:?}");
        }
        assert!(guard(bulk.next()).await.is_none(), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_one_connection() {
    for kind in KINDS {
        let (client, _h) = start(kind, Probe::default()).await;
        let tasks: Vec<_> = (0..20u64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let stream = client.count(1000 + i).await.unwrap();
                    stream.map(|n| n.unwrap()).collect::<Vec<_>>().await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let items = guard(task).await.unwrap();
            assert_eq!(items.len(), 1000 + i, "{kind:?}");
            assert!(items.iter().enumerate().all(|(j, &n)| n == j as u64));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_work_through_a_reconnecting_client() {
    let (listener, connector) = rpc_transport::memory::listener();
    let server = Server::new().add_service(StreamsServer::new(Impl {
        probe: Probe::default(),
    }));
    tokio::spawn(server.serve(listener));
    let client = StreamsClient::builder().connect(connector);
    let stream = guard(client.count(1000)).await.unwrap();
    let items: Vec<u64> = guard(stream.map(|n| n.unwrap()).collect::<Vec<_>>()).await;
    assert_eq!(items.len(), 1000);
    let sum = guard(client.sum(Streaming::iter(1..=100u64)))
        .await
        .unwrap();
    assert_eq!(sum, 5050);
}
