//! Server load reports: a server tells its balancing clients how busy it is, on the replies
//! it sends anyway, so that [`LeastLoaded`](crate::balance::LeastLoaded) steers calls
//! away from a server that is busy with other clients' work, not only with its own.
//!
//! What a server reports is the number of calls its handlers are running, over all its
//! connections, and a *utilization* its service may set through a [`LoadReporter`] (CPU
//! use, queue depth against capacity: any figure where 0 is idle and 1 is full). A report
//! goes out as a small `Load` frame written with the replies of each write, when the
//! figures changed since the connection's last report; only to clients that asked for
//! them (balancing clients do; a client of one connection, with no choice to make, does not
//! and pays nothing), so peers of earlier versions are unaffected.
//!
//! A balancing client keeps each endpoint's latest report, and weighs it less as it ages:
//! down to nothing after [`REPORT_TTL`], or after [`IDLE_REPORT_TTL`] when the client has
//! no call on that server (a server it has stopped calling sends it no newer report, and an
//! old one must not keep it away for long). Strategies read the report with
//! [`Endpoints::reported_load`](crate::balance::Endpoints::reported_load).
//!
//! ```
//! use rpc_core::Server;
//!
//! let server = Server::new();
//! let reporter = server.load_reporter();
//! // A service that knows its own capacity says how much of it is used.
//! reporter.set_utilization(0.75);
//! assert_eq!(reporter.utilization(), 0.75);
//! assert_eq!(reporter.calls_in_progress(), 0);
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a balancing client trusts a server's report while it has calls on that
/// server (each reply brings a newer one); the report counts for less as it ages.
pub const REPORT_TTL: Duration = Duration::from_secs(1);

/// How long a balancing client trusts a server's report when it has no call on that
/// server: no newer report is coming, and a server that every client keeps avoiding on the
/// strength of an old report would stay idle while the others queue.
pub const IDLE_REPORT_TTL: Duration = Duration::from_millis(100);

/// Utilization on the wire: ten-thousandths.
const SCALE: f64 = 10_000.0;

/// A server's load as its last report gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLoad {
    /// Calls the server's handlers were running, for all its clients.
    pub in_flight: u32,
    /// The utilization its service set (0 when it sets none); 1 is fully used.
    pub utilization: f64,
}

/// A report's utilization is a whole number of ten-thousandths, never NaN.
impl Eq for ServerLoad {}

/// The load figures of one server, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct LoadState {
    in_flight: AtomicUsize,
    /// Ten-thousandths.
    utilization: AtomicU32,
}

impl LoadState {
    /// A handler started.
    #[inline]
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// `calls` handlers ended (finished, or dropped with their connection).
    #[inline]
    pub(crate) fn ended(&self, calls: usize) {
        self.in_flight.fetch_sub(calls, Ordering::Relaxed);
    }

    /// Calls in flight now.
    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The figures as they go on the wire: (calls in flight, utilization in ten-thousandths).
    #[inline]
    pub(crate) fn wire(&self) -> (u32, u32) {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        (
            u32::try_from(in_flight).unwrap_or(u32::MAX),
            self.utilization.load(Ordering::Relaxed),
        )
    }
}

/// Sets the utilization a server reports to its balancing clients, and reads its load:
/// [`Server::load_reporter`](crate::Server::load_reporter). Cheap to clone; stays valid
/// after the server is started.
#[derive(Debug, Clone)]
pub struct LoadReporter {
    pub(crate) state: Arc<LoadState>,
}

impl LoadReporter {
    /// Sets the utilization reported from now on: 0 is idle, 1 fully used (larger values
    /// say overloaded; negative and NaN count as 0). It goes out with the next replies.
    pub fn set_utilization(&self, utilization: f64) {
        let scaled = (utilization.max(0.0) * SCALE)
            .round()
            .min(f64::from(u32::MAX));
        // NaN fails `max` into 0.0 above: `f64::max` returns the other operand.
        self.state
            .utilization
            .store(scaled as u32, Ordering::Relaxed);
    }

    /// The utilization last set (to a ten-thousandth).
    pub fn utilization(&self) -> f64 {
        f64::from(self.state.utilization.load(Ordering::Relaxed)) / SCALE
    }

    /// Calls the server's handlers are running now, over all its connections.
    pub fn calls_in_progress(&self) -> usize {
        self.state.in_flight()
    }
}

/// The latest report a balancing client got from one endpoint.
#[derive(Debug)]
pub(crate) struct ReportedLoad {
    /// `in_flight << 32 | utilization`, one word so that a reader never mixes two reports.
    figures: AtomicU64,
    /// When it came, in ms after `epoch` (+1, so that 0 means never).
    at: AtomicU64,
    epoch: Instant,
}

impl ReportedLoad {
    pub(crate) fn new() -> ReportedLoad {
        ReportedLoad {
            figures: AtomicU64::new(0),
            at: AtomicU64::new(0),
            epoch: crate::clock::now(),
        }
    }

    /// A report arrived.
    pub(crate) fn record(&self, in_flight: u32, utilization: u32) {
        self.figures.store(
            u64::from(in_flight) << 32 | u64::from(utilization),
            Ordering::Relaxed,
        );
        let ms = crate::clock::since(self.epoch).as_millis() as u64;
        self.at.store(ms.saturating_add(1), Ordering::Relaxed);
    }

    /// The latest report, if it is younger than [`REPORT_TTL`] at `now`.
    pub(crate) fn fresh(&self, now: Instant) -> Option<ServerLoad> {
        self.trusted(now, false).map(|(load, _)| load)
    }

    /// The latest report and how much it is still worth at `now` (the caller's reading of
    /// the runtime's clock, one for all the endpoints it weighs): 1 when it has just come,
    /// falling to 0 at [`REPORT_TTL`], or at [`IDLE_REPORT_TTL`] when this client has no
    /// call on the server (`idle`), as no newer report is on its way then.
    pub(crate) fn trusted(&self, now: Instant, idle: bool) -> Option<(ServerLoad, f64)> {
        let at = self.at.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let now = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let ttl = if idle { IDLE_REPORT_TTL } else { REPORT_TTL }.as_millis() as u64;
        let age = now.saturating_sub(at);
        if age > ttl {
            return None;
        }
        let figures = self.figures.load(Ordering::Relaxed);
        let load = ServerLoad {
            in_flight: (figures >> 32) as u32,
            utilization: f64::from(figures as u32) / SCALE,
        };
        Some((load, 1.0 - age as f64 / ttl as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_clamped_and_kept_to_a_ten_thousandth() {
        let reporter = LoadReporter {
            state: Arc::default(),
        };
        for (set, read) in [(0.123456, 0.1235), (-1.0, 0.0), (f64::NAN, 0.0), (2.5, 2.5)] {
            reporter.set_utilization(set);
            assert_eq!(reporter.utilization(), read, "{set}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_is_trusted_for_its_ttl_only() {
        let reported = ReportedLoad::new();
        assert_eq!(reported.fresh(crate::clock::now()), None);
        reported.record(7, 2_500);
        assert_eq!(
            reported.fresh(crate::clock::now()),
            Some(ServerLoad {
                in_flight: 7,
                utilization: 0.25
            })
        );
        assert_eq!(
            reported
                .trusted(crate::clock::now(), true)
                .map(|(_, trust)| trust),
            Some(1.0)
        );
        // Half way through the idle TTL: worth half, unless the client has calls there.
        tokio::time::advance(IDLE_REPORT_TTL / 2).await;
        assert_eq!(
            reported
                .trusted(crate::clock::now(), true)
                .map(|(_, trust)| trust),
            Some(0.5)
        );
        assert_eq!(
            reported
                .trusted(crate::clock::now(), false)
                .map(|(_, trust)| trust),
            Some(0.95)
        );
        tokio::time::advance(IDLE_REPORT_TTL).await;
        assert_eq!(reported.trusted(crate::clock::now(), true), None);
        assert!(reported.fresh(crate::clock::now()).is_some());
        tokio::time::advance(REPORT_TTL).await;
        assert_eq!(reported.fresh(crate::clock::now()), None);
    }
}
