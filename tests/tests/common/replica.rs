//! [`Replica`]: a server that can be killed and restarted at the same address, over memory,
//! TCP or Unix sockets, serving the [`Fleet`] test service and counting what it serves.
//!
//! Every replica's handlers report to the test: how many times each method ran, how many
//! calls are waiting at a closed gate ([`Replica::hold`]), and the values `record` was given.
//! A test waits for such a count with [`wait_for`], which sleeps until a handler changes
//! something rather than polling; [`eventually`] polls what no handler reports (a client's
//! view of its endpoints).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rpc_core::balance::Endpoint;
use rpc_core::{service, Connect, Server, ServerStats};
use rpc_transport::memory::MemoryConnector;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::{guard, AnyTransport, Kind};

/// The transports a replica runs over: those a client can connect to more than once.
pub const KINDS: [Kind; 3] = [Kind::MemoryListener, Kind::Tcp, Kind::Unix];

/// The service every replica serves.
#[service]
pub trait Fleet {
    /// The replica's tag. Safe to retry.
    #[rpc(idempotent)]
    async fn whoami(&self) -> u32;
    /// Records `n` (see [`Replica::recorded`]) and returns the tag. Not safe to retry: each
    /// run of the handler is visible.
    async fn record(&self, n: u64) -> u32;
    /// Takes `ms` milliseconds of work, then returns the tag. Safe to retry.
    #[rpc(idempotent)]
    async fn slow(&self, ms: u64) -> u32;
}

/// A method of [`Fleet`], to count its runs or hold its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Whoami,
    Record,
    Slow,
}

const METHODS: usize = 3;

/// Woken whenever any replica's counters change. Shared by every test in the binary, so a
/// waiter may wake for another test's event; [`wait_for`] then checks again and sleeps on.
static CHANGED: LazyLock<Notify> = LazyLock::new(Notify::new);

fn changed() {
    CHANGED.notify_waiters();
}

/// Waits until `condition` holds, re-checking it whenever a replica's counters change;
/// fails the test (hang guard) if that never happens.
pub async fn wait_for(mut condition: impl FnMut() -> bool) {
    guard(async {
        loop {
            let notified = CHANGED.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if condition() {
                return;
            }
            notified.await;
        }
    })
    .await
}

/// Waits until `condition` holds, checking it every millisecond: for state no handler
/// reports, such as what a client thinks of its endpoints. Fails the test (hang guard) if
/// that never happens.
pub async fn eventually(mut condition: impl FnMut() -> bool) {
    guard(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// What a replica's handlers share with the test; it outlives restarts.
struct State {
    tag: u32,
    runs: [AtomicU64; METHODS],
    waiting: [AtomicUsize; METHODS],
    /// `true` while the method's calls are held.
    gates: [watch::Sender<bool>; METHODS],
    broken: AtomicBool,
    recorded: Mutex<Vec<u64>>,
}

impl State {
    /// Counts a run of `method`, panics if the replica is broken, and waits while the method
    /// is held.
    async fn enter(&self, method: Method) {
        let m = method as usize;
        self.runs[m].fetch_add(1, Ordering::SeqCst);
        changed();
        if self.broken.load(Ordering::SeqCst) {
            panic!("replica {} is broken", self.tag);
        }
        let mut gate = self.gates[m].subscribe();
        if !*gate.borrow_and_update() {
            return;
        }
        let _waiting = Waiting::new(self, m);
        // The sender lives as long as the state, which this handler holds.
        let _ = gate.wait_for(|held| !held).await;
    }
}

/// Counts a handler waiting at a gate, until it passes or is dropped (its server killed).
struct Waiting<'a> {
    state: &'a State,
    method: usize,
}

impl<'a> Waiting<'a> {
    fn new(state: &'a State, method: usize) -> Waiting<'a> {
        state.waiting[method].fetch_add(1, Ordering::SeqCst);
        changed();
        Waiting { state, method }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.state.waiting[self.method].fetch_sub(1, Ordering::SeqCst);
        changed();
    }
}

/// The [`Fleet`] implementation: one per replica, shared by its server's restarts.
#[derive(Clone)]
struct Node {
    state: Arc<State>,
}

impl Fleet for Node {
    async fn whoami(&self) -> u32 {
        self.state.enter(Method::Whoami).await;
        self.state.tag
    }

    async fn record(&self, n: u64) -> u32 {
        self.state.enter(Method::Record).await;
        self.state
            .recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(n);
        changed();
        self.state.tag
    }

    async fn slow(&self, ms: u64) -> u32 {
        self.state.enter(Method::Slow).await;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.state.tag
    }
}

/// Where a replica listens; the same after a restart.
#[derive(Clone)]
enum Address {
    /// The connector of the current listener, replaced on restart.
    Memory(Arc<Mutex<MemoryConnector>>),
    Tcp(SocketAddr),
    /// The socket path, in a directory of its own.
    Unix {
        dir: PathBuf,
        path: PathBuf,
    },
}

/// A bound listener of any kind.
enum Listening {
    Memory(rpc_transport::memory::MemoryListener),
    Tcp(rpc_transport::tcp::TcpListener),
    Unix(rpc_transport::unix::UnixListener),
}

/// A [`Connect`] to a replica that follows it across restarts; every replica's connector
/// has this one type, so replicas of any transport can be endpoints of one client.
#[derive(Clone)]
pub struct ReplicaConnector {
    address: Address,
}

impl Connect for ReplicaConnector {
    type Transport = AnyTransport;

    fn connect(&self) -> impl Future<Output = io::Result<AnyTransport>> + Send {
        let address = self.address.clone();
        async move {
            // Each goes through the transport's own connector, as a user's client would.
            let transport: AnyTransport = match address {
                Address::Memory(current) => {
                    let connector = current
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .clone();
                    Box::new(Connect::connect(&connector).await?)
                }
                Address::Tcp(addr) => {
                    Box::new(Connect::connect(&rpc_transport::tcp::connector(addr)).await?)
                }
                Address::Unix { path, .. } => {
                    Box::new(Connect::connect(&rpc_transport::unix::connector(path)).await?)
                }
            };
            Ok(transport)
        }
    }
}

/// A server of [`Fleet`] that can be killed and restarted at the same address.
pub struct Replica {
    pub kind: Kind,
    state: Arc<State>,
    address: Address,
    configure: fn(Server) -> Server,
    server: Option<JoinHandle<io::Result<()>>>,
    /// Starts the running server's graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    stats: ServerStats,
}

impl Replica {
    /// Starts a replica tagged `tag` (what `whoami` answers) on a fresh address of `kind`.
    pub async fn start(kind: Kind, tag: u32) -> Replica {
        Replica::start_with(kind, tag, |server| server).await
    }

    /// Like [`start`](Replica::start), with `configure` applied to each server it runs
    /// (e.g. to set `max_concurrent_requests`), restarts included.
    pub async fn start_with(kind: Kind, tag: u32, configure: fn(Server) -> Server) -> Replica {
        let tcp = SocketAddr::from(([127, 0, 0, 1], 0));
        Replica::start_on(kind, tag, configure, tcp)
            .await
            .expect("bind tcp")
    }

    /// A TCP replica listening on `addr` (an error if it is taken), for tests that need
    /// replicas at given addresses, such as several loopback IPs sharing a port.
    pub async fn start_tcp_at(addr: SocketAddr, tag: u32) -> io::Result<Replica> {
        Replica::start_on(Kind::Tcp, tag, |server| server, addr).await
    }

    async fn start_on(
        kind: Kind,
        tag: u32,
        configure: fn(Server) -> Server,
        tcp: SocketAddr,
    ) -> io::Result<Replica> {
        // TCP binds `tcp` (port 0 the first time) and keeps the port for restarts.
        let mut first = None;
        let address = match kind {
            Kind::MemoryListener => {
                Address::Memory(Arc::new(Mutex::new(rpc_transport::memory::listener().1)))
            }
            Kind::Tcp => {
                let listener = rpc_transport::tcp::bind(tcp).await?;
                let addr = listener.local_addr()?;
                first = Some(Listening::Tcp(listener));
                Address::Tcp(addr)
            }
            Kind::Unix => {
                let dir = unique_dir();
                let path = dir.join(format!("replica-{tag}.sock"));
                Address::Unix { dir, path }
            }
            Kind::MemoryPair => panic!("a replica needs a transport that can connect again"),
        };
        let state = Arc::new(State {
            tag,
            runs: Default::default(),
            waiting: Default::default(),
            gates: std::array::from_fn(|_| watch::Sender::new(false)),
            broken: AtomicBool::new(false),
            recorded: Mutex::new(Vec::new()),
        });
        let mut replica = Replica {
            kind,
            state,
            address,
            configure,
            server: None,
            stop: None,
            stats: ServerStats::default(),
        };
        let listening = match first {
            Some(listening) => listening,
            None => replica.bind().await,
        };
        replica.launch(listening);
        Ok(replica)
    }

    /// Listens at the replica's address (for memory, a new listener its connectors reach).
    async fn bind(&self) -> Listening {
        match &self.address {
            Address::Memory(current) => {
                let (listener, connector) = rpc_transport::memory::listener();
                *current
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = connector;
                Listening::Memory(listener)
            }
            Address::Tcp(addr) => {
                Listening::Tcp(rpc_transport::tcp::bind(*addr).await.expect("rebind tcp"))
            }
            Address::Unix { path, .. } => {
                Listening::Unix(rpc_transport::unix::bind(path).await.expect("bind unix"))
            }
        }
    }

    /// Spawns a server on `listening`.
    fn launch(&mut self, listening: Listening) {
        assert!(self.server.is_none(), "replica {} is running", self.tag());
        let server = (self.configure)(Server::new().add_service(FleetServer::new(Node {
            state: Arc::clone(&self.state),
        })));
        self.stats = server.stats();
        let (stop, stopped) = oneshot::channel();
        let signal = async move {
            if stopped.await.is_err() {
                // The replica was dropped or killed: that is no shutdown signal.
                std::future::pending::<()>().await;
            }
        };
        self.stop = Some(stop);
        self.server = Some(match listening {
            Listening::Memory(listener) => {
                tokio::spawn(server.serve_with_shutdown(listener, signal))
            }
            Listening::Tcp(listener) => tokio::spawn(server.serve_with_shutdown(listener, signal)),
            Listening::Unix(listener) => tokio::spawn(server.serve_with_shutdown(listener, signal)),
        });
    }

    /// Starts a graceful shutdown: the server stops accepting, refuses new calls with
    /// `Overloaded`, and closes once the calls in progress are done. Returns the server's
    /// task, which ends then; restart the replica only after that.
    pub fn shut_down(&mut self) -> JoinHandle<io::Result<()>> {
        let task = self.server.take().expect("the replica is not running");
        let _ = self
            .stop
            .take()
            .expect("a running server can be stopped")
            .send(());
        task
    }

    /// Kills the server at once: its listener closes and every connection it serves is
    /// dropped with its handlers, as if the process had died.
    pub async fn kill(&mut self) {
        let task = self.server.take().expect("the replica is not running");
        task.abort();
        self.stop = None;
        // Returns once the serve future, and with it the listener, is gone.
        let _ = guard(task).await;
    }

    /// Starts a new server at the address of the killed one.
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "replica {} is running", self.tag());
        let listening = self.bind().await;
        self.launch(listening);
    }

    /// What `whoami` answers.
    pub fn tag(&self) -> u32 {
        self.state.tag
    }

    /// The key of its [`endpoint`](Replica::endpoint).
    pub fn key(&self) -> String {
        format!("replica-{}", self.state.tag)
    }

    /// The TCP address it listens on, if it is a TCP replica.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self.address {
            Address::Tcp(addr) => Some(addr),
            _ => None,
        }
    }

    /// A connector that reaches this replica, restarted or not.
    pub fn connector(&self) -> ReplicaConnector {
        ReplicaConnector {
            address: self.address.clone(),
        }
    }

    /// An endpoint of weight 1 keyed [`key`](Replica::key).
    pub fn endpoint(&self) -> Endpoint<ReplicaConnector> {
        Endpoint::new(self.key(), self.connector())
    }

    /// Handler runs of `method`, over every server this replica ran (counted when a handler
    /// starts: a held call counts).
    pub fn runs(&self, method: Method) -> u64 {
        self.state.runs[method as usize].load(Ordering::SeqCst)
    }

    /// Handler runs of every method.
    pub fn served(&self) -> u64 {
        [Method::Whoami, Method::Record, Method::Slow]
            .into_iter()
            .map(|m| self.runs(m))
            .sum()
    }

    /// Calls of `method` waiting at its gate now.
    pub fn waiting(&self, method: Method) -> usize {
        self.state.waiting[method as usize].load(Ordering::SeqCst)
    }

    /// Holds calls of `method`: their handlers wait until [`release`](Replica::release).
    pub fn hold(&self, method: Method) {
        self.state.gates[method as usize].send_replace(true);
    }

    /// Lets held calls of `method` (and later ones) go on.
    pub fn release(&self, method: Method) {
        self.state.gates[method as usize].send_replace(false);
    }

    /// A broken replica's handlers all panic (the caller gets `Internal`).
    pub fn set_broken(&self, broken: bool) {
        self.state.broken.store(broken, Ordering::SeqCst);
    }

    /// The values `record` was called with, in order.
    pub fn recorded(&self) -> Vec<u64> {
        self.state
            .recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Connections the current server has open.
    pub fn open_connections(&self) -> usize {
        self.stats.open_connections()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(task) = self.server.take() {
            task.abort();
        }
        if let Address::Unix { dir, .. } = &self.address {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `n` replicas of `kind`, tagged `0..n`.
pub async fn start_replicas(kind: Kind, n: u32) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for tag in 0..n {
        replicas.push(Replica::start(kind, tag).await);
    }
    replicas
}

/// The endpoints of `replicas`, each of weight 1.
pub fn endpoints(replicas: &[Replica]) -> Vec<Endpoint<ReplicaConnector>> {
    replicas.iter().map(Replica::endpoint).collect()
}

/// A new, empty directory under the temp dir.
fn unique_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rpc-replica-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the socket directory");
    dir
}
