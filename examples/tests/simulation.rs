//! Testing a service in simulation: three servers and a balancing client in one process, on
//! a simulated network, in simulated time. Copy this file into your crate's `tests/` and
//! put your own service in place of `Greeter`; you need
//! `rpc-transport = { ..., features = ["sim"] }` in your `[dev-dependencies]`.

use std::time::Duration;

use rpc_core::balance::{Endpoint, LeastLoaded};
use rpc_core::{service, Keepalive, Server};
use rpc_transport::sim::{self, turmoil};

#[service]
pub trait Greeter {
    #[rpc(idempotent)]
    async fn hello(&self, name: String) -> String;
}

struct Host(&'static str);

impl Greeter for Host {
    async fn hello(&self, name: String) -> String {
        // Work takes time, in simulated time too.
        tokio::time::sleep(Duration::from_millis(20)).await;
        format!("hello {name}, from {}", self.0)
    }
}

const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];

/// Runs the scenario with `seed`; returns which server answered each call.
fn run(seed: u64) -> Vec<String> {
    // The same seeds give the same run: turmoil's for the network, ours for the client's
    // random choices.
    sim::seed(seed);
    let mut world = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .simulation_duration(Duration::from_secs(600))
        .build();
    for name in SERVERS {
        world.host(name, move || async move {
            let listener = sim::bind("0.0.0.0:4000").await?;
            Server::new()
                .add_service(GreeterServer::new(Host(name)))
                .serve(listener)
                .await?;
            Ok(())
        });
    }
    let answers = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = answers.clone();
    world.client("client", async move {
        let client = GreeterClient::builder()
            .strategy(LeastLoaded::new())
            // Notices a silent server within 7 s, well within a call's deadline.
            .keepalive(Some(Keepalive::new(
                Duration::from_secs(5),
                Duration::from_secs(2),
            )))
            .balance(
                SERVERS.map(|name| Endpoint::new(name, sim::connector(format!("{name}:4000")))),
            );
        for i in 0..30 {
            if i == 10 {
                // server-1 drops off the network: calls go on to the others.
                turmoil::partition("client", "server-1");
            }
            let answer = client
                .hello(format!("call {i}"))
                .timeout(Duration::from_secs(60))
                .await?;
            log.borrow_mut().push(answer);
        }
        Ok(())
    });
    world.run().expect("the simulation passes");
    let answers = answers.borrow().clone();
    answers
}

#[test]
fn calls_go_on_when_a_server_drops_off_and_runs_replay_from_their_seed() {
    let answers = run(7);
    assert_eq!(answers.len(), 30);
    // After the partition (and the call in flight on it, retried elsewhere), server-1
    // answers nothing.
    assert!(
        answers[11..].iter().all(|a| !a.ends_with("server-1")),
        "{answers:?}"
    );
    assert_eq!(run(7), answers, "the same seed gives the same run");
}
