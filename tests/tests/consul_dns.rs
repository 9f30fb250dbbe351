//! Consul's DNS interface as a discovery source, end to end: balancing clients built with
//! `.discover(Dns::srv(…))` against real rpc servers (TCP on loopback addresses) and a DNS
//! server on a loopback port (`dns_server.rs`) answering the way a Consul agent does:
//!
//! - SRV records for the instances that pass their health checks, priority 1, weight 1,
//!   each with the instance's own port, in a different order at every answer (Consul
//!   shuffles them);
//! - targets named after the instance's node (`<node>.node.<dc>.consul.`), or after its
//!   address when the instance was registered with one (`<hex ip>.addr.<dc>.consul.`),
//!   whose A records (and a TXT record of node metadata) come in the additional section;
//! - TTL 0 (Consul's default `dns_config.service_ttl` and `node_ttl`);
//! - over UDP, an answer too long is cut, and flagged as truncated with
//!   `dns_config.enable_truncate`; over TCP it is whole.
//!
//! An instance whose check fails leaves the answers, which the tests do by republishing the
//! records without it. The DNS server's port is not 53 (Consul's is 8600). Tests wait with
//! `wait_for`/`eventually` under the hang guard; none sleeps to let something happen, and
//! none asserts on timing.

mod common;
#[path = "common/dns_clients.rs"]
mod dns_clients;
#[path = "common/dns_server.rs"]
mod dns_server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::guard;
use common::replica::Replica;
use dns_clients::{addr, client, reach_all, ready, stats, CALL_TIMEOUT};
use dns_server::{DnsServer, SrvTarget};
use futures::StreamExt;
use rpc_core::balance::{Backoff, Change, Discover};
use rpc_transport::dns::Dns;

/// Consul's default TTL for service and node records.
const CONSUL_TTL: u32 = 0;

/// A DNS server answering SRV questions the way Consul does.
async fn consul_dns() -> DnsServer {
    let dns = DnsServer::start().await;
    dns.set_glue(true);
    dns.set_glue_txt(true);
    dns.set_rotate(true);
    dns
}

/// A source asking `dns` (on its own port, as a Consul agent on 8600), quick to retry. With
/// TTL 0 it asks again every `min_interval`.
fn source(name: &str, dns: &DnsServer) -> Dns {
    Dns::srv(name)
        .nameserver(dns.addr())
        .min_interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(500))
        .retry_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ))
}

/// Consul's SRV record of an instance: priority 1, weight 1, the instance's port.
fn record(target: &str, port: u16) -> SrvTarget {
    SrvTarget {
        target: target.to_string(),
        port,
        weight: 1,
        priority: 1,
    }
}

/// Four registered instances of a service, tagged 0 to 3, and their SRV records: 0 and 1 on
/// node `web-1` (127.0.0.2, two ports), 2 on node `web-2` (127.0.0.3), and 3 registered with
/// its own address, 127.0.0.4, which Consul names `7f000004.addr.dc1.consul.`. The nodes'
/// A records are published with Consul's TTL.
async fn instances(dns: &DnsServer) -> (Vec<Replica>, Vec<SrvTarget>) {
    let placement = [
        ("web-1.node.dc1.consul.", [127, 0, 0, 2]),
        ("web-1.node.dc1.consul.", [127, 0, 0, 2]),
        ("web-2.node.dc1.consul.", [127, 0, 0, 3]),
        ("7f000004.addr.dc1.consul.", [127, 0, 0, 4]),
    ];
    let mut replicas = Vec::new();
    let mut records = Vec::new();
    for (tag, (target, ip)) in (0..).zip(placement) {
        let ip = Ipv4Addr::from(ip);
        let replica = Replica::start_tcp_at(SocketAddr::from((ip, 0)), tag)
            .await
            .expect("bind a loopback address");
        dns.set_addresses(target, &[IpAddr::V4(ip)], CONSUL_TTL);
        records.push(record(target, addr(&replica).port()));
        replicas.push(replica);
    }
    (replicas, records)
}

/// The source's own changes for Consul's answers: an endpoint per instance, keyed by its
/// address and port (two instances on one node are two endpoints), weight 1, with the
/// node name as `dns.target` and priority 1. TTL 0 makes it ask again, and an instance that
/// leaves the answers is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consul_instance_is_an_endpoint_and_one_leaving_the_answers_is_removed() {
    let dns = consul_dns().await;
    let service = "_inventory._tcp.service.consul";
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 2, last));
    dns.set_addresses("web-1.node.dc1.consul.", &[ip(1)], CONSUL_TTL);
    dns.set_addresses("web-2.node.dc1.consul.", &[ip(2)], CONSUL_TTL);
    let records = [
        record("web-1.node.dc1.consul.", 21001),
        record("web-1.node.dc1.consul.", 21002),
        record("web-2.node.dc1.consul.", 21003),
    ];
    dns.set_srv(service, &records, CONSUL_TTL);
    let mut changes = source(service, &dns).into_changes();

    let mut inserted = Vec::new();
    for _ in 0..records.len() {
        match guard(changes.next()).await.expect("the source never ends") {
            Change::Insert(endpoint) => inserted.push(endpoint),
            Change::Remove(key) => panic!("removed {key} before anything was inserted"),
        }
    }
    inserted.sort_by(|a, b| a.key().cmp(b.key()));
    let keys: Vec<&str> = inserted.iter().map(|e| e.key()).collect();
    assert_eq!(
        keys,
        ["127.0.2.1:21001", "127.0.2.1:21002", "127.0.2.2:21003"]
    );
    for (endpoint, node) in inserted.iter().zip(["web-1", "web-1", "web-2"]) {
        assert_eq!(endpoint.get_weight(), 1);
        assert_eq!(endpoint.get_metadata("dns.priority"), Some("1"));
        let target = format!("{node}.node.dc1.consul.");
        assert_eq!(endpoint.get_metadata("dns.target"), Some(target.as_str()));
    }

    // The second instance on web-1 fails its check: Consul stops returning it. The answers
    // have TTL 0, so the source asks again and removes it, and only it.
    dns.set_srv(
        service,
        &[records[0].clone(), records[2].clone()],
        CONSUL_TTL,
    );
    let next = guard(changes.next()).await.expect("the source never ends");
    assert!(
        matches!(&next, Change::Remove(key) if key == "127.0.2.1:21002"),
        "{next:?}"
    );
}

/// A client following Consul's answers spreads its calls over every healthy instance: two
/// on one node (ports of their own), one on another node, one registered with its own
/// address. When an instance's check fails, Consul stops returning it and the client stops
/// calling it while the others go on serving; when the check passes again, it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_healthy_instances_and_leave_one_whose_check_fails() {
    let dns = consul_dns().await;
    let service = "_inventory._tcp.service.consul";
    let (replicas, records) = instances(&dns).await;
    dns.set_srv(service, &records, CONSUL_TTL);

    let client = client(source(service, &dns));
    let all: Vec<&Replica> = replicas.iter().collect();
    ready(&client, &all).await;
    reach_all(&client, &[0, 1, 2, 3]).await;
    assert!(stats(&client).endpoints.iter().all(|e| e.weight == 1));

    // Instance 1's check fails (its node, web-1, still runs instance 0).
    let failing = &replicas[1];
    let healthy: Vec<SrvTarget> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, r)| r.clone())
        .collect();
    dns.set_srv(service, &healthy, CONSUL_TTL);
    ready(&client, &[&replicas[0], &replicas[2], &replicas[3]]).await;
    let before = failing.served();
    reach_all(&client, &[0, 2, 3]).await;
    for _ in 0..20 {
        let tag = guard(client.whoami().timeout(CALL_TIMEOUT))
            .await
            .expect("whoami succeeds");
        assert_ne!(tag, failing.tag());
    }
    assert_eq!(
        failing.served(),
        before,
        "an instance out of Consul got a call"
    );

    // Its check passes again: Consul returns it, and it gets calls again.
    dns.set_srv(service, &records, CONSUL_TTL);
    ready(&client, &all).await;
    reach_all(&client, &[0, 1, 2, 3]).await;
}

/// An answer too long for UDP: Consul cuts it and, with `dns_config.enable_truncate`, says
/// so; the resolver then asks again over TCP, where the answer is whole, and the client
/// finds every instance. The name is the standard form with a datacenter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_udp_answer_is_asked_again_over_tcp_and_finds_every_instance() {
    let dns = consul_dns().await;
    dns.set_udp_limit(2, true);
    let service = "inventory.service.dc1.consul";
    let (replicas, records) = instances(&dns).await;
    dns.set_srv(service, &records, CONSUL_TTL);

    let client = client(source(service, &dns));
    ready(&client, &replicas.iter().collect::<Vec<_>>()).await;
    reach_all(&client, &[0, 1, 2, 3]).await;
    assert!(dns.tcp_questions() > 0, "the whole answer came over TCP");
}
