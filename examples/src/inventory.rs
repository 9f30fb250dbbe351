//! The inventory service, and what the `cluster` example and the registry demos
//! (`etcd_cluster`, `zk_cluster`, `nats_cluster`: see `registry_demo`) share around it.
//!
//! They start copies of themselves as servers, make calls through one balancing client while
//! a server crashes, and count who answered what.

use std::ffi::OsStr;
use std::fmt::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, ClientStats, EndpointState, LeastLoaded};
use rpc_core::{service, ClientBuilder, Keepalive};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinError;

/// Calls a run makes (at least: see [`Load::stop`]).
pub const TOTAL_CALLS: u64 = 3_000;
/// The tasks making them, each one call after the other.
pub const TASKS: usize = 8;
/// Each call's deadline, retries included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Calls the server that came back or joined mid-run answers before the run may end.
pub const FAIR_SHARE: u64 = 100;

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

/// The load on the servers: [`TASKS`] tasks making calls through one client, counted by the
/// phase of the run they started in and by the server that answered.
pub struct Load {
    run: Arc<Run>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    began: Instant,
}

/// What the calling tasks and the driver share.
struct Run {
    /// The servers' names, as they give them in their answers.
    servers: Vec<String>,
    /// Print progress every so many finished calls.
    report_every: u64,
    /// Calls started so far.
    started: AtomicU64,
    /// The phase calls start in now.
    phase: AtomicUsize,
    /// Calls answered, by the phase they started in and the server that answered.
    answered: Vec<Vec<AtomicU64>>,
    failed: AtomicU64,
    /// Calls finished so far (answered or failed); the driver waits on it.
    finished: watch::Sender<u64>,
    /// Set by the driver (see [`Load::stop`]): the tasks may stop after `TOTAL_CALLS`. Until
    /// then they go on, so the summary can show a server that came back at work.
    may_stop: AtomicBool,
}

impl Load {
    /// Starts the tasks, making calls through `client` to `servers` (named as they answer),
    /// in phase 0 of `phases`, and printing progress every `report_every` calls.
    pub fn start(
        client: &InventoryClient,
        servers: &[&str],
        phases: usize,
        report_every: u64,
    ) -> Load {
        let run = Arc::new(Run {
            servers: servers.iter().map(ToString::to_string).collect(),
            report_every,
            started: AtomicU64::new(0),
            phase: AtomicUsize::new(0),
            answered: (0..phases)
                .map(|_| servers.iter().map(|_| AtomicU64::new(0)).collect())
                .collect(),
            failed: AtomicU64::new(0),
            finished: watch::Sender::new(0),
            may_stop: AtomicBool::new(false),
        });
        let began = Instant::now();
        let tasks = (0..TASKS)
            .map(|_| tokio::spawn(make_calls(client.clone(), Arc::clone(&run))))
            .collect();
        Load { run, tasks, began }
    }

    /// Waits until `calls` calls have finished (answered or failed).
    pub async fn wait_for_calls(&self, calls: u64) {
        let mut finished = self.run.finished.subscribe();
        // The sender lives in `self.run`: the channel cannot close while we wait.
        let _ = finished.wait_for(|&n| n >= calls).await;
    }

    /// Calls started from now on count in `phase`.
    pub fn enter_phase(&self, phase: usize) {
        self.run.phase.store(phase, Ordering::Relaxed);
    }

    /// Calls answered by `server` (an index into the servers' names), of those started in
    /// `phase`.
    pub fn answered(&self, phase: usize, server: usize) -> u64 {
        self.run.answered(phase, server)
    }

    /// Lets the tasks stop once [`TOTAL_CALLS`] calls have started, and waits until they
    /// have; says what they did.
    pub async fn stop(self) -> Result<Tally, JoinError> {
        self.run.may_stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        Ok(Tally {
            elapsed: self.began.elapsed(),
            run: self.run,
        })
    }
}

impl Run {
    fn answered(&self, phase: usize, server: usize) -> u64 {
        self.answered[phase][server].load(Ordering::Relaxed)
    }
}

/// One of the tasks making calls, each after the previous one finished.
async fn make_calls(client: InventoryClient, run: Arc<Run>) {
    const ITEMS: [&str; 4] = ["apples", "pears", "plums", "kiwis"];
    loop {
        let n = run.started.fetch_add(1, Ordering::Relaxed);
        if n >= TOTAL_CALLS && run.may_stop.load(Ordering::Relaxed) {
            return;
        }
        let phase = run.phase.load(Ordering::Relaxed);
        let item = ITEMS[n as usize % ITEMS.len()].to_string();
        match client.stock(item).timeout(CALL_TIMEOUT).await {
            Ok(stock) => match run.servers.iter().position(|s| *s == stock.server) {
                Some(server) => {
                    run.answered[phase][server].fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    run.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("call {n} answered by an unknown server {}", stock.server);
                }
            },
            Err(err) => {
                run.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("call {n} failed: {err} ({:?})", err.kind());
            }
        }
        run.finished.send_modify(|finished| {
            *finished += 1;
            if *finished % run.report_every == 0 {
                let failed = run.failed.load(Ordering::Relaxed);
                println!("  {finished} calls done, {failed} failed");
            }
        });
    }
}

/// What a [`Load`] did, once stopped.
pub struct Tally {
    run: Arc<Run>,
    elapsed: Duration,
}

impl Tally {
    /// Calls that failed (or were answered by a server not in the list).
    pub fn failed(&self) -> u64 {
        self.run.failed.load(Ordering::Relaxed)
    }

    /// Whether any call failed, which fails the run; if so, says how many on stderr.
    pub fn report_failed(&self) -> bool {
        let failed = self.failed();
        if failed > 0 {
            eprintln!("FAILED: {failed} idempotent calls failed");
        }
        failed > 0
    }

    /// Prints the summary: calls made, failed and retried (`client`'s retries), then a table
    /// of the calls each server answered in each phase, one column a phase: its heading, and
    /// the width its numbers are right-aligned to. If the run made more than
    /// [`TOTAL_CALLS`] calls, it says that it went on until `went_on_until`.
    pub fn print_summary(
        &self,
        client: &InventoryClient,
        went_on_until: &str,
        columns: &[(&str, usize)],
    ) {
        let stats = stats(client);
        let made = *self.run.finished.borrow();
        println!();
        println!("calls made: {made} in {} ms", self.elapsed.as_millis());
        if made > TOTAL_CALLS {
            println!(
                "            (more than {TOTAL_CALLS}: the run went on until {went_on_until})"
            );
        }
        println!("failed:     {}", self.failed());
        println!(
            "retries:    {} (refused by the retry budget: {})",
            stats.retries, stats.retries_refused
        );
        println!();
        let mut header = String::from("answered by");
        for (heading, width) in columns {
            let _ = write!(header, "   {heading:<width$}");
        }
        println!("{}", header.trim_end());
        for (index, name) in self.run.servers.iter().enumerate() {
            let mut row = format!("{:<11}", format!("server {name}"));
            for (phase, (_, width)) in columns.iter().enumerate() {
                let _ = write!(row, "   {:>width$}", self.run.answered(phase, index));
            }
            println!("{row}");
        }
    }
}
