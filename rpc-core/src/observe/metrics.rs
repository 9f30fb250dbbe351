//! Metric handles per method, made once and shared by every call of that method.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};

use super::Outcome;
use crate::descriptor::ServiceDescriptor;

/// The names of one side's metrics.
pub(crate) struct Names {
    started: &'static str,
    finished: &'static str,
    duration: &'static str,
    in_flight: &'static str,
    request_bytes: &'static str,
    response_bytes: &'static str,
}

pub(crate) const CLIENT: Names = Names {
    started: "rpc_client_calls_started_total",
    finished: "rpc_client_calls_finished_total",
    duration: "rpc_client_call_duration_seconds",
    in_flight: "rpc_client_calls_in_flight",
    request_bytes: "rpc_client_request_bytes_total",
    response_bytes: "rpc_client_response_bytes_total",
};

pub(crate) const SERVER: Names = Names {
    started: "rpc_server_calls_started_total",
    finished: "rpc_server_calls_finished_total",
    duration: "rpc_server_call_duration_seconds",
    in_flight: "rpc_server_calls_in_flight",
    request_bytes: "rpc_server_request_bytes_total",
    response_bytes: "rpc_server_response_bytes_total",
};

/// The handles of one method on one side.
pub(crate) struct MethodMetrics {
    started: Counter,
    /// By [`Outcome::index`].
    finished: [Counter; Outcome::ALL.len()],
    duration: Histogram,
    in_flight: Gauge,
    request_bytes: Counter,
    response_bytes: Counter,
}

impl MethodMetrics {
    fn new(names: &Names, service: &'static str, method: &'static str) -> MethodMetrics {
        let labels = [("service", service), ("method", method)];
        MethodMetrics {
            started: metrics::counter!(names.started, &labels),
            finished: Outcome::ALL.map(|outcome| {
                metrics::counter!(
                    names.finished,
                    "service" => service,
                    "method" => method,
                    "outcome" => outcome.as_str()
                )
            }),
            duration: metrics::histogram!(names.duration, &labels),
            in_flight: metrics::gauge!(names.in_flight, &labels),
            request_bytes: metrics::counter!(names.request_bytes, &labels),
            response_bytes: metrics::counter!(names.response_bytes, &labels),
        }
    }

    pub(crate) fn started(&self, request_bytes: usize) {
        self.started.increment(1);
        self.in_flight.increment(1.0);
        self.request_bytes.increment(request_bytes as u64);
    }

    pub(crate) fn finished(&self, outcome: Outcome, elapsed: Duration, response_bytes: usize) {
        self.in_flight.decrement(1.0);
        self.finished[outcome.index()].increment(1);
        self.duration.record(elapsed.as_secs_f64());
        if response_bytes > 0 {
            self.response_bytes.increment(response_bytes as u64);
        }
    }
}

/// The handles of every method of a service on one side, by the service's method index;
/// empty when no recorder was installed as it was made. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct MethodTable {
    methods: Option<Arc<[Arc<MethodMetrics>]>>,
}

impl std::fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodTable")
            .field("recorded", &self.methods.is_some())
            .finish()
    }
}

impl MethodTable {
    /// The client side's handles for `desc`, from the recorder installed now.
    pub(crate) fn client(desc: &'static ServiceDescriptor) -> MethodTable {
        MethodTable::new(&CLIENT, desc)
    }

    /// The server side's handles for `desc`, from the recorder installed now.
    pub(crate) fn server(desc: &'static ServiceDescriptor) -> MethodTable {
        MethodTable::new(&SERVER, desc)
    }

    fn new(names: &Names, desc: &'static ServiceDescriptor) -> MethodTable {
        if !recorder_installed() {
            return MethodTable::default();
        }
        describe(names);
        MethodTable {
            methods: Some(
                desc.methods
                    .iter()
                    .map(|method| Arc::new(MethodMetrics::new(names, desc.name, method.name)))
                    .collect(),
            ),
        }
    }

    /// Whether metrics are recorded (a recorder was installed as the table was made).
    pub(crate) fn is_recorded(&self) -> bool {
        self.methods.is_some()
    }

    /// The handles of the method at `index`, if metrics are recorded.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Arc<MethodMetrics>> {
        self.methods.as_ref()?.get(index)
    }
}

/// Whether a recorder other than metrics' no-op one is installed (for this thread): that
/// one is the only zero-sized recorder in common use, and a recorder that records anything
/// holds state.
fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

fn describe(names: &Names) {
    metrics::describe_counter!(names.started, Unit::Count, "Calls started");
    metrics::describe_counter!(
        names.finished,
        Unit::Count,
        "Calls finished, by outcome: ok, an error kind, or cancelled"
    );
    metrics::describe_histogram!(names.duration, Unit::Seconds, "How long calls took");
    metrics::describe_gauge!(names.in_flight, Unit::Count, "Calls in progress");
    metrics::describe_counter!(
        names.request_bytes,
        Unit::Bytes,
        "Bytes of encoded arguments"
    );
    metrics::describe_counter!(
        names.response_bytes,
        Unit::Bytes,
        "Bytes of encoded results"
    );
}
