//! [`ResponseCache`]: answers repeated calls of idempotent methods from memory.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ConfigError;
use crate::error::RpcError;
use crate::middleware::{ClientCall, Middleware, Next, Reply};

/// A client-side cache of responses: a call of an `#[rpc(idempotent)]` method with the
/// same arguments and metadata as one answered less than [`ttl`](ResponseCacheBuilder::ttl)
/// ago is answered from memory, without reaching a server.
///
/// - Only idempotent methods without streams are cached; every other call goes through.
/// - What is cached is the method's result, its own errors included (the `Err` of a method
///   returning `Result<T, E>`); a failed call ([`RpcError`]) is never cached.
/// - The key is the service, the method, the call's metadata and its encoded arguments
///   (equal arguments encode to equal bytes).
/// - It holds at most [`max_entries`](ResponseCacheBuilder::max_entries) entries and
///   [`max_bytes`](ResponseCacheBuilder::max_bytes) of keys and results, evicting the
///   least useful first (moka's TinyLFU).
/// - Time is the runtime's (tokio's) clock, so entries expire in paused or simulated
///   time too.
/// - Hits and misses are counted in the metrics `rpc_client_cache_hits_total` and
///   `rpc_client_cache_misses_total` (labels `service`, `method`), and in
///   [`hits`](ResponseCache::hits) and [`misses`](ResponseCache::misses).
///
/// Install it with [`ClientBuilder::layer`](crate::ClientBuilder::layer); clones share one
/// cache.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::governance::ResponseCache;
/// use rpc_core::{service, Server};
///
/// #[service]
/// pub trait Catalog {
///     #[rpc(idempotent)]
///     async fn price(&self, item: String) -> u32;
/// }
///
/// struct Prices;
/// impl Catalog for Prices {
///     async fn price(&self, item: String) -> u32 {
///         item.len() as u32
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = ResponseCache::builder()
///     .ttl(Duration::from_secs(30))
///     .max_entries(10_000)
///     .max_bytes(16 << 20)
///     .build()?;
/// let (client_end, server_end) = rpc_transport::memory::pair();
/// tokio::spawn(Server::new().add_service(CatalogServer::new(Prices)).serve_connection(server_end));
/// let client = CatalogClient::builder().layer(cache.clone()).transport(client_end);
///
/// assert_eq!(client.price("apple".into()).await?, 5);
/// assert_eq!(client.price("apple".into()).await?, 5); // from the cache
/// assert_eq!((cache.hits(), cache.misses()), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: moka::sync::Cache<Arc<[u8]>, Entry>,
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    describe: String,
}

#[derive(Clone)]
struct Entry {
    body: Bytes,
    at: Instant,
}

impl fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("limits", &self.inner.describe)
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`ResponseCache`]; made by [`ResponseCache::builder`].
#[derive(Debug, Clone)]
pub struct ResponseCacheBuilder {
    ttl: Duration,
    max_entries: u64,
    max_bytes: u64,
}

impl ResponseCacheBuilder {
    /// How long a response answers later calls (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> ResponseCacheBuilder {
        self.ttl = ttl;
        self
    }

    /// The most responses kept (default 10,000).
    pub fn max_entries(mut self, entries: u64) -> ResponseCacheBuilder {
        self.max_entries = entries;
        self
    }

    /// The most bytes of keys (arguments, metadata) and results kept (default 64 MiB).
    pub fn max_bytes(mut self, bytes: u64) -> ResponseCacheBuilder {
        self.max_bytes = bytes;
        self
    }

    /// The cache, or what to change in settings that make no sense.
    pub fn build(self) -> Result<ResponseCache, ConfigError> {
        if self.ttl.is_zero() {
            return Err(ConfigError::new(
                "ResponseCache: a ttl of 0 would answer nothing from the cache; give a \
                 positive duration, or leave the cache out",
            ));
        }
        if self.max_entries == 0 || self.max_bytes == 0 {
            return Err(ConfigError::new(format!(
                "ResponseCache: max_entries ({}) and max_bytes ({}) must both be at least 1",
                self.max_entries, self.max_bytes
            )));
        }
        // One bound on weights gives both: an entry weighs at least its share of the bytes
        // (so no more than `max_entries` fit), and at least its own bytes.
        let floor = (self.max_bytes / self.max_entries).max(1);
        let weigh = move |key: &Arc<[u8]>, entry: &Entry| -> u32 {
            let bytes = (key.len() + entry.body.len()) as u64;
            u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
        };
        let entries = moka::sync::Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(weigh)
            .build();
        Ok(ResponseCache {
            inner: Arc::new(Inner {
                entries,
                ttl: self.ttl,
                hits: Default::default(),
                misses: Default::default(),
                describe: format!(
                    "{:?} per response, at most {} responses and {} bytes",
                    self.ttl, self.max_entries, self.max_bytes
                ),
            }),
        })
    }
}

impl ResponseCache {
    /// Starts building a cache: by default 10 s per response, at most 10,000 responses and
    /// 64 MiB.
    pub fn builder() -> ResponseCacheBuilder {
        ResponseCacheBuilder {
            ttl: Duration::from_secs(10),
            max_entries: 10_000,
            max_bytes: 64 << 20,
        }
    }

    /// Calls answered from the cache.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::Relaxed)
    }

    /// Cacheable calls that went to a server.
    pub fn misses(&self) -> u64 {
        self.inner.misses.load(Ordering::Relaxed)
    }

    /// Responses held now (after the cache has applied its pending evictions).
    pub fn len(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.inner.entries.entry_count()
    }

    /// Whether it holds no response.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every response.
    pub fn clear(&self) {
        self.inner.entries.invalidate_all();
    }

    /// What identifies a call's answer: service, method, metadata and arguments, each
    /// length-prefixed so that no two calls share a key.
    fn key(call: &ClientCall) -> Arc<[u8]> {
        let mut key = Vec::with_capacity(64 + call.body().len());
        let mut put = |bytes: &[u8]| {
            key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            key.extend_from_slice(bytes);
        };
        put(call.service().name.as_bytes());
        put(call.method().as_bytes());
        for (name, value) in call.metadata().iter() {
            put(name.as_bytes());
            put(value);
        }
        put(call.body());
        key.into()
    }

    fn count(&self, hit: bool, call: &ClientCall) {
        let (counter, name) = if hit {
            (&self.inner.hits, "rpc_client_cache_hits_total")
        } else {
            (&self.inner.misses, "rpc_client_cache_misses_total")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name, "service" => call.service().name, "method" => call.method())
            .increment(1);
    }
}

impl Middleware<ClientCall> for ResponseCache {
    async fn call(&self, call: ClientCall, next: Next<ClientCall>) -> Result<Reply, RpcError> {
        let method = call.method_info();
        if !method.idempotent || method.client_streaming || method.server_streaming {
            return next.run(call).await;
        }
        let key = ResponseCache::key(&call);
        if let Some(entry) = self.inner.entries.get(&key) {
            if crate::clock::since(entry.at) < self.inner.ttl {
                self.count(true, &call);
                return Ok(Reply::from_body(entry.body));
            }
            self.inner.entries.invalidate(&key);
        }
        self.count(false, &call);
        let reply = next.run(call).await?;
        if let Some(body) = reply.body() {
            // A copy: the body is a slice of the connection's read buffer, which a cached
            // entry must not keep alive.
            let entry = Entry {
                body: Bytes::copy_from_slice(body),
                at: crate::clock::now(),
            };
            self.inner.entries.insert(key, entry);
        }
        Ok(reply)
    }
}
