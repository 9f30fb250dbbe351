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
use std::time::Duration;

use rpc_examples::etcd_process::{EtcdError, EtcdProcess, StartError};
use rpc_examples::registry_demo::{
    self, discovery_backoff, from_env, serve_replica, stop_signal, Registry, PATIENCE,
};
use rpc_transport::etcd::{self, EtcdDiscovery};

/// The servers' lease TTL: how long a crashed server stays listed in etcd.
const TTL: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    registry_demo::main("etcd_cluster", "<etcd> <prefix> <name>", drive, serve).await
}

/// Server mode: one replica on a free port, registered in etcd, until its stdin closes or it
/// gets Ctrl-C; then it deregisters and shuts down gracefully.
async fn serve(etcd: String, prefix: String, name: String) -> Result<(), Box<dyn Error>> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let registration = etcd::register(etcd.split(','), &prefix, &name, addr, TTL).await?;
    println!(
        "  server {name}: listening on {addr}, registered as {}",
        registration.key()
    );
    // Deregister first (clients stop sending new calls), then stop and drain.
    serve_replica(&name, listener, registration.deregister_on(stop_signal())).await?;
    println!("  server {name}: deregistered and stopped");
    Ok(())
}

/// Driver mode: the demo.
async fn drive() -> Result<ExitCode, Box<dyn Error>> {
    // An etcd to use: the one named by ETCD_ENDPOINTS, or our own.
    let (etcd, _own_etcd) = match from_env("ETCD_ENDPOINTS", "etcd") {
        Some(endpoints) => (endpoints, None),
        None => {
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
    let discovery = EtcdDiscovery::new(etcd.split(','), &prefix)
        .backoff(discovery_backoff())
        .watch();
    let registry = Registry {
        name: "etcd",
        addr: &etcd,
        under: &prefix,
        holder: "lease",
        expiry: &format!("TTL {} s", TTL.as_secs()),
    };
    registry.drive(discovery).await
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
