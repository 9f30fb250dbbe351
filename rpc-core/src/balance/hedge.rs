//! Hedged calls: a call of an idempotent method that has not been answered after a delay is
//! sent again to another endpoint; the first answer wins and the other attempt is cancelled.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// When a balancing client sends a second request for a call still unanswered: after a
/// fixed delay ([`Hedge::after`]) or after a percentile of the method's recent latencies
/// ([`Hedge::percentile`]). Set with
/// [`ClientBuilder::hedge`](crate::ClientBuilder::hedge); clients do not hedge unless told
/// to.
///
/// Only methods marked `#[rpc(idempotent)]` that neither take nor return a stream are
/// hedged. The extra request goes to an endpoint the call has not tried (no hedge when
/// there is none), the first answer wins, and the request still running is cancelled (the
/// server is sent `Cancel` and drops its handler). Each hedge takes one retry from the
/// client's [`RetryBudget`](super::RetryBudget): when the budget is spent, no hedge is sent,
/// so a fleet that is slow everywhere is not sent twice the calls.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::balance::{Hedge, HedgeError};
///
/// # fn main() -> Result<(), HedgeError> {
/// // A second request after 20 ms.
/// let fixed = Hedge::after(Duration::from_millis(20));
/// // After the 95th percentile of the method's recent latencies, once 50 calls answered,
/// // and never before 2 ms; up to two extra requests per call.
/// let adaptive = Hedge::percentile(0.95)?
///     .min_samples(50)
///     .floor(Duration::from_millis(2))
///     .max_attempts(3)?;
/// assert_eq!(adaptive.get_max_attempts(), 3);
/// assert!(Hedge::percentile(1.5).is_err());
/// assert!(fixed.max_attempts(1).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    pub(crate) delay: Delay,
    /// The most requests one call sends by hedging, the first included.
    max_attempts: u32,
}

/// How long a call waits before it is hedged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Delay {
    Fixed(Duration),
    Percentile {
        quantile: f64,
        floor: Duration,
        min_samples: u32,
    },
}

/// Why a [`Hedge`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HedgeError {
    message: String,
}

impl fmt::Display for HedgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid hedging configuration: {}", self.message)
    }
}

impl std::error::Error for HedgeError {}

/// The samples a percentile delay starts from unless told otherwise.
const DEFAULT_MIN_SAMPLES: u32 = 20;

/// Tokio's timers tick once a millisecond: a shorter delay is no delay.
const DEFAULT_FLOOR: Duration = Duration::from_millis(1);

impl Hedge {
    /// Hedges a call still unanswered `delay` after it was sent. A zero delay sends both
    /// requests at once (within the budget). Any delay is valid, so this one constructor
    /// cannot fail.
    pub fn after(delay: Duration) -> Hedge {
        Hedge {
            delay: Delay::Fixed(delay),
            max_attempts: 2,
        }
    }

    /// Hedges a call still unanswered after the `quantile` (0.95 for the 95th percentile)
    /// of its method's recent latencies: those of the last 256 answered requests of that
    /// method, tracked by the client. Until the method has [`min_samples`](Hedge::min_samples)
    /// of them (20 by default), its calls are not hedged; the delay is never below the
    /// [`floor`](Hedge::floor) (1 ms by default). `quantile` must be strictly between 0 and
    /// 1.
    pub fn percentile(quantile: f64) -> Result<Hedge, HedgeError> {
        // Written so that NaN fails too.
        if !(quantile > 0.0 && quantile < 1.0) {
            return Err(HedgeError {
                message: format!(
                    "the percentile must be strictly between 0 and 1 (0.95 for the 95th), \
                     not {quantile}"
                ),
            });
        }
        Ok(Hedge {
            delay: Delay::Percentile {
                quantile,
                floor: DEFAULT_FLOOR,
                min_samples: DEFAULT_MIN_SAMPLES,
            },
            max_attempts: 2,
        })
    }

    /// The most requests one call sends by hedging, the first included: 2 by default (one
    /// hedge); each further one waits the delay again. Less than 2 is an error (1 would
    /// never hedge: leave hedging off instead). Retries after failures are counted apart,
    /// by [`ClientBuilder::max_attempts`](crate::ClientBuilder::max_attempts).
    pub fn max_attempts(mut self, attempts: u32) -> Result<Hedge, HedgeError> {
        if attempts < 2 {
            return Err(HedgeError {
                message: format!(
                    "max_attempts counts the first request too, so it must be at least 2 \
                     (one hedge), not {attempts}"
                ),
            });
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// For a percentile delay, the answered requests a method needs before its calls are
    /// hedged (at least 1); a fixed delay ignores it.
    pub fn min_samples(mut self, samples: u32) -> Hedge {
        if let Delay::Percentile { min_samples, .. } = &mut self.delay {
            *min_samples = samples.clamp(1, RING as u32);
        }
        self
    }

    /// For a percentile delay, the shortest delay, however fast the method's recent calls
    /// were; a fixed delay ignores it.
    pub fn floor(mut self, shortest: Duration) -> Hedge {
        if let Delay::Percentile { floor, .. } = &mut self.delay {
            *floor = shortest;
        }
        self
    }

    /// The most requests one call sends by hedging, the first included.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }
}

/// Latencies kept per method.
const RING: usize = 256;

/// The percentile is recomputed once every this many samples, not on every call.
const RECOMPUTE_EVERY: usize = 16;

/// The recent latencies of one method, in microseconds: a ring written without locks (a
/// racing writer may overwrite another's sample, which only loses a sample), and the delay
/// derived from them, recomputed every [`RECOMPUTE_EVERY`] samples so a call reads it with
/// one atomic load.
pub(crate) struct Latencies {
    samples: [AtomicU32; RING],
    /// Samples recorded so far (the next one goes to `written % RING`).
    written: AtomicUsize,
    /// The current delay in microseconds; `u64::MAX` while there are too few samples.
    delay_us: AtomicU64,
}

impl Latencies {
    pub(crate) fn new() -> Latencies {
        Latencies {
            samples: std::array::from_fn(|_| AtomicU32::new(0)),
            written: AtomicUsize::new(0),
            delay_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Records an answered request's latency, and recomputes the delay when it is due.
    pub(crate) fn record(&self, latency: Duration, quantile: f64, min_samples: u32) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        self.samples[n % RING].store(us, Ordering::Relaxed);
        let count = n + 1;
        let due = count % RECOMPUTE_EVERY == 0 || count == min_samples as usize;
        if count < min_samples as usize || !due {
            return;
        }
        let mut sorted = [0u32; RING];
        let len = count.min(RING);
        for (slot, sample) in sorted.iter_mut().zip(&self.samples[..len]) {
            *slot = sample.load(Ordering::Relaxed);
        }
        let sorted = &mut sorted[..len];
        // The nearest-rank percentile.
        let rank = ((len as f64 * quantile).ceil() as usize).clamp(1, len) - 1;
        let (_, &mut at, _) = sorted.select_nth_unstable(rank);
        self.delay_us.store(u64::from(at), Ordering::Relaxed);
    }

    /// The delay, or `None` while the method has too few samples.
    pub(crate) fn delay(&self, floor: Duration) -> Option<Duration> {
        match self.delay_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us).max(floor)),
        }
    }
}

/// The hedging state of a pool: its policy, and the latencies of each method it may hedge
/// when the delay is a percentile.
pub(crate) struct Hedging {
    pub(crate) policy: Hedge,
    /// Indexed by method; `None` for methods never hedged, or when the delay is fixed.
    latencies: Vec<Option<Box<Latencies>>>,
}

impl Hedging {
    pub(crate) fn new(policy: Hedge, desc: &crate::ServiceDescriptor) -> Hedging {
        let latencies = desc
            .methods
            .iter()
            .map(|m| {
                let tracked = matches!(policy.delay, Delay::Percentile { .. })
                    && m.idempotent
                    && !m.client_streaming
                    && !m.server_streaming;
                tracked.then(|| Box::new(Latencies::new()))
            })
            .collect();
        Hedging { policy, latencies }
    }

    /// How long a call of `method` waits before a hedge, or `None` if it is not hedged now.
    pub(crate) fn delay(&self, method: u32) -> Option<Duration> {
        match self.policy.delay {
            Delay::Fixed(delay) => Some(delay),
            Delay::Percentile { floor, .. } => {
                self.latencies.get(method as usize)?.as_ref()?.delay(floor)
            }
        }
    }

    /// An attempt of `method` was answered after `latency`.
    pub(crate) fn answered(&self, method: u32, latency: Duration) {
        if let Delay::Percentile {
            quantile,
            min_samples,
            ..
        } = self.policy.delay
        {
            if let Some(Some(latencies)) = self.latencies.get(method as usize) {
                latencies.record(latency, quantile, min_samples);
            }
        }
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        self.policy.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_errors() {
        for q in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let err = Hedge::percentile(q).expect_err("out of range");
            assert!(
                err.to_string().contains("strictly between 0 and 1"),
                "{err}"
            );
        }
        let hedge = Hedge::after(Duration::from_millis(5));
        assert!(hedge.max_attempts(0).is_err());
        assert!(hedge.max_attempts(1).is_err());
        assert_eq!(hedge.max_attempts(4).map(|h| h.get_max_attempts()), Ok(4));
    }

    #[test]
    fn the_delay_follows_the_percentile_once_there_are_enough_samples() {
        let latencies = Latencies::new();
        for ms in 1..=19 {
            latencies.record(Duration::from_millis(ms), 0.9, 20);
            assert_eq!(latencies.delay(Duration::ZERO), None);
        }
        latencies.record(Duration::from_millis(20), 0.9, 20);
        assert_eq!(
            latencies.delay(Duration::ZERO),
            Some(Duration::from_millis(18))
        );
        // The floor wins over faster samples.
        assert_eq!(
            latencies.delay(Duration::from_millis(50)),
            Some(Duration::from_millis(50))
        );
        // Old samples fall out of the ring.
        for _ in 0..RING {
            latencies.record(Duration::from_millis(3), 0.9, 20);
        }
        assert_eq!(
            latencies.delay(Duration::ZERO),
            Some(Duration::from_millis(3))
        );
    }
}
