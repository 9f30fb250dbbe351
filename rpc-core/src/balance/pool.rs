//! The endpoints of a reconnecting or balancing client, and the tasks that keep them
//! connected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::backoff::Backoff;
use super::breaker::{Breaker, FailureAccrual};
use super::budget::{Budget, RetryBudget};
use super::hedge::{Hedge, Hedging};
use super::stats::{ClientStats, EndpointState, EndpointStats};
use super::strategy::{Endpoints, Rng, Strategy};
use super::subset::Subset;
use super::zone::Zone;
use super::{Change, Endpoint};
use crate::connect::{self, Connect, DynConnect};
use crate::connection::{ConnectionOptions, Handle};
use crate::descriptor::ServiceDescriptor;
use crate::error::{ErrorKind, RpcError};
use crate::load::ReportedLoad;
use crate::lock::{self, lock};
use crate::observe::MethodTable;

/// A connection that lasted this long was healthy: its loss resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// How a pool behaves; set through [`ClientBuilder`](crate::ClientBuilder).
pub(crate) struct PoolConfig {
    pub(crate) strategy: Box<dyn Strategy>,
    pub(crate) retry_budget: RetryBudget,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) retry_backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) wait_for_ready: bool,
    pub(crate) accrual: FailureAccrual,
    pub(crate) options: ConnectionOptions,
    /// Hedging of idempotent calls; `None` (the default) for none.
    pub(crate) hedge: Option<Hedge>,
    /// Connect to a subset of the endpoints only; `None` (the default): to all.
    pub(crate) subset: Option<Subset>,
    /// Prefer the endpoints of this zone; `None` (the default): no preference.
    pub(crate) zone: Option<Zone>,
}

/// Where one endpoint's connection stands.
#[derive(Clone)]
pub(crate) enum Link {
    /// A connection attempt is under way; `waitable` if calls should wait for it (a first
    /// attempt, or the first after a healthy connection was lost) rather than fail fast.
    Connecting {
        waitable: bool,
    },
    Ready(Arc<Handle>),
    /// The last attempt failed; the next one comes after a backoff.
    Down(RpcError),
}

/// One endpoint of the pool.
pub(crate) struct Member {
    pub(crate) key: String,
    pub(crate) weight: u32,
    pub(crate) metadata: Vec<(String, String)>,
    pub(crate) outstanding: AtomicUsize,
    /// The server's latest load report.
    pub(crate) reported: Arc<ReportedLoad>,
    calls: AtomicU64,
    link: Mutex<Link>,
    breaker: Mutex<Breaker>,
}

impl Member {
    fn link(&self) -> Link {
        lock(&self.link).clone()
    }

    fn set_link(&self, link: Link) {
        *lock(&self.link) = link;
    }

    /// An endpoint that is not connected to anything, for strategy tests.
    #[cfg(test)]
    pub(crate) fn detached(key: &str, weight: u32) -> Member {
        Member {
            key: key.to_string(),
            weight,
            metadata: Vec::new(),
            outstanding: AtomicUsize::new(0),
            reported: Arc::new(ReportedLoad::new()),
            calls: AtomicU64::new(0),
            link: Mutex::new(Link::Connecting { waitable: false }),
            breaker: Mutex::new(Breaker::default()),
        }
    }

    /// Whether it can take calls, as far as choosing a subset goes: connected or about to
    /// be, and not ejected.
    fn serves(&self) -> bool {
        let up = matches!(
            self.link(),
            Link::Ready(_) | Link::Connecting { waitable: true }
        );
        up && !lock(&self.breaker).is_ejected()
    }

    /// A call found `handle`'s connection gone: stop choosing it until it is remade.
    pub(crate) fn lost(&self, handle: &Arc<Handle>) {
        let mut link = lock(&self.link);
        if matches!(&*link, Link::Ready(current) if Arc::ptr_eq(current, handle)) {
            *link = Link::Connecting { waitable: true };
        }
    }

    /// Counts a call in progress until the guard is dropped.
    pub(crate) fn track(self: &Arc<Self>) -> Load {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Load(Arc::clone(self))
    }

    /// A request went out to this endpoint.
    pub(crate) fn sent(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn success(&self) {
        lock(&self.breaker).success();
    }

    pub(crate) fn failure(&self, policy: &FailureAccrual) {
        lock(&self.breaker).failure(policy, crate::clock::now());
    }
}

/// An endpoint discovery gave, not necessarily a member (see [`PoolConfig::subset`]).
#[derive(Clone)]
struct Candidate {
    weight: u32,
    metadata: Vec<(String, String)>,
    connect: DynConnect,
}

/// A call in progress on a member.
pub(crate) struct Load(Arc<Member>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints at one moment; replaced as a whole when one is added or removed.
#[derive(Default)]
struct Members {
    list: Vec<Arc<Member>>,
    generation: u64,
}

/// The state shared by a pool's client handles, calls and tasks.
pub(crate) struct Pool {
    pub(crate) desc: &'static ServiceDescriptor,
    pub(crate) config: PoolConfig,
    pub(crate) budget: Budget,
    /// Built from `config.hedge`, with the per-method latencies it tracks.
    pub(crate) hedging: Option<Arc<Hedging>>,
    members: RwLock<Arc<Members>>,
    /// Ordered, so that stopping them all goes in the same order every run (a simulation
    /// replays exactly).
    tasks: Mutex<BTreeMap<String, AbortHandle>>,
    /// With a subset: every endpoint discovery gave, members of the subset or not.
    candidates: Mutex<BTreeMap<String, Candidate>>,
    discovery: Mutex<Option<AbortHandle>>,
    /// Woken whenever an endpoint's connection changes state or endpoints come and go.
    changed: Notify,
    /// Waiting for the discovery source's first change.
    resolving: AtomicBool,
    rng: Rng,
    /// Metric handles for the pool's calls, made once for all its connections.
    pub(crate) metrics: MethodTable,
    pub(crate) calls: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) retries_refused: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) hedges_won: AtomicU64,
    pub(crate) hedges_refused: AtomicU64,
}

/// What choosing an endpoint came to.
pub(crate) enum Pick {
    Ready(Arc<Member>, Arc<Handle>),
    Wait,
    Fail(RpcError),
}

impl Pool {
    pub(crate) fn new(desc: &'static ServiceDescriptor, mut config: PoolConfig) -> Pool {
        let metrics = MethodTable::client(desc);
        config.options.metrics = Some(metrics.clone());
        Pool {
            desc,
            budget: Budget::new(config.retry_budget),
            hedging: config
                .hedge
                .map(|policy| Arc::new(Hedging::new(policy, desc))),
            config,
            members: RwLock::new(Arc::default()),
            tasks: Mutex::new(BTreeMap::new()),
            candidates: Mutex::new(BTreeMap::new()),
            discovery: Mutex::new(None),
            changed: Notify::new(),
            resolving: AtomicBool::new(false),
            rng: Rng::random(),
            metrics,
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
            hedges_refused: AtomicU64::new(0),
        }
    }

    fn members(&self) -> Arc<Members> {
        Arc::clone(&lock::read(&self.members))
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<Member>>)) {
        {
            let mut members = lock::write(&self.members);
            let mut list = members.list.clone();
            f(&mut list);
            *members = Arc::new(Members {
                list,
                generation: members.generation + 1,
            });
        }
        self.changed.notify_waiters();
    }

    /// Adds an endpoint (replacing one with the same key): starts connecting to it, or with
    /// a subset, to the subset it makes.
    pub(crate) fn insert<C: Connect>(self: &Arc<Self>, endpoint: Endpoint<C>) {
        let candidate = Candidate {
            weight: endpoint.weight,
            metadata: endpoint.metadata,
            connect: connect::erase(endpoint.connector),
        };
        if self.config.subset.is_none() {
            return self.activate(endpoint.key, candidate);
        }
        let mut candidates = lock(&self.candidates);
        candidates.insert(endpoint.key.clone(), candidate);
        // A replaced endpoint gets a fresh connection, as without a subset.
        if lock(&self.tasks).contains_key(&endpoint.key) {
            self.deactivate(&endpoint.key);
        }
        self.resubset(&candidates);
    }

    /// Removes an endpoint. Calls in progress on it finish; its connection closes after.
    pub(crate) fn remove(self: &Arc<Self>, key: &str) {
        if self.config.subset.is_none() {
            return self.deactivate(key);
        }
        let mut candidates = lock(&self.candidates);
        candidates.remove(key);
        self.deactivate(key);
        self.resubset(&candidates);
    }

    /// Makes an endpoint a member, and starts connecting to it.
    fn activate(self: &Arc<Self>, key: String, candidate: Candidate) {
        let member = Arc::new(Member {
            key: key.clone(),
            weight: candidate.weight,
            metadata: candidate.metadata,
            outstanding: AtomicUsize::new(0),
            reported: Arc::new(ReportedLoad::new()),
            calls: AtomicU64::new(0),
            link: Mutex::new(Link::Connecting { waitable: true }),
            breaker: Mutex::new(Breaker::default()),
        });
        let task = tokio::spawn(maintain(
            Arc::clone(self),
            Arc::clone(&member),
            candidate.connect,
        ));
        if let Some(old) = lock(&self.tasks).insert(key.clone(), task.abort_handle()) {
            old.abort();
        }
        self.update(|list| {
            list.retain(|m| m.key != key);
            list.push(member);
        });
    }

    /// Stops using an endpoint. Calls in progress on it finish; its connection closes after.
    fn deactivate(&self, key: &str) {
        if let Some(task) = lock(&self.tasks).remove(key) {
            task.abort();
        }
        self.update(|list| list.retain(|m| m.key != key));
    }

    /// With a subset: makes the members the subset of `candidates` that
    /// [`Subset::choose_usable`] picks now (within the client's zone, and among the other
    /// zones, when it has one), starting and stopping connections to match.
    fn resubset(self: &Arc<Self>, candidates: &BTreeMap<String, Candidate>) {
        let Some(subset) = &self.config.subset else {
            return;
        };
        let members = self.members();
        let usable = |key: &str| match members.list.iter().find(|m| m.key == key) {
            // Not connected to: as good as any until tried.
            None => true,
            Some(member) => member.serves(),
        };
        let (local, remote): (Vec<&String>, Vec<&String>) = match &self.config.zone {
            Some(zone) => candidates
                .keys()
                .partition(|key| zone.is_local(&candidates[key.as_str()].metadata)),
            None => (candidates.keys().collect(), Vec::new()),
        };
        let mut chosen: Vec<&String> = Vec::new();
        for group in [&local, &remote] {
            let picked = subset.choose_usable(group, |i| usable(group[i]));
            chosen.extend(picked.into_iter().map(|i| group[i]));
        }
        let active: Vec<String> = lock(&self.tasks).keys().cloned().collect();
        for key in &active {
            if !chosen.contains(&key) {
                self.deactivate(key);
            }
        }
        for key in chosen {
            if !active.contains(key) {
                self.activate(key.clone(), candidates[key.as_str()].clone());
            }
        }
    }

    /// Sets where `member`'s connection stands and wakes the calls waiting on it. With a
    /// subset, a connection that came up or went down may change the subset (one still
    /// connecting does not: it counts as up until it fails).
    fn set_link(self: &Arc<Self>, member: &Member, link: Link) {
        let settled = !matches!(link, Link::Connecting { .. });
        member.set_link(link);
        self.changed.notify_waiters();
        if settled && self.config.subset.is_some() {
            let candidates = lock(&self.candidates);
            self.resubset(&candidates);
        }
    }

    /// Follows a discovery source until it ends.
    pub(crate) fn follow<C, D>(self: &Arc<Self>, discover: D)
    where
        C: Connect,
        D: Stream<Item = Change<C>> + Send + 'static,
    {
        self.resolving.store(true, Ordering::Release);
        let pool = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut discover = std::pin::pin!(discover);
            while let Some(change) = discover.next().await {
                match change {
                    Change::Insert(endpoint) => pool.insert(endpoint),
                    Change::Remove(key) => pool.remove(&key),
                }
                pool.resolving.store(false, Ordering::Release);
            }
            pool.resolving.store(false, Ordering::Release);
            pool.changed.notify_waiters();
        });
        if let Some(old) = lock(&self.discovery).replace(task.abort_handle()) {
            old.abort();
        }
    }

    /// Stops every task: the last client handle is gone.
    fn shut(&self) {
        if let Some(task) = lock(&self.discovery).take() {
            task.abort();
        }
        lock(&self.candidates).clear();
        for task in std::mem::take(&mut *lock(&self.tasks)).into_values() {
            task.abort();
        }
        self.update(Vec::clear);
    }

    /// Chooses an endpoint for a call, avoiding those in `tried` if it can.
    pub(crate) fn pick(&self, key: Option<u64>, tried: &[Arc<Member>]) -> Pick {
        self.choose(key, tried, false)
    }

    /// Chooses a connected endpoint not in `tried` and not ejected, without waiting: where a
    /// hedge goes. A hedge to an endpoint already working on the call would be no hedge, and
    /// one to an endpoint whose calls keep failing little better, so `None` then.
    pub(crate) fn pick_fresh(
        &self,
        key: Option<u64>,
        tried: &[Arc<Member>],
    ) -> Option<(Arc<Member>, Arc<Handle>)> {
        match self.choose(key, tried, true) {
            Pick::Ready(member, handle) => Some((member, handle)),
            Pick::Wait | Pick::Fail(_) => None,
        }
    }

    /// [`pick`](Pool::pick), or with `fresh_only` only an endpoint neither in `tried` nor
    /// ejected.
    fn choose(&self, key: Option<u64>, tried: &[Arc<Member>], fresh_only: bool) -> Pick {
        let members = self.members();
        let list = &members.list;
        if list.is_empty() {
            return if self.resolving.load(Ordering::Acquire) || self.config.wait_for_ready {
                Pick::Wait
            } else {
                Pick::Fail(RpcError::disconnected(format!(
                    "the client of `{}` has no endpoints to call",
                    self.desc.name
                )))
            };
        }
        struct Snapshot {
            link: Link,
            allowed: bool,
            fresh: bool,
            /// In the client's zone and not too busy to stay there (always, without a zone).
            home: bool,
            /// Never sent a call: its first connection is still to come.
            unused: bool,
        }
        let now = crate::clock::now();
        let zone = self.config.zone.as_ref();
        let snaps: Vec<Snapshot> = list
            .iter()
            .map(|m| Snapshot {
                link: m.link(),
                allowed: lock(&m.breaker).allows(now),
                fresh: !tried.iter().any(|t| Arc::ptr_eq(t, m)),
                unused: m.calls.load(Ordering::Relaxed) == 0,
                home: zone.is_none_or(|zone| {
                    zone.is_local(&m.metadata)
                        && !m
                            .reported
                            .fresh(now)
                            .is_some_and(|load| zone.too_busy(load.utilization))
                }),
            })
            .collect();
        let ready = |s: &Snapshot| matches!(s.link, Link::Ready(_));
        let best = |s: &Snapshot| ready(s) && s.allowed && s.fresh;
        // With a zone: its own endpoints first, while enough of them can take the call or
        // are about to: being connected for the first time, which is worth waiting for when
        // the client starts. One that lost its connection is not waited for: calls spill
        // over at once.
        let coming = |s: &Snapshot| {
            s.unused
                && s.allowed
                && s.fresh
                && matches!(s.link, Link::Connecting { waitable: true })
        };
        let stay_home = zone.is_some_and(|zone| {
            let home = snaps.iter().filter(|s| s.home && (best(s) || coming(s)));
            home.count() >= zone.min_count()
        });
        if stay_home && !snaps.iter().any(|s| s.home && best(s)) {
            return Pick::Wait;
        }
        // Best: connected, not ejected, not tried. Then ejected ones too (better than
        // failing), then ones already tried.
        let tiers: [&dyn Fn(&Snapshot) -> bool; 4] = [
            &|s| best(s) && s.home,
            &|s| best(s),
            &|s| ready(s) && s.fresh,
            &|s| ready(s),
        ];
        let mut usable = vec![false; list.len()];
        let tiers = if stay_home {
            &tiers[..1]
        } else if fresh_only {
            &tiers[1..2]
        } else {
            &tiers[1..]
        };
        for tier in tiers {
            for (flag, snap) in usable.iter_mut().zip(&snaps) {
                *flag = tier(snap);
            }
            if !usable.contains(&true) {
                continue;
            }
            let endpoints = Endpoints {
                members: list,
                usable: &usable,
                generation: members.generation,
                now,
            };
            let chosen = self
                .config
                .strategy
                .pick(&endpoints, key)
                .filter(|&i| i < usable.len() && usable[i])
                .or_else(|| endpoints.usable().next());
            if let Some(i) = chosen {
                let Link::Ready(handle) = &snaps[i].link else {
                    unreachable!("only connected endpoints are usable")
                };
                lock(&list[i].breaker).admit(now, &self.config.accrual);
                return Pick::Ready(Arc::clone(&list[i]), Arc::clone(handle));
            }
        }
        let waitable = snaps
            .iter()
            .any(|s| matches!(s.link, Link::Connecting { waitable: true }));
        if waitable || self.config.wait_for_ready {
            return Pick::Wait;
        }
        let why: Vec<String> = list
            .iter()
            .zip(&snaps)
            .map(|(m, snap)| match &snap.link {
                Link::Down(err) => format!("{}: {}", m.key, err.message()),
                _ => format!("{}: connecting", m.key),
            })
            .collect();
        // When every endpoint refused our credentials, that is what the caller must fix.
        let refused = snaps.iter().all(|snap| {
            matches!(&snap.link, Link::Down(err)
                if matches!(err.kind(), ErrorKind::Unauthenticated | ErrorKind::PermissionDenied))
        });
        let kind = match &snaps[0].link {
            Link::Down(err) if refused => err.kind(),
            _ => ErrorKind::Disconnected,
        };
        Pick::Fail(RpcError::new(
            kind,
            format!(
                "no endpoint of `{}` is reachable ({}); the client keeps reconnecting",
                self.desc.name,
                why.join("; ")
            ),
        ))
    }

    /// [`pick`](Pool::pick), waiting while it says to.
    pub(crate) async fn acquire(
        &self,
        key: Option<u64>,
        tried: &[Arc<Member>],
    ) -> Result<(Arc<Member>, Arc<Handle>), RpcError> {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            match self.pick(key, tried) {
                Pick::Ready(member, handle) => return Ok((member, handle)),
                Pick::Fail(err) => return Err(err),
                Pick::Wait => notified.await,
            }
        }
    }

    pub(crate) fn rng(&self) -> &Rng {
        &self.rng
    }

    pub(crate) fn stats(&self) -> ClientStats {
        let members = self.members();
        let now = crate::clock::now();
        ClientStats {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            retries_refused: self.retries_refused.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            hedges_won: self.hedges_won.load(Ordering::Relaxed),
            hedges_refused: self.hedges_refused.load(Ordering::Relaxed),
            endpoints: members
                .list
                .iter()
                .map(|m| EndpointStats {
                    key: m.key.clone(),
                    weight: m.weight,
                    state: match m.link() {
                        Link::Connecting { .. } => EndpointState::Connecting,
                        Link::Ready(_) => EndpointState::Ready,
                        Link::Down(_) => EndpointState::Down,
                    },
                    ejected: lock(&m.breaker).is_ejected(),
                    in_flight: m.outstanding.load(Ordering::Relaxed),
                    calls: m.calls.load(Ordering::Relaxed),
                    reported: m.reported.fresh(now),
                })
                .collect(),
        }
    }
}

/// Keeps one endpoint connected: connects, waits for the connection to end, backs off,
/// connects again, until the endpoint is removed or the pool dropped (which abort it).
async fn maintain(pool: Arc<Pool>, member: Arc<Member>, connect: DynConnect) {
    let config = &pool.config;
    // Every connection to the endpoint asks for the server's load reports, into the
    // member's slot.
    let mut options = config.options.clone();
    options.load = Some(Arc::clone(&member.reported));
    let mut failures = 0u32;
    let mut waitable = true;
    loop {
        pool.set_link(&member, Link::Connecting { waitable });
        let attempt =
            tokio::time::timeout(config.connect_timeout, connect(pool.desc, options.clone())).await;
        match attempt {
            Ok(Ok(handle)) => {
                let since = crate::clock::now();
                pool.set_link(&member, Link::Ready(Arc::clone(&handle)));
                let err = handle.closed().await;
                drop(handle);
                pool.set_link(&member, Link::Down(err));
                if crate::clock::since(since) >= HEALTHY_AFTER {
                    failures = 0;
                    waitable = true;
                    continue;
                }
            }
            Ok(Err(err)) => {
                // A transport that authenticates (TLS) reports a refused credential as
                // `PermissionDenied`: that is no network trouble, and calls say so.
                let kind = match err.kind() {
                    std::io::ErrorKind::PermissionDenied => ErrorKind::Unauthenticated,
                    _ => ErrorKind::Disconnected,
                };
                let err = RpcError::new(kind, format!("connecting failed: {err}"));
                pool.set_link(&member, Link::Down(err));
            }
            Err(_) => {
                let err = RpcError::disconnected(format!(
                    "connecting did not finish within {:?}",
                    config.connect_timeout
                ));
                pool.set_link(&member, Link::Down(err));
            }
        }
        failures = failures.saturating_add(1);
        waitable = false;
        tokio::time::sleep(config.backoff.delay_with(failures, &pool.rng)).await;
    }
}

/// Owned by the client handles of a pool; when the last goes, the pool's tasks stop and its
/// connections close once their calls finish.
pub(crate) struct PoolHandle {
    pool: Arc<Pool>,
}

impl PoolHandle {
    pub(crate) fn new(pool: Arc<Pool>) -> PoolHandle {
        PoolHandle { pool }
    }

    pub(crate) fn pool(&self) -> Arc<Pool> {
        Arc::clone(&self.pool)
    }

    pub(crate) fn metrics(&self) -> &MethodTable {
        &self.pool.metrics
    }

    pub(crate) fn desc(&self) -> &'static ServiceDescriptor {
        self.pool.desc
    }

    pub(crate) fn stats(&self) -> ClientStats {
        self.pool.stats()
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.pool.shut();
    }
}
