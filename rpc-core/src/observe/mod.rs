//! Observability: a [`tracing`] span per call on both sides, W3C trace context carried in
//! call metadata, and [`metrics`](::metrics) per service and method.
//!
//! Nothing here needs setting up in `rpc-core`: install a `tracing` subscriber and a
//! `metrics` recorder in the program, and clients and servers report to them.
//!
//! # Spans
//!
//! Every call gets an `INFO` span with target `rpc`: `rpc.client` on the calling side, from
//! when the call is sent until it completes, fails, times out or is dropped; `rpc.server` on
//! the serving side, entered around every poll of the handler (so the handler's own events
//! and spans nest in it, and so do the client spans of calls the handler makes). Fields:
//!
//! | field | on | value |
//! | --- | --- | --- |
//! | `service`, `method` | both | the service's wire name and the method's name |
//! | `request_id` | both | the request id on its connection (on a balancing client: of the latest attempt) |
//! | `peer` | both | client: the endpoint's key, on a client built with [`ClientBuilder`](crate::ClientBuilder) that connects by itself (absent on a connection given as a transport); server: what the listener reports ([`Listener::peer`](crate::Listener::peer): the client's address over TCP, the socket path over Unix) |
//! | `trace_id` | both | 32 hex digits: the same for every call of one trace, in every process |
//! | `span_id` | both | 16 hex digits. Client: this call's own id, sent to the server in `traceparent`. Server: its own id in the caller's trace, which the calls its handler makes name as their parent |
//! | `parent_id` | both | 16 hex digits, the caller's span id: on the server, the `span_id` of the client call; on a client call made from a handler, the `span_id` of the call the handler serves |
//! | `outcome` | both | `ok`, an [`ErrorKind`]'s [`as_str`](ErrorKind::as_str), or `cancelled` (the caller dropped the call, or the connection closed before the handler finished) |
//! | `duration_us` | both | microseconds from sending (client) or receiving (server) to the end |
//!
//! A balancing client records one `rpc.client` span per call, whatever the number of
//! attempts, and an event (`rpc attempt failed`, with `attempt`, `request_id`, `peer`,
//! `outcome`) for each attempt that failed.
//!
//! # Trace context
//!
//! A client call sends a `traceparent` in its metadata
//! (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, see [`TraceContext`]): the trace of
//! the handler it is made from, if any (see [`context::trace`](crate::context::trace)), else
//! a new random one; its span id is new for each call. A call that already carries a
//! `traceparent` (set with [`Call::metadata`](crate::Call::metadata), from another tracing
//! system) keeps it. The server reads an incoming `traceparent` strictly: a malformed one is
//! ignored, as if there were none.
//!
//! When no subscriber wants the `rpc` spans and the call is not made within a trace, nothing
//! is generated or sent: the plain path costs a few branches.
//!
//! # Metrics
//!
//! Per service and method (labels `service` and `method`), each as `rpc_client_…` and
//! `rpc_server_…`:
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `rpc_{client,server}_calls_started_total` | counter | calls sent (client) or received (server) |
//! | `rpc_{client,server}_calls_finished_total` | counter | calls finished, by label `outcome` (as the span field above) |
//! | `rpc_{client,server}_call_duration_seconds` | histogram | how long calls took, in seconds |
//! | `rpc_{client,server}_calls_in_flight` | gauge | calls started and not yet finished |
//! | `rpc_{client,server}_request_bytes_total` | counter | encoded arguments, in bytes |
//! | `rpc_{client,server}_response_bytes_total` | counter | encoded results, in bytes (successful calls) |
//!
//! A server also counts calls it refused before their handler started (shed while
//! overloaded or shutting down, undecodable arguments) as started and finished with that
//! outcome; a call of a method the server does not have is in no per-method metric.
//!
//! The handles are made once, when a client connection, a balancing client or a serving
//! server is created, from the recorder installed at that moment: **install the recorder
//! before creating clients and servers**. If none is installed then (neither a global one
//! nor one for the thread: `metrics` falls back to its own no-op recorder, which `rpc-core`
//! recognises), calls skip metrics altogether, clock reads included. Any recorder installed
//! counts, zero-sized ones (forwarding to a static) included.
//!
//! ```
//! use rpc_core::{service, Server};
//!
//! #[service]
//! pub trait Echo {
//!     async fn echo(&self, text: String) -> String;
//! }
//! struct Parrot;
//! impl Echo for Parrot {
//!     async fn echo(&self, text: String) -> String { text }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rpc_core::RpcError> {
//! // Any `tracing` subscriber and any `metrics` recorder; installed first.
//! // tracing_subscriber::fmt().with_span_events(FmtSpan::CLOSE).init();
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! let (client_end, server_end) = rpc_transport::memory::pair();
//! tokio::spawn(Server::new().add_service(EchoServer::new(Parrot)).serve_connection(server_end));
//! let client = EchoClient::new(client_end);
//! assert_eq!(client.echo("hi".into()).await?, "hi");
//! # Ok(()) }
//! ```

mod client;
mod metrics;
mod server;
mod trace;

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Instant;

use tracing::Span;

use crate::error::ErrorKind;

pub(crate) use client::{attempt, ClientCall};
pub(crate) use metrics::MethodTable;
pub(crate) use server::{ServerMetrics, ServerObserver};
pub use trace::{TraceContext, TRACEPARENT};

use self::metrics::MethodMetrics;
use self::trace::Hex16;

/// The target of every span and event of this crate.
pub const TARGET: &str = "rpc";

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed(ErrorKind),
    /// Nobody waits for the result any more.
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(kind) => kind.as_str(),
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The position of its counter in [`MethodMetrics`].
    fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            // The wire codes run 1..=8.
            Outcome::Failed(kind) => usize::from(kind.to_wire()),
            Outcome::Cancelled => 9,
        }
    }

    /// Every outcome, in [`index`](Outcome::index) order.
    const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::Failed(ErrorKind::DeadlineExceeded),
        Outcome::Failed(ErrorKind::Disconnected),
        Outcome::Failed(ErrorKind::Overloaded),
        Outcome::Failed(ErrorKind::Incompatible),
        Outcome::Failed(ErrorKind::Protocol),
        Outcome::Failed(ErrorKind::Internal),
        Outcome::Failed(ErrorKind::Unauthenticated),
        Outcome::Failed(ErrorKind::PermissionDenied),
        Outcome::Cancelled,
    ];
}

/// One call being observed, on either side: its span, when it started, its metrics. With
/// no subscriber and no recorder it holds nothing, and each of its methods is a branch.
pub(crate) struct Observed {
    /// In `ManuallyDrop` so that dropping an `Observed` that holds nothing is no more than
    /// the check in its `Drop`, which takes out (and so drops) anything it holds.
    active: ManuallyDrop<Option<Active>>,
}

struct Active {
    span: Span,
    start: Instant,
    metrics: Option<Arc<MethodMetrics>>,
}

/// Whether a subscriber may want `INFO` spans: the global hint, one atomic load. Only when
/// it says yes is the span's own callsite asked.
#[inline]
fn info_enabled() -> bool {
    tracing::Level::INFO <= tracing::level_filters::STATIC_MAX_LEVEL
        && tracing::Level::INFO <= tracing::level_filters::LevelFilter::current()
}

impl Observed {
    /// Nothing to observe.
    #[inline]
    pub(crate) fn off() -> Observed {
        Observed {
            active: ManuallyDrop::new(None),
        }
    }

    /// Starts observing: `span` (perhaps disabled) and `metrics` (if a recorder was
    /// installed) are told the call started with `request_bytes` of arguments.
    fn begin(span: Span, metrics: Option<&Arc<MethodMetrics>>, request_bytes: usize) -> Observed {
        if span.is_disabled() && metrics.is_none() {
            return Observed::off();
        }
        if let Some(metrics) = metrics {
            metrics.started(request_bytes);
        }
        Observed {
            active: ManuallyDrop::new(Some(Active {
                span,
                start: crate::clock::now(),
                metrics: metrics.cloned(),
            })),
        }
    }

    /// Whether there is anything to observe (a span a subscriber wants, or metrics).
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Runs `f` inside the call's span.
    #[inline]
    pub(crate) fn in_span<T>(&self, f: impl FnOnce() -> T) -> T {
        match &*self.active {
            Some(active) if !active.span.is_disabled() => active.span.in_scope(f),
            _ => f(),
        }
    }

    /// The call's span, disabled if no subscriber wants it.
    pub(crate) fn span(&self) -> Span {
        match &*self.active {
            Some(active) => active.span.clone(),
            None => Span::none(),
        }
    }

    /// The call ended this way, with `response_bytes` of results.
    #[inline]
    pub(crate) fn finish(&mut self, outcome: Outcome, response_bytes: usize) {
        if let Some(active) = self.active.take() {
            active.finish(outcome, response_bytes);
        }
    }

    /// The call (or the stream answering it) ended with `result`, after `bytes` of results.
    #[inline]
    pub(crate) fn finish_with<T>(&mut self, result: Result<T, &crate::RpcError>, bytes: usize) {
        if let Some(active) = self.active.take() {
            let outcome = match result {
                Ok(_) => Outcome::Ok,
                Err(err) => Outcome::Failed(err.kind()),
            };
            active.finish(outcome, bytes);
        }
    }

    /// Passes `result` through, finishing the observation if it is an error.
    #[inline]
    pub(crate) fn check<T>(
        &mut self,
        result: Result<T, crate::RpcError>,
    ) -> Result<T, crate::RpcError> {
        if let Err(err) = &result {
            self.finish(Outcome::Failed(err.kind()), 0);
        }
        result
    }
}

impl Active {
    #[inline(never)]
    fn finish(self, outcome: Outcome, response_bytes: usize) {
        let elapsed = crate::clock::since(self.start);
        if let Some(metrics) = &self.metrics {
            metrics.finished(outcome, elapsed, response_bytes);
        }
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome.as_str());
            self.span.record(
                "duration_us",
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            );
        }
    }
}

impl Drop for Observed {
    #[inline]
    fn drop(&mut self) {
        // Dropped before it finished: nobody waits for the call any more.
        self.finish(Outcome::Cancelled, 0);
    }
}

/// Records a trace context's ids on `span`: its trace id, `span_id`, and the caller's span
/// id as `parent_id`.
fn record_trace(span: &Span, trace: &TraceContext, parent: Option<u64>) {
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    span.record("span_id", tracing::field::display(Hex16(trace.span_id())));
    if let Some(parent) = parent {
        span.record("parent_id", tracing::field::display(Hex16(parent)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_indexed_in_order() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
        assert_eq!(
            Outcome::Failed(ErrorKind::Internal).as_str(),
            "internal error"
        );
    }
}
