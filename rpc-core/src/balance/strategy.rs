//! How a balancing client chooses an endpoint for each call.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::pool::Member;
use crate::load::ServerLoad;

/// The endpoints a [`Strategy`] chooses from, by index.
///
/// An endpoint is *usable* when it is connected and not ejected (and, for a retry, not
/// already tried); a strategy must return a usable one, or `None` when none is.
pub struct Endpoints<'a> {
    pub(crate) members: &'a [Arc<Member>],
    pub(crate) usable: &'a [bool],
    pub(crate) generation: u64,
    /// When the pick is made, on the runtime's clock: one reading for every report weighed.
    pub(crate) now: std::time::Instant,
}

impl Endpoints<'_> {
    /// The number of endpoints, usable or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The key the endpoint was added under.
    pub fn key(&self, index: usize) -> &str {
        &self.members[index].key
    }

    /// The endpoint's weight (1 unless set).
    pub fn weight(&self, index: usize) -> u32 {
        self.members[index].weight
    }

    /// The endpoint's metadata value of `key` (see [`Endpoint::metadata`](super::Endpoint::metadata)).
    pub fn metadata(&self, index: usize, key: &str) -> Option<&str> {
        super::metadata_value(&self.members[index].metadata, key)
    }

    /// Calls this client has in progress on the endpoint.
    pub fn load(&self, index: usize) -> usize {
        self.members[index].outstanding.load(Ordering::Relaxed)
    }

    /// The endpoint's latest [load report](crate::load), if one came within
    /// [`REPORT_TTL`](crate::load::REPORT_TTL): its calls in flight for all its clients,
    /// and the utilization its service set.
    pub fn reported_load(&self, index: usize) -> Option<ServerLoad> {
        self.members[index].reported.fresh(self.now)
    }

    /// Whether the endpoint may get this call.
    pub fn is_usable(&self, index: usize) -> bool {
        self.usable[index]
    }

    /// The indices of the usable endpoints.
    pub fn usable(&self) -> impl Iterator<Item = usize> + '_ {
        self.usable
            .iter()
            .enumerate()
            .filter_map(|(i, &usable)| usable.then_some(i))
    }

    /// Changes whenever endpoints are added or removed (indices may then mean other
    /// endpoints), so a strategy can cache what it derives from the set.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Chooses the endpoint for each call; implement it for a strategy of your own.
///
/// `key` is the call's [`hash_key`](crate::Call::hash_key), if it set one.
pub trait Strategy: Send + Sync + 'static {
    /// The index of a usable endpoint, or `None` when none is usable.
    fn pick(&self, endpoints: &Endpoints<'_>, key: Option<u64>) -> Option<usize>;
}

/// Every usable endpoint in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Round robin from the first endpoint.
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, endpoints: &Endpoints<'_>, _key: Option<u64>) -> Option<usize> {
        // Counting over the usable endpoints only: one that is down does not hand its turns
        // to its neighbour.
        let usable = endpoints.usable().count();
        if usable == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        endpoints.usable().nth(turn % usable)
    }
}

/// A usable endpoint chosen uniformly at random.
#[derive(Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// Seeded from the operating system's randomness.
    pub fn new() -> Random {
        Random { rng: Rng::random() }
    }

    /// The same choices every run, for tests.
    pub fn with_seed(seed: u64) -> Random {
        Random {
            rng: Rng::seeded(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Random {
        Random::new()
    }
}

impl Strategy for Random {
    fn pick(&self, endpoints: &Endpoints<'_>, _key: Option<u64>) -> Option<usize> {
        let usable = endpoints.usable().count();
        if usable == 0 {
            return None;
        }
        endpoints
            .usable()
            .nth(self.rng.below(usable as u64) as usize)
    }
}

/// A usable endpoint chosen at random in proportion to its weight: an endpoint of weight 3
/// gets three times the calls of one of weight 1.
#[derive(Debug)]
pub struct Weighted {
    rng: Rng,
}

impl Weighted {
    /// Seeded from the operating system's randomness.
    pub fn new() -> Weighted {
        Weighted { rng: Rng::random() }
    }

    /// The same choices every run, for tests.
    pub fn with_seed(seed: u64) -> Weighted {
        Weighted {
            rng: Rng::seeded(seed),
        }
    }
}

impl Default for Weighted {
    fn default() -> Weighted {
        Weighted::new()
    }
}

impl Strategy for Weighted {
    fn pick(&self, endpoints: &Endpoints<'_>, _key: Option<u64>) -> Option<usize> {
        let total: u64 = endpoints
            .usable()
            .map(|i| u64::from(endpoints.weight(i)))
            .sum();
        if total == 0 {
            // Only weight-0 endpoints are usable: they still beat failing the call.
            return endpoints.usable().next();
        }
        let mut point = self.rng.below(total);
        endpoints.usable().find(|&i| {
            let weight = u64::from(endpoints.weight(i));
            if point < weight {
                true
            } else {
                point -= weight;
                false
            }
        })
    }
}

/// The less loaded of two usable endpoints chosen at random ("power of two choices"): calls
/// drift away from slow or busy endpoints without every client herding to the same one.
///
/// An endpoint's load is the number of this client's calls in progress on it, plus the
/// other clients' calls its server last [reported](crate::load) (its calls in flight beyond
/// this client's), plus one (the call to place); divided by `1 - utilization` when its
/// service reports a utilization (capped at 0.95), so that a server at 50% counts as twice
/// as loaded. A report counts for less as it ages (see [`crate::load`]); without one (a
/// server of an earlier version, or none lately) the load is this client's own count.
#[derive(Debug)]
pub struct LeastLoaded {
    rng: Rng,
}

impl LeastLoaded {
    /// Seeded from the operating system's randomness.
    pub fn new() -> LeastLoaded {
        LeastLoaded { rng: Rng::random() }
    }

    /// The same choices every run, for tests.
    pub fn with_seed(seed: u64) -> LeastLoaded {
        LeastLoaded {
            rng: Rng::seeded(seed),
        }
    }
}

impl Default for LeastLoaded {
    fn default() -> LeastLoaded {
        LeastLoaded::new()
    }
}

impl Strategy for LeastLoaded {
    fn pick(&self, endpoints: &Endpoints<'_>, _key: Option<u64>) -> Option<usize> {
        let usable = endpoints.usable().count() as u64;
        match usable {
            0 => None,
            1 => endpoints.usable().next(),
            _ => {
                let a = self.rng.below(usable);
                // A second choice different from the first.
                let b = (a + 1 + self.rng.below(usable - 1)) % usable;
                let a = endpoints.usable().nth(a as usize)?;
                let b = endpoints.usable().nth(b as usize)?;
                Some(if cost(endpoints, b) < cost(endpoints, a) {
                    b
                } else {
                    a
                })
            }
        }
    }
}

/// [`LeastLoaded`]'s measure of an endpoint's load: what a call sent there would queue
/// behind, counting itself.
fn cost(endpoints: &Endpoints<'_>, index: usize) -> f64 {
    let own = endpoints.load(index) as f64;
    match endpoints.members[index]
        .reported
        .trusted(endpoints.now, own == 0.0)
    {
        None => own + 1.0,
        Some((report, trust)) => {
            let others = (f64::from(report.in_flight) - own).max(0.0);
            let load = own + others * trust;
            (load + 1.0) / (1.0 - report.utilization.min(0.95) * trust)
        }
    }
}

/// Consistent hashing on the call's [`hash_key`](crate::Call::hash_key): calls with the same
/// key go to the same endpoint, and adding or removing an endpoint moves only the keys of
/// that endpoint's share. Each endpoint owns `points × weight` points of a hash ring; a key
/// goes to the first usable endpoint at or after its hash. Calls without a key go round robin.
#[derive(Debug)]
pub struct ConsistentHash {
    points: u32,
    ring: Mutex<Ring>,
    fallback: RoundRobin,
}

#[derive(Debug, Default)]
struct Ring {
    generation: Option<u64>,
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl ConsistentHash {
    /// 160 points per unit of weight.
    pub fn new() -> ConsistentHash {
        ConsistentHash::with_points(160)
    }

    /// `points` ring points per unit of weight: more spread the keys more evenly.
    pub fn with_points(points: u32) -> ConsistentHash {
        ConsistentHash {
            points: points.max(1),
            ring: Mutex::new(Ring::default()),
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for ConsistentHash {
    fn default() -> ConsistentHash {
        ConsistentHash::new()
    }
}

impl Strategy for ConsistentHash {
    fn pick(&self, endpoints: &Endpoints<'_>, key: Option<u64>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(endpoints, None);
        };
        let mut ring = crate::lock::lock(&self.ring);
        if ring.generation != Some(endpoints.generation()) {
            ring.points.clear();
            for index in 0..endpoints.len() {
                let base = hash_str(endpoints.key(index));
                let count = u64::from(self.points) * u64::from(endpoints.weight(index).max(1));
                ring.points
                    .extend((0..count).map(|replica| (mix(base ^ mix(replica + 1)), index)));
            }
            ring.points.sort_unstable();
            ring.generation = Some(endpoints.generation());
        }
        let start = ring.points.partition_point(|&(point, _)| point < key);
        let n = ring.points.len();
        (0..n)
            .map(|step| ring.points[(start + step) % n].1)
            .find(|&i| endpoints.is_usable(i))
    }
}

/// A stable 64-bit hash of a value's `Hash` output (FNV-1a, then a finalizer), the same in
/// every process of the same platform, unlike std's randomly keyed one.
pub(crate) fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut hasher);
    mix(hasher.0)
}

fn hash_str(text: &str) -> u64 {
    hash_key(text)
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 2⁶⁴ / φ (φ the golden ratio), rounded to odd. splitmix64's increment: being odd, a
/// sequence runs through all 2⁶⁴ states. Subsetting's multiplier: `i × GOLDEN` (mod 2⁶⁴) is
/// `frac(i × φ)` in 64-bit fixed point, the golden-ratio sequence.
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

std::thread_local! {
    /// The state of this thread's sequence of seeds, once [`seed_randomness`] set it.
    static THREAD_SEEDS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes the random choices the runtime makes on this thread follow `seed`: the strategies
/// made without a seed of their own ([`Random::new`], [`Weighted::new`],
/// [`LeastLoaded::new`]), each balancing client's own draws, and the jitter of
/// [`Backoff`](super::Backoff).
///
/// It is for simulations, where one thread runs every simulated host (turmoil does, see
/// `rpc_transport::sim`): call it first thing in the test, and the same seed makes the same
/// choices in the same order, so that a run can be replayed. Other threads, and a thread
/// that never calls it, keep drawing from the process's randomness.
///
/// ```
/// use rpc_core::balance::{seed_randomness, Backoff};
///
/// let backoff = Backoff::default();
/// seed_randomness(7);
/// let first = backoff.delay(3);
/// seed_randomness(7);
/// assert_eq!(backoff.delay(3), first);
/// ```
pub fn seed_randomness(seed: u64) {
    THREAD_SEEDS.with(|seeds| seeds.set(Some(seed)));
}

/// A small, lock-free random number generator (splitmix64), shared by all callers.
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// Seeded from [`seed_randomness`]'s sequence on this thread when it was called, from
    /// the process's randomness otherwise.
    pub(crate) fn random() -> Rng {
        let seed = THREAD_SEEDS
            .with(|seeds| {
                let state = seeds.get()?.wrapping_add(GOLDEN);
                seeds.set(Some(state));
                Some(mix(state))
            })
            .unwrap_or_else(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64));
        Rng::seeded(seed)
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN))
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Arc<Member>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Member::detached(&format!("endpoint-{i}"), w)))
            .collect()
    }

    fn shares(
        strategy: &dyn Strategy,
        members: &[Arc<Member>],
        usable: &[bool],
        n: u32,
    ) -> Vec<f64> {
        let endpoints = Endpoints {
            members,
            usable,
            generation: 1,
            now: crate::clock::now(),
        };
        let mut counts = vec![0u32; members.len()];
        for call in 0..n {
            let i = strategy
                .pick(&endpoints, Some(hash_key(&call)))
                .expect("a usable endpoint");
            assert!(usable[i], "picked an unusable endpoint");
            counts[i] += 1;
        }
        counts
            .iter()
            .map(|&c| f64::from(c) / f64::from(n))
            .collect()
    }

    #[test]
    fn weighted_follows_the_weights() {
        let members = members(&[1, 2, 3, 0]);
        let shares = shares(&Weighted::with_seed(1), &members, &[true; 4], 60_000);
        for (share, expected) in shares.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 0.0]) {
            assert!((share - expected).abs() < 0.01, "{shares:?}");
        }
    }

    #[test]
    fn strategies_skip_unusable_endpoints() {
        let members = members(&[1, 1, 1]);
        let usable = [true, false, true];
        let strategies: [&dyn Strategy; 5] = [
            &RoundRobin::new(),
            &Random::with_seed(2),
            &Weighted::with_seed(3),
            &LeastLoaded::with_seed(4),
            &ConsistentHash::new(),
        ];
        for strategy in strategies {
            let shares = shares(strategy, &members, &usable, 3000);
            assert_eq!(shares[1], 0.0);
            assert!(shares[0] > 0.3 && shares[2] > 0.3, "{shares:?}");
        }
        let none = Endpoints {
            members: &members,
            usable: &[false; 3],
            generation: 1,
            now: crate::clock::now(),
        };
        assert_eq!(RoundRobin::new().pick(&none, None), None);
        assert_eq!(ConsistentHash::new().pick(&none, Some(7)), None);
    }

    #[test]
    fn least_loaded_avoids_the_busy_endpoint() {
        let members = members(&[1, 1]);
        members[0].outstanding.store(10, Ordering::Relaxed);
        let shares = shares(&LeastLoaded::with_seed(5), &members, &[true; 2], 1000);
        assert_eq!(shares[1], 1.0);
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_removed_share() {
        let all = members(&[1, 1, 1, 1]);
        let ring = ConsistentHash::new();
        let everyone = Endpoints {
            members: &all,
            usable: &[true; 4],
            generation: 1,
            now: crate::clock::now(),
        };
        let before: Vec<usize> = (0..2000u32)
            .map(|k| ring.pick(&everyone, Some(hash_key(&k))).expect("usable"))
            .collect();
        for (k, &owner) in before.iter().enumerate() {
            assert_eq!(
                ring.pick(&everyone, Some(hash_key(&(k as u32)))),
                Some(owner)
            );
        }
        for i in 0..4 {
            let share = before.iter().filter(|&&o| o == i).count();
            assert!(
                (300..=700).contains(&share),
                "endpoint {i} owns {share} of 2000 keys"
            );
        }
        // Endpoint 2 leaves: a new set (generation), the same keys for the others.
        let rest: Vec<Arc<Member>> = [0, 1, 3].iter().map(|&i| Arc::clone(&all[i])).collect();
        let fewer = Endpoints {
            members: &rest,
            usable: &[true; 3],
            generation: 2,
            now: crate::clock::now(),
        };
        for (k, &owner) in before.iter().enumerate() {
            let now = rest[ring
                .pick(&fewer, Some(hash_key(&(k as u32))))
                .expect("usable")]
            .key
            .clone();
            if owner != 2 {
                assert_eq!(
                    now, all[owner].key,
                    "key {k} moved although its endpoint stayed"
                );
            }
        }
    }
}
