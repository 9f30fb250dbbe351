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

/// Whether a recorder is installed for this thread: whether the recorder `metrics` hands out
/// now (this thread's local one, else the global one) is anything but its own fallback, the
/// no-op recorder it uses when neither is set. Only that fallback makes calls skip metrics.
///
/// `metrics` 0.24 cannot be asked this: the global recorder's cell and the fallback are
/// private statics, and `Recorder` has no `Any` supertrait, so a `&dyn Recorder` has no
/// `TypeId` (and `type_name_of_val` names only the trait). Comparing its vtable with
/// `NoopRecorder`'s does not work either: each codegen unit may have its own copy of a
/// vtable, and in a debug build the fallback's (made in `with_recorder`) is not ours.
/// Being zero-sized is not enough (it was the test here before): a recorder that forwards
/// to a static is zero-sized too, global or local.
///
/// What does identify the fallback is its address: it is a `static`, at one fixed address
/// for the whole process (see [`fallback_address`]), which a recorder the program installs
/// does not share (short of a zero-sized `static` of its own that the linker happens to put
/// at that very address).
fn recorder_installed() -> bool {
    let (address, zero_sized) = metrics::with_recorder(|recorder| {
        (
            (recorder as *const dyn metrics::Recorder).addr(),
            std::mem::size_of_val(recorder) == 0,
        )
    });
    // The fallback is zero-sized: a recorder with state is installed, with no look-up.
    !zero_sized || fallback_address() != Some(address)
}

/// The address of `metrics`' fallback no-op recorder, learned once per process; `None` if
/// it cannot be learned, because a global recorder was already set then (so the fallback is
/// never used again) or the probe thread could not start (then every recorder counts as
/// installed: calls record into no-op handles, correctly but without the fast path).
///
/// A new thread has no local recorder, so `with_recorder` gives it the global recorder if
/// one is set, else the fallback. The fallback is a zero-sized `static`: it has a real
/// address. A global recorder is moved into a `Box` that `metrics` leaks: if it is
/// zero-sized, the box does not allocate and its address is the dangling one, its own
/// alignment, where no `static` is. That tells the two apart.
fn fallback_address() -> Option<usize> {
    static FALLBACK: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *FALLBACK.get_or_init(|| {
        std::thread::scope(|scope| {
            let probe = std::thread::Builder::new()
                .name("rpc-metrics-probe".into())
                .spawn_scoped(scope, || {
                    metrics::with_recorder(|recorder| {
                        let address = (recorder as *const dyn metrics::Recorder).addr();
                        let fallback = std::mem::size_of_val(recorder) == 0
                            && address != std::mem::align_of_val(recorder);
                        fallback.then_some(address)
                    })
                });
            probe.ok()?.join().ok()?
        })
    })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};

    use super::*;

    /// Counters registered through [`Forward`].
    static REGISTERED: AtomicUsize = AtomicUsize::new(0);

    /// A zero-sized recorder whose state is a static, as a recorder forwarding to a global
    /// exporter is.
    struct Forward;

    impl Recorder for Forward {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            REGISTERED.fetch_add(1, Ordering::Relaxed);
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn only_the_fallback_counts_as_no_recorder() {
        let desc = &crate::health::HealthClient::DESCRIPTOR;
        // No test in this binary sets a global recorder: this thread has the fallback, and
        // calls skip metrics.
        assert!(!recorder_installed());
        assert!(!MethodTable::client(desc).is_recorded());

        // Zero-sized recorders, wherever they are: a constant, the stack, a static.
        static STATIC: Forward = Forward;
        let on_stack = Forward;
        for recorder in [&Forward, &on_stack, &STATIC] {
            metrics::with_local_recorder(recorder, || assert!(recorder_installed()));
        }
        assert!(!recorder_installed(), "the local recorders are gone");

        let before = REGISTERED.load(Ordering::Relaxed);
        let table = metrics::with_local_recorder(&Forward, || MethodTable::client(desc));
        assert!(table.is_recorded());
        assert!(REGISTERED.load(Ordering::Relaxed) > before);
    }
}
