//! Service discovery through a real etcd: servers register with `rpc_transport::etcd::register`
//! (or `EtcdRegistrar`), clients balance over `rpc_transport::etcd::watch`.
//!
//! Each test starts its own etcd server (the `etcd` binary of Debian's `etcd-server`, or the
//! one `ETCD_BIN` names) on free loopback ports with a data directory of its own, and kills
//! it when done. Built only with the feature `etcd` of this crate (`cargo test --workspace
//! --all-features`). Tests wait for conditions by polling them under a hang guard; none
//! sleeps to let something happen, and none asserts on timing.

#[path = "common/registry.rs"]
mod registry;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use rpc_examples::etcd_process::{EtcdError, EtcdProcess as Etcd};
use rpc_examples::inventory::free_ports;
use rpc_transport::etcd::{self, EtcdDiscovery, EtcdRegistrar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use registry::{
    answered_by_all, call_name, endpoints, eventually, fast, guard, key, keys, logs,
    only_answered_by, ready, serve_unregistered, weights, TestServer, WhereClient, CALL_TIMEOUT,
    HANG_GUARD, PREFIX,
};

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
// Its servers and clients

/// Registers `name` with `register` and serves it (see [`TestServer::serve`]).
async fn start_server(etcd: &Etcd, name: &str) -> TestServer {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = etcd::register([etcd.addr()], PREFIX, name, addr, TTL)
        .await
        .expect("register in etcd");
    assert_eq!(registration.key(), key(name));
    TestServer::serve(name, listener, |signal| registration.deregister_on(signal))
}

/// A client balancing round robin over what etcd lists, retrying and reconnecting quickly.
fn client(etcd: &Etcd) -> WhereClient {
    registry::client(
        EtcdDiscovery::new([etcd.addr()], PREFIX)
            .backoff(fast())
            .request_timeout(Duration::from_secs(2)),
    )
}

impl registry::Registry for Etcd {
    async fn start_server(&self, name: &str) -> TestServer {
        start_server(self, name).await
    }

    fn client(&self) -> WhereClient {
        client(self)
    }

    fn kill(&mut self) {
        Etcd::kill(self);
    }

    async fn restart(&mut self) {
        started(Etcd::restart(self).await);
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
    let _a = start_server(&etcd, "a").await;
    let _b = start_server(&etcd, "b").await;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = EtcdRegistrar::new([etcd.addr()], PREFIX, "c", addr)
        .ttl(TTL)
        .weight(3)
        .register()
        .await
        .expect("register in etcd");
    let _c = TestServer::serve("c", listener, |signal| registration.deregister_on(signal));

    let client = client(&etcd);
    eventually("connected to a, b and c", || {
        ready(&client, &["a", "b", "c"])
    })
    .await;
    assert_eq!(
        weights(&client),
        [(key("a"), 1), (key("b"), 1), (key("c"), 3)]
    );
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
        servers.push(TestServer::serve(name, listener, |signal| {
            registration.deregister_on(signal)
        }));
    }
    let client = WhereClient::builder()
        .zone(Zone::new("z2"))
        .backoff(fast())
        .discover(EtcdDiscovery::new([etcd.addr()], PREFIX).backoff(fast()));
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
    let mut a = start_server(&etcd, "a").await;
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

    let b = start_server(&etcd, "b").await;
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    a.shut_down();
    eventually("a removed", || endpoints(&client) == keys(&["b"])).await;
    only_answered_by(&client, "b", 10).await;

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
    let a = start_server(&etcd, "a").await;
    let _b = start_server(&etcd, "b").await;
    let client = client(&etcd);
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;

    a.crash();
    // Only the lease's expiry removes it: nothing revoked it.
    eventually("a removed after its lease expired", || {
        endpoints(&client) == keys(&["b"])
    })
    .await;
    only_answered_by(&client, "b", 10).await;
}

/// A server registering after the client started is picked up and gets calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_registering_later_is_picked_up() {
    logs();
    let etcd = start_etcd().await;
    let _a = start_server(&etcd, "a").await;
    let client = client(&etcd);
    eventually("connected to a", || ready(&client, &["a"])).await;
    assert_eq!(call_name(&client).await, "a");

    let _b = start_server(&etcd, "b").await;
    eventually("connected to a and b", || ready(&client, &["a", "b"])).await;
    answered_by_all(&client, &["a", "b"]).await;
}

/// etcd restarts (killed, then started again with its data): while it is down, clients keep
/// the servers they know and calls go on; after, the watch resumes (a new server is picked
/// up, a leaving one removed) and registrations keep their leases alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_survives_an_etcd_restart() {
    logs();
    registry::the_watch_survives_a_restart(&mut start_etcd().await).await;
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
    let server = serve_unregistered("a", listener);
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
    let server = serve_unregistered("x", listener);
    put_by_hand(&etcd, &key("junk"), "not an address").await;
    put_by_hand(&etcd, &key("x"), &format!("{addr} 5")).await;
    let client = client(&etcd);
    registry::entries_written_by_hand_are_followed(
        &client,
        &addr.to_string(),
        async |value| put_by_hand(&etcd, &key("x"), value).await,
        async || delete_by_hand(&etcd, &key("x")).await,
    )
    .await;
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
