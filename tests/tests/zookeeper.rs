//! Service discovery through a real ZooKeeper: servers register with
//! `rpc_transport::zookeeper::register` (or `ZkRegistrar`), clients balance over
//! `rpc_transport::zookeeper::watch`.
//!
//! Each test starts its own ZooKeeper (Debian's `zookeeperd`, run with Java by
//! `rpc_examples::zk_process`) on a free loopback port with a data directory of its own, and
//! kills it when done. Built only with the feature `zookeeper` of this crate (`cargo test
//! --workspace --all-features`). Tests wait for conditions by polling them under a hang
//! guard; none sleeps to let something happen, and none asserts on timing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, EndpointState, RoundRobin};
use rpc_core::{service, Server};
use rpc_examples::inventory::free_ports;
use rpc_examples::zk_process::{StartError, ZkProcess as Zk};
use rpc_transport::zookeeper::{self, Registration, ZkDiscovery, ZkRegistrar};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Long enough never to fire on a slow, busy machine (a JVM starting included); short enough
/// that a hang fails the test instead of blocking the suite.
const HANG_GUARD: Duration = Duration::from_secs(90);
const PATH: &str = "/rpc-tests/where";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The servers' session timeout: a cut-off server leaves within this.
const SESSION: Duration = Duration::from_secs(2);
/// ZooKeeper's tick: short, so sessions of `SESSION` are allowed and expire on time.
const TICK: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// A ZooKeeper for one test: the harness the `zk_cluster` example uses too

async fn start_zk() -> Zk {
    started(Zk::start("test", TICK, HANG_GUARD).await)
}

/// What `start` or a restart gave; fails the test, saying why, if ZooKeeper did not start.
fn started<T>(result: Result<T, StartError>) -> T {
    result.unwrap_or_else(|err| match err {
        StartError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "the ZooKeeper tests need Java and ZooKeeper, which were not found: install \
                 them with `apt-get install zookeeperd` (or set JAVA to `java`'s path)"
            )
        }
        err => panic!("{err}"),
    })
}

/// A TCP proxy to ZooKeeper that the test can cut (every connection through it dropped, new
/// ones refused) and mend: a network cut between one server and ZooKeeper.
struct Cuttable {
    port: u16,
    open: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Cuttable {
    async fn to(zk: &Zk) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let target = zk.addr();
        let task = tokio::spawn({
            let open = Arc::clone(&open);
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut is_open = open.subscribe();
                    if !*is_open.borrow_and_update() {
                        continue; // dropped: refused
                    }
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = is_open.wait_for(|open| !*open) => {}
                        }
                    });
                }
            }
        });
        Cuttable { port, open, task }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn mend(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The service, its servers and clients

/// Which server answered.
#[service]
pub trait Where {
    /// The server's name. Safe to retry.
    #[rpc(idempotent)]
    async fn name(&self) -> String;
}

#[derive(Clone)]
struct Named {
    name: String,
}

impl Where for Named {
    async fn name(&self) -> String {
        self.name.clone()
    }
}

/// A server on a free loopback port, registered in ZooKeeper, shut down gracefully
/// (deregistering first) when `shutdown` fires.
struct TestServer {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Registers with `register` and serves with the shutdown pattern the docs give:
    /// `serve_with_shutdown(listener, registration.deregister_on(signal))`.
    async fn start(zk: &Zk, name: &str) -> TestServer {
        let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registration = zookeeper::register([zk.addr()], PATH, name, addr)
            .await
            .expect("register in ZooKeeper");
        assert_eq!(registration.node(), node(name));
        TestServer::serve(name, listener, registration)
    }

    fn serve(
        name: &str,
        listener: rpc_transport::tcp::TcpListener,
        registration: Registration,
    ) -> TestServer {
        let (shutdown, signal) = oneshot::channel::<()>();
        let signal = async {
            let _ = signal.await;
        };
        let task = tokio::spawn(
            Server::new()
                .add_service(WhereServer::new(Named {
                    name: name.to_string(),
                }))
                .serve_with_shutdown(listener, registration.deregister_on(signal)),
        );
        TestServer {
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Graceful shutdown: deregisters, then stops accepting and finishes the calls it has.
    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server, not registered (the test registers it as it likes).
fn serve_unregistered(name: &str, listener: rpc_transport::tcp::TcpListener) -> JoinHandle<()> {
    let server = Server::new().add_service(WhereServer::new(Named {
        name: name.to_string(),
    }));
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    })
}

fn node(name: &str) -> String {
    format!("{PATH}/{name}")
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| node(name)).collect()
}

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500))
}

/// A client balancing round robin over what ZooKeeper lists, retrying and reconnecting
/// quickly, through ZooKeeper at `zk` (`host:port`).
fn client(zk: &str) -> WhereClient {
    WhereClient::builder()
        .strategy(RoundRobin::new())
        .backoff(fast())
        .discover(
            ZkDiscovery::new([zk], PATH)
                .backoff(fast())
                .session_timeout(SESSION)
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
            == nodes(names)
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

/// Servers register (one with a weight and a zone); a client following ZooKeeper connects
/// to both, with the weight they registered with, and calls each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_balances_over_the_servers_registered() {
    use rpc_core::balance::ZONE;
    logs();
    let zk = start_zk().await;
    let _a = TestServer::start(&zk, "a").await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = ZkRegistrar::new([zk.addr()], PATH, "b", addr)
        .session_timeout(SESSION)
        .weight(3)
        .metadata(ZONE, "z2")
        .register()
        .await
        .expect("register in ZooKeeper");
    let _b = TestServer::serve("b", listener, registration);

    let client = client(&zk.addr());
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;
    let weights: Vec<(String, u32)> = (stats(&client).endpoints.into_iter())
        .map(|e| (e.key, e.weight))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(weights, [(node("a"), 1), (node("b"), 3)]);
    answered_by_all(&client, &["a", "b"]).await;
}

/// The changes the discovery stream gives, read directly: an insert per server listed, with
/// its weight and metadata, then a removal when a server deregisters, and one when its
/// `Registration` is dropped (which closes its session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_or_dropping_the_registration_removes_the_node() {
    use futures::StreamExt;
    use rpc_core::balance::{Change, ZONE};
    logs();
    let zk = start_zk().await;
    let a = zookeeper::register([zk.addr()], PATH, "a", "127.0.0.1:1")
        .await
        .expect("register a");
    let b = ZkRegistrar::new([zk.addr()], PATH, "b", "127.0.0.1:2")
        .weight(0)
        .metadata(ZONE, "z1")
        .metadata("rack", "r7")
        .register()
        .await
        .expect("register b");
    let mut changes = ZkDiscovery::new([zk.addr()], PATH).backoff(fast()).watch();
    let mut inserted = BTreeSet::new();
    while inserted.len() < 2 {
        match guard("an insert", changes.next()).await {
            Some(Change::Insert(endpoint)) => {
                let metadata: Vec<String> = (endpoint.metadata_entries())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                inserted.insert((endpoint.key().to_string(), endpoint.get_weight(), metadata));
            }
            other => panic!("expected an insert, got {other:?}"),
        }
    }
    assert_eq!(
        inserted,
        [
            (node("a"), 1, vec![]),
            (
                node("b"),
                0,
                vec![format!("{ZONE}=z1"), "rack=r7".to_string()]
            )
        ]
        .into_iter()
        .collect()
    );

    guard("deregistering a", a.deregister())
        .await
        .expect("deregister a");
    match guard("a's removal", changes.next()).await {
        Some(Change::Remove(key)) => assert_eq!(key, node("a")),
        other => panic!("expected a's removal, got {other:?}"),
    }
    drop(b);
    match guard("b's removal", changes.next()).await {
        Some(Change::Remove(key)) => assert_eq!(key, node("b")),
        other => panic!("expected b's removal, got {other:?}"),
    }
}

/// A name held by a live server is refused, saying so; once that server leaves, the name can
/// be had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_a_live_server_is_refused() {
    logs();
    let zk = start_zk().await;
    let first = zookeeper::register([zk.addr()], PATH, "a", "127.0.0.1:1")
        .await
        .expect("register a");
    let err = zookeeper::register([zk.addr()], PATH, "a", "127.0.0.1:2")
        .await
        .expect_err("the name is taken");
    assert!(err.is_name_taken(), "{err}");
    let message = err.to_string();
    assert!(message.contains(&node("a")), "{message}");
    assert!(message.contains("name of its own"), "{message}");

    guard("deregistering", first.deregister())
        .await
        .expect("deregister");
    let second = zookeeper::register([zk.addr()], PATH, "a", "127.0.0.1:2")
        .await
        .expect("the name is free again");
    assert_eq!(second.node(), node("a"));
}

/// A server cut off from ZooKeeper for longer than its session timeout (as good as crashed,
/// for ZooKeeper) has its session expired and its node deleted: clients drop it. When the
/// network comes back, the server (alive all along) opens a new session and registers again:
/// clients pick it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_server_drops_out_and_registers_again() {
    logs();
    let zk = start_zk().await;
    let _b = TestServer::start(&zk, "b").await;
    // a talks to ZooKeeper through a link the test can cut.
    let link = Cuttable::to(&zk).await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = ZkRegistrar::new([link.addr()], PATH, "a", addr)
        .session_timeout(SESSION)
        .backoff(fast())
        .request_timeout(Duration::from_secs(2))
        .register()
        .await
        .expect("register a");
    let first_session = registration.session_id();
    let _a = serve_unregistered("a", listener);
    let client = client(&zk.addr());
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    link.cut();
    eventually("a removed once its session expired", || {
        endpoints(&client) == nodes(&["b"])
    })
    .await;
    for _ in 0..10 {
        assert_eq!(call_name(&client).await, "b");
    }

    link.mend();
    eventually("a registered on a new session", || {
        registration.session_id() != first_session
    })
    .await;
    eventually("connected to a and b again", || ready(&client, &["a", "b"])).await;
    answered_by_all(&client, &["a", "b"]).await;
}

/// ZooKeeper restarts (killed, then started again with its data): while it is down, clients
/// keep the servers they know and calls go on; after, the watch resumes (a new server is
/// picked up, a leaving one removed) and registrations keep their sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_survives_a_zookeeper_restart() {
    logs();
    let mut zk = start_zk().await;
    let _a = TestServer::start(&zk, "a").await;
    let mut b = TestServer::start(&zk, "b").await;
    let client = client(&zk.addr());
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    zk.kill();
    // ZooKeeper is down: nothing is removed, and calls still reach both servers.
    answered_by_all(&client, &["a", "b"]).await;
    assert_eq!(endpoints(&client), nodes(&["a", "b"]));

    started(zk.restart().await);
    let _c = TestServer::start(&zk, "c").await;
    eventually("connected to a, b and c", || {
        ready(&client, &["a", "b", "c"])
    })
    .await;
    b.shut_down();
    eventually("b removed", || endpoints(&client) == nodes(&["a", "c"])).await;
    answered_by_all(&client, &["a", "c"]).await;
}

/// ZooKeeper comes back empty (its data and sessions lost): every registration's session is
/// expired, and each registers again by itself, the path included; clients keep the servers
/// meanwhile and follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_zookeeper_loses_its_data() {
    logs();
    let mut zk = start_zk().await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Kept by the test (not moved into a shutdown signal) to read its session.
    let registration = ZkRegistrar::new([zk.addr()], PATH, "a", addr)
        .session_timeout(SESSION)
        .backoff(fast())
        .register()
        .await
        .expect("register a");
    let first_session = registration.session_id();
    let _a = serve_unregistered("a", listener);
    let client = client(&zk.addr());
    eventually("connected to a", || ready(&client, &["a"])).await;

    started(zk.restart_empty().await);
    eventually("a registered on a new session", || {
        registration.session_id() != first_session
    })
    .await;
    let _b = TestServer::start(&zk, "b").await;
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;
    answered_by_all(&client, &["a", "b"]).await;

    guard("deregistering", registration.deregister())
        .await
        .expect("deregister");
    eventually("a removed", || endpoints(&client) == nodes(&["b"])).await;
}

/// Nodes written by hand follow the documented format: `addr` or `addr weight`; data of
/// another form is ignored (and removes the endpoint it replaced), and so are nodes deeper
/// than the path's children; a delete removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_written_by_hand_are_followed() {
    use zookeeper_client::{Acls, Client, CreateMode};
    logs();
    let zk = start_zk().await;
    // A server that does not register: ZooKeeper is told about it by hand.
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _x = serve_unregistered("x", listener);
    let hand = guard("connecting by hand", Client::connect(&zk.addr()))
        .await
        .expect("a ZooKeeper client");
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let create = |path: String, data: String| {
        let hand = &hand;
        let persistent = &persistent;
        async move {
            guard("a create", hand.create(&path, data.as_bytes(), persistent))
                .await
                .expect("create");
        }
    };
    let set = |path: String, data: String| {
        let hand = &hand;
        async move {
            guard("a set", hand.set_data(&path, data.as_bytes(), None))
                .await
                .expect("set");
        }
    };
    guard("mkdir", hand.mkdir(PATH, &persistent))
        .await
        .expect("mkdir");
    create(node("junk"), "not an address".into()).await;
    create(node("x"), format!("{addr} 5")).await;
    // A grandchild with a good address: not a server of this path.
    create(format!("{}/deeper", node("junk")), addr.to_string()).await;
    let client = client(&zk.addr());
    eventually("connected to x", || ready(&client, &["x"])).await;
    assert_eq!(stats(&client).endpoints[0].weight, 5);
    assert_eq!(call_name(&client).await, "x");

    set(node("x"), addr.to_string()).await;
    eventually("x's weight back to 1", || {
        stats(&client)
            .endpoints
            .iter()
            .map(|e| e.weight)
            .collect::<Vec<_>>()
            == [1]
    })
    .await;
    set(node("x"), "garbage in ZooKeeper".into()).await;
    eventually("x removed", || endpoints(&client).is_empty()).await;
    set(node("x"), addr.to_string()).await;
    eventually("x back", || ready(&client, &["x"])).await;
    guard("a delete", hand.delete(&node("x"), None))
        .await
        .expect("delete");
    eventually("x removed again", || endpoints(&client).is_empty()).await;
}

/// A server that crashes leaves its session open, unclosed: ZooKeeper expires it after the
/// session timeout and deletes its ephemeral node, and clients drop the server then. (The
/// crash is a detached session, which a client does not close when dropped, holding the node
/// a registration would have made.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_servers_node_goes_when_its_session_expires() {
    use zookeeper_client::{Acls, Client, CreateMode};
    logs();
    let zk = start_zk().await;
    let _b = TestServer::start(&zk, "b").await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _a = serve_unregistered("a", listener);
    let crashing = Client::connector()
        .with_session_timeout(SESSION)
        .with_detached();
    let crashing = guard("connecting", crashing.connect(&zk.addr()))
        .await
        .expect("a ZooKeeper session");
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    guard(
        "a create",
        crashing.create(&node("a"), addr.to_string().as_bytes(), &ephemeral),
    )
    .await
    .expect("create a's node");
    let client = client(&zk.addr());
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    // The crash: the connection goes, the session is not closed.
    drop(crashing);
    eventually("a removed once its session expired", || {
        endpoints(&client) == nodes(&["b"])
    })
    .await;
    for _ in 0..10 {
        assert_eq!(call_name(&client).await, "b");
    }
}

/// Registering refuses bad arguments before talking to ZooKeeper, and says why; an
/// unreachable ZooKeeper fails registration with an error naming what was attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_errors_say_what_failed() {
    let bad = [
        ZkRegistrar::new(["127.0.0.1:1"], PATH, "", "127.0.0.1:4000"),
        ZkRegistrar::new(["127.0.0.1:1"], PATH, "a/b", "127.0.0.1:4000"),
        ZkRegistrar::new(["127.0.0.1:1"], "relative", "a", "127.0.0.1:4000"),
        ZkRegistrar::new(["127.0.0.1:1"], PATH, "a", "127.0.0.1: 4000"),
        ZkRegistrar::new(Vec::<String>::new(), PATH, "a", "127.0.0.1:4000"),
    ];
    for registrar in bad {
        let err = registrar.register().await.expect_err("refused");
        assert!(err.is_invalid_argument(), "{err}");
        assert!(err.to_string().contains("failed:"), "{err}");
    }

    // Nothing listens on a port we just let go.
    let [port] = free_ports().expect("a free port");
    let err = ZkRegistrar::new([format!("127.0.0.1:{port}")], PATH, "a", "127.0.0.1:4000")
        .request_timeout(Duration::from_millis(500))
        .register()
        .await
        .expect_err("no ZooKeeper there");
    let message = err.to_string();
    assert!(message.contains("ZooKeeper is running"), "{message}");
    assert!(err.is_timeout(), "{message}");
    let io: std::io::Error = err.into();
    assert!(io.to_string().contains("ZooKeeper"), "{io}");
}
