//! What the observability tests observe with: a `tracing` layer that keeps every `rpc` span
//! and event with its fields, and a `metrics` snapshot that adds up a `DebuggingRecorder`;
//! and two services, `Front` calling `Back`, whose handlers report the trace they see.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use rpc_core::context;
use rpc_core::{service, Server};
use serde::{Deserialize, Serialize};

use super::common::{Harness, Kind, HANG_GUARD};

/// One span as recorded: its name, fields (as text), parent and whether it has closed.
#[derive(Clone, Debug, Default)]
pub struct SpanRecord {
    /// Its position in [`Capture::spans`].
    pub index: usize,
    pub name: &'static str,
    pub fields: BTreeMap<String, String>,
    /// The index of its parent span, if it has one.
    pub parent: Option<usize>,
    pub closed: bool,
}

impl SpanRecord {
    /// The field's value, if it was recorded.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// The field's value; panics if it was not recorded.
    pub fn field(&self, field: &str) -> &str {
        self.get(field)
            .unwrap_or_else(|| panic!("span {} has no field `{field}`: {self:?}", self.name))
    }
}

/// One event as recorded: its fields (the message under `message`) and its span.
#[derive(Clone, Debug, Default)]
pub struct EventRecord {
    pub fields: BTreeMap<String, String>,
    pub parent: Option<usize>,
}

#[derive(Default)]
struct State {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
    /// Open spans, by the registry's id (which it reuses once a span closes).
    open: HashMap<u64, usize>,
}

/// Records every span and event with target `rpc`.
#[derive(Clone, Default)]
pub struct Capture {
    state: Arc<Mutex<State>>,
}

impl Capture {
    /// Installs a new capture as this thread's subscriber until the guard is dropped. Tests
    /// using it run on a current-thread runtime, so every task sees it.
    pub fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.state.lock().unwrap().spans.clone()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<EventRecord> {
        self.state.lock().unwrap().events.clone()
    }

    /// The closed spans called `name`.
    pub fn closed(&self, name: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|span| span.closed && span.name == name)
            .collect()
    }

    /// Waits until `count` spans called `name` have closed, and returns them in the order
    /// they were opened.
    pub async fn wait_closed(&self, name: &str, count: usize) -> Vec<SpanRecord> {
        let waited = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let closed = self.closed(name);
                if closed.len() >= count {
                    return closed;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "fewer than {count} `{name}` spans closed; spans: {:#?}",
                self.spans()
            )
        })
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != "rpc" {
            return;
        }
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent_id = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.id().into_u64());
        let mut state = self.state.lock().unwrap();
        let index = state.spans.len();
        let parent = parent_id.and_then(|parent| state.open.get(&parent).copied());
        state.spans.push(SpanRecord {
            index,
            name: attrs.metadata().name(),
            fields,
            parent,
            closed: false,
        });
        state.open.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut state = self.state.lock().unwrap();
        if let Some(&index) = state.open.get(&id.into_u64()) {
            values.record(&mut Fields(&mut state.spans[index].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "rpc" {
            return;
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let parent_id = ctx.event_span(event).map(|span| span.id().into_u64());
        let mut state = self.state.lock().unwrap();
        let parent = parent_id.and_then(|parent| state.open.get(&parent).copied());
        state.events.push(EventRecord { fields, parent });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut state = self.state.lock().unwrap();
        if let Some(index) = state.open.remove(&id.into_u64()) {
            state.spans[index].closed = true;
        }
    }
}

/// A metric's name and labels, as `name{label=value,...}` with the labels sorted.
fn describe(key: &metrics::Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

/// Where [`Forward`] sends everything.
pub static FORWARDED: LazyLock<DebuggingRecorder> = LazyLock::new(DebuggingRecorder::new);

/// A zero-sized recorder that forwards to a static ([`FORWARDED`]), as a thin handle to a
/// process-wide exporter does: installed, though it has no state of its own.
pub struct Forward;

impl Recorder for Forward {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        FORWARDED.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        FORWARDED.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        FORWARDED.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &metrics::Key, metadata: &Metadata<'_>) -> Counter {
        FORWARDED.register_counter(key, metadata)
    }
    fn register_gauge(&self, key: &metrics::Key, metadata: &Metadata<'_>) -> Gauge {
        FORWARDED.register_gauge(key, metadata)
    }
    fn register_histogram(&self, key: &metrics::Key, metadata: &Metadata<'_>) -> Histogram {
        FORWARDED.register_histogram(key, metadata)
    }
}

/// Everything a `DebuggingRecorder` has seen, added up over snapshots (a snapshot resets
/// counters and gauges, and drains histograms).
#[derive(Default, Debug)]
pub struct Totals {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
    pub histograms: BTreeMap<String, Vec<f64>>,
}

impl Totals {
    /// Adds what `snapshotter` holds now.
    pub fn add(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let name = describe(key.key());
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                DebugValue::Gauge(g) => *self.gauges.entry(name).or_default() += g.into_inner(),
                DebugValue::Histogram(values) => self
                    .histograms
                    .entry(name)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
            }
        }
    }

    /// The counter `name` with labels `service`, `method` (and `outcome`, if given).
    pub fn counter(&self, name: &str, method: &str, outcome: Option<&str>) -> u64 {
        let key = match outcome {
            Some(outcome) => format!("{name}{{method={method},outcome={outcome},service=Lab}}"),
            None => format!("{name}{{method={method},service=Lab}}"),
        };
        self.counters.get(&key).copied().unwrap_or(0)
    }

    /// The gauge `name` of `Lab`'s `method`.
    pub fn gauge(&self, name: &str, method: &str) -> f64 {
        let key = format!("{name}{{method={method},service=Lab}}");
        self.gauges.get(&key).copied().unwrap_or(0.0)
    }

    /// The samples of histogram `name` of `Lab`'s `method`.
    pub fn samples(&self, name: &str, method: &str) -> &[f64] {
        let key = format!("{name}{{method={method},service=Lab}}");
        self.histograms.get(&key).map_or(&[], Vec::as_slice)
    }
}

/// What a handler saw of its call's trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// `context::trace()`, as a `traceparent`.
    pub trace: Option<String>,
    /// The raw `traceparent` metadata the request came with.
    pub traceparent: Option<String>,
    /// How many metadata pairs the request came with.
    pub metadata: usize,
}

fn seen() -> Seen {
    let metadata = context::metadata();
    Seen {
        trace: context::trace().map(|trace| trace.to_string()),
        traceparent: metadata.get_str("traceparent").map(str::to_string),
        metadata: metadata.len(),
    }
}

/// The service at the end of a chain of calls.
#[service]
pub trait Back {
    async fn data(&self) -> Seen;
}

/// A service whose handler calls `Back`.
#[service]
pub trait Front {
    /// What this handler saw, and what `Back::data`, called from it, saw.
    async fn page(&self) -> (Seen, Seen);
}

pub struct BackImpl;
impl Back for BackImpl {
    async fn data(&self) -> Seen {
        seen()
    }
}

pub struct FrontImpl {
    back: BackClient,
}
impl Front for FrontImpl {
    async fn page(&self) -> (Seen, Seen) {
        let mine = seen();
        let theirs = self.back.data().await.expect("Back::data failed");
        (mine, theirs)
    }
}

/// A `Front` in front of a `Back`, each over a fresh transport of `kind`.
pub async fn front_and_back(kind: Kind) -> (FrontClient, Harness, Harness) {
    let mut back = Harness::start(kind, Server::new().add_service(BackServer::new(BackImpl))).await;
    let front_impl = FrontImpl {
        back: BackClient::new(back.connect().await),
    };
    let mut front = Harness::start(
        kind,
        Server::new().add_service(FrontServer::new(front_impl)),
    )
    .await;
    let client = FrontClient::new(front.connect().await);
    (client, front, back)
}

/// The W3C specification's example `traceparent`.
pub const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `traceparent` values a server must ignore.
pub const MALFORMED: [&str; 7] = [
    "garbage",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
];
