//! Service discovery through a real etcd: servers register with `rpc_transport::etcd::register`
//! (or `EtcdRegistrar`), clients balance over `rpc_transport::etcd::watch`.
//!
//! Each test starts its own etcd server (the `etcd` binary of Debian's `etcd-server`, or the
//! one `ETCD_BIN` names) on free loopback ports with a data directory of its own, and kills
//! it when done. Built only with the feature `etcd` of this crate (`cargo test --workspace
//! --all-features`). Tests wait for conditions by polling them under a hang guard; none
//! sleeps to let something happen, and none asserts on timing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, EndpointState, RoundRobin};
use rpc_core::{service, Server};
use rpc_examples::etcd_process::{EtcdError, EtcdProcess as Etcd};
use rpc_examples::inventory::free_ports;
use rpc_transport::etcd::{self, EtcdDiscovery, EtcdRegistrar, Registration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Long enough never to fire on a slow, busy machine (etcd restarts and 2 s leases
/// included); short enough that a hang fails the test instead of blocking the suite.
const HANG_GUARD: Duration = Duration::from_secs(60);
const PREFIX: &str = "/rpc-tests/where";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The TTL of the servers' leases: a crashed server leaves within this.
const TTL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// An etcd server for one test: the harness the `etcd_cluster` example uses too

/// Starts an etcd for one test: the `etcd` binary, or the one `ETCD_BIN` names.
async fn start_etcd() -> Etcd {
    let binary = std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
    started(Etcd::start(binary, "test", HANG_GUARD).await)
}

/// What `start` or a restart gave; fails the test, saying why, if etcd did not start.
fn started<T>(result: Result<T, EtcdError>) -> T {
    result.unwrap_or_else(|err| match err {
        err if err.is_not_installed() => panic!(
            "the etcd tests need the `etcd` binary, which was not found: install it with \
             `apt-get install etcd-server` (or set ETCD_BIN to its path)"
        ),
        err => panic!("{err}"),
    })
}

/// Puts `key = value` in etcd by hand (as `etcdctl put` would), through etcd's JSON gateway.
async fn put_by_hand(etcd: &Etcd, key: &str, value: &str) {
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64(key.as_bytes()),
        base64(value.as_bytes())
    );
    gateway(etcd, "/v3/kv/put", &body).await;
}

/// Deletes `key` from etcd by hand, through etcd's JSON gateway.
async fn delete_by_hand(etcd: &Etcd, key: &str) {
    let body = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
    gateway(etcd, "/v3/kv/deleterange", &body).await;
}

async fn gateway(etcd: &Etcd, path: &str, body: &str) {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", etcd.client_port())).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = guard("a request to etcd's gateway", request)
        .await
        .expect("etcd's gateway answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
}

/// Standard base64, with padding (what etcd's JSON gateway takes for bytes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The service, its servers and clients

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

/// A server on a free loopback port, registered in etcd, shut down gracefully (deregistering
/// first) when `shutdown` fires.
struct TestServer {
    /// Fires the server's shutdown signal.
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// `hold` calls report here once they run.
    entered: mpsc::UnboundedReceiver<String>,
    /// Opens the gate `hold` calls wait at.
    gate: Arc<watch::Sender<bool>>,
}

impl TestServer {
    /// Registers with `register` and serves with the shutdown pattern the docs give:
    /// `serve_with_shutdown(listener, registration.deregister_on(signal))`.
    async fn start(etcd: &Etcd, name: &str) -> TestServer {
        let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registration = etcd::register([etcd.addr()], PREFIX, name, addr, TTL)
            .await
            .expect("register in etcd");
        assert_eq!(registration.key(), key(name));
        TestServer::serve(name, listener, registration)
    }

    fn serve(
        name: &str,
        listener: rpc_transport::tcp::TcpListener,
        registration: Registration,
    ) -> TestServer {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(false);
        let (shutdown, signal) = oneshot::channel::<()>();
        let signal = async {
            let _ = signal.await;
        };
        let service = WhereServer::new(Named {
            name: name.to_string(),
            entered: entered_tx,
            gate: gate_rx,
        });
        let task = tokio::spawn(
            Server::new()
                .add_service(service)
                .serve_with_shutdown(listener, registration.deregister_on(signal)),
        );
        TestServer {
            shutdown: Some(shutdown),
            task,
            entered,
            gate: Arc::new(gate),
        }
    }

    /// Graceful shutdown: deregisters, then stops accepting and finishes the calls it has.
    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// A crash: the server and its registration vanish at once, without revoking the lease
    /// (the registration is dropped, which only stops its keepalive).
    fn crash(&self) {
        self.task.abort();
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| key(name)).collect()
}

/// A client balancing round robin over what etcd lists, retrying and reconnecting quickly.
fn client(etcd: &Etcd) -> WhereClient {
    let fast = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    WhereClient::builder()
        .strategy(RoundRobin::new())
        .backoff(fast)
        .discover(
            EtcdDiscovery::new([etcd.addr()], PREFIX)
                .backoff(fast)
                .request_timeout(Duration::from_secs(2)),
        )
}

/// The endpoint keys the client has now.
fn endpoints(client: &WhereClient) -> BTreeSet<String> {
    stats(client).endpoints.into_iter().map(|e| e.key).collect()
}

fn stats(client: &WhereClient) -> rpc_core::balance::ClientStats {
    client
        .client()
        .stats()
        .expect("a balancing client has stats")
}

/// Whether the client has exactly these endpoints, all connected.
fn ready(client: &WhereClient, names: &[&str]) -> bool {
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

/// Shows what discovery and registration logged when a test fails (the test harness
/// captures it).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
}

/// Polls `done` until it holds, failing the test (saying `what`) after the hang guard.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let since = Instant::now();
    while !done() {
        assert!(since.elapsed() < HANG_GUARD, "hang guard: never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut` under the hang guard.
async fn guard<F: std::future::IntoFuture>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not complete"))
}

async fn call_name(client: &WhereClient) -> String {
    guard("a call", client.name().timeout(CALL_TIMEOUT))
        .await
        .expect("the call succeeds")
}

/// Calls until every server in `names` has answered (round robin reaches each quickly).
async fn answered_by_all(client: &WhereClient, names: &[&str]) {
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

// ---------------------------------------------------------------------------------------
// The tests

/// Three servers register; a client following etcd connects to all three and calls each,
/// with the weight a server registered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_balances_over_the_servers_registered() {
    logs();
    let etcd = start_etcd().await;
    let _a = TestServer::start(&etcd, "a").await;
    let _b = TestServer::start(&etcd, "b").await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = EtcdRegistrar::new([etcd.addr()], PREFIX, "c", addr)
        .ttl(TTL)
        .weight(3)
        .register()
        .await
        .expect("register in etcd");
    let _c = TestServer::serve("c", listener, registration);

    let client = client(&etcd);
    eventually("connected to a, b and c", || {
        ready(&client, &["a", "b", "c"])
    })
    .await;
    let weights: Vec<(String, u32)> = (stats(&client).endpoints.into_iter())
        .map(|e| (e.key, e.weight))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(weights, [(key("a"), 1), (key("b"), 1), (key("c"), 3)]);
    answered_by_all(&client, &["a", "b", "c"]).await;
}

/// A server's zone goes through etcd with its address: a zone-aware client keeps its calls
/// in its own zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_zone_reaches_zone_aware_clients() {
    use rpc_core::balance::{Zone, ZONE};
    logs();
    let etcd = start_etcd().await;
    let mut servers = Vec::new();
    for (name, zone) in [("a", "z1"), ("b", "z2"), ("c", "z2")] {
        let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registration = EtcdRegistrar::new([etcd.addr()], PREFIX, name, addr)
            .ttl(TTL)
            .metadata(ZONE, zone)
            .register()
            .await
            .expect("register in etcd");
        servers.push(TestServer::serve(name, listener, registration));
    }
    let fast = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    let client = WhereClient::builder()
        .zone(Zone::new("z2"))
        .backoff(fast)
        .discover(EtcdDiscovery::new([etcd.addr()], PREFIX).backoff(fast));
    eventually("connected to a, b and c", || {
        ready(&client, &["a", "b", "c"])
    })
    .await;
    let mut answered = BTreeSet::new();
    for _ in 0..40 {
        answered.insert(call_name(&client).await);
    }
    assert_eq!(answered, ["b".to_string(), "c".to_string()].into());
}

/// A server shutting down gracefully deregisters first: clients drop it and send new calls
/// elsewhere, and the call it has in progress still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_deregistering_is_removed_and_finishes_its_call() {
    logs();
    let etcd = start_etcd().await;
    let mut a = TestServer::start(&etcd, "a").await;
    let client = client(&etcd);
    eventually("connected to a", || ready(&client, &["a"])).await;

    let held = tokio::spawn({
        let client = client.clone();
        async move { client.hold().timeout(CALL_TIMEOUT * 3).await }
    });
    assert_eq!(
        guard("a's hold call to start", a.entered.recv())
            .await
            .as_deref(),
        Some("a")
    );

    let b = TestServer::start(&etcd, "b").await;
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    a.shut_down();
    eventually("a removed", || endpoints(&client) == keys(&["b"])).await;
    for _ in 0..10 {
        assert_eq!(call_name(&client).await, "b");
    }

    a.open_gate();
    let answer = guard("the held call", held).await.unwrap();
    assert_eq!(answer.expect("the call in progress completes"), "a");
    // a's server has finished its calls and stopped.
    guard("a's server to stop", &mut a.task)
        .await
        .unwrap()
        .expect("a's server stops cleanly");
    drop(b);
}

/// A server that crashes (no deregistration: its lease is simply no longer kept alive) is
/// removed from clients once its lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_is_removed_when_its_lease_expires() {
    logs();
    let etcd = start_etcd().await;
    let a = TestServer::start(&etcd, "a").await;
    let _b = TestServer::start(&etcd, "b").await;
    let client = client(&etcd);
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    a.crash();
    // Only the lease's expiry removes it: nothing revoked it.
    eventually("a removed after its lease expired", || {
        endpoints(&client) == keys(&["b"])
    })
    .await;
    for _ in 0..10 {
        assert_eq!(call_name(&client).await, "b");
    }
}

/// A server registering after the client started is picked up and gets calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_registering_later_is_picked_up() {
    logs();
    let etcd = start_etcd().await;
    let _a = TestServer::start(&etcd, "a").await;
    let client = client(&etcd);
    eventually("connected to a", || ready(&client, &["a"])).await;
    assert_eq!(call_name(&client).await, "a");

    let _b = TestServer::start(&etcd, "b").await;
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;
    answered_by_all(&client, &["a", "b"]).await;
}

/// etcd restarts (killed, then started again with its data): while it is down, clients keep
/// the servers they know and calls go on; after, the watch resumes (a new server is picked
/// up, a leaving one removed) and registrations keep their leases alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_survives_an_etcd_restart() {
    logs();
    let mut etcd = start_etcd().await;
    let _a = TestServer::start(&etcd, "a").await;
    let mut b = TestServer::start(&etcd, "b").await;
    let client = client(&etcd);
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    etcd.kill();
    // etcd is down: nothing is removed, and calls still reach both servers.
    answered_by_all(&client, &["a", "b"]).await;
    assert_eq!(endpoints(&client), keys(&["a", "b"]));

    started(etcd.restart().await);
    let _c = TestServer::start(&etcd, "c").await;
    eventually("connected to a, b and c", || {
        ready(&client, &["a", "b", "c"])
    })
    .await;
    b.shut_down();
    eventually("b removed", || endpoints(&client) == keys(&["a", "c"])).await;
    answered_by_all(&client, &["a", "c"]).await;
}

/// etcd comes back empty (its data lost): every registration's lease is gone, and each
/// registers again by itself; clients follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_etcd_loses_its_data() {
    logs();
    let mut etcd = start_etcd().await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Kept by the test (not moved into a shutdown signal) to read its lease.
    let registration = etcd::register([etcd.addr()], PREFIX, "a", addr, TTL)
        .await
        .expect("register in etcd");
    let first_lease = registration.lease_id();
    let server = tokio::spawn(
        Server::new()
            .add_service(WhereServer::new(Named {
                name: "a".into(),
                entered: mpsc::unbounded_channel().0,
                gate: watch::channel(true).1,
            }))
            .serve(listener),
    );
    let client = client(&etcd);
    eventually("connected to a", || ready(&client, &["a"])).await;

    started(etcd.restart_empty().await);
    eventually("a registered on a new lease", || {
        registration.lease_id() != first_lease
    })
    .await;
    eventually("connected to a again", || ready(&client, &["a"])).await;
    assert_eq!(call_name(&client).await, "a");

    guard("deregistering", registration.deregister())
        .await
        .expect("deregister");
    eventually("a removed", || endpoints(&client).is_empty()).await;
    server.abort();
}

/// Entries written by hand follow the documented format: `addr` or `addr weight`; a value
/// of another form is ignored (and removes the endpoint it replaced); a delete removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_put_by_hand_are_followed() {
    assert_eq!(base64(b"/a"), "L2E=");
    assert_eq!(base64(b"abc"), "YWJj");
    assert_eq!(base64(b"ab"), "YWI=");
    logs();
    let etcd = start_etcd().await;
    // A server that does not register: etcd is told about it by hand.
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Server::new()
            .add_service(WhereServer::new(Named {
                name: "x".into(),
                entered: mpsc::unbounded_channel().0,
                gate: watch::channel(true).1,
            }))
            .serve(listener),
    );
    put_by_hand(&etcd, &key("junk"), "not an address").await;
    put_by_hand(&etcd, &key("x"), &format!("{addr} 5")).await;
    let client = client(&etcd);
    eventually("connected to x", || ready(&client, &["x"])).await;
    assert_eq!(stats(&client).endpoints[0].weight, 5);
    assert_eq!(call_name(&client).await, "x");

    put_by_hand(&etcd, &key("x"), &addr.to_string()).await;
    eventually("x's weight back to 1", || {
        stats(&client)
            .endpoints
            .iter()
            .map(|e| e.weight)
            .collect::<Vec<_>>()
            == [1]
    })
    .await;
    put_by_hand(&etcd, &key("x"), "garbage in etcd").await;
    eventually("x removed", || endpoints(&client).is_empty()).await;
    put_by_hand(&etcd, &key("x"), &addr.to_string()).await;
    eventually("x back", || ready(&client, &["x"])).await;
    delete_by_hand(&etcd, &key("x")).await;
    eventually("x removed again", || endpoints(&client).is_empty()).await;
    server.abort();
}

/// Registering refuses bad arguments before talking to etcd, and says why; an unreachable
/// etcd fails registration with an error naming what was attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_errors_say_what_failed() {
    let bad = [
        EtcdRegistrar::new(["127.0.0.1:1"], PREFIX, "", "127.0.0.1:4000"),
        EtcdRegistrar::new(["127.0.0.1:1"], PREFIX, "a", "127.0.0.1: 4000"),
        EtcdRegistrar::new(["127.0.0.1:1"], PREFIX, "a", "127.0.0.1:4000").ttl(Duration::ZERO),
        EtcdRegistrar::new(Vec::<String>::new(), PREFIX, "a", "127.0.0.1:4000"),
    ];
    for registrar in bad {
        let err = registrar.register().await.expect_err("refused");
        assert!(err.is_invalid_argument(), "{err}");
        assert!(err.to_string().contains("failed:"), "{err}");
    }

    // Nothing listens on a port we just let go.
    let [port] = free_ports().expect("a free port");
    let err = EtcdRegistrar::new([format!("127.0.0.1:{port}")], PREFIX, "a", "127.0.0.1:4000")
        .request_timeout(Duration::from_millis(500))
        .register()
        .await
        .expect_err("no etcd there");
    let message = err.to_string();
    assert!(message.contains("/rpc-tests/where/a"), "{message}");
    assert!(message.contains("etcd is running"), "{message}");
    let io: std::io::Error = err.into();
    assert!(io.to_string().contains("etcd"), "{io}");
}
