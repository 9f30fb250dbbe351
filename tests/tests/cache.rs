//! The client-side response cache (`governance::ResponseCache`, feature `cache`): repeated
//! calls of idempotent methods are answered from memory for a while, within bounds, and
//! counted as hits and misses.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::guard;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rpc_core::governance::ResponseCache;
use rpc_core::{service, ErrorKind, Server};

#[service]
pub trait Shop {
    /// The price of `item`, counted by the server.
    #[rpc(idempotent)]
    async fn price(&self, item: String) -> u32;
    /// A large answer, for the byte bound.
    #[rpc(idempotent)]
    async fn blob(&self, n: u32) -> Vec<u8>;
    /// Fails (its handler panics) for an empty item.
    #[rpc(idempotent)]
    async fn check(&self, item: String) -> u32;
    /// Not idempotent: never cached.
    async fn buy(&self, item: String) -> u32;
}

#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicU32>,
}

impl Shop for Counting {
    async fn price(&self, item: String) -> u32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        item.len() as u32
    }
    async fn blob(&self, n: u32) -> Vec<u8> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        vec![n as u8; 300]
    }
    async fn check(&self, item: String) -> u32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        assert!(!item.is_empty(), "no item");
        1
    }
    async fn buy(&self, item: String) -> u32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        item.len() as u32
    }
}

/// A client of a fresh `Counting` shop over `kind`, through `cache`.
async fn shop(
    kind: common::Kind,
    cache: &ResponseCache,
) -> (ShopClient, Arc<AtomicU32>, common::Harness) {
    let imp = Counting::default();
    let calls = Arc::clone(&imp.calls);
    let mut harness =
        common::Harness::start(kind, Server::new().add_service(ShopServer::new(imp))).await;
    let client = ShopClient::builder()
        .layer(cache.clone())
        .transport(harness.connect().await);
    (client, calls, harness)
}

#[tokio::test]
async fn repeated_calls_are_answered_from_memory_over_each_transport() {
    for kind in common::KINDS {
        let cache = ResponseCache::builder().build().unwrap();
        let (client, calls, _h) = shop(kind, &cache).await;
        for _ in 0..3 {
            assert_eq!(guard(client.price("apple".into())).await.unwrap(), 5);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1, "{kind:?}");
        // Other arguments, other metadata: other answers.
        assert_eq!(guard(client.price("kiwi".into())).await.unwrap(), 4);
        let tenant = client.price("apple".into()).metadata("tenant", "acme");
        assert_eq!(guard(tenant).await.unwrap(), 5);
        assert_eq!(calls.load(Ordering::Relaxed), 3, "{kind:?}");
        assert_eq!((cache.hits(), cache.misses()), (2, 3), "{kind:?}");

        // Not idempotent: every call reaches the server.
        for _ in 0..2 {
            guard(client.buy("apple".into())).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::Relaxed), 5, "{kind:?}");
        // A failed call is not cached.
        for _ in 0..2 {
            let err = guard(client.check(String::new())).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Internal);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 7, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_expires_after_its_ttl_in_the_runtimes_time() {
    let cache = ResponseCache::builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let (client, calls, _h) = shop(common::Kind::MemoryPair, &cache).await;
    guard(client.price("apple".into())).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    guard(client.price("apple".into())).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    guard(client.price("apple".into())).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 2, "expired after 60 s");
}

#[tokio::test]
async fn the_cache_stays_within_its_entries_and_bytes() {
    let by_count = ResponseCache::builder().max_entries(10).build().unwrap();
    let (client, _calls, _h) = shop(common::Kind::MemoryPair, &by_count).await;
    for i in 0..100 {
        guard(client.price(format!("item {i}"))).await.unwrap();
    }
    assert!(by_count.len() <= 10, "{} entries", by_count.len());
    assert!(!by_count.is_empty());

    // Responses of 300 bytes and more, at most 1,000 bytes in all.
    let by_bytes = ResponseCache::builder().max_bytes(1_000).build().unwrap();
    let (client, _calls, _h) = shop(common::Kind::MemoryPair, &by_bytes).await;
    for n in 0..50 {
        assert_eq!(guard(client.blob(n)).await.unwrap().len(), 300);
    }
    assert!(by_bytes.len() <= 3, "{} entries", by_bytes.len());
}

#[tokio::test]
async fn hits_and_misses_are_counted_in_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let cache = ResponseCache::builder().build().unwrap();
    let (client, _calls, _h) = shop(common::Kind::MemoryPair, &cache).await;
    for _ in 0..4 {
        guard(client.price("apple".into())).await.unwrap();
    }
    // One snapshot: taking one resets what the recorder holds.
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .filter(|(key, ..)| {
                key.key()
                    .labels()
                    .any(|label| label.key() == "method" && label.value() == "price")
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is a {other:?}"),
            })
            .sum()
    };
    assert_eq!(counter("rpc_client_cache_hits_total"), 3);
    assert_eq!(counter("rpc_client_cache_misses_total"), 1);
}

#[test]
fn settings_that_make_no_sense_are_refused() {
    for (builder, says) in [
        (ResponseCache::builder().ttl(Duration::ZERO), "ttl of 0"),
        (ResponseCache::builder().max_entries(0), "max_entries (0)"),
        (ResponseCache::builder().max_bytes(0), "max_bytes (0)"),
    ] {
        let err = builder.build().unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}
