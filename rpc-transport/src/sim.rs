//! A simulated network (feature `sim`): real servers and clients in many simulated hosts of
//! one test, on [turmoil](https://docs.rs/turmoil)'s deterministic network, with latency,
//! partitions, message loss and host crashes, reproducible from a seed.
//!
//! [`bind`], [`connect`] and [`connector`] are the TCP transport's, over turmoil's
//! simulated TCP: a host name (`"server-1:4000"`) resolves within the simulation. They work
//! only inside a simulation's hosts and clients, and everything else is unchanged: the same
//! `Server`, generated clients, balancing, deadlines and keepalive.
//!
//! Time is simulated too: a simulation runs each host on a tokio runtime whose clock it
//! advances, and the runtime reads that clock for all it times (deadlines, keepalive,
//! backoff, failure accrual, retry budgets, hedging, latencies in metrics), so a minute of
//! simulated timeouts passes in milliseconds. [`seed`] makes the runtime's random choices
//! (balancing, backoff jitter) repeat with the simulation's seed.
//!
//! ```
//! use std::time::Duration;
//!
//! use rpc_core::{service, ErrorKind, Server};
//! use rpc_transport::sim::{self, turmoil};
//!
//! #[service]
//! pub trait Greeter {
//!     async fn hello(&self, name: String) -> String;
//! }
//!
//! struct Hello;
//!
//! impl Greeter for Hello {
//!     async fn hello(&self, name: String) -> String {
//!         format!("hello, {name}")
//!     }
//! }
//!
//! sim::seed(7);
//! let mut world = turmoil::Builder::new().rng_seed(7).build();
//! world.host("server", || async {
//!     let listener = sim::bind("0.0.0.0:4000").await?;
//!     Server::new().add_service(GreeterServer::new(Hello)).serve(listener).await?;
//!     Ok(())
//! });
//! world.client("client", async {
//!     let client = GreeterClient::new(sim::connect("server:4000").await?);
//!     assert_eq!(client.hello("sim".into()).await?, "hello, sim");
//!
//!     // Cut the network: the call's deadline passes, in simulated time.
//!     turmoil::partition("client", "server");
//!     let lost = client.hello("lost".into()).timeout(Duration::from_secs(5)).await;
//!     assert_eq!(lost.unwrap_err().kind(), ErrorKind::DeadlineExceeded);
//!     Ok(())
//! });
//! world.run().expect("the simulation passes");
//! ```

use std::io;
use std::net::SocketAddr;

use crate::framing::{Framed, DEFAULT_MAX_FRAME_SIZE};

/// The turmoil this module is built on, so that a test uses the very same one (a second
/// version of turmoil would be a second, separate simulated world).
pub use turmoil;

/// A simulated TCP connection carrying frames.
pub type SimTransport = Framed<turmoil::net::TcpStream>;

/// Makes the runtime's random choices on this thread follow `seed`; call it first in a
/// simulation test (see [`rpc_core::balance::seed_randomness`]). Give turmoil's builder a
/// seed too (`turmoil::Builder::rng_seed`), and the same seeds give the same run.
pub fn seed(seed: u64) {
    rpc_core::balance::seed_randomness(seed);
}

/// Connects to `addr` in the simulation: `"host:port"` with a simulated host's name, or a
/// simulated IP address and port.
pub async fn connect(addr: impl turmoil::ToSocketAddrs) -> io::Result<SimTransport> {
    Ok(Framed::new(turmoil::net::TcpStream::connect(addr).await?))
}

/// A [`Connect`](rpc_core::Connect) for reconnecting and balancing clients in a
/// simulation: connects to `addr` (`"host:port"`) each time a connection is needed.
///
/// ```
/// fn assert_connect<C: rpc_core::Connect>(_: &C) {}
/// let connector = rpc_transport::sim::connector("server-1:4000");
/// assert_connect(&connector);
/// assert_eq!(connector.addr(), "server-1:4000");
/// ```
pub fn connector(addr: impl ToString) -> SimConnector {
    SimConnector {
        addr: addr.to_string(),
    }
}

/// Connects to one simulated address whenever asked; see [`connector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConnector {
    addr: String,
}

impl SimConnector {
    /// The address it connects to.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl rpc_core::Connect for SimConnector {
    type Transport = SimTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<SimTransport>> + Send {
        connect(self.addr.as_str())
    }
}

/// Listens on `addr` of the simulated host it runs in: `"0.0.0.0:PORT"`.
pub async fn bind(addr: impl turmoil::ToSocketAddrs) -> io::Result<SimListener> {
    Ok(SimListener {
        inner: turmoil::net::TcpListener::bind(addr).await?,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
    })
}

/// A simulated TCP listener; give it to [`rpc_core::Server::serve`].
pub struct SimListener {
    inner: turmoil::net::TcpListener,
    max_frame_size: usize,
}

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimListener")
            .field("local_addr", &self.local_addr().ok())
            .field("max_frame_size", &self.max_frame_size)
            .finish()
    }
}

impl SimListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl rpc_core::Listener for SimListener {
    type Transport = SimTransport;

    fn set_max_frame_size(&mut self, bytes: usize) {
        self.max_frame_size = bytes;
    }

    fn peer(&self, transport: &SimTransport) -> rpc_core::Peer {
        match transport.get_ref().peer_addr() {
            Ok(addr) => rpc_core::Peer::new()
                .with_addr(addr.to_string())
                .with_ip(addr.ip()),
            Err(_) => rpc_core::Peer::new(),
        }
    }

    async fn accept(&mut self) -> Option<io::Result<SimTransport>> {
        Some(
            self.inner.accept().await.map(|(stream, _peer)| {
                Framed::new(stream).with_max_frame_size(self.max_frame_size)
            }),
        )
    }
}
