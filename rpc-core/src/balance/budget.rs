//! The retry budget: retries may add only a bounded fraction to the load of a client.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many retries a client may make: at most `ratio` × the calls it made in the last
/// `window`, plus `min_per_second` × the window's seconds so that a client making few calls
/// can still retry some. When every server fails, retries stop at this bound instead of
/// multiplying the load on servers that are already in trouble.
///
/// The defaults (`ratio` 0.2, 10 per second, a 10 s window) are Finagle's.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::balance::RetryBudget;
///
/// // Retries may add at most 10% to the calls, and no floor.
/// let budget = RetryBudget::new(0.1).min_per_second(0).window(Duration::from_secs(60));
/// assert_eq!(budget.ratio, 0.1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per call made.
    pub ratio: f64,
    /// Retries allowed per second of the window regardless of the calls made.
    pub min_per_second: u32,
    /// How far back calls and retries are counted.
    pub window: Duration,
}

impl RetryBudget {
    /// A budget of `ratio` retries per call, 10 per second and a 10 s window.
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio: ratio.max(0.0),
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }

    /// No retries at all.
    pub fn none() -> RetryBudget {
        RetryBudget::new(0.0).min_per_second(0)
    }

    /// Sets the retries allowed per second whatever the number of calls.
    pub fn min_per_second(mut self, retries: u32) -> RetryBudget {
        self.min_per_second = retries;
        self
    }

    /// Sets how far back calls and retries are counted.
    pub fn window(mut self, window: Duration) -> RetryBudget {
        self.window = window.max(Duration::from_millis(10));
        self
    }
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget::new(0.2)
    }
}

/// Slices the window is counted in.
const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    calls: u64,
    retries: u64,
}

/// The counts behind a [`RetryBudget`].
#[derive(Debug)]
pub(crate) struct Budget {
    policy: RetryBudget,
    state: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    start: Instant,
    /// The slice `slots[current % SLOTS]` counts.
    current: u64,
    slots: [Slot; SLOTS],
}

impl Budget {
    pub(crate) fn new(policy: RetryBudget) -> Budget {
        Budget {
            policy,
            state: Mutex::new(Counts {
                start: crate::clock::now(),
                current: 0,
                slots: [Slot::default(); SLOTS],
            }),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        let mut counts = crate::lock::lock(&self.state);
        let slice = self.policy.window.as_nanos() / SLOTS as u128;
        let now = (crate::clock::since(counts.start).as_nanos() / slice.max(1)) as u64;
        // Forget the slices that fell out of the window.
        let stale = now.saturating_sub(counts.current).min(SLOTS as u64);
        for step in 1..=stale {
            let index = ((counts.current + step) % SLOTS as u64) as usize;
            counts.slots[index] = Slot::default();
        }
        counts.current = counts.current.max(now);
        counts
    }

    /// A call was made.
    pub(crate) fn deposit(&self) {
        let mut counts = self.counts();
        let index = (counts.current % SLOTS as u64) as usize;
        counts.slots[index].calls += 1;
    }

    /// Takes one retry from the budget, if it has one.
    pub(crate) fn withdraw(&self) -> bool {
        let mut counts = self.counts();
        let (calls, retries) = counts
            .slots
            .iter()
            .fold((0, 0), |(c, r), slot| (c + slot.calls, r + slot.retries));
        let allowed = self.policy.ratio * calls as f64
            + f64::from(self.policy.min_per_second) * self.policy.window.as_secs_f64();
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        let index = (counts.current % SLOTS as u64) as usize;
        counts.slots[index].retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_the_ratio_of_calls() {
        let budget = Budget::new(
            RetryBudget::new(0.25)
                .min_per_second(0)
                .window(Duration::from_secs(3600)),
        );
        let mut granted = 0;
        for _ in 0..100 {
            budget.deposit();
            if budget.withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 25);
        assert!(!Budget::new(RetryBudget::none()).withdraw());
    }

    #[test]
    fn the_floor_allows_retries_without_calls() {
        let budget = Budget::new(
            RetryBudget::new(0.0)
                .min_per_second(2)
                .window(Duration::from_secs(3600)),
        );
        let granted = (0..10_000).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 7200);
    }
}
