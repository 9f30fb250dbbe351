//! The call context (`rpc_core::context`): what a handler knows about the call it serves
//! (deadline and metadata), and how deadlines travel along a chain of services (A's handler
//! calls B: B's call inherits what is left of A's deadline).
//! Every test runs over every transport in `common::KINDS`.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{guard, Harness, Kind, KINDS};
use rpc_core::context::{self, CallContext, Metadata};
use rpc_core::{service, ErrorKind, RpcError, Server};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

/// What a handler (or a task it spawned) saw of the current context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// `context::current()` was `Some`.
    in_call: bool,
    /// `CallContext::remaining()`.
    remaining: Option<Duration>,
    /// `context::deadline()` agreed with `current().deadline()`.
    deadline_agrees: bool,
    /// `current().metadata()`, in order.
    metadata: Vec<(String, Vec<u8>)>,
    /// `context::metadata()` agreed with `current().metadata()`.
    metadata_agrees: bool,
    /// `first` is `metadata().get("first")`, `first_str` its `get_str`.
    first: Option<Vec<u8>>,
    first_str: Option<String>,
    len: usize,
    is_empty: bool,
}

/// Whether the server knows who is calling over `kind` (an address): then every call has a
/// context, with `context::peer()`; otherwise a call with no deadline and no metadata has
/// none.
fn has_peer(kind: Kind) -> bool {
    matches!(kind, Kind::Tcp | Kind::Unix)
}

/// Reads everything the current context offers.
fn look() -> Seen {
    let current = context::current();
    let metadata = current
        .as_ref()
        .map(|c| c.metadata().clone())
        .unwrap_or_default();
    Seen {
        in_call: current.is_some(),
        remaining: current.as_ref().and_then(CallContext::remaining),
        deadline_agrees: context::deadline() == current.as_ref().and_then(CallContext::deadline),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
        metadata_agrees: context::metadata() == metadata,
        first: metadata.get("first").map(|v| v.to_vec()),
        first_str: metadata.get_str("first").map(str::to_string),
        len: metadata.len(),
        is_empty: metadata.is_empty(),
    }
}

/// An error as it can travel back through a handler's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    kind: String,
    message: String,
}

impl From<RpcError> for Failure {
    fn from(err: RpcError) -> Failure {
        Failure {
            kind: format!("{:?}", err.kind()),
            message: err.to_string(),
        }
    }
}

fn deadline_exceeded() -> String {
    format!("{:?}", ErrorKind::DeadlineExceeded)
}

/// The far end of a chain.
#[service]
pub trait Back {
    /// What the handler sees, in its first poll.
    async fn seen(&self) -> Seen;
    /// What the handler sees after it was suspended (polled again later): reports
    /// `Started(tag)`, waits for a permit from the test, then looks.
    async fn seen_later(&self, tag: u64) -> Seen;
    /// Reports `Hung { tag, remaining }`, then waits forever; reports `Dropped(tag)` when its
    /// future is dropped.
    async fn hang(&self, tag: u64) -> u64;
    /// Reports `Recorded(tag)`.
    async fn record(&self, tag: u64);
}

/// What `Back`'s handlers report to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackEvent {
    Started(u64),
    Hung {
        tag: u64,
        remaining: Option<Duration>,
    },
    Dropped(u64),
    Recorded(u64),
}

#[derive(Clone)]
pub struct BackImpl {
    events: mpsc::UnboundedSender<BackEvent>,
    release: Arc<Semaphore>,
}

/// Sends `Dropped(tag)` when dropped (a `hang` handler never finishes).
struct DropReport {
    tag: u64,
    events: mpsc::UnboundedSender<BackEvent>,
}

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.events.send(BackEvent::Dropped(self.tag));
    }
}

impl Back for BackImpl {
    async fn seen(&self) -> Seen {
        look()
    }

    async fn seen_later(&self, tag: u64) -> Seen {
        let _ = self.events.send(BackEvent::Started(tag));
        self.release.acquire().await.expect("open").forget();
        look()
    }

    async fn hang(&self, tag: u64) -> u64 {
        let _report = DropReport {
            tag,
            events: self.events.clone(),
        };
        let _ = self.events.send(BackEvent::Hung {
            tag,
            remaining: context::current().and_then(|c| c.remaining()),
        });
        std::future::pending::<()>().await;
        tag
    }

    async fn record(&self, tag: u64) {
        let _ = self.events.send(BackEvent::Recorded(tag));
    }
}

/// The near end of a chain: its handlers call `Back`.
#[service]
pub trait Front {
    /// Calls `Back::seen`, with `inherit_deadline(inherit)` and, if given, a timeout of its
    /// own.
    async fn relay_seen(
        &self,
        inherit: bool,
        own_timeout: Option<Duration>,
    ) -> Result<Seen, Failure>;
    /// Calls `Back::hang(tag)` with no timeout of its own.
    async fn relay_hang(&self, tag: u64) -> Result<u64, Failure>;
    /// Spawns a task that calls `Back::hang(tag)` (carrying this call's context with
    /// `context::scope`), and returns at once. The task reports how its call ended.
    async fn spawn_hang(&self, tag: u64);
    /// Spawns a task (with this call's context if `scoped`) that reports what it sees and
    /// what `Back::seen` sees when the task calls it; returns at once.
    async fn spawn_seen(&self, scoped: bool);
    /// Spawns a task carrying this call's context that waits until the deadline has passed,
    /// then calls `Back::record(tag)` (which must fail without being sent) and
    /// `Back::record(tag + 1).inherit_deadline(false)` (which goes through); it reports both.
    async fn after_deadline(&self, tag: u64);
}

/// What tasks spawned by `Front`'s handlers report to the test.
#[derive(Debug)]
pub enum Report {
    Hang(Result<u64, RpcError>),
    Seen {
        local: Seen,
        remote: Result<Seen, RpcError>,
    },
    AfterDeadline {
        expired: Result<(), RpcError>,
        opted_out: Result<(), RpcError>,
    },
}

#[derive(Clone)]
pub struct FrontImpl {
    back: BackClient,
    reports: mpsc::UnboundedSender<Report>,
}

impl Front for FrontImpl {
    async fn relay_seen(
        &self,
        inherit: bool,
        own_timeout: Option<Duration>,
    ) -> Result<Seen, Failure> {
        let mut call = self.back.seen().inherit_deadline(inherit);
        if let Some(timeout) = own_timeout {
            call = call.timeout(timeout);
        }
        Ok(call.await?)
    }

    async fn relay_hang(&self, tag: u64) -> Result<u64, Failure> {
        Ok(self.back.hang(tag).await?)
    }

    async fn spawn_hang(&self, tag: u64) {
        let back = self.back.clone();
        let reports = self.reports.clone();
        tokio::spawn(context::scope(context::current(), async move {
            let _ = reports.send(Report::Hang(back.hang(tag).await));
        }));
    }

    async fn spawn_seen(&self, scoped: bool) {
        let back = self.back.clone();
        let reports = self.reports.clone();
        let work = async move {
            let local = look();
            let remote = back.seen().await;
            let _ = reports.send(Report::Seen { local, remote });
        };
        if scoped {
            tokio::spawn(context::scope(context::current(), work));
        } else {
            tokio::spawn(work);
        }
    }

    async fn after_deadline(&self, tag: u64) {
        let back = self.back.clone();
        let reports = self.reports.clone();
        tokio::spawn(context::scope(context::current(), async move {
            // Wait until the inherited deadline has passed (a condition, checked in a loop).
            loop {
                let left = context::current()
                    .and_then(|c| c.remaining())
                    .expect("the task carries a context with a deadline");
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left).await;
            }
            let expired = back.record(tag).await;
            let opted_out = back.record(tag + 1).inherit_deadline(false).await;
            let _ = reports.send(Report::AfterDeadline { expired, opted_out });
        }));
    }
}

/// A `Back` service and what its handlers report.
fn back_service() -> (BackImpl, mpsc::UnboundedReceiver<BackEvent>, Arc<Semaphore>) {
    let (events, rx) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    (
        BackImpl {
            events,
            release: release.clone(),
        },
        rx,
        release,
    )
}

/// A `Back` server on a fresh transport of `kind`.
async fn back_server(kind: Kind) -> (Harness, mpsc::UnboundedReceiver<BackEvent>, Arc<Semaphore>) {
    let (imp, events, release) = back_service();
    let harness = Harness::start(kind, Server::new().add_service(BackServer::new(imp))).await;
    (harness, events, release)
}

/// A `Back` server and a client of it.
async fn back(
    kind: Kind,
) -> (
    BackClient,
    mpsc::UnboundedReceiver<BackEvent>,
    Arc<Semaphore>,
    Harness,
) {
    let (mut harness, events, release) = back_server(kind).await;
    let client = BackClient::new(harness.connect().await);
    (client, events, release, harness)
}

/// A chain: the test calls `Front`, whose handlers call `Back`, each on its own server.
struct Chain {
    front: FrontClient,
    back_events: mpsc::UnboundedReceiver<BackEvent>,
    reports: mpsc::UnboundedReceiver<Report>,
    _servers: (Harness, Harness),
}

async fn chain(kind: Kind) -> Chain {
    let (back_client, back_events, _release, back_harness) = back(kind).await;
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let front_impl = FrontImpl {
        back: back_client,
        reports: reports_tx,
    };
    let mut front_harness = Harness::start(
        kind,
        Server::new().add_service(FrontServer::new(front_impl)),
    )
    .await;
    let front = FrontClient::new(front_harness.connect().await);
    Chain {
        front,
        back_events,
        reports,
        _servers: (back_harness, front_harness),
    }
}

async fn next_back(rx: &mut mpsc::UnboundedReceiver<BackEvent>) -> BackEvent {
    guard(rx.recv()).await.expect("the Back service is gone")
}

async fn next_report(rx: &mut mpsc::UnboundedReceiver<Report>) -> Report {
    guard(rx.recv()).await.expect("the Front service is gone")
}

fn pairs(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// A deadline so generous that the call never comes near it.
const LONG: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_sees_its_callers_deadline() {
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        let seen = guard(client.seen().timeout(LONG)).await.unwrap();
        assert!(seen.in_call, "{kind:?}");
        assert!(seen.deadline_agrees, "{kind:?}");
        let remaining = seen.remaining.expect("the handler sees the deadline");
        assert!(remaining <= LONG, "{kind:?}: {remaining:?}");
        // Not a timing assertion: the handler would have to start 300 s late to fail this.
        assert!(remaining > LONG / 2, "{kind:?}: {remaining:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_sees_no_deadline_when_the_caller_set_none() {
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        // With metadata but no deadline: a context without a deadline.
        let seen = guard(client.seen().metadata("first", "1")).await.unwrap();
        assert!(seen.in_call, "{kind:?}");
        assert_eq!(seen.remaining, None, "{kind:?}");
        assert!(seen.deadline_agrees);
        assert_eq!(seen.first_str.as_deref(), Some("1"));

        // With neither: no context at all, which reads the same, unless the peer is known.
        let seen = guard(client.seen()).await.unwrap();
        assert_eq!(seen.in_call, has_peer(kind), "{kind:?}: {seen:?}");
        assert_eq!(seen.remaining, None, "{kind:?}");
        assert!(seen.deadline_agrees);
        assert!(seen.is_empty && seen.len == 0 && seen.metadata.is_empty());
        assert!(seen.metadata_agrees);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_metadata_arrives_in_order_with_binary_values() {
    let binary: Vec<u8> = (0..=255).collect();
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        let seen = guard(
            client
                .seen()
                .metadata("first", "1")
                .metadata("binary", binary.clone())
                .metadata("empty", "")
                .metadata("first", "again"),
        )
        .await
        .unwrap();
        assert_eq!(
            seen.metadata,
            pairs(&[
                ("first", b"1"),
                ("binary", &binary),
                ("empty", b""),
                ("first", b"again"),
            ]),
            "{kind:?}"
        );
        assert!(seen.metadata_agrees, "{kind:?}");
        // `get` finds the first value of a key.
        assert_eq!(seen.first.as_deref(), Some(&b"1"[..]));
        assert_eq!(seen.first_str.as_deref(), Some("1"));
        assert_eq!(seen.len, 4);
        assert!(!seen.is_empty);

        // Metadata belongs to its call: the next call without any sees none.
        let seen = guard(client.seen()).await.unwrap();
        assert!(seen.is_empty, "{kind:?}: {seen:?}");
        assert_eq!(seen.in_call, has_peer(kind), "{kind:?}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_is_not_text_is_not_a_str() {
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        let seen = guard(client.seen().metadata("first", vec![0xff, 0xfe, 0]))
            .await
            .unwrap();
        assert_eq!(
            seen.first.as_deref(),
            Some(&[0xff, 0xfe, 0][..]),
            "{kind:?}"
        );
        assert_eq!(seen.first_str, None, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_metadata_goes_with_every_call_before_the_calls_own() {
    for kind in KINDS {
        let (mut harness, _events, _release) = back_server(kind).await;
        let client = BackClient::builder()
            .metadata("first", "client")
            .metadata("tenant", vec![0u8, 1, 2])
            .transport(harness.connect().await);
        for _ in 0..2 {
            let seen = guard(client.seen()).await.unwrap();
            assert_eq!(
                seen.metadata,
                pairs(&[("first", b"client"), ("tenant", &[0, 1, 2])]),
                "{kind:?}"
            );
        }
        let seen = guard(client.seen().metadata("first", "call").metadata("x", "y"))
            .await
            .unwrap();
        assert_eq!(
            seen.metadata,
            pairs(&[
                ("first", b"client"),
                ("tenant", &[0, 1, 2]),
                ("first", b"call"),
                ("x", b"y"),
            ]),
            "{kind:?}"
        );
        // The client's pair comes first, so `get` finds it.
        assert_eq!(seen.first_str.as_deref(), Some("client"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_sends_its_metadata_and_deadline_too() {
    let (imp, _events, _release) = back_service();
    let (listener, connector) = rpc_transport::memory::listener();
    let _server = tokio::spawn(
        Server::new()
            .add_service(BackServer::new(imp))
            .serve(listener),
    );
    let client = BackClient::builder()
        .metadata("first", "client")
        .connect(connector);
    let seen = guard(client.seen().metadata("call", "1").timeout(LONG))
        .await
        .unwrap();
    assert_eq!(
        seen.metadata,
        pairs(&[("first", b"client"), ("call", b"1")])
    );
    assert!(seen.remaining.is_some_and(|r| r <= LONG && r > LONG / 2));

    let tcp = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (imp, _events, _release) = back_service();
    let _server = tokio::spawn(Server::new().add_service(BackServer::new(imp)).serve(tcp));
    let client = BackClient::builder()
        .metadata("first", "client")
        .connect(rpc_transport::tcp::connector(addr));
    let seen = guard(client.seen().metadata("call", "1")).await.unwrap();
    assert_eq!(
        seen.metadata,
        pairs(&[("first", b"client"), ("call", b"1")])
    );
    assert_eq!(seen.remaining, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_lasts_across_polls_and_each_call_has_its_own() {
    for kind in KINDS {
        let (client, mut events, release, _h) = back(kind).await;
        let one = tokio::spawn(
            client
                .seen_later(1)
                .metadata("first", "one")
                .timeout(LONG)
                .into_future(),
        );
        let two = tokio::spawn(client.seen_later(2).metadata("first", "two").into_future());
        let mut started = vec![next_back(&mut events).await, next_back(&mut events).await];
        started.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(started, [BackEvent::Started(1), BackEvent::Started(2)]);
        // Both handlers are suspended; they look at their context when polled again.
        release.add_permits(2);
        let one = guard(one).await.unwrap().unwrap();
        let two = guard(two).await.unwrap().unwrap();
        assert_eq!(one.first_str.as_deref(), Some("one"), "{kind:?}");
        assert_eq!(two.first_str.as_deref(), Some("two"), "{kind:?}");
        assert!(one.remaining.is_some(), "{kind:?}");
        assert_eq!(two.remaining, None, "{kind:?}");
        assert!(one.deadline_agrees && two.deadline_agrees);
        assert!(one.metadata_agrees && two.metadata_agrees);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_handler_there_is_no_context() {
    assert!(context::current().is_none());
    assert!(context::deadline().is_none());
    assert!(context::metadata().is_empty());
    // Not after a call either: the context of the handler does not leak to the caller, even
    // over the memory transport, where the server may run on the caller's thread.
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        guard(client.seen().metadata("first", "x").timeout(LONG))
            .await
            .unwrap();
        assert!(context::current().is_none(), "{kind:?}");
        let seen = guard(tokio::spawn(async { look() })).await.unwrap();
        assert!(!seen.in_call, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_a_handler_inherits_the_remaining_deadline() {
    for kind in KINDS {
        let chain = chain(kind).await;
        let seen = guard(chain.front.relay_seen(true, None).timeout(LONG))
            .await
            .unwrap()
            .unwrap();
        let remaining = seen
            .remaining
            .expect("the inner call inherits the deadline");
        assert!(
            remaining <= LONG && remaining > LONG / 2,
            "{kind:?}: {remaining:?}"
        );

        // No deadline to inherit: none.
        let seen = guard(chain.front.relay_seen(true, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.remaining, None, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_deadline_is_inherited_not_the_metadata() {
    for kind in KINDS {
        let chain = chain(kind).await;
        let seen = guard(
            chain
                .front
                .relay_seen(true, None)
                .metadata("first", "outer")
                .timeout(LONG),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(seen.remaining.is_some(), "{kind:?}");
        assert!(seen.is_empty, "{kind:?}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_earlier_of_the_own_and_the_inherited_deadline_wins() {
    let short = Duration::from_secs(60);
    for kind in KINDS {
        let chain = chain(kind).await;
        // The inner call's own timeout is the earlier one.
        let seen = guard(chain.front.relay_seen(true, Some(short)).timeout(LONG))
            .await
            .unwrap()
            .unwrap();
        let remaining = seen.remaining.unwrap();
        assert!(
            remaining <= short && remaining > short / 2,
            "{kind:?}: {remaining:?}"
        );
        // The inherited deadline is the earlier one.
        let seen = guard(chain.front.relay_seen(true, Some(LONG)).timeout(short))
            .await
            .unwrap()
            .unwrap();
        let remaining = seen.remaining.unwrap();
        assert!(
            remaining <= short && remaining > short / 2,
            "{kind:?}: {remaining:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inherit_deadline_false_opts_out() {
    let short = Duration::from_secs(60);
    for kind in KINDS {
        let chain = chain(kind).await;
        let seen = guard(chain.front.relay_seen(false, None).timeout(LONG))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.remaining, None, "{kind:?}");
        // Its own timeout still applies, even when it is later than the outer deadline.
        let seen = guard(chain.front.relay_seen(false, Some(LONG)).timeout(short))
            .await
            .unwrap()
            .unwrap();
        let remaining = seen.remaining.unwrap();
        assert!(
            remaining > short && remaining <= LONG,
            "{kind:?}: {remaining:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_fails_the_chain_and_stops_the_inner_handler() {
    let timeout = Duration::from_millis(200);
    for kind in KINDS {
        let mut chain = chain(kind).await;
        // Front's handler sets no timeout: the inner call inherits the outer deadline.
        // Either deadline can be seen to expire first: the outer call's own (an `RpcError`),
        // or the inner call's, a hair earlier, whose error Front's handler returns in time.
        match guard(chain.front.relay_hang(1).timeout(timeout)).await {
            Err(err) => assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}"),
            Ok(Err(inner)) => assert_eq!(inner.kind, deadline_exceeded(), "{kind:?}: {inner:?}"),
            Ok(Ok(tag)) => panic!("{kind:?}: a call that hangs returned {tag}"),
        }
        match next_back(&mut chain.back_events).await {
            BackEvent::Hung { tag: 1, remaining } => {
                let remaining = remaining.expect("Back's handler sees the inherited deadline");
                assert!(remaining <= timeout, "{kind:?}: {remaining:?}");
            }
            other => panic!("{kind:?}: expected Hung, got {other:?}"),
        }
        // Back's handler is stopped too.
        assert_eq!(
            next_back(&mut chain.back_events).await,
            BackEvent::Dropped(1),
            "{kind:?}"
        );
        // The chain still works.
        let seen = guard(chain.front.relay_seen(true, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.in_call, has_peer(kind), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inherited_deadline_alone_stops_a_detached_inner_call() {
    let timeout = Duration::from_millis(200);
    for kind in KINDS {
        let mut chain = chain(kind).await;
        // Front's handler returns at once; the task it spawned carries the deadline. Nobody
        // cancels the inner call: only its inherited deadline ends it.
        guard(chain.front.spawn_hang(2).timeout(timeout))
            .await
            .unwrap();
        match next_back(&mut chain.back_events).await {
            BackEvent::Hung { tag: 2, remaining } => {
                let remaining = remaining.expect("the spawned task's call inherits the deadline");
                assert!(remaining <= timeout, "{kind:?}: {remaining:?}");
            }
            other => panic!("{kind:?}: expected Hung, got {other:?}"),
        }
        assert_eq!(
            next_back(&mut chain.back_events).await,
            BackEvent::Dropped(2),
            "{kind:?}"
        );
        match next_report(&mut chain.reports).await {
            Report::Hang(Err(err)) => {
                assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}")
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_outer_call_cancels_the_inner_one() {
    for kind in KINDS {
        let mut chain = chain(kind).await;
        let outer = tokio::spawn(chain.front.relay_hang(3).into_future());
        assert_eq!(
            next_back(&mut chain.back_events).await,
            BackEvent::Hung {
                tag: 3,
                remaining: None
            },
            "{kind:?}"
        );
        outer.abort();
        assert_eq!(
            next_back(&mut chain.back_events).await,
            BackEvent::Dropped(3),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_under_an_expired_deadline_is_not_sent() {
    for kind in KINDS {
        let (client, mut events, _release, _h) = back(kind).await;
        let expired = CallContext::new(Some(Instant::now()), Metadata::new());
        let err = guard(context::scope(
            Some(expired.clone()),
            client.record(1).into_future(),
        ))
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
        assert!(err.to_string().contains("deadline"), "{err}");
        // Opting out of the inherited deadline sends it.
        guard(context::scope(
            Some(expired),
            client.record(2).inherit_deadline(false).into_future(),
        ))
        .await
        .unwrap();
        // The server saw only the second call (one connection keeps the order).
        assert_eq!(
            next_back(&mut events).await,
            BackEvent::Recorded(2),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_a_handler_after_its_deadline_passed_fails_at_once() {
    for kind in KINDS {
        let mut chain = chain(kind).await;
        guard(
            chain
                .front
                .after_deadline(10)
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        match next_report(&mut chain.reports).await {
            Report::AfterDeadline { expired, opted_out } => {
                let err = expired.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
                opted_out.unwrap();
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        // Back saw only the call that opted out.
        assert_eq!(
            next_back(&mut chain.back_events).await,
            BackEvent::Recorded(11),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_carries_the_context_into_a_spawned_task() {
    for kind in KINDS {
        let mut chain = chain(kind).await;
        guard(
            chain
                .front
                .spawn_seen(true)
                .metadata("first", "outer")
                .timeout(LONG),
        )
        .await
        .unwrap();
        match next_report(&mut chain.reports).await {
            Report::Seen { local, remote } => {
                assert!(local.in_call, "{kind:?}");
                assert_eq!(local.first_str.as_deref(), Some("outer"));
                assert!(local.remaining.is_some_and(|r| r <= LONG));
                assert!(local.deadline_agrees && local.metadata_agrees);
                let remote = remote.unwrap();
                let remaining = remote.remaining.expect("the task's call inherits");
                assert!(remaining <= LONG && remaining > LONG / 2, "{kind:?}");
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_task_without_scope_has_no_context() {
    for kind in KINDS {
        let mut chain = chain(kind).await;
        guard(
            chain
                .front
                .spawn_seen(false)
                .metadata("first", "outer")
                .timeout(LONG),
        )
        .await
        .unwrap();
        match next_report(&mut chain.reports).await {
            Report::Seen { local, remote } => {
                assert!(!local.in_call, "{kind:?}: {local:?}");
                assert!(local.is_empty);
                assert_eq!(local.remaining, None);
                assert_eq!(remote.unwrap().remaining, None, "{kind:?}");
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_gives_a_deadline_to_work_outside_any_handler() {
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        let metadata: Metadata = [("first", "scoped")].into_iter().collect();
        let ctx = CallContext::new(Some(Instant::now() + LONG), metadata);
        let (inside, seen) = guard(context::scope(Some(ctx), async {
            let inside = look();
            (inside, client.seen().await)
        }))
        .await;
        assert!(inside.in_call);
        assert_eq!(inside.first_str.as_deref(), Some("scoped"));
        let seen = seen.unwrap();
        let remaining = seen
            .remaining
            .expect("the call inherits the scope's deadline");
        assert!(remaining <= LONG && remaining > LONG / 2, "{kind:?}");
        // The scope's metadata is not sent.
        assert!(seen.is_empty, "{kind:?}: {seen:?}");
        // And the scope is gone after it.
        assert!(context::current().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_timeout_works_and_is_inherited() {
    for kind in KINDS {
        let chain = chain(kind).await;
        let seen = guard(chain.front.relay_seen(true, None).timeout(Duration::MAX))
            .await
            .unwrap()
            .unwrap();
        assert!(
            seen.remaining.is_some_and(|r| r > LONG),
            "{kind:?}: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_too_large_for_a_frame_fails_only_that_call() {
    for kind in KINDS {
        let (client, _events, _release, _h) = back(kind).await;
        let err = guard(client.seen().metadata("first", vec![7u8; 9 << 20]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{kind:?}: {err}");
        assert!(err.to_string().contains("frame size limit"), "{err}");
        let seen = guard(client.seen().metadata("first", "small"))
            .await
            .unwrap();
        assert_eq!(seen.first_str.as_deref(), Some("small"), "{kind:?}");
    }
}
