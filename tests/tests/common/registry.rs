//! What the registry tests (`etcd.rs`, `zookeeper.rs`) share: the service, its servers
//! (registered or not), a client following the registry, and waiting for what the client
//! lists and for who answers. A test includes it with `#[path = "common/registry.rs"] mod
//! registry;`; the registry itself (starting it, registering in it) stays in the test.
//!
//! Servers register under [`PREFIX`]: server `x` as [`key`]`("x")`, its endpoint's key (an
//! etcd key, a ZooKeeper node). Tests wait for conditions by polling them under
//! [`HANG_GUARD`]; none sleeps to let something happen.
// Each test uses some of these.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, ClientStats, Discover, EndpointState, RoundRobin};
use rpc_core::{service, Server};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Long enough never to fire on a slow, busy machine (a registry restarting, a JVM starting,
/// 2 s leases and sessions included); short enough that a hang fails the test instead of
/// blocking the suite.
pub const HANG_GUARD: Duration = Duration::from_secs(90);
/// Where the servers register.
pub const PREFIX: &str = "/rpc-tests/where";
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server answered.
#[service]
pub trait Where {
    /// The server's name. Safe to retry.
    #[rpc(idempotent)]
    async fn name(&self) -> String;
    /// Tells the test it started, waits until the test opens the gate, then returns the
    /// server's name.
    async fn hold(&self) -> String;
}

#[derive(Clone)]
struct Named {
    name: String,
    entered: mpsc::UnboundedSender<String>,
    gate: watch::Receiver<bool>,
}

impl Where for Named {
    async fn name(&self) -> String {
        self.name.clone()
    }

    async fn hold(&self) -> String {
        let _ = self.entered.send(self.name.clone());
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        self.name.clone()
    }
}

/// A server's shutdown signal, which [`TestServer::shut_down`] fires.
pub type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server on a free loopback port, registered, shut down gracefully (deregistering
/// first) by [`shut_down`](TestServer::shut_down).
pub struct TestServer {
    /// Fires the server's shutdown signal.
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
    /// `hold` calls report here once they run.
    pub entered: mpsc::UnboundedReceiver<String>,
    /// Opens the gate `hold` calls wait at.
    gate: Arc<watch::Sender<bool>>,
}

impl TestServer {
    /// Serves `name` on `listener` with the shutdown pattern the docs give:
    /// `serve_with_shutdown(listener, registration.deregister_on(signal))`, where
    /// `deregister_on` is `|signal| registration.deregister_on(signal)`.
    pub fn serve<F>(
        name: &str,
        listener: rpc_transport::tcp::TcpListener,
        deregister_on: impl FnOnce(Signal) -> F,
    ) -> TestServer
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(false);
        let (shutdown, signal) = oneshot::channel::<()>();
        let signal = Box::pin(async {
            let _ = signal.await;
        });
        let service = WhereServer::new(Named {
            name: name.to_string(),
            entered: entered_tx,
            gate: gate_rx,
        });
        let task = tokio::spawn(
            Server::new()
                .add_service(service)
                .serve_with_shutdown(listener, deregister_on(signal)),
        );
        TestServer {
            shutdown: Some(shutdown),
            task,
            entered,
            gate: Arc::new(gate),
        }
    }

    /// Graceful shutdown: deregisters, then stops accepting and finishes the calls it has.
    pub fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// A crash: the server and its registration vanish at once, without deregistering (the
    /// registration is dropped, which only stops its keepalive).
    pub fn crash(&self) {
        self.task.abort();
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server, not registered (the test registers it as it likes); its `hold` calls do not
/// wait.
pub fn serve_unregistered(name: &str, listener: rpc_transport::tcp::TcpListener) -> JoinHandle<()> {
    let server = Server::new().add_service(WhereServer::new(Named {
        name: name.to_string(),
        entered: mpsc::unbounded_channel().0,
        gate: watch::channel(true).1,
    }));
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    })
}

/// The key (node) server `name` registers as.
pub fn key(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

pub fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| key(name)).collect()
}

/// Retrying and reconnecting quickly.
pub fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500))
}

/// A client balancing round robin over what `discovery` lists, retrying and reconnecting
/// quickly.
pub fn client(discovery: impl Discover) -> WhereClient {
    WhereClient::builder()
        .strategy(RoundRobin::new())
        .backoff(fast())
        .discover(discovery)
}

/// The endpoint keys the client has now.
pub fn endpoints(client: &WhereClient) -> BTreeSet<String> {
    stats(client).endpoints.into_iter().map(|e| e.key).collect()
}

pub fn stats(client: &WhereClient) -> ClientStats {
    client
        .client()
        .stats()
        .expect("a balancing client has stats")
}

/// Whether the client has exactly these endpoints, all connected.
pub fn ready(client: &WhereClient, names: &[&str]) -> bool {
    let stats = stats(client);
    stats
        .endpoints
        .iter()
        .all(|e| e.state == EndpointState::Ready)
        && stats
            .endpoints
            .into_iter()
            .map(|e| e.key)
            .collect::<BTreeSet<_>>()
            == keys(names)
}

/// The endpoints' weights, by key.
pub fn weights(client: &WhereClient) -> Vec<(String, u32)> {
    (stats(client).endpoints.into_iter())
        .map(|e| (e.key, e.weight))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Shows what discovery and registration logged when a test fails (the test harness
/// captures it).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
}

/// Polls `done` until it holds, failing the test (saying `what`) after the hang guard.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let since = Instant::now();
    while !done() {
        assert!(since.elapsed() < HANG_GUARD, "hang guard: never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut` under the hang guard.
pub async fn guard<F: std::future::IntoFuture>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not complete"))
}

pub async fn call_name(client: &WhereClient) -> String {
    guard("a call", client.name().timeout(CALL_TIMEOUT))
        .await
        .expect("the call succeeds")
}

/// Calls until every server in `names` has answered (round robin reaches each quickly).
pub async fn answered_by_all(client: &WhereClient, names: &[&str]) {
    let mut seen = BTreeSet::new();
    let since = Instant::now();
    while seen.len() < names.len() {
        let name = call_name(client).await;
        assert!(
            names.contains(&name.as_str()),
            "answered by {name}, not one of {names:?}"
        );
        seen.insert(name);
        assert!(
            since.elapsed() < HANG_GUARD,
            "hang guard: only {seen:?} answered"
        );
    }
}

/// Calls `n` times, each answered by `name`.
pub async fn only_answered_by(client: &WhereClient, name: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(call_name(client).await, name);
    }
}

/// A registry a test runs (etcd, ZooKeeper), as the scenarios both tests share drive it.
pub trait Registry {
    /// Starts server `name` on a free loopback port, registered.
    fn start_server(&self, name: &str) -> impl Future<Output = TestServer>;
    /// A client following the registry (see [`client`]).
    fn client(&self) -> WhereClient;
    /// Kills the registry (SIGKILL); its data stays.
    fn kill(&mut self);
    /// Kills the registry and starts it again with its data.
    fn restart(&mut self) -> impl Future<Output = ()>;
}

/// The registry restarts (killed, then started again with its data): while it is down,
/// clients keep the servers they know and calls go on; after, the watch resumes (a new server
/// is picked up, a leaving one removed) and registrations keep their leases or sessions.
pub async fn the_watch_survives_a_restart(registry: &mut impl Registry) {
    let _a = registry.start_server("a").await;
    let mut b = registry.start_server("b").await;
    let client = registry.client();
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    registry.kill();
    // The registry is down: nothing is removed, and calls still reach both servers.
    answered_by_all(&client, &["a", "b"]).await;
    assert_eq!(endpoints(&client), keys(&["a", "b"]));

    registry.restart().await;
    let _c = registry.start_server("c").await;
    eventually("connected to a, b and c", || {
        ready(&client, &["a", "b", "c"])
    })
    .await;
    b.shut_down();
    eventually("b removed", || endpoints(&client) == keys(&["a", "c"])).await;
    answered_by_all(&client, &["a", "c"]).await;
}

/// Server `x` was listed by hand at `x_addr` with weight 5 (`<addr> 5`), beside entries that
/// are no server's: `client` connects to it, with that weight. Then `put` gives x's entry
/// another value and `delete` deletes it, by hand: a plain address (weight 1), a value of
/// another form (ignored: x is removed), the address again, and a delete each reach the
/// client.
pub async fn entries_written_by_hand_are_followed(
    client: &WhereClient,
    x_addr: &str,
    put: impl AsyncFn(&str),
    delete: impl AsyncFn(),
) {
    eventually("connected to x", || ready(client, &["x"])).await;
    assert_eq!(stats(client).endpoints[0].weight, 5);
    assert_eq!(call_name(client).await, "x");

    put(x_addr).await;
    eventually("x's weight back to 1", || {
        stats(client)
            .endpoints
            .iter()
            .map(|e| e.weight)
            .collect::<Vec<_>>()
            == [1]
    })
    .await;
    put("garbage in the registry").await;
    eventually("x removed", || endpoints(client).is_empty()).await;
    put(x_addr).await;
    eventually("x back", || ready(client, &["x"])).await;
    delete().await;
    eventually("x removed again", || endpoints(client).is_empty()).await;
}
