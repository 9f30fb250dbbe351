//! Discovery sources other than DNS (see dns.rs): a `StaticList`, and endpoint metadata
//! read by a strategy, end to end over every transport a replica runs over.

mod common;

use std::time::Duration;

use common::guard;
use common::replica::{endpoints, start_replicas, FleetClient, KINDS};
use rpc_core::balance::{Endpoints, RoundRobin, StaticList, Strategy};

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Calls `whoami` `n` times and counts the answers per tag.
async fn whoami_counts(client: &FleetClient, n: usize, replicas: usize) -> Vec<u64> {
    let mut counts = vec![0u64; replicas];
    for _ in 0..n {
        let tag = guard(client.whoami().timeout(CALL_TIMEOUT))
            .await
            .expect("whoami succeeds");
        counts[tag as usize] += 1;
    }
    counts
}

/// A static list of three endpoints: the client connects to each and balances over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_list_balances_over_its_endpoints() {
    for kind in KINDS {
        let replicas = start_replicas(kind, 3).await;
        let list = StaticList::new(endpoints(&replicas));
        assert_eq!(list.endpoints().len(), 3);
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .wait_for_ready(true)
            .discover(list);
        // Round robin over connected endpoints: once all three are, every one gets calls.
        guard(async { while whoami_counts(&client, 30, 3).await.contains(&0) {} }).await;
        let stats = client.client().stats().expect("a built client has stats");
        let mut keys: Vec<String> = stats.endpoints.into_iter().map(|e| e.key).collect();
        keys.sort();
        assert_eq!(keys, ["replica-0", "replica-1", "replica-2"], "{kind:?}");
    }
}

/// Sends every call to the usable endpoint whose metadata `zone` is `home`, if any.
struct SameZone {
    home: &'static str,
}

impl Strategy for SameZone {
    fn pick(&self, endpoints: &Endpoints<'_>, _key: Option<u64>) -> Option<usize> {
        endpoints
            .usable()
            .find(|&i| endpoints.metadata(i, "zone") == Some(self.home))
            .or_else(|| endpoints.usable().next())
    }
}

/// Endpoint metadata set by the discovery source reaches the strategy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_reads_the_endpoints_metadata() {
    for kind in KINDS {
        let replicas = start_replicas(kind, 3).await;
        let list = StaticList::new(
            replicas
                .iter()
                .zip(["a", "b", "c"])
                .map(|(replica, zone)| replica.endpoint().metadata("zone", zone)),
        );
        let client = FleetClient::builder()
            .strategy(SameZone { home: "b" })
            .discover(list);
        // Wait until all three are connected, so that the choice is the strategy's.
        common::replica::eventually(|| {
            let stats = client.client().stats().expect("a built client has stats");
            stats.endpoints.len() == 3
                && stats
                    .endpoints
                    .iter()
                    .all(|e| e.state == rpc_core::balance::EndpointState::Ready)
        })
        .await;
        assert_eq!(whoami_counts(&client, 20, 3).await, [0, 20, 0], "{kind:?}");
    }
}
