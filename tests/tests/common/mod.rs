//! Services and helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod replica;
pub mod wire;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{service, Server};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

/// A hang guard: long enough never to fire on a slow CI machine, short enough that a hang
/// fails the test instead of blocking the suite.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`HANG_GUARD`].
pub async fn guard<F: IntoFuture>(fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .expect("hang guard: the operation did not complete")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    DivideByZero,
}

/// The service the tests exercise.
#[service]
pub trait Lab {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    async fn reset(&self);
    /// Waits until the test releases it (or forever); reports when its future is dropped.
    async fn block(&self, tag: u64) -> u64;
    async fn panic(&self, message: String) -> u32;
    /// Returns a vector of `len` zero bytes.
    async fn zeros(&self, len: u32) -> Vec<u8>;
}

/// What handlers report to the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started(u64),
    Finished(u64),
    Dropped(u64),
}

#[derive(Clone)]
pub struct LabImpl {
    pub events: mpsc::UnboundedSender<Event>,
    pub release: Arc<Notify>,
}

/// Sends `Dropped(tag)` when a `block` handler's future is dropped before it finishes.
struct DropReport {
    tag: u64,
    events: mpsc::UnboundedSender<Event>,
    finished: bool,
}

impl Drop for DropReport {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.events.send(Event::Dropped(self.tag));
        }
    }
}

impl Lab for LabImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            Err(MathError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
    async fn reset(&self) {}
    async fn block(&self, tag: u64) -> u64 {
        let mut report = DropReport {
            tag,
            events: self.events.clone(),
            finished: false,
        };
        let _ = self.events.send(Event::Started(tag));
        self.release.notified().await;
        report.finished = true;
        let _ = self.events.send(Event::Finished(tag));
        tag
    }
    async fn panic(&self, message: String) -> u32 {
        panic!("{message}")
    }
    async fn zeros(&self, len: u32) -> Vec<u8> {
        vec![0; len as usize]
    }
}

/// The index of `Lab`'s method `name` in its client's table, as raw requests name it.
pub fn lab_method(name: &str) -> u32 {
    method_index(&LabClient::DESCRIPTOR, name)
}

/// The index of `desc`'s method `name` in its method table, as raw requests name it.
pub fn method_index(desc: &rpc_core::ServiceDescriptor, name: &str) -> u32 {
    desc.methods
        .iter()
        .position(|m| m.name == name)
        .expect("no such method") as u32
}

/// A fresh service and the receiver of its handlers' events.
pub fn lab() -> (LabImpl, mpsc::UnboundedReceiver<Event>) {
    let (events, rx) = mpsc::unbounded_channel();
    (
        LabImpl {
            events,
            release: Arc::new(Notify::new()),
        },
        rx,
    )
}

/// Waits for the next event from the handlers.
pub async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    guard(rx.recv()).await.expect("the service is gone")
}

/// The transports every end-to-end test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `memory::pair()` with `serve_connection`.
    MemoryPair,
    /// `memory::listener()` with `serve`.
    MemoryListener,
    /// `tcp::bind("127.0.0.1:0")` with `serve`.
    Tcp,
    /// `unix::bind(path)` in the temp dir, with `serve`.
    Unix,
}

pub const KINDS: [Kind; 4] = [
    Kind::MemoryPair,
    Kind::MemoryListener,
    Kind::Tcp,
    Kind::Unix,
];

/// Any transport, boxed, so one test body runs over each.
pub type AnyTransport = Box<dyn rpc_core::Transport>;

enum Connect {
    Pair(Option<rpc_transport::memory::MemoryTransport>),
    Memory(rpc_transport::memory::MemoryConnector),
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

/// A running server and a way to connect to it.
pub struct Harness {
    pub kind: Kind,
    connect: Connect,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A socket path no other test uses.
pub fn socket_path() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "rpc-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Harness {
    /// Starts `server` on a fresh transport of `kind`.
    pub async fn start(kind: Kind, server: Server) -> Harness {
        let (connect, server) = match kind {
            Kind::MemoryPair => {
                let (client_end, server_end) = rpc_transport::memory::pair();
                (
                    Connect::Pair(Some(client_end)),
                    tokio::spawn(server.serve_connection(server_end)),
                )
            }
            Kind::MemoryListener => {
                let (listener, connector) = rpc_transport::memory::listener();
                (
                    Connect::Memory(connector),
                    tokio::spawn(server.serve(listener)),
                )
            }
            Kind::Tcp => {
                let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("local_addr");
                (Connect::Tcp(addr), tokio::spawn(server.serve(listener)))
            }
            Kind::Unix => {
                let path = socket_path();
                let listener = rpc_transport::unix::bind(&path).await.expect("bind");
                (Connect::Unix(path), tokio::spawn(server.serve(listener)))
            }
        };
        Harness {
            kind,
            connect,
            server,
        }
    }

    /// A new client connection (with `MemoryPair`, only the first call succeeds).
    pub async fn connect(&mut self) -> AnyTransport {
        match &mut self.connect {
            Connect::Pair(end) => Box::new(end.take().expect("a memory pair has one client end")),
            Connect::Memory(connector) => Box::new(connector.connect().await.expect("connect")),
            Connect::Tcp(addr) => {
                Box::new(rpc_transport::tcp::connect(*addr).await.expect("connect"))
            }
            Connect::Unix(path) => {
                Box::new(rpc_transport::unix::connect(&*path).await.expect("connect"))
            }
        }
    }

    /// Whether this transport can take more than one connection.
    pub fn multi(&self) -> bool {
        !matches!(self.connect, Connect::Pair(_))
    }
}

/// A `Lab` server on a fresh transport of `kind`, with a client.
pub async fn lab_client(kind: Kind, server: Server) -> (LabClient, Harness) {
    let mut harness = Harness::start(kind, server).await;
    let client = LabClient::new(harness.connect().await);
    (client, harness)
}

/// Both ends of one connection of `kind`, for tests that play the server by hand.
pub async fn connected_pair(kind: Kind) -> (AnyTransport, AnyTransport) {
    use rpc_core::Listener;
    match kind {
        Kind::MemoryPair | Kind::MemoryListener => {
            let (client_end, server_end) = rpc_transport::memory::pair();
            (Box::new(client_end), Box::new(server_end))
        }
        Kind::Tcp => {
            let mut listener = rpc_transport::tcp::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local_addr");
            let client_end = rpc_transport::tcp::connect(addr).await.expect("connect");
            let server_end = listener.accept().await.expect("open").expect("accept");
            (Box::new(client_end), Box::new(server_end))
        }
        Kind::Unix => {
            let path = socket_path();
            let mut listener = rpc_transport::unix::bind(&path).await.expect("bind");
            let client_end = rpc_transport::unix::connect(&path).await.expect("connect");
            let server_end = listener.accept().await.expect("open").expect("accept");
            (Box::new(client_end), Box::new(server_end))
        }
    }
}
