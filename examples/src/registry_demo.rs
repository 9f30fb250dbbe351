//! What the `etcd_cluster`, `zk_cluster` and `nats_cluster` examples share: the program's two
//! modes, the servers it starts and crashes, and, for the two registries (etcd and
//! ZooKeeper), the whole driver.
//!
//! Each program plays every part. As the driver (no arguments) it starts three copies of
//! itself as servers, `<program> serve <registry> <under> <name>`, which find each other's
//! clients through `<registry>` (etcd's endpoints, ZooKeeper's servers, a NATS URL) under
//! `<under>` (a key prefix, a node path, a subject). A client makes calls while server `b` is
//! killed with SIGKILL and a fourth, `d`, joins; then the driver stops the servers gracefully,
//! and exits with a non-zero status if any call failed or the run did not go as expected.

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rpc_core::balance::{Backoff, Discover, EndpointState};
use rpc_core::{Listener, Server};

use crate::inventory::{
    client_builder, endpoints, wait_until, when_stdin_closes, InventoryClient, InventoryServer,
    Load, Replica, ServerProcess, Tally, FAIR_SHARE, TASKS, TOTAL_CALLS,
};

/// The servers: three at first, then `d` joins after `b` crashed.
pub const SERVERS: [&str; 4] = ["a", "b", "c", "d"];
/// How many servers start at first.
pub const FIRST: usize = 3;
/// The server that crashes: `b`.
pub const VICTIM: usize = 1;
/// The server that joins after the crash: `d`.
pub const JOINER: usize = 3;
/// The longest the driver waits for something to happen.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// Progress is printed every so many calls.
pub const PROGRESS_EVERY: u64 = 1000;
/// The phases of the run, which the summary counts calls by: before `b` crashed (the first),
/// and after (when `d` joins too).
pub const PHASES: usize = 2;
/// The phase after `b` crashed.
pub const AFTER_CRASH: usize = 1;

/// The program's `main`: with no arguments, the demo (`drive`); with `serve <registry>
/// <under> <name>`, one server (`serve` with those three); otherwise the usage, and exit
/// status 2. `program` is the program's name and `serve_usage` names the three arguments,
/// for the usage.
pub async fn main<D, S>(
    program: &str,
    serve_usage: &str,
    drive: impl FnOnce() -> D,
    serve: impl FnOnce(String, String, String) -> S,
) -> Result<ExitCode, Box<dyn Error>>
where
    D: Future<Output = Result<ExitCode, Box<dyn Error>>>,
    S: Future<Output = Result<(), Box<dyn Error>>>,
{
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => drive().await,
        [mode, _, _, _] if mode == "serve" => {
            let name = args.pop().unwrap_or_default();
            let under = args.pop().unwrap_or_default();
            let registry = args.pop().unwrap_or_default();
            serve(registry, under, name).await?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let server = format!("{program} serve {serve_usage}");
            let width = server.len();
            eprintln!("usage: {program:<width$}  (the demo)");
            eprintln!("       {server}  (one server)");
            Ok(ExitCode::from(2))
        }
    }
}

/// Driver mode: the registry the environment variable `var` names, if it is set (saying
/// that the demo uses it, `what` it is), or `None`: the demo then starts its own.
pub fn from_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(addr) if !addr.trim().is_empty() => {
            println!("using the {what} at {addr} ({var})");
            Some(addr)
        }
        _ => None,
    }
}

/// Server mode: resolves once stdin closes (the driver closed it, or died) or Ctrl-C comes.
pub fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    when_stdin_closes(move || {
        let _ = closed.send(());
    });
    async {
        tokio::select! {
            _ = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}

/// Server mode: serves the replica `name` on `listener` until `signal`, then shuts down
/// gracefully (finishing its calls, for up to 5 s).
pub async fn serve_replica(
    name: &str,
    listener: impl Listener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Server::new()
        .add_service(InventoryServer::new(Replica::new(name)))
        .shutdown_grace(Duration::from_secs(5))
        .serve_with_shutdown(listener, signal)
        .await
}

/// The driver's server processes, in the order of [`SERVERS`], each started as `serve
/// <registry> <under> <name>`.
pub struct Servers {
    registry: String,
    under: String,
    running: Vec<Option<ServerProcess>>,
}

impl Servers {
    /// The first [`FIRST`] servers, started, registering with `registry` under `under`.
    pub fn start(registry: &str, under: &str) -> std::io::Result<Servers> {
        let mut servers = Servers {
            registry: registry.to_owned(),
            under: under.to_owned(),
            running: Vec::new(),
        };
        for _ in 0..FIRST {
            servers.start_next()?;
        }
        Ok(servers)
    }

    /// Starts the next server of [`SERVERS`].
    pub fn start_next(&mut self) -> std::io::Result<()> {
        let name = SERVERS[self.running.len()];
        let server = ServerProcess::start(["serve", &self.registry, &self.under, name])?;
        println!("started server {name} (pid {})", server.pid());
        self.running.push(Some(server));
        Ok(())
    }

    /// Kills [`VICTIM`] with SIGKILL, and says which process that was, adding `how` (what
    /// the crash means) to the message.
    pub fn crash_victim(&mut self, how: &str) -> Result<(), Box<dyn Error>> {
        let mut victim = self.running[VICTIM].take().ok_or("no victim")?;
        let pid = victim.pid();
        victim.crash()?;
        println!(
            "killed server {} (pid {pid}) with SIGKILL{how}",
            SERVERS[VICTIM]
        );
        Ok(())
    }

    /// Stops the servers still running gracefully, each in turn.
    pub fn stop(self) -> std::io::Result<()> {
        for server in self.running.into_iter().flatten() {
            server.stop()?;
        }
        Ok(())
    }
}

/// Prints the run's summary (see [`Tally::print_summary`]), a column for each phase.
pub fn print_summary(tally: &Tally, client: &InventoryClient, went_on_until: &str) {
    let before = format!("before {} crashed", SERVERS[VICTIM]);
    let after = format!("after ({} joining)", SERVERS[JOINER]);
    tally.print_summary(client, went_on_until, &[(&before, 16), (&after, 19)]);
}

/// How the client's discovery retries a registry it lost: soon, then every 2 s at most.
pub fn discovery_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
}

/// What a registry demo (etcd's, ZooKeeper's) says about its registry.
pub struct Registry<'a> {
    /// Its name, for messages: "etcd", "ZooKeeper".
    pub name: &'a str,
    /// Its address, as the servers take it: comma-separated `host:port`s.
    pub addr: &'a str,
    /// Where the servers register: server `x` as `<under>/x`, its endpoint's key.
    pub under: &'a str,
    /// What keeps a server listed, and expires once it crashed: "lease", "session".
    pub holder: &'a str,
    /// How long that takes, as the messages give it: "TTL 3 s", "timeout 3 s".
    pub expiry: &'a str,
}

impl Registry<'_> {
    /// Driver mode: the demo, with a client following the registry through `discovery`.
    pub async fn drive(&self, discovery: impl Discover) -> Result<ExitCode, Box<dyn Error>> {
        let Registry {
            name: registry,
            under,
            holder,
            expiry,
            ..
        } = *self;
        let mut servers = Servers::start(self.addr, under)?;
        let client = client_builder().discover(discovery);
        // Wait until the three have registered and the client is connected to each.
        let first = self.keys(&SERVERS[..FIRST]);
        if !wait_until(PATIENCE, || connected(&client) == first).await {
            return Err(format!("the servers did not all register within {PATIENCE:?}").into());
        }
        println!(
            "the client found a, b and c in {registry} under {under}/ and is connected to \
             each; making {TOTAL_CALLS} calls from {TASKS} tasks"
        );

        let load = Load::start(&client, &SERVERS, PHASES, PROGRESS_EVERY);
        load.wait_for_calls(TOTAL_CALLS / 3).await;
        servers.crash_victim(": it does not deregister")?;
        let crash = Instant::now();
        load.enter_phase(AFTER_CRASH);
        servers.start_next()?;
        let join = Instant::now();

        // The client drops the victim once its registration expires, and picks the joiner
        // up once it registers.
        let (victim, joiner) = (SERVERS[VICTIM], SERVERS[JOINER]);
        let [victim_key, joiner_key] = [victim, joiner].map(|name| format!("{under}/{name}"));
        let (mut dropped, mut picked) = (false, false);
        let settled = wait_until(PATIENCE, || {
            let endpoints = endpoints(&client);
            if !dropped && !endpoints.iter().any(|(key, _)| *key == victim_key) {
                dropped = true;
                println!(
                    "the client dropped {victim} {} ms after the crash, when its {holder} \
                     expired ({expiry})",
                    crash.elapsed().as_millis(),
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
        print_summary(
            &tally,
            &client,
            &format!("{victim}'s {holder} expired and {joiner} took its share"),
        );
        println!();

        println!("shutting the servers down gracefully (each deregisters, then drains)");
        servers.stop()?;
        let left = wait_until(PATIENCE, || endpoints(&client).is_empty()).await;
        println!("the client has {} endpoints left", endpoints(&client).len());

        if tally.report_failed() {
            return Ok(ExitCode::FAILURE);
        }
        if !settled {
            eprintln!(
                "FAILED: within {PATIENCE:?}, the client did not drop {victim} or did not pick \
                 up {joiner}"
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

    /// The keys these servers register under, sorted.
    fn keys(&self, names: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = (names.iter())
            .map(|name| format!("{}/{name}", self.under))
            .collect();
        keys.sort();
        keys
    }
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
