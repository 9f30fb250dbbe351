//! Deterministic subsetting: which of many endpoints a balancing client connects to, so
//! that many clients spread evenly over many servers without a full mesh of connections.

// `i × GOLDEN` is the golden-ratio sequence in integers, so that every process and platform
// places a client at the same point; being odd, it gives distinct indexes distinct points
// and random indexes uniform ones.
use super::strategy::{hash_key, Rng, GOLDEN};

/// Connects a balancing client to `size` of the endpoints rather than to all of them.
///
/// With many clients and many servers a full mesh does not scale: 1,000 clients of 1,000
/// servers make a million connections. With a subset each client keeps `size` connections,
/// chosen so that every server gets about the same number of clients, and so that few
/// connections move when endpoints come and go. Calls are then balanced by the client's
/// [`Strategy`](super::Strategy) among the endpoints of its subset.
///
/// Each client needs an identity, its [client index](Subset::client_index): give clients
/// distinct indexes, ideally consecutive ones (a StatefulSet pod's ordinal, a worker number:
/// 0, 1, 2, …). The number of clients need not be known, nor the same in every client.
/// Without an index a client draws a random one, which still spreads the load, but about as
/// unevenly as random choice does.
///
/// ```
/// use rpc_core::balance::Subset;
///
/// // Connect to 10 endpoints; this is client number 7 (its pod ordinal, say).
/// let subset = Subset::new(10).client_index(7);
/// assert_eq!((subset.get_size(), subset.get_client_index()), (10, 7));
///
/// // Without an index, a random one is drawn.
/// let anonymous = Subset::new(10);
/// assert_eq!(anonymous.get_size(), 10);
/// ```
///
/// # How endpoints are chosen
///
/// The endpoints are placed on a ring in the order of a stable hash of their keys (the same
/// in every process, whatever order discovery lists them in), each in an equal slot. Client
/// `i` starts at the fraction `frac(i × φ)` of the ring, φ being the golden ratio, and takes
/// the `size` endpoints from there on (every endpoint when there are no more than `size`).
///
/// - **Balance.** An endpoint serves the clients that start in the `size` slots before it,
///   one arc of the ring, and the golden-ratio sequence puts nearly the same number of
///   consecutive indexes in any arc of the same length, however many clients there are:
///   1,000 clients with indexes 0 to 999 over 100 endpoints with subsets of 10 give every
///   endpoint 99 to 101 clients (99% to 101% of the mean). With random indexes the busiest
///   gets 1.2 to 1.3 × the mean in the same setting, as with a random choice.
/// - **Churn.** When an endpoint is added or removed, the slots are shifted by at most one
///   place, so a client's subset changes by at most two endpoints (one or none, mostly):
///   0.4 of a connection per client on average in the setting above (the least any scheme
///   could do is 0.1, replacing only the endpoint that went).
///
/// Placing the endpoints by their hash alone, as consistent hashing does, would move only
/// that least but balances badly: the arcs between random points differ a lot, and the
/// busiest endpoint gets about 1.8 × the mean in the setting above (still 1.14 × with 100
/// points per endpoint, on a ring a hundred times larger). Giving every endpoint the same
/// slot is what makes the spread even; its price is the slight shift of the slots on every
/// change. This is the scheme of Finagle's deterministic aperture; the one in Google's SRE
/// book (shuffle the endpoints per round of clients) balances as well but reshuffles
/// everything when the number of endpoints changes.
///
/// An endpoint that is down does not shrink a subset: the client connects to the next
/// endpoints on the ring instead, one for each, and goes back to its own when they return.
/// The clients of a lost endpoint each take the one after their subset, so its load spreads
/// over the `size` endpoints that follow it rather than landing on one of them.
///
/// Every endpoint counts once whatever its weight: weights apply to the choice among the
/// endpoints of a subset. All clients must choose alike for the spread to hold, so clients of
/// different versions of this crate may subset differently (the placement is pinned by a
/// test and changing it is a breaking change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subset {
    size: usize,
    index: u64,
}

impl Subset {
    /// Subsets of `size` endpoints (a size of 0 is taken as 1: a balancing client with no
    /// endpoint would have nowhere to send a call), with a random client index.
    pub fn new(size: usize) -> Subset {
        Subset {
            size: size.max(1),
            index: Rng::random().next_u64(),
        }
    }

    /// Sets this client's identity among the clients of the same endpoints. Clients with
    /// distinct indexes get different subsets, and consecutive indexes spread the most evenly.
    /// Clients with the same index get the same subset: giving every client the same index
    /// would put them all on the same `size` endpoints.
    pub fn client_index(mut self, index: u64) -> Subset {
        self.index = index;
        self
    }

    /// The number of endpoints a client connects to (while there are that many).
    pub fn get_size(&self) -> usize {
        self.size
    }

    /// The client index, given or drawn.
    pub fn get_client_index(&self) -> u64 {
        self.index
    }

    /// The subset among endpoints with these keys: the indexes into `keys` of the chosen
    /// ones, in ascending order. The keys are expected distinct; a repeated key is one
    /// endpoint (its first index). O(n log n) in the number of keys.
    #[cfg(test)]
    pub(crate) fn choose<K: AsRef<str>>(&self, keys: &[K]) -> Vec<usize> {
        self.choose_usable(keys, |_| true)
    }

    /// The subset when only the endpoints for which `usable(index)` holds can take calls:
    /// the shortest run of the ring from this client's start that holds `size` usable
    /// endpoints (the whole ring when it holds fewer), as indexes into `keys` in ascending
    /// order.
    ///
    /// The run keeps the unusable endpoints it passes, because they belong to the subset: the
    /// caller should keep reconnecting them, and once they are usable again the run is back
    /// to the subset of [`choose`](Subset::choose) and the stand-ins can be let go.
    pub(crate) fn choose_usable<K: AsRef<str>>(
        &self,
        keys: &[K],
        usable: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let ring = ring(keys);
        let n = ring.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.start(n);
        let mut chosen = Vec::with_capacity(self.size.min(n));
        let mut found = 0;
        for step in 0..n {
            let index = ring[(start + step) % n];
            chosen.push(index);
            if usable(index) {
                found += 1;
                if found == self.size {
                    break;
                }
            }
        }
        chosen.sort_unstable();
        chosen
    }

    /// The ring slot this client's run starts at, among `n` > 0.
    fn start(&self, n: usize) -> usize {
        let point = self.index.wrapping_mul(GOLDEN);
        // `point / 2⁶⁴ × n`, which is below `n` and so fits a usize.
        ((u128::from(point) * n as u128) >> 64) as usize
    }
}

/// The indexes into `keys` in ring order: by stable hash, then by key so that the order is
/// total even if two hashes collide, with a repeated key kept once.
fn ring<K: AsRef<str>>(keys: &[K]) -> Vec<usize> {
    let mut placed: Vec<(u64, &str, usize)> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| (hash_key(key.as_ref()), key.as_ref(), index))
        .collect();
    placed.sort_unstable();
    placed.dedup_by(|later, earlier| later.1 == earlier.1);
    placed.into_iter().map(|(_, _, index)| index).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(range: std::ops::Range<usize>) -> Vec<String> {
        range
            .map(|i| format!("10.0.{}.{}:4000", i / 250, i % 250))
            .collect()
    }

    /// The keys of a client's subset, as a set.
    fn members<'a>(subset: &Subset, keys: &'a [String]) -> BTreeSet<&'a str> {
        subset
            .choose(keys)
            .into_iter()
            .map(|i| keys[i].as_str())
            .collect()
    }

    /// How many of `clients` each endpoint gets, and the busiest and idlest over the mean.
    fn spread(clients: &[Subset], keys: &[String]) -> (Vec<u32>, f64, f64) {
        let mut load = vec![0u32; keys.len()];
        for client in clients {
            for i in client.choose(keys) {
                load[i] += 1;
            }
        }
        let total: u32 = load.iter().sum();
        let mean = f64::from(total) / keys.len() as f64;
        let max = f64::from(*load.iter().max().unwrap()) / mean;
        let min = f64::from(*load.iter().min().unwrap()) / mean;
        (load, max, min)
    }

    fn consecutive(clients: u64, size: usize) -> Vec<Subset> {
        (0..clients)
            .map(|i| Subset::new(size).client_index(i))
            .collect()
    }

    #[test]
    fn consecutive_indexes_spread_evenly() {
        let keys = keys(0..100);
        let (load, max, min) = spread(&consecutive(1000, 10), &keys);
        println!(
            "1,000 clients 0..1000 × 100 endpoints, subsets of 10: {}..{} clients per \
             endpoint (mean 100), max/mean {max:.3}, min/mean {min:.3}",
            load.iter().min().unwrap(),
            load.iter().max().unwrap(),
        );
        assert!(max <= 1.1 && min >= 0.9, "{load:?}");
    }

    #[test]
    fn consecutive_indexes_spread_evenly_in_other_shapes() {
        // The golden-ratio sequence puts within a few clients of the share in any arc, so
        // the imbalance is a few clients whatever the numbers, and small once an endpoint
        // has many clients.
        for (clients, servers, size) in [
            (1000, 1000, 10),
            (1000, 1000, 50),
            (5000, 100, 3),
            (300, 70, 7),
            (64, 16, 4),
            (10_000, 250, 20),
        ] {
            let (load, max, min) = spread(&consecutive(clients, size), &keys(0..servers));
            let mean = (clients as usize * size) as f64 / servers as f64;
            let (lo, hi) = (*load.iter().min().unwrap(), *load.iter().max().unwrap());
            println!(
                "{clients} clients × {servers} endpoints, subsets of {size}: {lo}..{hi} \
                 clients per endpoint (mean {mean}), max/mean {max:.3}, min/mean {min:.3}"
            );
            assert!(f64::from(hi) - mean <= 3.0 && mean - f64::from(lo) <= 3.0);
        }
    }

    #[test]
    fn random_indexes_spread_like_random_choice() {
        let keys = keys(0..100);
        let mut worst: f64 = 0.0;
        for seed in 1..=5 {
            let rng = Rng::seeded(seed);
            let clients: Vec<_> = (0..1000)
                .map(|_| Subset::new(10).client_index(rng.next_u64()))
                .collect();
            let (_, max, min) = spread(&clients, &keys);
            println!(
                "1,000 clients with random indexes (seed {seed}) × 100 endpoints, subsets \
                 of 10: max/mean {max:.3}, min/mean {min:.3}"
            );
            worst = worst.max(max);
        }
        assert!(worst <= 1.5, "{worst}");
        // `Subset::new` draws its index.
        let drawn: BTreeSet<u64> = (0..100)
            .map(|_| Subset::new(10).get_client_index())
            .collect();
        assert!(drawn.len() > 90);
    }

    /// Per client, how many endpoints of its subset (`before`, as sets of keys) are not in
    /// its subset among `after` (the connections it closes, and as many it opens): the most
    /// and the sum.
    fn churn(clients: &[Subset], before: &[BTreeSet<&str>], after: &[String]) -> (usize, usize) {
        clients
            .iter()
            .zip(before)
            .map(|(client, old)| {
                let new = members(client, after);
                assert_eq!(old.len(), new.len());
                old.difference(&new).count()
            })
            .fold((0, 0), |(most, sum), moved| (most.max(moved), sum + moved))
    }

    #[test]
    fn an_endpoint_coming_or_going_moves_few_connections() {
        let clients = consecutive(1000, 10);
        let all = keys(0..100);
        let before: Vec<BTreeSet<&str>> =
            clients.iter().map(|client| members(client, &all)).collect();
        let measure = |changed: &mut dyn Iterator<Item = Vec<String>>| {
            let (mut most, mut sum, mut cases) = (0, 0, 0);
            for after in changed {
                let (m, s) = churn(&clients, &before, &after);
                (most, sum, cases) = (most.max(m), sum + s, cases + 1);
            }
            (most, sum as f64 / (cases * clients.len()) as f64)
        };

        let (most, removed) = measure(&mut (0..all.len()).step_by(4).map(|gone| {
            let mut fewer = all.clone();
            fewer.remove(gone);
            fewer
        }));
        println!(
            "removing one of 100 endpoints (25 cases), 1,000 clients with subsets of 10: \
             at most {most} moved per client, {removed:.3} on average (least possible 0.1)"
        );
        assert!(most <= 2 && removed <= 1.0);

        let (most, added) = measure(&mut keys(100..125).into_iter().map(|new| {
            let mut more = all.clone();
            more.push(new);
            more
        }));
        println!(
            "adding one to 100 endpoints (25 cases), 1,000 clients with subsets of \
             10: at most {most} moved per client, {added:.3} on average (least possible 0.1)"
        );
        assert!(most <= 2 && added <= 1.0);
    }

    #[test]
    fn the_order_of_the_keys_does_not_matter() {
        let keys = keys(0..50);
        let rng = Rng::seeded(7);
        let mut shuffled = keys.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        assert_ne!(keys, shuffled);
        for index in 0..100 {
            let subset = Subset::new(5).client_index(index);
            assert_eq!(members(&subset, &keys), members(&subset, &shuffled));
        }
    }

    #[test]
    fn the_placement_is_pinned() {
        // Clients of different builds must choose alike: a change to the hash or to the
        // placement fails here, and is a breaking change.
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let chosen: Vec<Vec<&str>> = (0..4)
            .map(|index| {
                let subset = Subset::new(3).client_index(index);
                subset.choose(&keys).into_iter().map(|i| keys[i]).collect()
            })
            .collect();
        assert_eq!(
            chosen,
            [
                ["a", "b", "c"],
                ["d", "f", "h"],
                ["b", "c", "g"],
                ["a", "e", "h"]
            ]
        );
    }

    #[test]
    fn small_sets_and_sizes() {
        let keys = keys(0..5);
        let everything: Vec<usize> = (0..5).collect();
        assert_eq!(Subset::new(5).choose(&keys), everything);
        assert_eq!(Subset::new(50).client_index(3).choose(&keys), everything);
        assert_eq!(Subset::new(3).choose(&[] as &[&str]), Vec::<usize>::new());

        // A size of 0 is 1.
        let one = Subset::new(0).client_index(2);
        assert_eq!(one.get_size(), 1);
        assert_eq!(one.choose(&keys).len(), 1);

        // A repeated key is one endpoint, at its first index.
        let repeated = ["x", "y", "x", "z"];
        assert_eq!(Subset::new(5).choose(&repeated), [0, 1, 3]);
    }

    #[test]
    fn unusable_endpoints_are_stood_in_for() {
        let keys = keys(0..100);
        let subset = Subset::new(10).client_index(42);
        let own = subset.choose(&keys);
        assert_eq!(subset.choose_usable(&keys, |_| true), own);

        // Two of its own down: the run keeps them and adds two more, so ten are usable.
        let down = [own[1], own[6]];
        let run = subset.choose_usable(&keys, |i| !down.contains(&i));
        assert_eq!(run.len(), 12);
        assert!(own.iter().all(|i| run.contains(i)));
        assert_eq!(run.iter().filter(|i| !down.contains(i)).count(), 10);

        // Every other endpoint down: nothing changes.
        assert_eq!(subset.choose_usable(&keys, |i| own.contains(&i)), own);

        // Fewer usable than the size: the whole ring, so every usable one is in it.
        let run = subset.choose_usable(&keys, |i| i % 20 == 0);
        assert_eq!(run.len(), 100);
        assert_eq!(subset.choose_usable(&keys, |_| false).len(), 100);
    }

    #[test]
    fn a_lost_endpoints_clients_spread_over_the_next_ones() {
        let keys = keys(0..100);
        let clients = consecutive(1000, 10);
        let down = 17;
        let mut load = vec![0u32; keys.len()];
        for client in &clients {
            for i in client.choose_usable(&keys, |i| i != down) {
                if i != down {
                    load[i] += 1;
                }
            }
        }
        let mean = f64::from(load.iter().sum::<u32>()) / 99.0;
        let max = f64::from(*load.iter().max().unwrap()) / mean;
        println!(
            "one of 100 endpoints down, 1,000 clients with subsets of 10: the busiest usable \
             endpoint has {max:.3} × the mean"
        );
        // Its 100 clients go to the 10 endpoints after it, 10 each, rather than all to one.
        assert!(max <= 1.15, "{load:?}");
    }
}
