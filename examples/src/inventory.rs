//! The inventory service, and what the `cluster` and `etcd_cluster` examples share around it.
//!
//! Both examples start copies of themselves as servers, make calls through one balancing
//! client while a server crashes, and count who answered what.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, ClientStats, EndpointState, LeastLoaded};
use rpc_core::{service, ClientBuilder, Keepalive};
use serde::{Deserialize, Serialize};

/// How many units of an item a server has, and which server said so.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stock {
    /// Units in stock.
    pub units: u32,
    /// The server that answered (the demo counts calls per server with it).
    pub server: String,
}

/// A read-only inventory, replicated on every server.
#[service]
pub trait Inventory {
    /// Reads are safe to repeat: the client may retry them on another server.
    #[rpc(idempotent)]
    async fn stock(&self, item: String) -> Stock;
}

/// One replica of the inventory.
pub struct Replica {
    name: String,
}

impl Replica {
    /// A replica that gives `name` as the server in its answers.
    pub fn new(name: impl Into<String>) -> Replica {
        Replica { name: name.into() }
    }
}

impl Inventory for Replica {
    async fn stock(&self, item: String) -> Stock {
        // Pretend to look the item up, so calls take a little time and some are always in
        // flight when a server is killed.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let units = match item.as_str() {
            "apples" => 120,
            "pears" => 45,
            "plums" => 8,
            _ => 0,
        };
        Stock {
            units,
            server: self.name.clone(),
        }
    }
}

/// A server child process: this program started again, in its server mode. Killed when
/// dropped (also when the driver fails half-way), unless it has exited already.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts this program again with `args`, which select its server mode. Its stdin is a
    /// pipe the driver holds open: the server should leave once it closes (see
    /// [`when_stdin_closes`]), so no server outlives the driver, even a killed one.
    pub fn start<I, S>(args: I) -> std::io::Result<ServerProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()?;
        Ok(ServerProcess { child })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the server gets no chance to finish its calls, close its connections or
    /// deregister.
    pub fn crash(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Graceful: closes its stdin, and waits until it has exited.
    pub fn stop(mut self) -> std::io::Result<()> {
        drop(self.child.stdin.take());
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.crash();
        }
    }
}

/// Server mode: calls `then` (on a thread of its own) once stdin ends, that is once the
/// driver that started this server with [`ServerProcess::start`] closes it or goes away.
pub fn when_stdin_closes(then: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        then();
    });
}

/// A builder for the demo's client: least-loaded balancing, reconnecting soon to a lost
/// server, and keepalive. Finish it with `.balance(endpoints)` or `.discover(source)`.
pub fn client_builder() -> ClientBuilder<InventoryClient> {
    InventoryClient::builder()
        .strategy(LeastLoaded::new())
        // Reconnect to a lost server soon, and keep trying every half second at most.
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
        // A crashed process's connections are reset by its kernel at once; keepalive is what
        // notices a server whose machine vanished without a word.
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
        )))
}

/// What the client (made by [`client_builder`]) says about itself.
fn stats(client: &InventoryClient) -> ClientStats {
    client
        .client()
        .stats()
        .expect("a balancing client has stats")
}

/// The client's endpoints (their keys) and their states.
pub fn endpoints(client: &InventoryClient) -> Vec<(String, EndpointState)> {
    (stats(client).endpoints.into_iter())
        .map(|endpoint| (endpoint.key, endpoint.state))
        .collect()
}

/// Waits until `done()` is true (polling it), or `patience` has passed; says which.
pub async fn wait_until(patience: Duration, mut done: impl FnMut() -> bool) -> bool {
    let since = Instant::now();
    while !done() {
        if since.elapsed() > patience {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// `N` distinct free loopback ports: bind them all at once, note them, and let them go.
/// (Another process could take one in between; on a test machine that is rare enough.)
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = [(); N].map(|()| std::net::TcpListener::bind("127.0.0.1:0"));
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(listeners) {
        *port = listener?.local_addr()?.port();
    }
    Ok(ports)
}
