//! [`AdaptiveConcurrency`]: a concurrency limit that follows the service's latency.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{ConfigError, Priority};
use crate::error::{ErrorKind, RpcError};
use crate::lock::lock;
use crate::middleware::{Middleware, Next, Reply, ServerCall};

/// Builds an [`AdaptiveConcurrency`]; start with [`AdaptiveConcurrency::builder`].
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrencyBuilder {
    initial: usize,
    min: usize,
    max: usize,
    tolerance: f64,
    shed_by_deadline: bool,
}

impl AdaptiveConcurrencyBuilder {
    /// The limit to start from, before any latency is known (default 20).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.initial = limit;
        self
    }

    /// The limit never goes below `min` nor above `max` (defaults 1 and 1000). `min ==
    /// max` makes it a fixed limit that still sheds by priority and deadline.
    pub fn limits(mut self, min: usize, max: usize) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// How much slower than the fastest recent latency calls may get before the limit
    /// shrinks (default 1.5: 50% slower). Higher lets more calls queue in the service.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Whether a call whose remaining deadline is shorter than its method's typical service
    /// time is refused at once (default `true`): it would miss its deadline anyway, after
    /// taking a place others could use.
    pub fn shed_by_deadline(mut self, on: bool) -> Self {
        self.shed_by_deadline = on;
        self
    }

    /// The policy, or what is wrong with its settings.
    pub fn build(self) -> Result<AdaptiveConcurrency, ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new(
                "AdaptiveConcurrency: a minimum limit of 0 would refuse every call once the \
                 limit falls there; give a minimum of at least 1",
            ));
        }
        if self.min > self.max {
            return Err(ConfigError::new(format!(
                "AdaptiveConcurrency: the minimum limit {} is above the maximum {}",
                self.min, self.max
            )));
        }
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Err(ConfigError::new(format!(
                "AdaptiveConcurrency: a tolerance of {} would shrink the limit even when \
                 calls are as fast as they get; give 1.0 or more (1.5 is a good start)",
                self.tolerance
            )));
        }
        let initial = self.initial.clamp(self.min, self.max);
        Ok(AdaptiveConcurrency {
            shared: Arc::new(Shared {
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(initial),
                estimator: Mutex::new(Estimator::new(initial as f64)),
                min: self.min,
                max: self.max,
                tolerance: self.tolerance,
                shed_by_deadline: self.shed_by_deadline,
            }),
        })
    }
}

/// Overload protection: a server-side concurrency limit found from observed latency, as
/// TCP's congestion control finds a window, instead of a fixed number.
///
/// The limit moves with the latency of the calls it admits: while they run about as fast
/// as the fastest seen recently, it grows; once they slow down beyond
/// [`tolerance`](AdaptiveConcurrencyBuilder::tolerance) (calls queueing for a database, a
/// lock, the CPU), it shrinks in proportion. Calls above the limit fail at once with
/// [`Overloaded`](ErrorKind::Overloaded) (a balancing client tries another endpoint), so
/// the calls admitted keep their latency while the server is offered more than it can do.
///
/// Two more rules shed the right calls first:
/// - a call's [`Priority`] (the caller's `rpc-priority` metadata): `Sheddable` calls may
///   fill half the limit, `Default` ones four fifths, `Critical` ones all of it;
/// - a call whose remaining deadline is shorter than its method's typical service time is
///   refused at once with [`DeadlineExceeded`](ErrorKind::DeadlineExceeded).
///
/// One policy covers every connection of the server it is installed on (cloning it shares
/// the limit).
///
/// ```
/// use rpc_core::governance::AdaptiveConcurrency;
/// use rpc_core::{service, Server};
///
/// #[service]
/// pub trait Report {
///     async fn build(&self, id: u64) -> String;
/// }
/// struct Reports;
/// impl Report for Reports {
///     async fn build(&self, id: u64) -> String { format!("report {id}") }
/// }
///
/// let limit = AdaptiveConcurrency::builder().limits(4, 256).build().expect("valid limits");
/// let server = Server::new().layer(limit.clone()).add_service(ReportServer::new(Reports));
/// assert_eq!(limit.limit(), 20);
/// # drop(server);
/// assert!(AdaptiveConcurrency::builder().limits(0, 10).build().is_err());
/// ```
#[derive(Clone)]
pub struct AdaptiveConcurrency {
    shared: Arc<Shared>,
}

struct Shared {
    in_flight: AtomicUsize,
    /// The current limit, rounded; read by every call without the lock.
    limit: AtomicUsize,
    estimator: Mutex<Estimator>,
    min: usize,
    max: usize,
    tolerance: f64,
    shed_by_deadline: bool,
}

impl fmt::Debug for AdaptiveConcurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrency")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl AdaptiveConcurrency {
    /// Starts building the policy.
    pub fn builder() -> AdaptiveConcurrencyBuilder {
        AdaptiveConcurrencyBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            tolerance: 1.5,
            shed_by_deadline: true,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Calls admitted and running now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

/// A place under the limit, given back when the call ends (however it ends).
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Middleware<ServerCall> for AdaptiveConcurrency {
    async fn call(&self, call: ServerCall, next: Next<ServerCall>) -> Result<Reply, RpcError> {
        let shared = &*self.shared;
        let limit = shared.limit.load(Ordering::Relaxed);
        let priority = Priority::of(call.metadata());
        let allowed = priority.share(limit);
        let running = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let admission = Admission(&shared.in_flight);
        if running >= allowed {
            return Err(RpcError::new(
                ErrorKind::Overloaded,
                format!(
                    "the server is at its concurrency limit for {} calls ({allowed} of an \
                     adaptive limit of {limit}); retry later or elsewhere",
                    priority.as_str()
                ),
            ));
        }
        let key = (call.service(), call.method());
        if shared.shed_by_deadline {
            if let Some(remaining) = call.remaining() {
                let typical = lock(&shared.estimator).typical.get(&key).copied();
                if let Some(typical) = typical.filter(|typical| remaining < *typical) {
                    return Err(RpcError::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "`{}` typically takes {typical:?} here and the call has {remaining:?} \
                             left: refused at once rather than run to miss its deadline",
                            call.method()
                        ),
                    ));
                }
            }
        }
        let started = Instant::now();
        let outcome = next.run(call).await;
        let latency = started.elapsed();
        drop(admission);
        let mut estimator = lock(&shared.estimator);
        if outcome.is_ok() {
            estimator.note_service_time(key, latency);
        }
        if let Some(limit) = estimator.sample(latency, running + 1, shared) {
            shared.limit.store(limit, Ordering::Relaxed);
        }
        outcome
    }
}

/// Samples per window at least, and how long a window lasts at least.
const WINDOW_SAMPLES: u32 = 10;
const WINDOW_TIME: Duration = Duration::from_millis(20);
/// How long the fastest latency seen stays the reference before it is measured afresh (a
/// service that became slower for good gets a new reference).
const BASELINE_TTL: Duration = Duration::from_secs(10);
/// How far each window moves the limit towards its new estimate.
const SMOOTHING: f64 = 0.2;

/// The gradient estimate: the limit shrinks by the ratio of the fastest recent latency
/// (times the tolerance) to this window's, and grows by a small queue allowance while
/// latency stays within tolerance.
struct Estimator {
    limit: f64,
    window_start: Option<Instant>,
    samples: u32,
    total: Duration,
    /// The most calls seen running at once in this window.
    peak: usize,
    /// The fastest window's mean latency, and when it was measured.
    baseline: Option<(Duration, Instant)>,
    /// Each method's typical service time (a moving average of its successful calls).
    typical: HashMap<(&'static str, &'static str), Duration>,
}

impl Estimator {
    fn new(limit: f64) -> Estimator {
        Estimator {
            limit,
            window_start: None,
            samples: 0,
            total: Duration::ZERO,
            peak: 0,
            baseline: None,
            typical: HashMap::new(),
        }
    }

    fn note_service_time(&mut self, key: (&'static str, &'static str), latency: Duration) {
        self.typical
            .entry(key)
            .and_modify(|typical| *typical = typical.mul_f64(0.9) + latency.mul_f64(0.1))
            .or_insert(latency);
    }

    /// Adds a call's latency; at the end of a window, the new limit.
    fn sample(&mut self, latency: Duration, running: usize, shared: &Shared) -> Option<usize> {
        let now = Instant::now();
        let start = *self.window_start.get_or_insert(now);
        self.samples += 1;
        self.total += latency;
        self.peak = self.peak.max(running);
        if self.samples < WINDOW_SAMPLES || now.duration_since(start) < WINDOW_TIME {
            return None;
        }
        let mean = self.total / self.samples;
        let peak = self.peak;
        self.window_start = Some(now);
        self.samples = 0;
        self.total = Duration::ZERO;
        self.peak = 0;

        let baseline = match self.baseline {
            Some((fastest, at)) if mean >= fastest && now.duration_since(at) < BASELINE_TTL => {
                fastest
            }
            _ => {
                self.baseline = Some((mean, now));
                mean
            }
        };
        let ratio = shared.tolerance * baseline.as_secs_f64() / mean.as_secs_f64().max(1e-9);
        let gradient = ratio.clamp(0.5, 1.0);
        // Growing a limit the callers do not use would let a burst through unchecked.
        let queue = if (peak as f64) < self.limit / 2.0 {
            0.0
        } else {
            self.limit.sqrt()
        };
        let estimate = self.limit * gradient + queue;
        self.limit = (self.limit * (1.0 - SMOOTHING) + estimate * SMOOTHING)
            .clamp(shared.min as f64, shared.max as f64);
        Some(self.limit.round() as usize)
    }
}
