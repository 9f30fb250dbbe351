//! Fleets in simulation (`rpc_transport::sim`, on turmoil): many servers and balancing
//! clients in one test, in simulated time, reproducible from a seed.
//!
//! Each scenario is scaled so the suite stays quick; `RPC_SIM_SCALE=full` runs the sizes
//! the numbers in the docs come from, and every scenario prints its figures (run with
//! `--nocapture` to see them).
//!
//! Nothing here sleeps in real time: the simulation's clock moves only as it is stepped,
//! and each scenario is bounded by a simulated duration (turmoil fails a run that exceeds
//! it), so a hang is a failure, not a stuck test.

#[path = "common/fleet.rs"]
mod fleet;

use std::time::Duration;

use fleet::Fleet;
use rpc_core::ErrorKind;
use rpc_transport::sim::{self, turmoil};

/// Whether to run the full-size scenarios.
fn full() -> bool {
    std::env::var("RPC_SIM_SCALE").is_ok_and(|v| v == "full")
}

#[test]
fn a_slow_server_gets_a_small_share_of_the_calls() {
    let servers = if full() { 20 } else { 8 };
    let fleet = Fleet {
        servers,
        clients: 4,
        concurrency: 8,
        calls: if full() { 4_000 } else { 1_000 },
        think: Duration::from_millis(10),
        slow: Some((0, 10)),
        ..Fleet::default()
    };
    let outcome = fleet.run(|_| {});
    assert_eq!(outcome.failed, 0, "{:?}", outcome.errors);
    let total: u64 = outcome.served.iter().sum();
    let fair = total as f64 / servers as f64;
    let slow_share = outcome.served[0] as f64 / fair;
    println!(
        "slow server: {} of {total} calls over {servers} servers = {slow_share:.3} of a fair share (1/N)",
        outcome.served[0]
    );
    // At 10x the service time, least-loaded choice sends it about a tenth of a fair share.
    assert!(slow_share < 0.5, "{:?}", outcome.served);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let fleet = Fleet {
        servers: 6,
        clients: 3,
        concurrency: 4,
        calls: 400,
        slow: Some((2, 5)),
        latency: (Duration::from_millis(1), Duration::from_millis(9)),
        seed: 42,
        ..Fleet::default()
    };
    let first = fleet.run(|_| {});
    let second = fleet.run(|_| {});
    assert_eq!(first.failed, 0, "{:?}", first.errors);
    assert_eq!(first.trace.len(), 1_200);
    let diverged = first
        .trace
        .iter()
        .zip(&second.trace)
        .position(|(a, b)| a != b);
    assert_eq!(
        diverged,
        None,
        "the runs differ from call {diverged:?} on: {:?} vs {:?}",
        &first.trace[diverged.unwrap_or(0).saturating_sub(3)..],
        &second.trace[diverged.unwrap_or(0).saturating_sub(3)..]
    );
    assert_eq!(first.served, second.served);

    let other = Fleet { seed: 43, ..fleet }.run(|_| {});
    assert_ne!(
        first.trace, other.trace,
        "another seed should give another run"
    );
}

#[test]
fn a_rolling_restart_of_every_server_under_load_fails_no_idempotent_call() {
    let servers = if full() { 100 } else { 10 };
    let fleet = Fleet {
        servers,
        clients: if full() { 20 } else { 4 },
        concurrency: 4,
        // Enough calls to outlast the restarts; the driver stops the clients after them.
        calls: u64::MAX,
        think: Duration::from_millis(5),
        ..Fleet::default()
    };
    let mut restarted = 0;
    let outcome = fleet.run(|world| {
        // One server at a time: drain it (graceful shutdown), wait until it has stopped,
        // start it again, and wait until it serves again before the next one.
        for server in 0..servers {
            world.drain(server);
            world.step_until(|w| !w.running(server));
            world.start(server);
            world.step_until(|w| w.serving(server));
            restarted += 1;
        }
        world.stop_clients();
    });
    println!(
        "rolling restart of {restarted} servers: {} calls succeeded, {} failed, {} retried",
        outcome.ok, outcome.failed, outcome.retries
    );
    assert_eq!(restarted, servers);
    assert_eq!(outcome.failed, 0, "{:?}", outcome.errors);
    assert!(outcome.ok > 0);
}

#[test]
fn deadlines_backoff_and_keepalive_follow_simulated_time() {
    sim::seed(1);
    let mut world = turmoil::Builder::new()
        .rng_seed(1)
        .simulation_duration(Duration::from_secs(3_600))
        .build();
    world.host("server", || async {
        let listener = sim::bind("0.0.0.0:4000").await?;
        fleet::serve(listener, 0, Duration::ZERO, Default::default()).await?;
        Ok(())
    });
    world.client("client", async {
        use fleet::WorkClient;
        let client = WorkClient::builder()
            .keepalive(Some(rpc_core::Keepalive::new(
                Duration::from_secs(10),
                Duration::from_secs(5),
            )))
            .connect(sim::connector("server:4000"));

        // A deadline of 2 s against a handler of 60 s: in simulated time.
        let started = tokio::time::Instant::now();
        let late = client.hold(60_000).timeout(Duration::from_secs(2)).await;
        assert_eq!(late.unwrap_err().kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(started.elapsed().as_secs(), 2);

        // Keepalive notices a silent network: the connection is given up after the
        // interval and the ping's timeout, and the call in flight fails.
        turmoil::hold("client", "server");
        let started = tokio::time::Instant::now();
        let cut = client.hold(1).timeout(Duration::from_secs(600)).await;
        let waited = started.elapsed();
        assert_eq!(cut.unwrap_err().kind(), ErrorKind::Disconnected);
        assert!(
            waited >= Duration::from_secs(5) && waited <= Duration::from_secs(60),
            "keepalive gave up after {waited:?}"
        );
        turmoil::release("client", "server");

        // The client reconnects (with backoff) once the network is back.
        let back = client.work().timeout(Duration::from_secs(600)).await;
        assert_eq!(back?, 0);
        Ok(())
    });
    world.run().expect("the simulation passes");
}
