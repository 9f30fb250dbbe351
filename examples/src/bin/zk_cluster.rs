//! Service discovery through ZooKeeper: server processes register themselves, one client
//! follows them, and the set changes under it (a server crashes, a new one joins) without a
//! single failed call.
//!
//! Run it with `cargo run -p rpc-examples --features zookeeper --bin zk_cluster`. It uses the
//! ZooKeeper at `ZOOKEEPER_SERVERS` (comma-separated `host:port`s) if set; otherwise it starts
//! its own (Debian's, `apt-get install zookeeperd`, which brings Java) on a free loopback port
//! with a temporary data directory, and stops it at the end.
//!
//! The program plays every part. As the driver (no arguments) it starts three copies of
//! itself as servers (`zk_cluster serve <zookeeper> <path> <name>`, which you can also run by
//! hand): each binds a free port and registers as the ephemeral node `<path>/<name>`, whose
//! data is `127.0.0.1:<port>`, on a ZooKeeper session with a 3 s timeout. The client knows no
//! address: it watches the path, and makes calls from 8 concurrent tasks. After a third of
//! the calls the driver kills server `b` with SIGKILL (a crash: nothing deregisters it), and
//! starts a fourth server, `d`. `stock` is marked `#[rpc(idempotent)]`, so calls cut off by
//! the crash are retried on another server; the client stops sending calls to `b` at once
//! (its connection is gone), drops it when ZooKeeper expires its session (deleting its node),
//! and balances calls onto `d` as soon as `d` registers. At the end the driver shuts the
//! servers down gracefully: each deregisters (deleting its node), then finishes its calls.
//! The program exits with a non-zero status if any call failed, so CI can run it.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use rpc_examples::registry_demo::{
    self, discovery_backoff, from_env, serve_replica, stop_signal, Registry, PATIENCE,
};
use rpc_examples::zk_process::{StartError, ZkProcess};
use rpc_transport::zookeeper::{ZkDiscovery, ZkRegistrar};

/// The servers' session timeout: how long a crashed server stays listed in ZooKeeper.
const SESSION: Duration = Duration::from_secs(3);
/// Our own ZooKeeper's tick (sessions may last from two ticks).
const TICK: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    registry_demo::main("zk_cluster", "<zookeeper> <path> <name>", drive, serve).await
}

/// Server mode: one replica on a free port, registered in ZooKeeper, until its stdin closes
/// or it gets Ctrl-C; then it deregisters and shuts down gracefully.
async fn serve(zookeeper: String, path: String, name: String) -> Result<(), Box<dyn Error>> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let registration = ZkRegistrar::new(zookeeper.split(','), &path, &name, addr)
        .session_timeout(SESSION)
        .register()
        .await?;
    println!(
        "  server {name}: listening on {addr}, registered as {}",
        registration.node()
    );
    // Deregister first (clients stop sending new calls), then stop and drain.
    serve_replica(&name, listener, registration.deregister_on(stop_signal())).await?;
    println!("  server {name}: deregistered and stopped");
    Ok(())
}

/// Driver mode: the demo.
async fn drive() -> Result<ExitCode, Box<dyn Error>> {
    // A ZooKeeper to use: the one named by ZOOKEEPER_SERVERS, or our own.
    let (zookeeper, _own_zookeeper) = match from_env("ZOOKEEPER_SERVERS", "ZooKeeper") {
        Some(servers) => (servers, None),
        None => {
            let own = own_zookeeper().await?;
            println!("started ZooKeeper (pid {}) at {}", own.pid(), own.addr());
            (own.addr(), Some(own))
        }
    };
    // A path of our own, so runs sharing a ZooKeeper do not see each other's servers.
    let path = format!("/rpc-examples/zk_cluster/{}/inventory", std::process::id());
    let discovery = ZkDiscovery::new(zookeeper.split(','), &path)
        .backoff(discovery_backoff())
        .watch();
    let registry = Registry {
        name: "ZooKeeper",
        addr: &zookeeper,
        under: &path,
        holder: "session",
        expiry: &format!("timeout {} s", SESSION.as_secs()),
    };
    registry.drive(discovery).await
}

/// A ZooKeeper of our own on a free loopback port, with a temporary data directory; killed
/// (and the directory deleted) when dropped.
async fn own_zookeeper() -> Result<ZkProcess, Box<dyn Error>> {
    ZkProcess::start("demo", TICK, PATIENCE)
        .await
        .map_err(|err| match err {
            StartError::Spawn { source, .. } => format!(
                "could not start ZooKeeper with `java` ({source}): install it (`apt-get \
                 install zookeeperd`), or point ZOOKEEPER_SERVERS at a running ZooKeeper"
            )
            .into(),
            // A message, as the program's other errors are (`main` shows them with `Debug`).
            err => err.to_string().into(),
        })
}
