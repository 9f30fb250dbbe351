//! Service discovery through etcd: server processes register themselves, one client follows
//! them, and the set changes under it (a server crashes, a new one joins) without a single
//! failed call.
//!
//! Run it with `cargo run -p rpc-examples --features etcd --bin etcd_cluster`. Building
//! needs `protoc` (`apt-get install protobuf-compiler`). It uses the etcd at
//! `ETCD_ENDPOINTS` (comma-separated `host:port`s) if set; otherwise it starts its own
//! `etcd` (`apt-get install etcd-server`) on free loopback ports with a temporary data
//! directory, and stops it at the end.
//!
//! The program plays every part. As the driver (no arguments) it starts three copies of
//! itself as servers (`etcd_cluster serve <etcd> <prefix> <name>`, which you can also run by
//! hand): each binds a free port and registers `<prefix>/<name> = 127.0.0.1:<port>` in etcd
//! on a lease with a 3 s TTL. The client knows no address: it watches the prefix, and makes
//! calls from 8 concurrent tasks. After a third of the calls the driver kills server `b`
//! with SIGKILL (a crash: nothing deregisters it), and starts a fourth server, `d`. `stock`
//! is marked `#[rpc(idempotent)]`, so calls cut off by the crash are retried on another
//! server; the client stops sending calls to `b` at once (its connection is gone), drops it
//! when its lease expires, and balances calls onto `d` as soon as `d` registers. At the end
//! the driver shuts the servers down gracefully: each deregisters (revoking its lease), then
//! finishes its calls. The program exits with a non-zero status if any call failed, so CI
//! can run it.

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, EndpointState};
use rpc_core::Server;
use rpc_examples::etcd_process::{EtcdError, EtcdProcess, StartError};
use rpc_examples::inventory::{
    client_builder, endpoints, wait_until, when_stdin_closes, InventoryClient, InventoryServer,
    Load, Replica, ServerProcess, FAIR_SHARE, TASKS, TOTAL_CALLS,
};
use rpc_transport::etcd::{self, EtcdDiscovery};

/// The servers: three at first, then `d` joins after `b` crashed.
const SERVERS: [&str; 4] = ["a", "b", "c", "d"];
const FIRST: usize = 3;
const VICTIM: usize = 1;
const JOINER: usize = 3;
/// The servers' lease TTL: how long a crashed server stays listed in etcd.
const TTL: Duration = Duration::from_secs(3);
/// The longest the driver waits for something to happen.
const PATIENCE: Duration = Duration::from_secs(20);
/// Progress is printed every so many calls.
const PROGRESS_EVERY: u64 = 1000;

/// The phases of the run, which the summary counts calls by: before `b` crashed (the first),
/// and after (when `d` joins too).
const PHASES: usize = 2;
const AFTER_CRASH: usize = 1;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => drive().await,
        [mode, etcd, prefix, name] if mode == "serve" => {
            serve(etcd, prefix, name).await?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("usage: etcd_cluster                                  (the demo)");
            eprintln!("       etcd_cluster serve <etcd> <prefix> <name>     (one server)");
            Ok(ExitCode::from(2))
        }
    }
}

/// Server mode: one replica on a free port, registered in etcd, until its stdin closes or it
/// gets Ctrl-C; then it deregisters and shuts down gracefully.
async fn serve(etcd: &str, prefix: &str, name: &str) -> Result<(), Box<dyn Error>> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let etcd: Vec<&str> = etcd.split(',').collect();
    let registration = etcd::register(etcd, prefix, name, addr, TTL).await?;
    println!(
        "  server {name}: listening on {addr}, registered as {}",
        registration.key()
    );

    // The driver holds our stdin open; when it closes it (or dies), we leave.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    when_stdin_closes(move || {
        let _ = closed.send(());
    });
    let signal = async {
        tokio::select! {
            _ = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    Server::new()
        .add_service(InventoryServer::new(Replica::new(name)))
        .shutdown_grace(Duration::from_secs(5))
        // Deregister first (clients stop sending new calls), then stop and drain.
        .serve_with_shutdown(listener, registration.deregister_on(signal))
        .await?;
    println!("  server {name}: deregistered and stopped");
    Ok(())
}

/// Driver mode: the demo.
async fn drive() -> Result<ExitCode, Box<dyn Error>> {
    // An etcd to use: the one named by ETCD_ENDPOINTS, or our own.
    let (etcd, _own_etcd) = match std::env::var("ETCD_ENDPOINTS") {
        Ok(endpoints) if !endpoints.trim().is_empty() => {
            println!("using the etcd at {endpoints} (ETCD_ENDPOINTS)");
            (endpoints, None)
        }
        _ => {
            let own = own_etcd().await?;
            println!("started etcd (pid {}) at {}", own.pid(), own.addr());
            (own.addr(), Some(own))
        }
    };
    // A prefix of our own, so runs sharing an etcd do not see each other's servers.
    let prefix = format!(
        "/rpc-examples/etcd_cluster/{}/inventory",
        std::process::id()
    );

    let mut servers: Vec<Option<ServerProcess>> = Vec::new();
    for name in &SERVERS[..FIRST] {
        let server = ServerProcess::start(["serve", &etcd, &prefix, name])?;
        println!("started server {name} (pid {})", server.pid());
        servers.push(Some(server));
    }

    let discovery = EtcdDiscovery::new(etcd.split(','), &prefix)
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
        ))
        .watch();
    let client = client_builder().discover(discovery);
    // Wait until the three have registered and the client is connected to each.
    let first = registered(&SERVERS[..FIRST], &prefix);
    if !wait_until(PATIENCE, || connected(&client) == first).await {
        return Err(format!("the servers did not all register within {PATIENCE:?}").into());
    }
    println!(
        "the client found a, b and c in etcd under {prefix}/ and is connected to each; making \
         {TOTAL_CALLS} calls from {TASKS} tasks"
    );

    let load = Load::start(&client, &SERVERS, PHASES, PROGRESS_EVERY);

    load.wait_for_calls(TOTAL_CALLS / 3).await;
    let victim = SERVERS[VICTIM];
    let mut crashed = servers[VICTIM].take().ok_or("no victim")?;
    let pid = crashed.pid();
    crashed.crash()?;
    let crash = Instant::now();
    load.enter_phase(AFTER_CRASH);
    println!("killed server {victim} (pid {pid}) with SIGKILL: it does not deregister");

    let joiner = SERVERS[JOINER];
    let server = ServerProcess::start(["serve", &etcd, &prefix, joiner])?;
    println!("started server {joiner} (pid {})", server.pid());
    servers.push(Some(server));
    let join = Instant::now();

    // The client drops b once its lease expires in etcd, and picks d up once it registers.
    let victim_key = format!("{prefix}/{victim}");
    let joiner_key = format!("{prefix}/{joiner}");
    let (mut dropped, mut picked) = (false, false);
    let settled = wait_until(PATIENCE, || {
        let endpoints = endpoints(&client);
        if !dropped && !endpoints.iter().any(|(key, _)| *key == victim_key) {
            dropped = true;
            println!(
                "the client dropped {victim} {} ms after the crash, when its lease expired \
                 (TTL {} s)",
                crash.elapsed().as_millis(),
                TTL.as_secs()
            );
        }
        if !picked
            && (endpoints.iter())
                .any(|(key, state)| *key == joiner_key && *state == EndpointState::Ready)
        {
            picked = true;
            println!(
                "the client connected to {joiner} {} ms after it started",
                join.elapsed().as_millis()
            );
        }
        dropped && picked
    })
    .await;
    let shared = settled
        && wait_until(PATIENCE, || {
            load.answered(AFTER_CRASH, JOINER) >= FAIR_SHARE
        })
        .await;
    let tally = load.stop().await?;
    tally.print_summary(
        &client,
        &format!("{victim}'s lease expired and {joiner} took its share"),
        &[
            (&format!("before {victim} crashed"), 16),
            (&format!("after ({joiner} joining)"), 19),
        ],
    );
    println!();

    println!("shutting the servers down gracefully (each deregisters, then drains)");
    for server in servers.into_iter().flatten() {
        server.stop()?;
    }
    let left = wait_until(PATIENCE, || endpoints(&client).is_empty()).await;
    println!("the client has {} endpoints left", endpoints(&client).len());

    if tally.report_failed() {
        return Ok(ExitCode::FAILURE);
    }
    if !settled {
        eprintln!(
            "FAILED: within {PATIENCE:?}, the client did not drop {victim} or did not pick up {joiner}"
        );
        return Ok(ExitCode::FAILURE);
    }
    if !shared {
        eprintln!("FAILED: {joiner} did not answer {FAIR_SHARE} calls within {PATIENCE:?}");
        return Ok(ExitCode::FAILURE);
    }
    if !left {
        eprintln!("FAILED: the servers shut down, but the client still lists some");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The keys of the client's connected endpoints, sorted.
fn connected(client: &InventoryClient) -> Vec<String> {
    let mut keys: Vec<String> = (endpoints(client).into_iter())
        .filter(|(_, state)| *state == EndpointState::Ready)
        .map(|(key, _)| key)
        .collect();
    keys.sort();
    keys
}

/// The keys these servers register under, sorted.
fn registered(names: &[&str], prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = names
        .iter()
        .map(|name| format!("{prefix}/{name}"))
        .collect();
    keys.sort();
    keys
}

/// An etcd of our own on free loopback ports, with a temporary data directory; killed (and
/// the directory deleted) when dropped.
async fn own_etcd() -> Result<EtcdProcess, Box<dyn Error>> {
    EtcdProcess::start("etcd", "demo", PATIENCE)
        .await
        .map_err(|err| match err {
            EtcdError::Start(StartError::Spawn { source, .. }) => format!(
                "could not start `etcd` ({source}): install it (`apt-get install etcd-server`), \
                 or point ETCD_ENDPOINTS at a running etcd"
            )
            .into(),
            // A message, as the program's other errors are (`main` shows them with `Debug`).
            err => err.to_string().into(),
        })
}
