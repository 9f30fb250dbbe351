//! Servers behind a NATS subject: server processes serve one subject in a queue group, one
//! client reaches them by the subject alone, and the group changes under it (a server
//! crashes, a new one joins) without a single failed call.
//!
//! Run it with `cargo run -p rpc-examples --features nats --bin nats_cluster`. It uses the
//! NATS at `NATS_URL` if set; otherwise it starts its own `nats-server` (`apt-get install
//! nats-server`) on a free loopback port, and stops it at the end.
//!
//! The program plays every part. As the driver (no arguments) it starts three copies of
//! itself as servers (`nats_cluster serve <nats-url> <subject> <name>`, which you can also run
//! by hand): each connects to NATS and binds the subject. The client knows no address: it
//! keeps six connections to the subject (each opened on whichever member NATS picks, once
//! all three have joined the group), and
//! makes calls from 8 concurrent tasks. After a third of the calls the driver kills server
//! `b` with SIGKILL, and starts a fourth server, `d`. NATS drops b's subscriptions when its
//! connection closes; the client's next frames to b come back as "no responders", its
//! connections to b fail, and the calls cut off on them — `stock` is
//! `#[rpc(idempotent)]` — are retried on the others. The lost connections are opened again,
//! on a, c or d. The program exits with a non-zero status if any call failed, so CI can run
//! it.

use std::error::Error;
use std::process::ExitCode;

use futures::StreamExt;

use rpc_core::balance::{Endpoint, EndpointState};
use rpc_examples::inventory::{client_builder, endpoints, wait_until, Load, TASKS, TOTAL_CALLS};
use rpc_examples::nats_process::NatsProcess;
use rpc_examples::registry_demo::{
    self, from_env, print_summary, serve_replica, stop_signal, Servers, AFTER_CRASH, FIRST,
    PATIENCE, PHASES, PROGRESS_EVERY, SERVERS, VICTIM,
};
use rpc_transport::nats::{self, async_nats};

/// Connections the client keeps to the subject.
const CONNECTIONS: usize = 6;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    registry_demo::main("nats_cluster", "<nats-url> <subject> <name>", drive, serve).await
}

/// Server mode: one replica serving `subject`, until its stdin closes or it gets Ctrl-C.
async fn serve(url: String, subject: String, name: String) -> Result<(), Box<dyn Error>> {
    let nats = async_nats::connect(url).await?;
    let listener = nats::bind(&nats, &subject).await?;
    // Tell the driver we are in the group (NATS handles our commands in order, so the
    // subscription is in place before anyone hears this).
    nats.publish(format!("{subject}.ready"), name.clone().into())
        .await?;
    println!("  server {name}: serving NATS subject {subject}");
    serve_replica(&name, listener, stop_signal()).await?;
    println!("  server {name}: stopped");
    Ok(())
}

/// Driver mode: the demo.
async fn drive() -> Result<ExitCode, Box<dyn Error>> {
    let (url, _own_nats) = match from_env("NATS_URL", "NATS") {
        Some(url) => (url, None),
        None => {
            let own = NatsProcess::start("nats-server", PATIENCE).await?;
            println!("started nats-server at {}", own.url());
            (own.url(), Some(own))
        }
    };
    // A subject of our own, so runs sharing a NATS do not see each other's servers.
    let subject = format!("rpc-examples.nats-cluster.{}.inventory", std::process::id());

    let nats = async_nats::connect(url.as_str()).await?;
    let mut ready = nats.subscribe(format!("{subject}.ready")).await?;
    let mut servers = Servers::start(&url, &subject)?;
    // Connect once all three are in the group, so that NATS spreads the connections.
    for _ in 0..FIRST {
        tokio::time::timeout(PATIENCE, ready.next())
            .await
            .map_err(|_| format!("the servers did not all bind {subject} within {PATIENCE:?}"))?;
    }

    let connector = nats::connector(&nats, &subject);
    // Calls made while a lost connection is being opened again wait for it. Each connection
    // to the killed server finds out on its own, at its next frame: a call may meet several
    // of them in turn, so it may try every connection (and one more).
    let client = client_builder()
        .wait_for_ready(true)
        .max_attempts(CONNECTIONS as u32 + 1)
        .balance(
            (0..CONNECTIONS).map(|i| Endpoint::new(format!("{subject}#{i}"), connector.clone())),
        );
    // Each connection is opened once a member answers its hello.
    let ready = || {
        (endpoints(&client).iter())
            .filter(|(_, state)| *state == EndpointState::Ready)
            .count()
    };
    if !wait_until(PATIENCE, || ready() == CONNECTIONS).await {
        return Err(format!("no server answered on {subject} within {PATIENCE:?}").into());
    }
    println!(
        "the client has {CONNECTIONS} connections to {subject}; making {TOTAL_CALLS} calls \
         from {TASKS} tasks"
    );

    let load = Load::start(&client, &SERVERS, PHASES, PROGRESS_EVERY);
    load.wait_for_calls(TOTAL_CALLS / 3).await;
    servers.crash_victim("")?;
    load.enter_phase(AFTER_CRASH);
    servers.start_next()?;

    // Calls started after the crash cannot have been answered by b.
    let from_victim = load.answered(AFTER_CRASH, VICTIM);
    let tally = load.stop().await?;
    print_summary(&tally, &client, "every call had finished");
    println!();

    println!("shutting the servers down gracefully");
    servers.stop()?;
    if tally.report_failed() {
        return Ok(ExitCode::FAILURE);
    }
    if from_victim > 0 {
        let victim = SERVERS[VICTIM];
        eprintln!("FAILED: {victim} answered {from_victim} calls made after it was killed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
