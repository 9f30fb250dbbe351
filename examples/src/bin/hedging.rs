//! Hedged calls: three local servers, one of which is slow one call in ten, behind two
//! balancing clients, one without hedging and one that hedges.
//!
//! Run it with `cargo run --release -p rpc-examples --bin hedging`.
//!
//! Server `c` takes 50 ms longer on one call in ten; the others answer at once. The hedging
//! client sends a call still unanswered after the 90th percentile of recent `price` calls
//! (at least 2 ms) again to another server, takes the first answer and cancels the other
//! request. Hedges spend the retry budget, so they add at most about 20% to the calls. The
//! program prints each client's latencies and what the hedging client did.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::balance::{ClientStats, Endpoint, EndpointState, Hedge, RoundRobin};
use rpc_core::{service, Server};

/// A price list, replicated on every server.
#[service]
pub trait Prices {
    /// The price of `item`, in cents. Only reads: safe to send twice, hence hedged.
    #[rpc(idempotent)]
    async fn price(&self, item: String) -> u64;
}

#[derive(Clone)]
struct Replica {
    /// Every `slow_every`-th call takes 50 ms more (0: never).
    slow_every: u64,
    calls: Arc<AtomicU64>,
}

impl Prices for Replica {
    async fn price(&self, item: String) -> u64 {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.slow_every > 0 && n % self.slow_every == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        item.len() as u64 * 100
    }
}

const CALLS: usize = 300;

/// Makes `CALLS` calls one after the other: their latencies, sorted.
async fn run(client: &PricesClient) -> Result<Vec<Duration>, rpc_core::RpcError> {
    let mut latencies = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let start = Instant::now();
        client
            .price(format!("item-{i}"))
            .timeout(Duration::from_secs(5))
            .await?;
        latencies.push(start.elapsed());
    }
    latencies.sort_unstable();
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(name: &str, latencies: &[Duration]) {
    println!(
        "{name:<12} p50 {:>8.2?}  p90 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        percentile(latencies, 0.50),
        percentile(latencies, 0.90),
        percentile(latencies, 0.99),
        percentile(latencies, 1.0),
    );
}

/// Waits until every endpoint of `client` is connected.
async fn connected(client: &PricesClient) -> Result<ClientStats, Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = client.client().stats().ok_or("not a balancing client")?;
        if stats
            .endpoints
            .iter()
            .all(|e| e.state == EndpointState::Ready)
        {
            return Ok(stats);
        }
        if Instant::now() > deadline {
            return Err("the servers did not become reachable".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut endpoints = Vec::new();
    let mut replicas = Vec::new();
    for (name, slow_every) in [("a", 0), ("b", 0), ("c", 10)] {
        let replica = Replica {
            slow_every,
            calls: Arc::default(),
        };
        let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            Server::new()
                .add_service(PricesServer::new(replica.clone()))
                .serve(listener),
        );
        println!(
            "server {name} on {addr}{}",
            if slow_every > 0 {
                " (slow 1 call in 10)"
            } else {
                ""
            }
        );
        endpoints.push(Endpoint::new(name, rpc_transport::tcp::connector(addr)));
        replicas.push((name, replica));
    }

    // Round robin, so server `c` gets its third of the calls whatever its latency.
    let plain = PricesClient::builder()
        .strategy(RoundRobin::new())
        .balance(endpoints.clone());
    let hedged = PricesClient::builder()
        .strategy(RoundRobin::new())
        .hedge(
            Hedge::percentile(0.9)?
                .floor(Duration::from_millis(2))
                .min_samples(20),
        )
        .balance(endpoints);
    connected(&plain).await?;
    connected(&hedged).await?;

    println!("\n{CALLS} sequential calls through each client:");
    let without = run(&plain).await?;
    report("no hedging", &without);
    let with = run(&hedged).await?;
    report("hedging", &with);

    let stats = connected(&hedged).await?;
    println!(
        "\nthe hedging client made {} calls, sent {} hedges ({} answered first, {} refused by \
         the retry budget)",
        stats.calls, stats.hedges, stats.hedges_won, stats.hedges_refused
    );
    for endpoint in &stats.endpoints {
        println!("  requests to {}: {}", endpoint.key, endpoint.calls);
    }
    for (name, replica) in &replicas {
        println!(
            "server {name} ran `price` {} times (both clients, cancelled hedges included)",
            replica.calls.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
