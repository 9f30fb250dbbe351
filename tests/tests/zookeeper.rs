//! Service discovery through a real ZooKeeper: servers register with
//! `rpc_transport::zookeeper::register` (or `ZkRegistrar`), clients balance over
//! `rpc_transport::zookeeper::watch`.
//!
//! Each test starts its own ZooKeeper (Debian's `zookeeperd`, run with Java by
//! `rpc_examples::zk_process`) on a free loopback port with a data directory of its own, and
//! kills it when done. Built only with the feature `zookeeper` of this crate (`cargo test
//! --workspace --all-features`). Tests wait for conditions by polling them under a hang
//! guard; none sleeps to let something happen, and none asserts on timing.

#[path = "common/cuttable.rs"]
mod cuttable;
#[path = "common/registry.rs"]
mod registry;

use std::collections::BTreeSet;
use std::time::Duration;

use rpc_examples::inventory::free_ports;
use rpc_examples::zk_process::{StartError, ZkProcess as Zk};
use rpc_transport::zookeeper::{self, Registration, ZkDiscovery, ZkRegistrar};
use tokio::task::JoinHandle;

// A ZooKeeper node is the key of the endpoint it lists.
use cuttable::Cuttable;
use registry::{
    answered_by_all, endpoints, eventually, fast, guard, key as node, keys as nodes, logs,
    only_answered_by, ready, serve_unregistered, weights, TestServer, WhereClient, HANG_GUARD,
    PREFIX as PATH,
};

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

// ---------------------------------------------------------------------------------------
// Its servers and clients

/// Registers `name` with `register` and serves it (see [`TestServer::serve`]).
async fn start_server(zk: &Zk, name: &str) -> TestServer {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = zookeeper::register([zk.addr()], PATH, name, addr)
        .await
        .expect("register in ZooKeeper");
    assert_eq!(registration.node(), node(name));
    TestServer::serve(name, listener, |signal| registration.deregister_on(signal))
}

/// A client balancing round robin over what ZooKeeper lists, retrying and reconnecting
/// quickly, through ZooKeeper at `zk` (`host:port`).
fn client(zk: &str) -> WhereClient {
    registry::client(
        ZkDiscovery::new([zk], PATH)
            .backoff(fast())
            .session_timeout(SESSION)
            .request_timeout(Duration::from_secs(2)),
    )
}

/// Server `a`, serving, and its registration through ZooKeeper at `zk` (`host:port`),
/// reconnecting quickly: kept by the test (not moved into a shutdown signal) to read its
/// session.
async fn serve_a_registered_by_hand(zk: &str) -> (Registration, JoinHandle<()>) {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = ZkRegistrar::new([zk], PATH, "a", addr)
        .session_timeout(SESSION)
        .backoff(fast())
        .request_timeout(Duration::from_secs(2))
        .register()
        .await
        .expect("register a");
    (registration, serve_unregistered("a", listener))
}

impl registry::Registry for Zk {
    async fn start_server(&self, name: &str) -> TestServer {
        start_server(self, name).await
    }

    fn client(&self) -> WhereClient {
        client(&self.addr())
    }

    fn kill(&mut self) {
        Zk::kill(self);
    }

    async fn restart(&mut self) {
        started(Zk::restart(self).await);
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
    let _a = start_server(&zk, "a").await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = ZkRegistrar::new([zk.addr()], PATH, "b", addr)
        .session_timeout(SESSION)
        .weight(3)
        .metadata(ZONE, "z2")
        .register()
        .await
        .expect("register in ZooKeeper");
    let _b = TestServer::serve("b", listener, |signal| registration.deregister_on(signal));

    let client = client(&zk.addr());
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;
    assert_eq!(weights(&client), [(node("a"), 1), (node("b"), 3)]);
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
    let _b = start_server(&zk, "b").await;
    // a talks to ZooKeeper through a link the test can cut.
    let link = Cuttable::to(zk.addr()).await;
    let (registration, _a) = serve_a_registered_by_hand(&link.addr()).await;
    let first_session = registration.session_id();
    let client = client(&zk.addr());
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    link.cut();
    eventually("a removed once its session expired", || {
        endpoints(&client) == nodes(&["b"])
    })
    .await;
    only_answered_by(&client, "b", 10).await;

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
    registry::the_watch_survives_a_restart(&mut start_zk().await).await;
}

/// ZooKeeper comes back empty (its data and sessions lost): every registration's session is
/// expired, and each registers again by itself, the path included; clients keep the servers
/// meanwhile and follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_zookeeper_loses_its_data() {
    logs();
    let mut zk = start_zk().await;
    let (registration, _a) = serve_a_registered_by_hand(&zk.addr()).await;
    let first_session = registration.session_id();
    let client = client(&zk.addr());
    eventually("connected to a", || ready(&client, &["a"])).await;

    started(zk.restart_empty().await);
    eventually("a registered on a new session", || {
        registration.session_id() != first_session
    })
    .await;
    let _b = start_server(&zk, "b").await;
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
    registry::entries_written_by_hand_are_followed(
        &client,
        &addr.to_string(),
        async |data| set(node("x"), data.to_string()).await,
        async || {
            guard("a delete", hand.delete(&node("x"), None))
                .await
                .expect("delete");
        },
    )
    .await;
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
    let _b = start_server(&zk, "b").await;
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
    only_answered_by(&client, "b", 10).await;
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
