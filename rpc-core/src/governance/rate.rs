//! [`RateLimit`]: calls per period, per method and caller, on `governor`'s GCRA buckets.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::ConfigError;
use crate::error::RpcError;
use crate::middleware::{Middleware, Next, Reply, ServerCall};

/// Whose calls share a bucket of a [`RateLimit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyBy {
    /// One bucket for every caller.
    Everyone,
    /// One bucket per client IP address; callers whose IP is unknown (in-memory
    /// connections) share one.
    PeerIp,
    /// One bucket per verified TLS client identity (its first name); callers without one
    /// share one.
    Identity,
    /// One bucket per value of a metadata key (a tenant, an API key); callers that send no
    /// such key share one.
    Metadata(&'static str),
}

/// Builds a [`RateLimit`]; start with [`RateLimit::builder`].
#[derive(Debug, Clone)]
pub struct RateLimitBuilder {
    calls: u32,
    period: Duration,
    burst: Option<u32>,
    key: KeyBy,
    per_method: bool,
}

impl RateLimitBuilder {
    /// `calls` calls per `period`, replenished evenly (a call every `period / calls`).
    pub fn rate(mut self, calls: u32, period: Duration) -> RateLimitBuilder {
        self.calls = calls;
        self.period = period;
        self
    }

    /// How many calls may come at once after a quiet spell (default: the rate's `calls`).
    pub fn burst(mut self, calls: u32) -> RateLimitBuilder {
        self.burst = Some(calls);
        self
    }

    /// Whose calls share a bucket (default [`KeyBy::Everyone`]).
    pub fn key_by(mut self, key: KeyBy) -> RateLimitBuilder {
        self.key = key;
        self
    }

    /// Whether each method has buckets of its own (`true`, the default) or a caller's
    /// calls to every method the policy covers share one.
    pub fn per_method(mut self, per_method: bool) -> RateLimitBuilder {
        self.per_method = per_method;
        self
    }

    /// The policy, or what is wrong with its settings.
    pub fn build(self) -> Result<RateLimit, ConfigError> {
        let Some(calls) = NonZeroU32::new(self.calls) else {
            return Err(ConfigError::new(
                "RateLimit: a rate of 0 calls lets no call through; give at least 1 call per \
                 period (to refuse every call, use a middleware that returns an error)",
            ));
        };
        if self.period.is_zero() {
            return Err(ConfigError::new(
                "RateLimit: the rate's period is 0; give a period such as \
                 Duration::from_secs(1)",
            ));
        }
        let burst = match self.burst {
            None => calls,
            Some(burst) => NonZeroU32::new(burst).ok_or_else(|| {
                ConfigError::new(
                    "RateLimit: a burst of 0 lets no call through; give at least 1 (or leave \
                     it unset for a burst as large as the rate)",
                )
            })?,
        };
        let interval = self.period / calls.get();
        let quota = Quota::with_period(interval)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "RateLimit: {} calls per {:?} is more than one call per nanosecond; give \
                     a lower rate",
                    calls, self.period
                ))
            })?
            .allow_burst(burst);
        let clock = RuntimeClock {
            start: crate::clock::now(),
        };
        Ok(RateLimit {
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
            hasher: RandomState::new(),
            describe: format!(
                "{calls} calls per {:?} (bursts of {burst}){}",
                self.period,
                describe_key(&self.key)
            ),
            key: self.key,
            per_method: self.per_method,
            checks: AtomicU64::new(0),
        })
    }
}

fn describe_key(key: &KeyBy) -> String {
    match key {
        KeyBy::Everyone => String::new(),
        KeyBy::PeerIp => " for each client IP".to_string(),
        KeyBy::Identity => " for each client identity".to_string(),
        KeyBy::Metadata(name) => format!(" for each value of `{name}`"),
    }
}

/// Limits the rate of calls, per method and per caller key, with a token bucket (GCRA);
/// a call over the limit fails at once with
/// [`RateLimited`](crate::ErrorKind::RateLimited), never reaching the handler, and its
/// [`retry_after`](RpcError::retry_after) says when the bucket has room again. Install
/// it with [`Server::layer`](crate::Server::layer) (or `layer_for` / `layer_for_method`
/// to limit one service or method).
///
/// A balancing client does not retry a rate-limited call nor count it against the
/// endpoint: waiting is the caller's decision.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::governance::{KeyBy, RateLimit};
/// use rpc_core::{service, ErrorKind, Server};
///
/// #[service]
/// pub trait Search {
///     async fn find(&self, query: String) -> Vec<String>;
/// }
/// struct Index;
/// impl Search for Index {
///     async fn find(&self, query: String) -> Vec<String> { vec![query] }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let per_tenant = RateLimit::builder()
///     .rate(2, Duration::from_secs(60))
///     .key_by(KeyBy::Metadata("tenant"))
///     .build()
///     .expect("a valid rate");
/// let (client_end, server_end) = rpc_transport::memory::pair();
/// let server = Server::new().layer(per_tenant).add_service(SearchServer::new(Index));
/// tokio::spawn(server.serve_connection(server_end));
/// let search = SearchClient::new(client_end);
///
/// for _ in 0..2 {
///     assert!(search.find("rust".into()).metadata("tenant", "acme").await.is_ok());
/// }
/// let err = search.find("rust".into()).metadata("tenant", "acme").await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::RateLimited);
/// assert!(err.retry_after().is_some());
/// // Another tenant has a bucket of its own.
/// assert!(search.find("rust".into()).metadata("tenant", "globex").await.is_ok());
///
/// // Settings that make no sense are refused when the policy is built.
/// assert!(RateLimit::builder().rate(0, Duration::from_secs(1)).build().is_err());
/// # }
/// ```
pub struct RateLimit {
    limiter: Limiter,
    clock: RuntimeClock,
    /// Keyed with random keys per policy: a caller cannot choose a key that lands in
    /// another caller's bucket.
    hasher: RandomState,
    describe: String,
    key: KeyBy,
    per_method: bool,
    /// Calls checked, to forget idle callers' buckets now and then.
    checks: AtomicU64,
}

type Limiter =
    RateLimiter<u64, DefaultKeyedStateStore<u64>, RuntimeClock, NoOpMiddleware<Duration>>;

/// governor's clock on the runtime's (see `crate::clock`), so that buckets refill in paused
/// or simulated time too: the time since the limit was built.
#[derive(Debug, Clone)]
struct RuntimeClock {
    start: std::time::Instant,
}

impl Clock for RuntimeClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        crate::clock::since(self.start)
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("limit", &self.describe)
            .field("per_method", &self.per_method)
            .finish_non_exhaustive()
    }
}

/// How often (in calls) the buckets of callers that have been quiet long enough to be full
/// again are dropped, so that memory follows the active callers, not every caller ever.
const SWEEP_EVERY: u64 = 4096;

impl RateLimit {
    /// Starts building a limit: by default 100 calls per second for everyone, per method.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            calls: 100,
            period: Duration::from_secs(1),
            burst: None,
            key: KeyBy::Everyone,
            per_method: true,
        }
    }

    /// The bucket `call` draws from.
    fn bucket(&self, call: &ServerCall) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        if self.per_method {
            call.service().hash(&mut hasher);
            call.method().hash(&mut hasher);
        }
        match &self.key {
            KeyBy::Everyone => {}
            KeyBy::PeerIp => call.peer().and_then(|peer| peer.ip()).hash(&mut hasher),
            KeyBy::Identity => call
                .peer()
                .and_then(|peer| peer.identity())
                .and_then(|identity| identity.names().first())
                .hash(&mut hasher),
            KeyBy::Metadata(name) => call.metadata().get(name).hash(&mut hasher),
        }
        hasher.finish()
    }

    /// Takes a token for `call`, or says how long until there is one.
    fn check(&self, call: &ServerCall) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&self.bucket(call))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

impl Middleware<ServerCall> for RateLimit {
    async fn call(&self, call: ServerCall, next: Next<ServerCall>) -> Result<Reply, RpcError> {
        if let Err(wait) = self.check(&call) {
            return Err(RpcError::rate_limited(
                format!(
                    "`{}::{}` is limited to {}; retry in {wait:?}",
                    call.service(),
                    call.method(),
                    self.describe
                ),
                wait,
            ));
        }
        next.run(call).await
    }
}
