//! Balancing clients of DNS-discovered replicas, and what the DNS tests ask of them; shared
//! by `dns.rs` and `consul_dns.rs`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::balance::{Backoff, ClientStats, EndpointState, RoundRobin};
use rpc_transport::dns::Dns;

use crate::common::guard;
use crate::common::replica::{eventually, FleetClient, Replica};

/// A deadline for calls expected to succeed: generous, and still inside the hang guard.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of the replicas `dns` finds, round robin, quick to reconnect.
pub fn client(dns: Dns) -> FleetClient {
    FleetClient::builder()
        .strategy(RoundRobin::new())
        .backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .discover(dns)
}

pub fn stats(client: &FleetClient) -> ClientStats {
    client
        .client()
        .stats()
        .expect("a client made by a builder has stats")
}

pub fn addr(replica: &Replica) -> SocketAddr {
    replica.tcp_addr().expect("a TCP replica")
}

/// The endpoint key DNS discovery gives a replica: its address.
pub fn key(replica: &Replica) -> String {
    addr(replica).to_string()
}

/// Waits until the client's endpoints are exactly `replicas`, each connected.
pub async fn ready(client: &FleetClient, replicas: &[&Replica]) {
    let expected: BTreeSet<String> = replicas.iter().map(|r| key(r)).collect();
    eventually(|| {
        let stats = stats(client);
        stats.endpoints.len() == expected.len()
            && stats
                .endpoints
                .iter()
                .all(|e| e.state == EndpointState::Ready && expected.contains(&e.key))
    })
    .await;
}

/// Calls `whoami` until every tag in `tags` has answered; fails (hang guard) if one never
/// does. Every call must succeed.
pub async fn reach_all(client: &FleetClient, tags: &[u32]) {
    let wanted: BTreeSet<u32> = tags.iter().copied().collect();
    let mut seen = BTreeSet::new();
    guard(async {
        while !wanted.is_subset(&seen) {
            let tag = client
                .whoami()
                .timeout(CALL_TIMEOUT)
                .await
                .expect("whoami succeeds");
            seen.insert(tag);
        }
    })
    .await;
}
