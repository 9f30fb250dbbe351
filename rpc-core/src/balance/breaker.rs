//! Failure accrual: an endpoint whose calls keep failing is ejected for a while, then
//! probed with one call before it takes its share again.

use std::time::{Duration, Instant};

use crate::error::ErrorKind;

/// When an endpoint is ejected from balancing, and for how long.
///
/// After `consecutive_failures` calls in a row fail with `Disconnected`, `Overloaded`,
/// `Protocol` or `Internal` (errors that say something about the endpoint, unlike a
/// deadline the caller chose or a service's own error), the endpoint is ejected for
/// `min_ejection`; each ejection in a row doubles that, up to `max_ejection`. When it is over,
/// one call is let through as a probe: success takes the endpoint back, failure ejects it
/// again. If every endpoint is ejected, calls go to them anyway: a guess beats certain
/// failure. An endpoint that cannot be connected to at all is not ejected but reconnected
/// (see [`Backoff`](super::Backoff)), and gets no calls meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureAccrual {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub min_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
}

impl FailureAccrual {
    /// Eject after `consecutive_failures`, for 1 s doubling up to 30 s.
    pub fn new(consecutive_failures: u32) -> FailureAccrual {
        FailureAccrual {
            consecutive_failures: consecutive_failures.max(1),
            min_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }

    /// Never eject.
    pub fn disabled() -> FailureAccrual {
        FailureAccrual {
            consecutive_failures: u32::MAX,
            ..FailureAccrual::new(1)
        }
    }

    fn ejection(&self, ejections: u32) -> Duration {
        let factor = 2u32.saturating_pow(ejections.min(31));
        self.min_ejection
            .saturating_mul(factor)
            .min(self.max_ejection)
    }
}

impl Default for FailureAccrual {
    /// Eject after 5 failures in a row, for 1 s doubling up to 30 s.
    fn default() -> FailureAccrual {
        FailureAccrual::new(5)
    }
}

/// Whether a call's error counts against its endpoint.
pub(crate) fn counts(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Disconnected | ErrorKind::Overloaded | ErrorKind::Protocol | ErrorKind::Internal
    )
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Closed,
    Open {
        until: Instant,
    },
    /// One probe call is out. A probe that ends with neither a success nor a counted
    /// failure (it timed out, was cancelled, found the connection gone) gives no verdict, so
    /// another probe is let through at `next`, not never.
    Probing {
        next: Instant,
    },
}

/// One endpoint's failure accrual.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: u32,
    ejections: u32,
    state: State,
}

impl Breaker {
    /// Whether the endpoint may get a call now.
    pub(crate) fn allows(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::Probing { next } => now >= next,
        }
    }

    pub(crate) fn is_ejected(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    /// The endpoint got a call.
    pub(crate) fn admit(&mut self, now: Instant, policy: &FailureAccrual) {
        let due = match self.state {
            State::Closed => return,
            State::Open { until } => until,
            State::Probing { next } => next,
        };
        if now >= due {
            self.state = State::Probing {
                next: now + policy.ejection(self.ejections.saturating_sub(1)),
            };
        }
    }

    pub(crate) fn success(&mut self) {
        self.failures = 0;
        self.ejections = 0;
        self.state = State::Closed;
    }

    pub(crate) fn failure(&mut self, policy: &FailureAccrual, now: Instant) {
        match self.state {
            State::Probing { .. } => self.eject(policy, now),
            State::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= policy.consecutive_failures {
                    self.eject(policy, now);
                }
            }
            // A call admitted before the ejection: no news.
            State::Open { .. } => {}
        }
    }

    fn eject(&mut self, policy: &FailureAccrual, now: Instant) {
        self.state = State::Open {
            until: now + policy.ejection(self.ejections),
        };
        self.ejections = self.ejections.saturating_add(1);
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_probes_and_recovers() {
        let policy = FailureAccrual::new(3);
        let mut breaker = Breaker::default();
        let t0 = crate::clock::now();
        breaker.failure(&policy, t0);
        breaker.failure(&policy, t0);
        assert!(breaker.allows(t0));
        breaker.failure(&policy, t0);
        assert!(!breaker.allows(t0));
        let later = t0 + Duration::from_secs(1);
        assert!(breaker.allows(later));
        breaker.admit(later, &policy);
        assert!(!breaker.allows(later), "one probe at a time");
        breaker.failure(&policy, later);
        // The second ejection lasts twice as long.
        assert!(!breaker.allows(later + Duration::from_millis(1999)));
        let probe = later + Duration::from_secs(2);
        assert!(breaker.allows(probe));
        breaker.admit(probe, &policy);
        breaker.success();
        assert!(breaker.allows(probe) && !breaker.is_ejected());
    }

    #[test]
    fn a_probe_without_a_verdict_is_followed_by_another() {
        let policy = FailureAccrual::new(1);
        let mut breaker = Breaker::default();
        let t0 = crate::clock::now();
        breaker.failure(&policy, t0);
        let probe = t0 + Duration::from_secs(1);
        breaker.admit(probe, &policy);
        assert!(!breaker.allows(probe));
        // The probe timed out or was cancelled: nothing is reported. One ejection later,
        // another probe may go.
        assert!(breaker.allows(probe + Duration::from_secs(1)));
        assert!(breaker.is_ejected());
    }

    #[test]
    fn a_success_resets_the_count() {
        let policy = FailureAccrual::new(2);
        let mut breaker = Breaker::default();
        let now = crate::clock::now();
        breaker.failure(&policy, now);
        breaker.success();
        breaker.failure(&policy, now);
        assert!(breaker.allows(now));
        assert!(counts(ErrorKind::Overloaded) && !counts(ErrorKind::DeadlineExceeded));
    }
}
