//! Overload protection, measured: a server offered twice what it can do, without and with
//! [`AdaptiveConcurrency`].
//!
//! ```text
//! cargo run --release -p rpc-examples --bin overload             # 3 s per run
//! cargo run --release -p rpc-examples --bin overload -- --quick  # 1 s per run
//! ```
//!
//! The service stands for one whose calls wait on a database that runs 8 queries at a time,
//! 2 ms each. The benchmark first finds the calls/s it sustains (64 callers in a closed loop:
//! its capacity), then offers 2x that rate open-loop (calls start on schedule, whatever
//! the answers) over TCP, each call with a deadline of 100 ms, for each configuration:
//! - `none`: no policy: every call queues for the database;
//! - `adaptive`: `AdaptiveConcurrency` with its defaults;
//! - `adaptive+priority`: the same, half the calls marked `Sheddable`, half `Critical`.
//!
//! It prints, per run: goodput (calls/s answered successfully), p50 and p99 latency of the
//! successful calls, and how many calls were refused (`Overloaded`, or `DeadlineExceeded`
//! before or while running); with priorities, the success rate of each half.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::governance::{AdaptiveConcurrency, Priority};
use rpc_core::{service, ErrorKind, Server};
use tokio::sync::Semaphore;

/// A service whose calls wait on a database.
#[service]
pub trait Db {
    /// One query of `ms` milliseconds.
    async fn query(&self, ms: u64) -> u64;
}

#[derive(Clone)]
struct DbImpl {
    /// The database's 8 connections.
    pool: Arc<Semaphore>,
}

impl Db for DbImpl {
    async fn query(&self, ms: u64) -> u64 {
        let _connection = self.pool.acquire().await.expect("never closed");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

const QUERY_MS: u64 = 2;
const DEADLINE: Duration = Duration::from_millis(100);
const CONNECTIONS: usize = 4;

#[derive(Default)]
struct Tally {
    ok: Vec<Duration>,
    refused: u64,
    expired: u64,
    other: u64,
    critical: (u64, u64),
    sheddable: (u64, u64),
}

async fn start(
    policy: Option<AdaptiveConcurrency>,
) -> (Vec<DbClient>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut server = Server::new().max_concurrent_requests(100_000);
    if let Some(policy) = policy {
        server = server.layer(policy);
    }
    let db = DbImpl {
        pool: Arc::new(Semaphore::new(8)),
    };
    let task = tokio::spawn(server.add_service(DbServer::new(db)).serve(listener));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let transport = rpc_transport::tcp::connect(addr).await.expect("connect");
        clients.push(DbClient::new(transport));
    }
    (clients, task)
}

/// Calls/s the service sustains with 64 callers in a closed loop.
async fn capacity(window: Duration) -> f64 {
    let (clients, server) = start(None).await;
    let until = Instant::now() + window;
    let mut callers = Vec::new();
    for i in 0..64 {
        let client = clients[i % CONNECTIONS].clone();
        callers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                if client.query(QUERY_MS).await.is_ok() {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut total = 0;
    for caller in callers {
        total += caller.await.expect("caller");
    }
    server.abort();
    total as f64 / window.as_secs_f64()
}

/// Offers `rate` calls/s for `window`, open-loop.
async fn offer(
    policy: Option<AdaptiveConcurrency>,
    rate: f64,
    window: Duration,
    priorities: bool,
) -> Tally {
    let (clients, server) = start(policy).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while started.elapsed() < window {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let client = clients[sent as usize % CONNECTIONS].clone();
            let priority = match (priorities, sent % 2) {
                (false, _) => Priority::Default,
                (true, 0) => Priority::Critical,
                (true, _) => Priority::Sheddable,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                let outcome = client
                    .query(QUERY_MS)
                    .timeout(DEADLINE)
                    .priority(priority)
                    .await;
                let _ = tx.send((priority, outcome.map(|_| begun.elapsed())));
            });
            sent += 1;
        }
    }
    drop(tx);
    let mut tally = Tally::default();
    while let Some((priority, outcome)) = rx.recv().await {
        let ok = outcome.is_ok();
        match outcome {
            Ok(latency) => tally.ok.push(latency),
            Err(err) if err.kind() == ErrorKind::Overloaded => tally.refused += 1,
            Err(err) if err.kind() == ErrorKind::DeadlineExceeded => tally.expired += 1,
            Err(_) => tally.other += 1,
        }
        let half = match priority {
            Priority::Critical => &mut tally.critical,
            _ => &mut tally.sheddable,
        };
        half.0 += u64::from(ok);
        half.1 += 1;
    }
    server.abort();
    tally
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let window = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let capacity = capacity(window).await;
    let rate = capacity * 2.0;
    println!(
        "capacity {capacity:.0} calls/s (8 queries of {QUERY_MS} ms at a time); offering {rate:.0} \
         calls/s for {window:?}, deadline {DEADLINE:?}, over {CONNECTIONS} TCP connections"
    );
    println!(
        "{:<18} {:>12} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "policy", "goodput/s", "p50", "p99", "refused", "expired", "other"
    );
    for (name, adaptive, priorities) in [
        ("none", false, false),
        ("adaptive", true, false),
        ("adaptive+priority", true, true),
    ] {
        let policy = adaptive.then(|| AdaptiveConcurrency::builder().build().expect("defaults"));
        let mut tally = offer(policy, rate, window, priorities).await;
        tally.ok.sort_unstable();
        println!(
            "{name:<18} {:>12.0} {:>10.1?} {:>10.1?} {:>9} {:>9} {:>7}",
            tally.ok.len() as f64 / window.as_secs_f64(),
            percentile(&tally.ok, 0.50),
            percentile(&tally.ok, 0.99),
            tally.refused,
            tally.expired,
            tally.other
        );
        if priorities {
            let share = |(ok, all): (u64, u64)| 100.0 * ok as f64 / all.max(1) as f64;
            println!(
                "{:<18} critical calls succeeded {:.1}%, sheddable {:.1}%",
                "",
                share(tally.critical),
                share(tally.sheddable)
            );
        }
    }
}
