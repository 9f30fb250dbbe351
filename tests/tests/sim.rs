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
    // After the first 300 ms: at the start every call goes to whichever server connects
    // first, the slow one included.
    let steady: Vec<u32> = outcome
        .trace
        .iter()
        .filter(|(at, _, _)| *at >= 300_000)
        .map(|&(_, server, _)| server)
        .collect();
    let total = steady.len() as f64;
    let slow = steady.iter().filter(|&&server| server == 0).count() as f64;
    let slow_share = slow * servers as f64 / total;
    println!(
        "slow server: {slow} of {total} calls (after 300 ms) over {servers} servers = \
         {slow_share:.3} of a fair share (1/N)"
    );
    // At 10x the service time, least-loaded choice sends it about a tenth of a fair share.
    assert!(slow_share < 0.5, "{:?}", outcome.served);
}

/// Busiest over mean.
fn imbalance(counts: &[u64]) -> f64 {
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    *counts.iter().max().expect("servers") as f64 / mean
}

#[test]
fn subsets_spread_many_clients_evenly_over_many_servers() {
    let (clients, servers, size) = if full() {
        (1_000, 100, 10)
    } else {
        (100, 20, 5)
    };
    let fleet = Fleet {
        servers,
        clients,
        concurrency: 2,
        calls: 200,
        think: Duration::from_millis(5),
        // Turmoil scans every pair of hosts at each step: many clients share a host.
        clients_per_host: 10,
        ..Fleet::default()
    };
    let mut figures = Vec::new();
    for subset in [Some(size), None] {
        let outcome = Fleet {
            subset,
            ..fleet.clone()
        }
        .run(|_| {});
        assert_eq!(outcome.failed, 0, "{:?}", outcome.errors);
        let connections: Vec<u64> = outcome.peak_connections.iter().map(|&c| c as u64).collect();
        let (calls, conns) = (imbalance(&outcome.served), imbalance(&connections));
        println!(
            "{clients} clients x {servers} servers, subset {subset:?}: connections per server \
             {}..{} (busiest/mean {conns:.3}), calls per server {}..{} (busiest/mean {calls:.3})",
            connections.iter().min().unwrap(),
            connections.iter().max().unwrap(),
            outcome.served.iter().min().unwrap(),
            outcome.served.iter().max().unwrap(),
        );
        figures.push((calls, connections));
    }
    let (subset_calls, subset_connections) = &figures[0];
    assert!(*subset_calls <= 1.25, "calls busiest/mean {subset_calls}");
    // Each server has about clients x size / servers connections, not one per client.
    let fair = (clients * size / servers) as u64;
    assert!(
        subset_connections.iter().all(|&c| c <= fair + fair / 4),
        "{subset_connections:?}, fair share {fair}"
    );
    assert!(
        figures[1].1.iter().all(|&c| c == clients as u64),
        "a full mesh"
    );
}

#[test]
fn a_partitioned_zone_spills_over_and_comes_back() {
    let fleet = Fleet {
        servers: 6,
        clients: 6,
        zones: 3,
        concurrency: 2,
        calls: u64::MAX,
        think: Duration::from_millis(5),
        ..Fleet::default()
    };
    let zone = |index: u32| index % 3;
    let (mut cut, mut healed) = (0, 0);
    let outcome = fleet.run(|world| {
        let run_for = |world: &mut fleet::World<'_>, seconds: u64| {
            let until = world.now() + seconds * 1_000_000;
            world.step_until(|w| w.now() >= until);
        };
        // Cuts (or heals) every link between zone 0's servers and the clients.
        let links = |world: &mut fleet::World<'_>, cut: bool| {
            for server in (0..6).filter(|&s| zone(s) == 0) {
                for client in 0..6 {
                    let (a, b) = (
                        fleet::World::server(server as usize),
                        fleet::World::client(client),
                    );
                    if cut {
                        world.sim.partition(a, b);
                    } else {
                        world.sim.repair(a, b);
                    }
                }
            }
        };
        run_for(world, 2);
        cut = world.now();
        links(world, true);
        run_for(world, 20);
        healed = world.now();
        links(world, false);
        run_for(world, 20);
        world.stop_clients();
    });
    assert_eq!(outcome.failed, 0, "{:?}", outcome.errors);
    let settle = 10_000_000;
    let window = |from: u64, to: u64| {
        outcome
            .trace
            .iter()
            .filter(move |(at, _, _)| (from..to).contains(at))
            .map(|&(_, server, client)| (zone(client), zone(server)))
    };
    // Before the cut, and always for the other zones: every call stays in its zone.
    assert!(
        window(0, cut).all(|(c, s)| c == s),
        "calls left their zone before the cut"
    );
    assert!(window(0, u64::MAX)
        .filter(|(c, _)| *c != 0)
        .all(|(c, s)| c == s));
    // Cut off: zone 0's clients go elsewhere, and their calls succeed.
    let away: Vec<_> = window(cut + settle, healed)
        .filter(|(c, _)| *c == 0)
        .collect();
    assert!(!away.is_empty());
    assert!(
        away.iter().all(|(_, s)| *s != 0),
        "a call reached zone 0 while cut off"
    );
    // Healed: back home.
    let back: Vec<_> = window(healed + settle, u64::MAX)
        .filter(|(c, _)| *c == 0)
        .collect();
    assert!(!back.is_empty());
    assert!(
        back.iter().all(|(_, s)| *s == 0),
        "zone 0's calls did not come back"
    );
    println!(
        "zone 0 cut off for 20 s: its clients made {} calls in other zones ({} retried in all, \
         0 failed); after healing, {} calls at home",
        away.len(),
        outcome.retries,
        back.len()
    );
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
fn servers_crashing_under_load_fail_no_idempotent_call() {
    let servers = if full() { 20 } else { 6 };
    let fleet = Fleet {
        servers,
        clients: 4,
        concurrency: 4,
        calls: u64::MAX,
        think: Duration::from_millis(5),
        ..Fleet::default()
    };
    let outcome = fleet.run(|world| {
        // Every other server crashes, in turn, with calls in flight; it comes back 2 s later.
        for server in (0..servers).step_by(2) {
            world.step_until(|w| w.serving(server));
            world.crash(server);
            let back = world.now() + 2_000_000;
            world.step_until(|w| w.now() >= back);
            world.start(server);
        }
        world.step_until(|w| w.serving(servers - 2));
        world.stop_clients();
    });
    println!(
        "{} of {servers} servers crashed in turn: {} calls succeeded, {} failed, {} retried",
        servers / 2,
        outcome.ok,
        outcome.failed,
        outcome.retries
    );
    assert_eq!(outcome.failed, 0, "{:?}", outcome.errors);
    assert!(
        outcome.retries > 0,
        "calls in flight on a crashed server are retried"
    );
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
        let back = client.work(0).timeout(Duration::from_secs(600)).await;
        assert_eq!(back?, 0);
        Ok(())
    });
    world.run().expect("the simulation passes");
}
