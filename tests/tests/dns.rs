//! DNS discovery end to end: balancing clients built with `.discover(Dns::…)` against real
//! rpc servers (TCP on loopback addresses) and a real DNS server on a loopback port
//! (`dns_server.rs`), whose records and TTLs the tests change while calls run.
//!
//! TTLs are 1 s and the minimum re-resolve interval short, so a change shows within about
//! a second. Tests wait for what they need with `wait_for` (woken by the replicas'
//! handlers) or `eventually` (for client state, and for failed resolutions, counted from
//! the warnings the source logs) under the hang guard; none sleeps to let something
//! happen, and none asserts on timing.

mod common;
#[path = "common/dns_clients.rs"]
mod dns_clients;
#[path = "common/dns_server.rs"]
mod dns_server;

use std::collections::{BTreeMap, BTreeSet};
use std::future::IntoFuture;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, Once};
use std::time::Duration;

use common::guard;
use common::replica::{eventually, wait_for, FleetClient, Method, Replica};
use dns_clients::{addr, client, key, reach_all, ready, stats, CALL_TIMEOUT};
use dns_server::{DnsServer, Mode, SrvTarget};
use futures::StreamExt;
use rpc_core::balance::{Backoff, Change, Discover};
use rpc_transport::dns::Dns;

/// The TTL of every record the tests publish.
const TTL: u32 = 1;

/// Failed resolutions per name, counted from the source's `warn` events.
static FAILURES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts the DNS source's warnings (each is a failed resolution) by the name resolved.
struct CountFailures;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountFailures {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN || !meta.target().starts_with("rpc_transport::dns")
        {
            return;
        }
        struct Name(Option<String>);
        impl tracing::field::Visit for Name {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "name" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut name = Name(None);
        event.record(&mut name);
        if let Some(name) = name.0 {
            *FAILURES
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(name)
                .or_default() += 1;
        }
    }
}

/// Failed resolutions of `name` so far.
fn failures(name: &str) -> u64 {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CountFailures))
            .expect("no other subscriber in this test binary");
    });
    FAILURES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(name)
        .copied()
        .unwrap_or(0)
}

/// A source asking `server`, quick to ask again and to retry.
fn quick(dns: Dns, server: &DnsServer) -> Dns {
    dns.nameserver(server.addr())
        .min_interval(Duration::from_millis(10))
        .timeout(Duration::from_millis(200))
        .retry_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ))
}

/// The keys of the client's endpoints.
fn keys(client: &FleetClient) -> BTreeSet<String> {
    stats(client).endpoints.into_iter().map(|e| e.key).collect()
}

fn ip(replica: &Replica) -> IpAddr {
    addr(replica).ip()
}

/// Three TCP replicas, tagged 0, 1, 2, on 127.0.0.2, .3 and .4 with one port: what three
/// hosts behind one name look like.
async fn replicas_sharing_a_port() -> Vec<Replica> {
    let ips = [2, 3, 4].map(|last| Ipv4Addr::new(127, 0, 0, last));
    'attempt: for _ in 0..50 {
        let first = Replica::start_tcp_at(SocketAddr::from((ips[0], 0)), 0)
            .await
            .expect("bind 127.0.0.2");
        let port = addr(&first).port();
        let mut replicas = vec![first];
        for (tag, ip) in (1..).zip(&ips[1..]) {
            match Replica::start_tcp_at(SocketAddr::from((*ip, port)), tag).await {
                Ok(replica) => replicas.push(replica),
                // The port is taken on that address: try another.
                Err(_) => continue 'attempt,
            }
        }
        return replicas;
    }
    panic!("no port free on 127.0.0.2, .3 and .4 at once");
}

/// Three TCP replicas on 127.0.0.1, each on its own port, and the SRV records that name
/// them (`pod-N` targets, weights 10, 20, 30).
async fn replicas_behind_srv(dns: &DnsServer, service: &str) -> Vec<Replica> {
    let mut replicas = Vec::new();
    let mut targets = Vec::new();
    for tag in 0..3u16 {
        let replica = Replica::start(common::Kind::Tcp, u32::from(tag)).await;
        let target = format!("pod-{tag}.lab.default.svc.cluster.local.");
        dns.set_addresses(&target, &[ip(&replica)], TTL);
        targets.push(SrvTarget {
            target,
            port: addr(&replica).port(),
            weight: 10 * (tag + 1),
            priority: 0,
        });
        replicas.push(replica);
    }
    dns.set_srv(service, &targets, TTL);
    replicas
}

/// A client using `Dns::new("name:port")` finds the three hosts behind a name's A records
/// and sends calls to each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_find_every_server() {
    let dns = DnsServer::start().await;
    let replicas = replicas_sharing_a_port().await;
    let port = addr(&replicas[0]).port();
    let ips: Vec<IpAddr> = replicas.iter().map(ip).collect();
    dns.set_addresses("lab.rpc.test", &ips, TTL);

    let client = client(quick(Dns::new(format!("lab.rpc.test:{port}")), &dns));
    ready(&client, &replicas.iter().collect::<Vec<_>>()).await;
    reach_all(&client, &[0, 1, 2]).await;
    assert!(stats(&client).endpoints.iter().all(|e| e.weight == 1));
}

/// SRV records (as a Kubernetes headless Service publishes them) name three servers on
/// their own ports; the client reaches each, with the records' weights, whether their
/// addresses come in the SRV answer or from lookups of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_find_every_server_with_its_port_and_weight() {
    for glue in [true, false] {
        let dns = DnsServer::start().await;
        dns.set_glue(glue);
        let service = "_rpc._tcp.lab.default.svc.cluster.local";
        let replicas = replicas_behind_srv(&dns, service).await;

        let client = client(quick(Dns::srv(service), &dns));
        ready(&client, &replicas.iter().collect::<Vec<_>>()).await;
        reach_all(&client, &[0, 1, 2]).await;
        for (replica, weight) in replicas.iter().zip([10, 20, 30]) {
            let endpoint = stats(&client)
                .endpoints
                .into_iter()
                .find(|e| e.key == key(replica))
                .expect("the replica is an endpoint");
            assert_eq!(endpoint.weight, weight, "glue: {glue}");
        }
    }
}

/// The source's own changes: an insert per address, keyed `ip:port`, with the SRV record's
/// weight, target and priority (and the metadata the source was given); when the answer changes, the new address is inserted before
/// the old one is removed, so a client is never left with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_insert_new_addresses_before_removing_old_ones() {
    let dns = DnsServer::start().await;
    let service = "_rpc._tcp.changes.test";
    let target = |n: u16| SrvTarget {
        target: format!("host-{n}.changes.test"),
        port: 4000 + n,
        weight: n,
        priority: 0,
    };
    for n in 1..=3u16 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, n as u8));
        dns.set_addresses(&format!("host-{n}.changes.test"), &[ip], TTL);
    }
    dns.set_srv(service, &[target(1), target(2)], TTL);
    let source = quick(Dns::srv(service), &dns).metadata(rpc_core::balance::ZONE, "z1");
    let mut changes = source.into_changes();

    let mut inserted = Vec::new();
    for _ in 0..2 {
        match guard(changes.next()).await.expect("the source never ends") {
            Change::Insert(endpoint) => inserted.push(endpoint),
            Change::Remove(key) => panic!("removed {key} before anything was inserted"),
        }
    }
    inserted.sort_by(|a, b| a.key().cmp(b.key()));
    let first = &inserted[0];
    assert_eq!(first.key(), "127.0.1.1:4001");
    assert_eq!(first.connector().addr(), "127.0.1.1:4001");
    assert_eq!(first.get_weight(), 1);
    assert_eq!(
        first.get_metadata("dns.target"),
        Some("host-1.changes.test.")
    );
    assert_eq!(first.get_metadata("dns.priority"), Some("0"));
    // The source's own metadata, on every endpoint.
    assert!(inserted
        .iter()
        .all(|e| e.get_metadata("zone") == Some("z1")));
    assert_eq!(inserted[1].key(), "127.0.1.2:4002");
    assert_eq!(inserted[1].get_weight(), 2);

    // Host 1 makes way for host 3.
    dns.set_srv(service, &[target(2), target(3)], TTL);
    let next = guard(changes.next()).await.expect("the source never ends");
    assert!(
        matches!(&next, Change::Insert(endpoint) if endpoint.key() == "127.0.1.3:4003"),
        "{next:?}"
    );
    let next = guard(changes.next()).await.expect("the source never ends");
    assert!(
        matches!(&next, Change::Remove(key) if key == "127.0.1.1:4001"),
        "{next:?}"
    );
}

/// An address removed from DNS drains its server: a call in progress there (not safe to
/// retry) completes on it, new calls go to the others, and its connection then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_record_drains_its_server() {
    let dns = DnsServer::start().await;
    let replicas = replicas_sharing_a_port().await;
    let port = addr(&replicas[0]).port();
    let ips: Vec<IpAddr> = replicas.iter().map(ip).collect();
    dns.set_addresses("drain.rpc.test", &ips, TTL);
    let client = client(quick(Dns::new(format!("drain.rpc.test:{port}")), &dns));
    ready(&client, &replicas.iter().collect::<Vec<_>>()).await;

    // Park a call of `record` on replica 0: calls go round, so one of the next few lands
    // there and waits at its gate; the others finish elsewhere.
    let gone = &replicas[0];
    gone.hold(Method::Record);
    let mut draining = None;
    for n in 0..100 {
        let mut call = tokio::spawn(client.record(n).timeout(CALL_TIMEOUT).into_future());
        tokio::select! {
            result = &mut call => {
                let tag = result.expect("the call's task").expect("record succeeds");
                assert_ne!(tag, gone.tag(), "a call to the held replica was not held");
            }
            () = wait_for(|| gone.waiting(Method::Record) == 1) => {
                draining = Some((n, call));
                break;
            }
        }
    }
    let (parked, draining) = draining.expect("100 calls and none reached replica 0");

    // Replica 0's address leaves DNS: once the client has dropped the endpoint, no new call
    // goes there.
    dns.set_addresses("drain.rpc.test", &ips[1..], TTL);
    ready(&client, &[&replicas[1], &replicas[2]]).await;
    let before = gone.served();
    reach_all(&client, &[1, 2]).await;
    for _ in 0..20 {
        let tag = guard(client.whoami().timeout(CALL_TIMEOUT))
            .await
            .expect("whoami succeeds");
        assert_ne!(tag, gone.tag());
    }
    assert_eq!(gone.served(), before, "a removed endpoint got a new call");

    // The call it had completes there, then its connection closes.
    assert!(!draining.is_finished());
    gone.release(Method::Record);
    let tag = guard(draining)
        .await
        .expect("the call's task")
        .expect("a draining call completes");
    assert_eq!(tag, gone.tag());
    assert_eq!(gone.recorded(), [parked]);
    eventually(|| gone.open_connections() == 0).await;
}

/// A record added to DNS is picked up once the TTL runs out, and the new server gets calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_record_is_picked_up_after_the_ttl() {
    let dns = DnsServer::start().await;
    let replicas = replicas_sharing_a_port().await;
    let port = addr(&replicas[0]).port();
    let ips: Vec<IpAddr> = replicas.iter().map(ip).collect();
    dns.set_addresses("grow.rpc.test", &ips[..2], TTL);
    let client = client(quick(Dns::new(format!("grow.rpc.test:{port}")), &dns));
    ready(&client, &[&replicas[0], &replicas[1]]).await;
    reach_all(&client, &[0, 1]).await;
    assert_eq!(replicas[2].served(), 0);

    dns.set_addresses("grow.rpc.test", &ips, TTL);
    ready(&client, &replicas.iter().collect::<Vec<_>>()).await;
    reach_all(&client, &[0, 1, 2]).await;
}

/// While the DNS server fails (SERVFAIL), stops answering (timeouts) or says the name is
/// gone (NXDOMAIN), the client keeps its endpoints and every call succeeds; once it answers
/// again, the client follows its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dns_server_keeps_the_endpoints_until_it_recovers() {
    let dns = DnsServer::start().await;
    let replicas = replicas_sharing_a_port().await;
    let port = addr(&replicas[0]).port();
    let ips: Vec<IpAddr> = replicas.iter().map(ip).collect();
    let name = "flaky.rpc.test";
    failures(name);
    dns.set_addresses(name, &ips, TTL);
    let client = client(quick(Dns::new(format!("{name}:{port}")), &dns));
    ready(&client, &replicas.iter().collect::<Vec<_>>()).await;
    let all = keys(&client);

    for trouble in ["servfail", "silent", "nxdomain"] {
        match trouble {
            "servfail" => dns.set_mode(Mode::ServFail),
            "silent" => dns.set_mode(Mode::Silent),
            _ => {
                dns.set_mode(Mode::Answer);
                dns.set_addresses(name, &[], TTL);
            }
        }
        // Resolutions fail, at least one of them wholly in this kind of trouble...
        let failed = failures(name);
        eventually(|| failures(name) >= failed + 2).await;
        // ...and the client has all it had.
        assert_eq!(keys(&client), all, "{trouble}");
        reach_all(&client, &[0, 1, 2]).await;
    }

    // The server answers again, without replica 2: the client follows.
    dns.set_addresses(name, &ips[..2], TTL);
    dns.set_mode(Mode::Answer);
    ready(&client, &[&replicas[0], &replicas[1]]).await;
    reach_all(&client, &[0, 1]).await;
}
