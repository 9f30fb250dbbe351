//! Hedged calls (`ClientBuilder::hedge`), end to end over the in-process memory transport and
//! TCP: a call stuck on a slow endpoint is sent again to a fast one, whose answer wins, and
//! the stuck request is cancelled on the server; methods that are not idempotent, or that
//! stream, are never hedged; an empty retry budget sends no hedge; bad configurations are
//! errors.
//!
//! The slow endpoints never answer (until the test's hang guard), so whether a call is
//! hedged does not depend on timing. Tests wait for what handlers report through a channel,
//! or poll client state under the hang guard; none sleeps to let something happen. The two
//! tests that show a call was *not* hedged can only wait: they give the call a deadline many
//! times the hedging delay, and assert on counts, not on time.

mod common;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{guard, AnyTransport, HANG_GUARD};
use rpc_core::balance::{
    ClientStats, Endpoint, EndpointState, Endpoints, Hedge, RetryBudget, Strategy,
};
use rpc_core::{service, Connect, ErrorKind, Server, Streaming};
use tokio::sync::mpsc;

/// The service under test.
#[service]
pub trait Shard {
    /// Safe to run twice: hedged.
    #[rpc(idempotent)]
    async fn get(&self, key: u32) -> u32;
    /// Not idempotent: never hedged.
    async fn put(&self, key: u32) -> u32;
    /// Idempotent, but answered by a stream: never hedged.
    #[rpc(idempotent)]
    async fn scan(&self, n: u32) -> Streaming<u32>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Scan,
}

/// What a stuck handler reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// Handler `method` of the server tagged `.0` started and is stuck.
    Started(u32, Method),
    /// Its future was dropped before it finished: the call was cancelled.
    Dropped(u32, Method),
}

/// One server's handlers: answer at once with the tag, or, while `stuck`, never.
#[derive(Clone)]
struct Node {
    tag: u32,
    stuck: Arc<AtomicBool>,
    /// Calls answered, per method.
    answered: Arc<[AtomicU64; 3]>,
    events: mpsc::UnboundedSender<Event>,
}

/// Reports `Dropped` when the stuck handler holding it is dropped.
struct DropGuard {
    tag: u32,
    method: Method,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Dropped(self.tag, self.method));
    }
}

impl Node {
    async fn serve(&self, method: Method) -> u32 {
        if self.stuck.load(Ordering::SeqCst) {
            let _guard = DropGuard {
                tag: self.tag,
                method,
                events: self.events.clone(),
            };
            let _ = self.events.send(Event::Started(self.tag, method));
            std::future::pending::<()>().await;
        }
        self.answered[method as usize].fetch_add(1, Ordering::SeqCst);
        self.tag
    }
}

impl Shard for Node {
    async fn get(&self, _key: u32) -> u32 {
        self.serve(Method::Get).await
    }
    async fn put(&self, _key: u32) -> u32 {
        self.serve(Method::Put).await
    }
    async fn scan(&self, n: u32) -> Streaming<u32> {
        let tag = self.serve(Method::Scan).await;
        Streaming::new(futures::stream::iter((0..n).map(move |_| tag)))
    }
}

/// Sends each call to the first usable endpoint whose key starts with `slow`, else to the
/// first usable one: the first request of a call goes to a slow endpoint while one is
/// untried, so the test knows which request is the hedge.
struct PreferSlow;

impl Strategy for PreferSlow {
    fn pick(&self, endpoints: &Endpoints<'_>, _key: Option<u64>) -> Option<usize> {
        endpoints
            .usable()
            .find(|&i| endpoints.key(i).starts_with("slow"))
            .or_else(|| endpoints.usable().next())
    }
}

/// How the tests reach a server: every kind has this one connector type.
#[derive(Clone)]
enum Address {
    Memory(rpc_transport::memory::MemoryConnector),
    Tcp(SocketAddr),
}

impl Connect for Address {
    type Transport = AnyTransport;

    fn connect(&self) -> impl Future<Output = io::Result<AnyTransport>> + Send {
        let address = self.clone();
        async move {
            let transport: AnyTransport = match address {
                Address::Memory(connector) => Box::new(Connect::connect(&connector).await?),
                Address::Tcp(addr) => {
                    Box::new(Connect::connect(&rpc_transport::tcp::connector(addr)).await?)
                }
            };
            Ok(transport)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Tcp,
}

/// Starts a server of `node` over `kind`.
async fn start(kind: Kind, node: Node) -> Address {
    let server = Server::new().add_service(ShardServer::new(node));
    match kind {
        Kind::Memory => {
            let (listener, connector) = rpc_transport::memory::listener();
            tokio::spawn(server.serve(listener));
            Address::Memory(connector)
        }
        Kind::Tcp => {
            let listener = rpc_transport::tcp::bind("127.0.0.1:0")
                .await
                .expect("bind tcp");
            let addr = listener.local_addr().expect("local_addr");
            tokio::spawn(server.serve(listener));
            Address::Tcp(addr)
        }
    }
}

/// Servers keyed `slow-0`, `slow-1`, ... (stuck) and `fast` (answering), and a client of
/// them with `hedge` and `budget`, every endpoint connected.
struct Setup {
    client: ShardClient,
    slow: Vec<Node>,
    fast: Node,
    events: mpsc::UnboundedReceiver<Event>,
}

async fn setup(kind: Kind, slow: u32, hedge: Hedge, budget: RetryBudget) -> Setup {
    let (events, rx) = mpsc::unbounded_channel();
    let node = |tag: u32, stuck: bool| Node {
        tag,
        stuck: Arc::new(AtomicBool::new(stuck)),
        answered: Arc::default(),
        events: events.clone(),
    };
    let slow: Vec<Node> = (0..slow).map(|tag| node(tag, true)).collect();
    let fast = node(FAST, false);
    let mut endpoints = Vec::new();
    for n in &slow {
        let address = start(kind, n.clone()).await;
        endpoints.push(Endpoint::new(format!("slow-{}", n.tag), address));
    }
    endpoints.push(Endpoint::new("fast", start(kind, fast.clone()).await));
    let client = ShardClient::builder()
        .strategy(PreferSlow)
        .retry_budget(budget)
        .hedge(hedge)
        .balance(endpoints);
    // Every endpoint connected, so the first request goes to a slow one and the hedge has
    // somewhere to go.
    guard(async {
        while !stats(&client)
            .endpoints
            .iter()
            .all(|e| e.state == EndpointState::Ready)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    Setup {
        client,
        slow,
        fast,
        events: rx,
    }
}

/// The fast server's tag.
const FAST: u32 = 100;

/// A deadline for calls expected to succeed: generous, and inside the hang guard.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn stats(client: &ShardClient) -> ClientStats {
    client
        .client()
        .stats()
        .expect("a client made by a builder has stats")
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    guard(events.recv()).await.expect("the servers are gone")
}

/// Waits until `condition` on the client's stats holds (client state no handler reports),
/// checking every millisecond under the hang guard.
async fn stats_until(client: &ShardClient, condition: impl Fn(&ClientStats) -> bool) {
    guard(async {
        while !condition(&stats(client)) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// Defines a module `$name` with one test of `$body` over memory and one over TCP.
macro_rules! over_kinds {
    ($(#[doc = $doc:literal])* async fn $name:ident($kind:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            use super::*;

            async fn body($kind: Kind) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                body(Kind::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                body(Kind::Tcp).await;
            }
        }
    };
}

over_kinds! {
    /// A call stuck on the slow endpoint is hedged to the fast one, which answers; the
    /// stuck request is cancelled on the wire (the connection stays open, so only `Cancel`
    /// can drop its handler).
    async fn slow_endpoint_is_hedged_and_the_loser_cancelled(kind) {
        let hedge = Hedge::after(Duration::from_millis(5));
        let mut s = setup(kind, 1, hedge, RetryBudget::default()).await;
        let answer = s.client.get(7).timeout(CALL_TIMEOUT).await.expect("the hedge answers");
        assert_eq!(answer, FAST);
        assert_eq!(next_event(&mut s.events).await, Event::Started(0, Method::Get));
        assert_eq!(next_event(&mut s.events).await, Event::Dropped(0, Method::Get));
        let st = stats(&s.client);
        assert_eq!((st.calls, st.hedges, st.hedges_won, st.hedges_refused), (1, 1, 1, 0));
        assert_eq!(st.retries, 0);
        assert_eq!(s.fast.answered[Method::Get as usize].load(Ordering::SeqCst), 1);
        // The slow endpoint's connection survived the cancellation.
        assert!(st.endpoints.iter().all(|e| e.state == EndpointState::Ready));
    }
}

over_kinds! {
    /// With `max_attempts(3)`, a call stuck on two slow endpoints is hedged twice, and both
    /// stuck requests are cancelled once the fast one answers.
    async fn several_hedges_within_max_attempts(kind) {
        let hedge = Hedge::after(Duration::from_millis(5))
            .max_attempts(3)
            .expect("valid");
        let mut s = setup(kind, 2, hedge, RetryBudget::default()).await;
        let answer = s.client.get(7).timeout(CALL_TIMEOUT).await.expect("the hedge answers");
        assert_eq!(answer, FAST);
        let mut events = Vec::new();
        for _ in 0..4 {
            events.push(next_event(&mut s.events).await);
        }
        for tag in 0..2 {
            assert!(events.contains(&Event::Started(tag, Method::Get)), "{events:?}");
            assert!(events.contains(&Event::Dropped(tag, Method::Get)), "{events:?}");
        }
        let st = stats(&s.client);
        assert_eq!((st.hedges, st.hedges_won), (2, 1));
        assert_eq!(s.slow.len(), 2);
    }
}

over_kinds! {
    /// A percentile delay hedges once the method has enough answered calls to know what
    /// slow is.
    async fn percentile_delay_hedges_after_enough_samples(kind) {
        let hedge = Hedge::percentile(0.5).expect("valid").min_samples(4);
        let mut s = setup(kind, 1, hedge, RetryBudget::default()).await;
        // The slow endpoint answers at once for now: these calls are its samples.
        s.slow[0].stuck.store(false, Ordering::SeqCst);
        for key in 0..4 {
            assert_eq!(s.client.get(key).timeout(CALL_TIMEOUT).await.expect("answered"), 0);
        }
        assert_eq!(stats(&s.client).hedges, 0);
        s.slow[0].stuck.store(true, Ordering::SeqCst);
        let answer = s.client.get(9).timeout(CALL_TIMEOUT).await.expect("the hedge answers");
        assert_eq!(answer, FAST);
        assert_eq!(next_event(&mut s.events).await, Event::Started(0, Method::Get));
        assert_eq!(next_event(&mut s.events).await, Event::Dropped(0, Method::Get));
        let st = stats(&s.client);
        assert_eq!((st.hedges, st.hedges_won), (1, 1));
    }
}

over_kinds! {
    /// Methods not marked idempotent, and streaming methods, are never hedged: the call
    /// stays on the slow endpoint until its deadline (50 times the hedging delay).
    async fn non_idempotent_and_streaming_methods_are_not_hedged(kind) {
        let hedge = Hedge::after(Duration::from_millis(5));
        let mut s = setup(kind, 1, hedge, RetryBudget::default()).await;
        let wait = Duration::from_millis(250);
        let err = s.client.put(1).timeout(wait).await.expect_err("stuck until the deadline");
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(next_event(&mut s.events).await, Event::Started(0, Method::Put));
        assert_eq!(next_event(&mut s.events).await, Event::Dropped(0, Method::Put));

        let mut items = s.client.scan(3).timeout(wait).await.expect("the stream starts");
        let item = guard(items.next()).await.expect("the stream ends with an error");
        assert_eq!(item.expect_err("stuck until the deadline").kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(next_event(&mut s.events).await, Event::Started(0, Method::Scan));

        let st = stats(&s.client);
        assert_eq!((st.hedges, st.hedges_won, st.hedges_refused), (0, 0, 0));
        for method in [Method::Put, Method::Scan] {
            assert_eq!(s.fast.answered[method as usize].load(Ordering::SeqCst), 0);
        }
    }
}

over_kinds! {
    /// With the retry budget spent (here: none at all), no hedge is sent: the call stays on
    /// the slow endpoint, and the refusal is counted.
    async fn empty_budget_sends_no_hedge(kind) {
        let hedge = Hedge::after(Duration::ZERO);
        let mut s = setup(kind, 1, hedge, RetryBudget::none()).await;
        let client = s.client.clone();
        let call = tokio::spawn(async move { client.get(1).timeout(HANG_GUARD).await });
        assert_eq!(next_event(&mut s.events).await, Event::Started(0, Method::Get));
        stats_until(&s.client, |st| st.hedges_refused == 1).await;
        let st = stats(&s.client);
        assert_eq!((st.hedges, st.hedges_won), (0, 0));
        assert_eq!(s.fast.answered[Method::Get as usize].load(Ordering::SeqCst), 0);
        // Dropping the call cancels it.
        call.abort();
        assert_eq!(next_event(&mut s.events).await, Event::Dropped(0, Method::Get));
    }
}

#[test]
fn bad_configurations_are_errors() {
    for quantile in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let err = Hedge::percentile(quantile).expect_err("outside (0, 1)");
        assert!(
            err.to_string().contains("strictly between 0 and 1"),
            "{err}"
        );
    }
    let hedge = Hedge::percentile(0.99).expect("valid");
    for attempts in [0, 1] {
        let err = hedge.max_attempts(attempts).expect_err("no hedge at all");
        assert!(err.to_string().contains("at least 2"), "{err}");
    }
    assert_eq!(
        Hedge::after(Duration::from_millis(3))
            .max_attempts(5)
            .map(|h| h.get_max_attempts()),
        Ok(5)
    );
}
