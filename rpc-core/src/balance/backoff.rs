//! Exponential backoff with jitter, for reconnecting and for retrying on the same endpoint.

use std::time::Duration;

use super::strategy::Rng;

/// Exponentially growing, jittered delays: `initial`, then ×`multiplier` per consecutive
/// failure up to `max`, each shortened by a random part of up to `jitter` (0.0–1.0) so
/// clients that failed together do not come back together.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::balance::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// assert!(backoff.delay(1) <= Duration::from_millis(100));
/// assert!(backoff.delay(30) <= Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Growth per consecutive failure.
    pub multiplier: f64,
    /// The largest fraction of a delay taken off at random.
    pub jitter: f64,
}

impl Backoff {
    /// Delays from `initial` doubling up to `max`, with 20% jitter.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    /// The delay after `failures` consecutive failures (0 means none: no delay).
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, &Rng::random())
    }

    pub(crate) fn delay_with(&self, failures: u32, rng: &Rng) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(failures - 1).unwrap_or(i32::MAX).min(64);
        let grown = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = grown.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0) * rng.unit();
        Duration::from_secs_f64((capped * (1.0 - jitter)).max(0.0))
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s, 20% jitter.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters_within_bounds() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let rng = Rng::seeded(7);
        assert_eq!(backoff.delay_with(0, &rng), Duration::ZERO);
        for failures in 1..40 {
            let full = (0.1 * 2f64.powi(failures as i32 - 1)).min(1.0);
            let delay = backoff.delay_with(failures, &rng).as_secs_f64();
            assert!(
                delay <= full + 1e-9 && delay >= full * 0.8 - 1e-9,
                "{failures}: {delay}"
            );
        }
    }
}
