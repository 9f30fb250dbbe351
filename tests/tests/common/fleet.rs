//! A fleet in simulation: `servers` hosts named `s0`, `s1`, … serving [`Work`], and
//! `clients` hosts (`c0`, …) each running one balancing client that keeps `concurrency`
//! calls in flight. What happened is gathered in an [`Outcome`].
//!
//! Everything runs on the test's thread (turmoil steps every host in turn), so the shared
//! state is plain `Rc<RefCell<…>>`-like state behind `Arc<Mutex<…>>` only because host
//! futures must be `'static`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::balance::{Endpoint, LeastLoaded, Subset, Zone, ZONE};
use rpc_core::{service, Keepalive, Server, ServerStats};
use rpc_transport::sim::{self, turmoil, SimListener};
use tokio::sync::watch;

/// The port every server listens on.
pub const PORT: u16 = 4000;

#[service]
pub trait Work {
    /// Does the server's work (its think time) for client `client`, then says which server
    /// it is.
    #[rpc(idempotent)]
    async fn work(&self, client: u32) -> u32;
    /// Holds the call for `ms` milliseconds (not idempotent: never sent twice).
    async fn hold(&self, ms: u64) -> u32;
}

/// What the servers share with the test.
#[derive(Clone, Default)]
pub struct Shared {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Calls served, per server.
    served: Vec<u64>,
    /// Every call served, in order: (simulated µs, server, client).
    trace: Vec<(u64, u32, u32)>,
    /// The most connections each server had open while serving a call.
    peak_connections: Vec<usize>,
    /// How many times each server has started.
    starts: Vec<u32>,
    /// Each server's statistics, for its connection count.
    stats: Vec<Option<ServerStats>>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.inner.lock().expect("not poisoned"))
    }
}

struct Node {
    index: u32,
    think: Duration,
    shared: Shared,
}

impl Work for Node {
    async fn work(&self, client: u32) -> u32 {
        tokio::time::sleep(self.think).await;
        let now = turmoil::sim_elapsed().unwrap_or_default().as_micros() as u64;
        self.shared.with(|s| {
            let i = self.index as usize;
            s.served[i] += 1;
            s.trace.push((now, self.index, client));
            let open = s.stats[i].as_ref().map_or(0, ServerStats::open_connections);
            s.peak_connections[i] = s.peak_connections[i].max(open);
        });
        self.index
    }

    async fn hold(&self, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.index
    }
}

/// Serves [`Work`] as server `index` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: SimListener,
    index: u32,
    think: Duration,
    shared: Shared,
) -> std::io::Result<()> {
    serve_until(listener, index, think, shared, std::future::pending()).await
}

async fn serve_until(
    listener: SimListener,
    index: u32,
    think: Duration,
    shared: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = Server::new().add_service(WorkServer::new(Node {
        index,
        think,
        shared: shared.clone(),
    }));
    shared.with(|s| {
        let i = index as usize;
        if s.starts.len() <= i {
            s.starts.resize(i + 1, 0);
            s.stats.resize(i + 1, None);
            s.served.resize(i + 1, 0);
            s.peak_connections.resize(i + 1, 0);
        }
        s.starts[i] += 1;
        s.stats[i] = Some(server.stats());
    });
    server.serve_with_shutdown(listener, shutdown).await
}

/// A scenario's shape.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub servers: usize,
    pub clients: usize,
    /// Calls each client keeps in flight.
    pub concurrency: usize,
    /// Calls each client makes in all (`u64::MAX`: until the driver stops the clients).
    pub calls: u64,
    /// Each server's time per call.
    pub think: Duration,
    /// One server that is this many times slower.
    pub slow: Option<(usize, u32)>,
    /// The network's latency range (turmoil's minimum and maximum).
    pub latency: (Duration, Duration),
    pub seed: u64,
    /// Each client connects to this many servers (client `i` has index `i`); `None`: all.
    pub subset: Option<usize>,
    /// Clients per simulated client host (turmoil's cost grows with hosts times links).
    pub clients_per_host: usize,
    /// Servers and clients are spread over this many zones (server `i` and client `i` in
    /// zone `i % zones`), and clients prefer their own; 0: no zones. (Keep one client per
    /// host to partition a zone's clients.)
    pub zones: usize,
}

impl Default for Fleet {
    fn default() -> Fleet {
        Fleet {
            servers: 4,
            clients: 2,
            concurrency: 4,
            calls: 100,
            think: Duration::from_millis(10),
            slow: None,
            latency: (Duration::from_millis(1), Duration::from_millis(1)),
            seed: 1,
            subset: None,
            clients_per_host: 1,
            zones: 0,
        }
    }
}

/// What a scenario came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Calls served, per server.
    pub served: Vec<u64>,
    /// Every call served, in order: (simulated µs, server, client).
    pub trace: Vec<(u64, u32, u32)>,
    /// The most connections each server had open while serving a call.
    pub peak_connections: Vec<usize>,
    /// Calls that succeeded and failed, over all clients.
    pub ok: u64,
    pub failed: u64,
    /// Retries the clients made.
    pub retries: u64,
    /// The first few errors, for the assertion messages.
    pub errors: Vec<String>,
}

/// The simulation under a scenario's driver.
pub struct World<'a> {
    pub sim: turmoil::Sim<'a>,
    drains: Vec<watch::Sender<bool>>,
    shared: Shared,
    stop: Arc<AtomicBool>,
}

impl World<'_> {
    pub fn server(index: usize) -> String {
        format!("s{index}")
    }

    pub fn client(index: usize) -> String {
        format!("c{index}")
    }

    /// Simulated time so far, in µs (as the trace counts it).
    pub fn now(&self) -> u64 {
        self.sim.elapsed().as_micros() as u64
    }

    /// Steps the simulation until `done` says so.
    pub fn step_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) {
        while !done(self) {
            self.sim.step().expect("the simulation runs");
        }
    }

    /// Asks server `index` to shut down gracefully.
    pub fn drain(&mut self, index: usize) {
        self.drains[index].send_replace(true);
    }

    /// Crashes server `index`: its software stops at once, its connections with it.
    pub fn crash(&mut self, index: usize) {
        self.sim.crash(Self::server(index));
    }

    /// Whether server `index`'s software runs.
    pub fn running(&mut self, index: usize) -> bool {
        self.sim.is_host_running(Self::server(index))
    }

    /// Starts server `index` again.
    pub fn start(&mut self, index: usize) {
        self.drains[index].send_replace(false);
        self.sim.bounce(Self::server(index));
    }

    /// Whether server `index` has started since it was last drained and has connections.
    pub fn serving(&mut self, index: usize) -> bool {
        let draining = *self.drains[index].borrow();
        !draining
            && self.shared.with(|s| {
                s.stats[index]
                    .as_ref()
                    .is_some_and(|stats| stats.open_connections() > 0)
            })
    }

    /// Tells the clients to finish the calls they have in flight and stop.
    pub fn stop_clients(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Fleet {
    /// Runs the scenario; `drive` steps the simulation as it likes (restarts, partitions),
    /// and the clients then run until they are done.
    pub fn run(&self, drive: impl FnOnce(&mut World<'_>)) -> Outcome {
        sim::seed(self.seed);
        let sim = turmoil::Builder::new()
            .rng_seed(self.seed)
            .min_message_latency(self.latency.0)
            .max_message_latency(self.latency.1)
            .simulation_duration(Duration::from_secs(24 * 3_600))
            // Room for a thousand clients connecting at once.
            .tcp_capacity(1 << 16)
            .build();
        let shared = Shared::default();
        shared.with(|s| {
            s.served = vec![0; self.servers];
            s.starts = vec![0; self.servers];
            s.stats = vec![None; self.servers];
            s.peak_connections = vec![0; self.servers];
        });
        let mut world = World {
            sim,
            drains: (0..self.servers).map(|_| watch::channel(false).0).collect(),
            shared: shared.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        };

        for index in 0..self.servers {
            let think = match self.slow {
                Some((slow, factor)) if slow == index => self.think * factor,
                _ => self.think,
            };
            let (shared, drain) = (shared.clone(), world.drains[index].clone());
            world.sim.host(World::server(index), move || {
                let (shared, mut drained) = (shared.clone(), drain.subscribe());
                async move {
                    let listener = sim::bind(("0.0.0.0", PORT)).await?;
                    let shutdown = async move {
                        let _ = drained.wait_for(|drained| *drained).await;
                    };
                    serve_until(listener, index as u32, think, shared, shutdown).await?;
                    Ok(())
                }
            });
        }

        let totals = Arc::new(Mutex::new(Outcome::default()));
        let per_host = self.clients_per_host.max(1);
        for host in 0..self.clients.div_ceil(per_host) {
            let ids: Vec<u32> = (host * per_host..((host + 1) * per_host).min(self.clients))
                .map(|id| id as u32)
                .collect();
            let plan = Plan {
                servers: self.servers,
                subset: self.subset,
                zones: self.zones,
                calls: self.calls,
                concurrency: self.concurrency as u64,
                stop: Arc::clone(&world.stop),
                totals: Arc::clone(&totals),
            };
            world.sim.client(World::client(host), async move {
                let clients: Vec<_> = ids
                    .into_iter()
                    .map(|id| tokio::spawn(plan.clone().run(id)))
                    .collect();
                for client in clients {
                    client.await?;
                }
                Ok(())
            });
        }

        drive(&mut world);
        world.sim.run().expect("the simulation passes");

        let mut outcome = std::mem::take(&mut *totals.lock().expect("not poisoned"));
        shared.with(|s| {
            outcome.served = s.served.clone();
            outcome.trace = std::mem::take(&mut s.trace);
            outcome.peak_connections = s.peak_connections.clone();
        });
        outcome
    }
}

/// What each simulated client does.
#[derive(Clone)]
struct Plan {
    servers: usize,
    subset: Option<usize>,
    zones: usize,
    calls: u64,
    concurrency: u64,
    stop: Arc<AtomicBool>,
    totals: Arc<Mutex<Outcome>>,
}

impl Plan {
    /// Client `id`: a balancing client of every server, `concurrency` calls at a time.
    async fn run(self, id: u32) {
        let zones = self.zones;
        let endpoints = (0..self.servers).map(|index| {
            let name = World::server(index);
            let endpoint = Endpoint::new(name.clone(), sim::connector(format!("{name}:{PORT}")));
            match zones {
                0 => endpoint,
                _ => endpoint.metadata(ZONE, format!("z{}", index % zones)),
            }
        });
        let mut builder = WorkClient::builder()
            .strategy(LeastLoaded::new())
            // Finds a silent server well within a call's deadline.
            .keepalive(Some(Keepalive::new(
                Duration::from_secs(5),
                Duration::from_secs(2),
            )));
        if let Some(size) = self.subset {
            builder = builder.subset(Subset::new(size).client_index(u64::from(id)));
        }
        if zones > 0 {
            builder = builder.zone(Zone::new(format!("z{}", id as usize % zones)));
        }
        let client = builder.balance(endpoints);
        let next = Arc::new(AtomicU64::new(0));
        let loops: Vec<_> = (0..self.concurrency)
            .map(|_| {
                let (client, next, plan) = (client.clone(), Arc::clone(&next), self.clone());
                tokio::spawn(async move {
                    while !plan.stop.load(Ordering::Acquire)
                        && next.fetch_add(1, Ordering::Relaxed) < plan.calls
                    {
                        let result = client.work(id).timeout(Duration::from_secs(30)).await;
                        let mut totals = plan.totals.lock().expect("not poisoned");
                        match result {
                            Ok(_) => totals.ok += 1,
                            Err(err) => {
                                totals.failed += 1;
                                if totals.errors.len() < 5 {
                                    totals.errors.push(err.to_string());
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for task in loops {
            task.await.expect("a client loop panicked");
        }
        let retries = client.client().stats().map_or(0, |stats| stats.retries);
        self.totals.lock().expect("not poisoned").retries += retries;
    }
}
