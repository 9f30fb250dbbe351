//! Resilience: three server processes behind one balancing client, and a server that crashes
//! and comes back while calls are in flight, without a single call failing.
//!
//! Run it with `cargo run -p rpc-examples --bin cluster`.
//!
//! The program plays both parts. With no arguments it is the driver: it starts three copies
//! of itself as servers (`cluster serve <port> <name>`, which you can also run by hand),
//! makes 3,000 calls from 8 concurrent tasks through one client balanced over the three,
//! kills server `b` with SIGKILL (a crash, not a graceful shutdown) after a third of the
//! calls, and starts it again on the same port after two thirds. `stock` is marked
//! `#[rpc(idempotent)]`, so a call cut off by the crash is retried on another server within
//! its deadline; the client also stops sending calls to `b` while it is down, reconnects on
//! its own once `b` is back, and balances calls onto it again. The summary shows how many
//! calls each server answered in each phase, and the program exits with a non-zero status if
//! any call failed, so CI can run it.
//!
//! A method not marked idempotent would never be sent twice: a crash during such a call
//! fails it with `Disconnected`, because the client cannot know whether the server acted.

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rpc_core::balance::{Endpoint, EndpointState};
use rpc_core::Server;
use rpc_examples::inventory::{
    client_builder, endpoints, free_ports, wait_until, when_stdin_closes, InventoryClient,
    InventoryServer, Load, Replica, ServerProcess, FAIR_SHARE, TASKS, TOTAL_CALLS,
};

const SERVERS: [&str; 3] = ["a", "b", "c"];
/// The server that crashes: `b`.
const VICTIM: usize = 1;
/// The longest the driver waits for servers to be connected or to answer again.
const PATIENCE: Duration = Duration::from_secs(10);
/// Progress is printed every so many calls.
const PROGRESS_EVERY: u64 = 500;

/// The phases of the run, which the summary counts calls by: before the kill (the first),
/// while `b` is down, and after its restart.
const PHASES: usize = 3;
const WHILE_DOWN: usize = 1;
const AFTER_RESTART: usize = 2;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => drive().await,
        [mode, port, name] if mode == "serve" => {
            serve(port.parse()?, name.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("usage: cluster                      (the demo)");
            eprintln!("       cluster serve <port> <name>  (one server)");
            Ok(ExitCode::from(2))
        }
    }
}

/// Server mode: one replica on 127.0.0.1:`port`, until killed.
async fn serve(port: u16, name: String) -> Result<(), Box<dyn Error>> {
    // The driver holds our stdin open; when it goes away, even without killing us (it was
    // itself killed), stdin ends and we exit, so no server outlives the demo.
    when_stdin_closes(|| std::process::exit(0));
    let listener = rpc_transport::tcp::bind(("127.0.0.1", port)).await?;
    Server::new()
        .add_service(InventoryServer::new(Replica::new(name)))
        .serve(listener)
        .await?;
    Ok(())
}

/// Starts server `name` on 127.0.0.1:`port`, as a child process.
fn start_server(name: &str, port: u16) -> std::io::Result<ServerProcess> {
    ServerProcess::start(["serve", &port.to_string(), name])
}

/// Driver mode: the demo.
async fn drive() -> Result<ExitCode, Box<dyn Error>> {
    let ports: [u16; SERVERS.len()] = free_ports()?;
    let mut servers = Vec::new();
    for (name, port) in SERVERS.iter().zip(ports) {
        let server = start_server(name, port)?;
        println!(
            "started server {name} (pid {}) on 127.0.0.1:{port}",
            server.pid()
        );
        servers.push(server);
    }

    let client = client_builder().balance(SERVERS.iter().zip(ports).map(|(name, port)| {
        Endpoint::new(
            *name,
            rpc_transport::tcp::connector(format!("127.0.0.1:{port}")),
        )
    }));
    // The servers take a moment to start; the client connects to each as soon as it can.
    if !wait_until(PATIENCE, || all_connected(&client)).await {
        return Err(format!("the servers were not all reachable within {PATIENCE:?}").into());
    }
    println!("the client is connected to all three; making {TOTAL_CALLS} calls from {TASKS} tasks");

    let load = Load::start(&client, &SERVERS, PHASES, PROGRESS_EVERY);

    load.wait_for_calls(TOTAL_CALLS / 3).await;
    let victim = SERVERS[VICTIM];
    let pid = servers[VICTIM].pid();
    servers[VICTIM].crash()?;
    // Calls started from now on cannot reach it: it is gone.
    load.enter_phase(WHILE_DOWN);
    println!("killed server {victim} (pid {pid})");

    load.wait_for_calls(2 * TOTAL_CALLS / 3).await;
    servers[VICTIM] = start_server(victim, ports[VICTIM])?;
    load.enter_phase(AFTER_RESTART);
    println!(
        "restarted server {victim} (pid {}) on 127.0.0.1:{}",
        servers[VICTIM].pid(),
        ports[VICTIM]
    );

    // The client reconnects to it on its own; wait (bounded) until it answers calls again,
    // and then until it has taken a fair share, so the summary shows it back at work.
    let restarted = Instant::now();
    let back = wait_until(PATIENCE, || load.answered(AFTER_RESTART, VICTIM) > 0).await;
    if back {
        println!(
            "server {victim} answers calls again, {} ms after its restart",
            restarted.elapsed().as_millis()
        );
        wait_until(PATIENCE, || {
            load.answered(AFTER_RESTART, VICTIM) >= FAIR_SHARE
        })
        .await;
    }
    let tally = load.stop().await?;
    tally.print_summary(
        &client,
        &format!("{victim} took its share"),
        &[
            ("before kill", 11),
            (&format!("while {victim} down"), 12),
            ("after restart", 13),
        ],
    );

    // `servers` is dropped here, which kills the three servers.
    if tally.report_failed() {
        return Ok(ExitCode::FAILURE);
    }
    if !back {
        eprintln!("FAILED: server {victim} answered no call within {PATIENCE:?} of its restart");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the client has a connection to every server.
fn all_connected(client: &InventoryClient) -> bool {
    let endpoints = endpoints(client);
    endpoints.len() == SERVERS.len()
        && (endpoints.iter()).all(|(_, state)| *state == EndpointState::Ready)
}
