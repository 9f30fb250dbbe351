//! Clients built with `FooClient::builder()` against servers that die, come back, refuse
//! calls, fail, and come and go: reconnection, retries and their budget, load balancing,
//! discovery and failure accrual, end to end.
//!
//! Every test runs once per transport in `replica::KINDS` (memory, TCP, Unix), as a module
//! named after the behaviour with one test per transport. Tests wait for what they need with
//! `wait_for` (woken by the replicas' handlers) or `eventually` (for client-side state) under
//! the hang guard; none sleeps to let something happen, and none asserts on timing.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::replica::{
    endpoints, eventually, start_replicas, wait_for, FleetClient, Method, Replica,
};
use common::{guard, Kind};
use futures::StreamExt;
use rpc_core::balance::{
    Backoff, Change, ClientStats, ConsistentHash, EndpointState, EndpointStats, FailureAccrual,
    LeastLoaded, Random, RetryBudget, RoundRobin, Strategy, Weighted,
};
use rpc_core::ErrorKind;

/// Defines a module `$name` holding one test of `$body` per transport a replica runs over.
macro_rules! over_kinds {
    (
        $(#[doc = $doc:literal])*
        $(#[ignore = $why:literal])?
        async fn $name:ident($kind:ident) $body:block
    ) => {
        $(#[doc = $doc])*
        mod $name {
            use super::*;

            async fn body($kind: Kind) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $why])?
            async fn memory() {
                body(Kind::MemoryListener).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $why])?
            async fn tcp() {
                body(Kind::Tcp).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $why])?
            async fn unix() {
                body(Kind::Unix).await;
            }
        }
    };
}

/// A deadline for calls expected to succeed: generous, and still inside the hang guard.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Quick reconnection, so a restarted server is found again soon.
fn short_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(5), Duration::from_millis(50))
}

/// The client's view of itself.
fn stats(client: &FleetClient) -> ClientStats {
    client
        .client()
        .stats()
        .expect("a client made by a builder has stats")
}

/// The client's view of the endpoint `key`.
fn endpoint(client: &FleetClient, key: &str) -> EndpointStats {
    stats(client)
        .endpoints
        .into_iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no endpoint {key}"))
}

/// Waits until `n` of the client's endpoints are connected.
async fn all_ready(client: &FleetClient, n: usize) {
    eventually(|| {
        stats(client)
            .endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Ready)
            .count()
            == n
    })
    .await;
}

/// Runs of `method` over all `replicas`.
fn total(replicas: &[Replica], method: Method) -> u64 {
    replicas.iter().map(|r| r.runs(method)).sum()
}

/// Calls of `method` held at the gates of all `replicas`.
fn held(replicas: &[Replica], method: Method) -> usize {
    replicas.iter().map(|r| r.waiting(method)).sum()
}

/// Makes `n` calls of `whoami` (32 at a time) and counts the answers per tag.
async fn whoami_counts(client: &FleetClient, n: usize, replicas: usize) -> Vec<u64> {
    let results: Vec<_> = guard(
        futures::stream::iter(0..n)
            .map(|_| client.whoami().timeout(CALL_TIMEOUT).into_future())
            .buffer_unordered(32)
            .collect(),
    )
    .await;
    let mut counts = vec![0u64; replicas];
    for result in results {
        counts[result.expect("whoami") as usize] += 1;
    }
    counts
}

/// Makes `n` sequential calls of `whoami` and counts the answers per tag.
async fn sequential_whoami_counts(client: &FleetClient, n: usize, replicas: usize) -> Vec<u64> {
    let mut counts = vec![0u64; replicas];
    for _ in 0..n {
        let tag = guard(client.whoami().timeout(CALL_TIMEOUT))
            .await
            .expect("whoami");
        counts[tag as usize] += 1;
    }
    counts
}

/// A task calling `whoami` in a loop until `stop` is set; returns every result.
fn whoami_loop(
    client: &FleetClient,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<u32, rpc_core::RpcError>>> {
    let client = client.clone();
    let stop = Arc::clone(stop);
    tokio::spawn(async move {
        let mut results = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            results.push(client.whoami().timeout(CALL_TIMEOUT).await);
        }
        results
    })
}

/// Spawns calls made by `call` one at a time until one is held at `replica`'s gate for
/// `method` (which the caller closed); returns that call. The others must succeed elsewhere.
async fn park_call_on<F>(
    replica: &Replica,
    method: Method,
    mut call: impl FnMut() -> F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future<Output = Result<u32, rpc_core::RpcError>> + Send + 'static,
{
    let waiting = replica.waiting(method);
    // Each call either finishes elsewhere (within its deadline) or is held (`wait_for` is
    // guarded); a strategy that never chose the replica would exhaust the loop.
    for _ in 0..1000 {
        let mut spawned = tokio::spawn(call());
        tokio::select! {
            result = &mut spawned => {
                let tag = result.unwrap().expect("a call that was not held succeeds");
                assert_ne!(tag, replica.tag(), "a call to the held replica was not held");
            }
            () = wait_for(|| replica.waiting(method) > waiting) => return spawned,
        }
    }
    panic!("1000 calls and none went to replica {}", replica.tag());
}

over_kinds! {
    /// A server killed while calls are in flight loses no call of an idempotent method: the
    /// calls it had (one is held there on purpose until the kill) are retried on the
    /// survivors, which go on serving every caller.
    async fn a_killed_server_loses_no_idempotent_call(kind) {
        let mut replicas = start_replicas(kind, 3).await;
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .backoff(short_backoff())
            .balance(endpoints(&replicas));
        all_ready(&client, 3).await;
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..4).map(|_| whoami_loop(&client, &stop)).collect();

        // Every replica serves for a while...
        wait_for(|| replicas.iter().all(|r| r.runs(Method::Whoami) >= 50)).await;
        // ...then the victim is killed with a call in flight on it.
        replicas[0].hold(Method::Whoami);
        wait_for(|| replicas[0].waiting(Method::Whoami) >= 1).await;
        let before: Vec<u64> = replicas[1..].iter().map(|r| r.runs(Method::Whoami)).collect();
        replicas[0].kill().await;
        wait_for(|| {
            replicas[1..]
                .iter()
                .zip(&before)
                .all(|(r, &b)| r.runs(Method::Whoami) >= b + 100)
        })
        .await;
        stop.store(true, Ordering::SeqCst);

        let mut calls = 0;
        for caller in callers {
            for result in guard(caller).await.unwrap() {
                let tag = result.unwrap_or_else(|err| panic!("{kind:?}: a call failed: {err}"));
                assert!(tag < 3);
                calls += 1;
            }
        }
        let stats = stats(&client);
        assert_eq!(stats.calls, calls, "{kind:?}: {stats:?}");
        assert!(stats.retries >= 1, "{kind:?}: the held call was retried: {stats:?}");
    }
}

over_kinds! {
    /// A killed server that comes back at the same address gets calls again: the client
    /// notices the loss, sends calls to the others meanwhile, and reconnects on its own.
    async fn a_restarted_server_is_used_again(kind) {
        let mut replicas = start_replicas(kind, 3).await;
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .backoff(short_backoff())
            .balance(endpoints(&replicas));
        all_ready(&client, 3).await;
        let key = replicas[2].key();

        replicas[2].kill().await;
        eventually(|| endpoint(&client, &key).state != EndpointState::Ready).await;
        for _ in 0..30 {
            let tag = guard(client.whoami().timeout(CALL_TIMEOUT)).await.unwrap();
            assert_ne!(tag, 2, "{kind:?}: a dead replica answered");
        }

        replicas[2].restart().await;
        let before = replicas[2].runs(Method::Whoami);
        guard(async {
            while replicas[2].runs(Method::Whoami) == before {
                client.whoami().timeout(CALL_TIMEOUT).await.unwrap();
            }
        })
        .await;
        assert_eq!(endpoint(&client, &key).state, EndpointState::Ready);
    }
}

over_kinds! {
    /// A client of one reconnecting endpoint (`connect`): while its server is down, a call
    /// fails at once with `Disconnected` by default; with `wait_for_ready(true)` it waits,
    /// up to its deadline (`DeadlineExceeded`) or until the server is back (success). Both
    /// clients reconnect to the restarted server.
    async fn a_reconnecting_client_fails_fast_or_waits_for_ready(kind) {
        let mut replica = Replica::start(kind, 7).await;
        let fail_fast = FleetClient::builder()
            .backoff(short_backoff())
            .connect(replica.connector());
        // Any closure making transports is a connector too.
        let connector = replica.connector();
        let patient = FleetClient::builder()
            .backoff(short_backoff())
            .wait_for_ready(true)
            .connect(move || {
                let connector = connector.clone();
                async move { rpc_core::Connect::connect(&connector).await }
            });
        let state = |client: &FleetClient| stats(client).endpoints[0].state;
        assert_eq!(guard(fail_fast.whoami()).await.unwrap(), 7);
        assert_eq!(guard(patient.whoami()).await.unwrap(), 7);

        replica.kill().await;
        eventually(|| {
            state(&fail_fast) == EndpointState::Down && state(&patient) == EndpointState::Down
        })
        .await;
        // Fails at once, not at its (long) deadline.
        let err = guard(fail_fast.whoami().timeout(CALL_TIMEOUT)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{kind:?}: {err}");
        // Waits, until its deadline.
        let err = guard(patient.whoami().timeout(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
        // Waits, until the server is back.
        let made = stats(&patient).calls;
        let waiting = tokio::spawn(patient.whoami().timeout(CALL_TIMEOUT).into_future());
        eventually(|| stats(&patient).calls > made).await;
        replica.restart().await;
        assert_eq!(guard(waiting).await.unwrap().unwrap(), 7, "{kind:?}");

        eventually(|| state(&fail_fast) == EndpointState::Ready).await;
        assert_eq!(guard(fail_fast.whoami()).await.unwrap(), 7);
    }
}

over_kinds! {
    /// A call of a method not marked idempotent is never sent twice: when its server dies
    /// while the handler runs, the call fails with `Disconnected` and the handler ran once
    /// in all, though the other replicas would have answered at once. An idempotent call in
    /// the same spot is retried on another replica and succeeds.
    async fn a_non_idempotent_call_is_never_retried(kind) {
        let mut replicas = start_replicas(kind, 3).await;
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .backoff(short_backoff())
            .balance(endpoints(&replicas));
        all_ready(&client, 3).await;

        for replica in &replicas {
            replica.hold(Method::Record);
        }
        let call = tokio::spawn(client.record(7).timeout(CALL_TIMEOUT).into_future());
        wait_for(|| held(&replicas, Method::Record) == 1).await;
        let victim = replicas.iter().position(|r| r.waiting(Method::Record) == 1).unwrap();
        for (i, replica) in replicas.iter().enumerate() {
            if i != victim {
                replica.release(Method::Record);
            }
        }
        replicas[victim].kill().await;
        let err = guard(call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{kind:?}: {err}");
        assert_eq!(total(&replicas, Method::Record), 1, "{kind:?}: sent twice");
        assert!(replicas.iter().all(|r| r.recorded().is_empty()));
        assert_eq!(stats(&client).retries, 0);

        // The same with an idempotent method, on the two survivors.
        let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let victim_key = replicas[victim].key();
        eventually(|| endpoint(&client, &victim_key).state != EndpointState::Ready).await;
        for &i in &survivors {
            replicas[i].hold(Method::Slow);
        }
        let call = tokio::spawn(client.slow(0).timeout(CALL_TIMEOUT).into_future());
        wait_for(|| held(&replicas, Method::Slow) == 1).await;
        let (second, other) = if replicas[survivors[0]].waiting(Method::Slow) == 1 {
            (survivors[0], survivors[1])
        } else {
            (survivors[1], survivors[0])
        };
        replicas[other].release(Method::Slow);
        replicas[second].kill().await;
        let tag = guard(call).await.unwrap().unwrap();
        assert_eq!(tag, replicas[other].tag(), "{kind:?}");
        assert_eq!(total(&replicas, Method::Slow), 2);
        assert_eq!(stats(&client).retries, 1);
    }
}

over_kinds! {
    /// When every server refuses every call (`Overloaded`: each replica's only request slot
    /// is taken by a held call), retries stop at the retry budget (10% of the calls, no
    /// floor) though `max_attempts` would allow 9 per call; the refused retries are counted,
    /// and every call fails with `Overloaded`.
    async fn the_retry_budget_caps_retries_when_every_server_refuses(kind) {
        let one_slot = |server: rpc_core::Server| server.max_concurrent_requests(1);
        let replicas = vec![
            Replica::start_with(kind, 0, one_slot).await,
            Replica::start_with(kind, 1, one_slot).await,
        ];
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .retry_budget(
                RetryBudget::new(0.1)
                    .min_per_second(0)
                    .window(Duration::from_secs(3600)),
            )
            .max_attempts(10)
            .retry_backoff(Backoff::new(Duration::from_millis(1), Duration::from_millis(2)))
            .failure_accrual(FailureAccrual::disabled())
            .keepalive(None)
            .balance(endpoints(&replicas));
        all_ready(&client, 2).await;

        // Round robin sends one blocker to each replica.
        for replica in &replicas {
            replica.hold(Method::Slow);
        }
        let blockers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(client.slow(0).into_future()))
            .collect();
        wait_for(|| replicas.iter().all(|r| r.waiting(Method::Slow) == 1)).await;

        const CALLS: u64 = 200;
        for _ in 0..CALLS {
            let err = guard(client.whoami().timeout(CALL_TIMEOUT)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Overloaded, "{kind:?}: {err}");
        }
        let stats = stats(&client);
        assert_eq!(stats.calls, CALLS + 2, "{kind:?}: {stats:?}");
        assert!(
            stats.retries as f64 <= 0.1 * CALLS as f64 + 1.0,
            "{kind:?}: retries beyond the budget: {stats:?}"
        );
        assert!(stats.retries > 0, "{kind:?}: the budget allows some: {stats:?}");
        assert!(stats.retries_refused > 0, "{kind:?}: {stats:?}");
        let sent: u64 = stats.endpoints.iter().map(|e| e.calls).sum();
        assert_eq!(sent, CALLS + 2 + stats.retries, "{kind:?}: {stats:?}");
        assert_eq!(total(&replicas, Method::Whoami), 0, "shed calls run no handler");

        for replica in &replicas {
            replica.release(Method::Slow);
        }
        for blocker in blockers {
            guard(blocker).await.unwrap().unwrap();
        }
    }
}

over_kinds! {
    /// `Weighted` sends each replica its weight's share of the calls: with weights 1, 2, 3,
    /// each share of 6,000 calls is within 3 percentage points of 1/6, 2/6, 3/6.
    async fn weighted_balancing_follows_the_weights(kind) {
        let replicas = start_replicas(kind, 3).await;
        let client = FleetClient::builder()
            .strategy(Weighted::with_seed(42))
            .balance(replicas.iter().map(|r| r.endpoint().weight(r.tag() + 1)));
        all_ready(&client, 3).await;

        const CALLS: usize = 6000;
        let counts = whoami_counts(&client, CALLS, 3).await;
        let stats = stats(&client);
        for replica in &replicas {
            let tag = replica.tag() as usize;
            let share = counts[tag] as f64 / CALLS as f64;
            let expected = (tag + 1) as f64 / 6.0;
            assert!(
                (share - expected).abs() <= 0.03,
                "{kind:?}: replica {tag} got {share:.3}, expected {expected:.3}: {counts:?}"
            );
            assert_eq!(replica.runs(Method::Whoami), counts[tag]);
            let e = stats.endpoints.iter().find(|e| e.key == replica.key()).unwrap();
            assert_eq!((e.calls, e.weight), (counts[tag], tag as u32 + 1));
        }
    }
}

over_kinds! {
    /// `ConsistentHash`: a key always goes to the same replica, the keys spread over all of
    /// them, and removing one endpoint (through discovery) moves only the keys it had.
    async fn consistent_hashing_keeps_keys_in_place(kind) {
        let replicas = start_replicas(kind, 3).await;
        let (changes, discovered) = futures::channel::mpsc::unbounded();
        for replica in &replicas {
            changes.unbounded_send(Change::Insert(replica.endpoint())).unwrap();
        }
        let client = FleetClient::builder()
            .strategy(ConsistentHash::new())
            .discover(discovered);
        all_ready(&client, 3).await;
        let call = |key: &str| guard(client.whoami().hash_key(key).timeout(CALL_TIMEOUT));

        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let mut owners = Vec::new();
        for key in &keys {
            let first = call(key).await.unwrap();
            let second = call(key).await.unwrap();
            assert_eq!(first, second, "{kind:?}: key {key} moved");
            owners.push(first);
        }
        for replica in &replicas {
            let share = owners.iter().filter(|&&o| o == replica.tag()).count() as f64
                / keys.len() as f64;
            assert!(
                (0.15..=0.55).contains(&share),
                "{kind:?}: replica {} owns {share:.3} of the keys",
                replica.tag()
            );
        }

        changes.unbounded_send(Change::Remove(replicas[2].key())).unwrap();
        eventually(|| stats(&client).endpoints.len() == 2).await;
        let removed = replicas[2].served();
        let mut moved = 0;
        for (key, &owner) in keys.iter().zip(&owners) {
            let now = call(key).await.unwrap();
            if owner == 2 {
                assert_ne!(now, 2, "{kind:?}: a removed endpoint got a call");
                moved += 1;
            } else {
                assert_eq!(now, owner, "{kind:?}: key {key} moved though its endpoint stayed");
            }
        }
        assert!(moved > 0);
        assert_eq!(replicas[2].served(), removed);
    }
}

/// Counts, per replica, the answers to 300 sequential `whoami` calls through a client of
/// three fresh replicas of `kind` balanced by `strategy`.
async fn spread(kind: Kind, strategy: impl Strategy) -> Vec<u64> {
    let replicas = start_replicas(kind, 3).await;
    let client = FleetClient::builder()
        .strategy(strategy)
        .balance(endpoints(&replicas));
    all_ready(&client, 3).await;
    let counts = sequential_whoami_counts(&client, 300, 3).await;
    for replica in &replicas {
        assert_eq!(replica.runs(Method::Whoami), counts[replica.tag() as usize]);
    }
    counts
}

over_kinds! {
    /// `RoundRobin` gives every replica exactly its turn; `Random` gives each a fair part.
    async fn round_robin_and_random_spread_calls(kind) {
        assert_eq!(spread(kind, RoundRobin::new()).await, [100, 100, 100], "{kind:?}");
        let counts = spread(kind, Random::with_seed(42)).await;
        assert!(counts.iter().all(|&n| n >= 60), "{kind:?}: {counts:?}");
    }
}

over_kinds! {
    /// `LeastLoaded`: while one replica is stuck on a slow call, new calls go (nearly all)
    /// to the others.
    async fn least_loaded_steers_calls_away_from_a_busy_replica(kind) {
        let replicas = start_replicas(kind, 3).await;
        let client = FleetClient::builder()
            .strategy(LeastLoaded::with_seed(7))
            .balance(endpoints(&replicas));
        all_ready(&client, 3).await;

        replicas[0].hold(Method::Slow);
        let busy = park_call_on(&replicas[0], Method::Slow, || {
            client.slow(0).timeout(CALL_TIMEOUT).into_future()
        })
        .await;
        assert_eq!(endpoint(&client, &replicas[0].key()).in_flight, 1);

        let counts = sequential_whoami_counts(&client, 300, 3).await;
        assert!(counts[0] < 30, "{kind:?}: the busy replica got {counts:?}");

        replicas[0].release(Method::Slow);
        assert_eq!(guard(busy).await.unwrap().unwrap(), 0);
    }
}

over_kinds! {
    /// Endpoints come and go through discovery while calls run: an inserted one gets calls;
    /// a removed one gets no new calls, while a call in progress on it finishes there
    /// (drained, not cut), after which its connection closes.
    async fn discovered_endpoints_come_and_go_while_calls_run(kind) {
        let replicas = start_replicas(kind, 2).await;
        let (a, b) = (&replicas[0], &replicas[1]);
        let (changes, discovered) = futures::channel::mpsc::unbounded();
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .backoff(short_backoff())
            .discover(discovered);
        let stop = Arc::new(AtomicBool::new(false));
        // One caller, so at most one of its calls is in flight at any time.
        let caller = whoami_loop(&client, &stop);

        changes.unbounded_send(Change::Insert(a.endpoint())).unwrap();
        wait_for(|| a.runs(Method::Whoami) >= 20).await;
        changes.unbounded_send(Change::Insert(b.endpoint())).unwrap();
        wait_for(|| b.runs(Method::Whoami) >= 20).await;

        // A call in progress on `a`, not safe to retry: cutting it would fail it.
        a.hold(Method::Record);
        let draining = park_call_on(a, Method::Record, || {
            client.record(1).timeout(CALL_TIMEOUT).into_future()
        })
        .await;

        changes.unbounded_send(Change::Remove(a.key())).unwrap();
        eventually(|| stats(&client).endpoints.len() == 1).await;
        // Once `b` starts a call made after the removal, the caller's call that may have
        // been on its way to `a` is done.
        let b_then = b.runs(Method::Whoami);
        wait_for(|| b.runs(Method::Whoami) >= b_then + 2).await;
        let a_then = a.served();
        wait_for(|| b.runs(Method::Whoami) >= b_then + 100).await;
        assert_eq!(a.served(), a_then, "{kind:?}: a removed endpoint got new calls");

        assert!(!draining.is_finished());
        a.release(Method::Record);
        assert_eq!(guard(draining).await.unwrap().unwrap(), a.tag(), "{kind:?}");
        assert_eq!(a.recorded(), [1]);
        eventually(|| a.open_connections() == 0).await;

        stop.store(true, Ordering::SeqCst);
        for result in guard(caller).await.unwrap() {
            result.unwrap_or_else(|err| panic!("{kind:?}: a call failed: {err}"));
        }
    }
}

over_kinds! {
    /// Failure accrual: a replica whose handlers all panic (`Internal`) is ejected after
    /// three failures in a row, and then gets no calls while the others are healthy.
    async fn a_failing_replica_is_ejected(kind) {
        let replicas = start_replicas(kind, 3).await;
        let bad = &replicas[1];
        bad.set_broken(true);
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .failure_accrual(FailureAccrual {
                min_ejection: Duration::from_secs(3600),
                max_ejection: Duration::from_secs(3600),
                ..FailureAccrual::new(3)
            })
            .balance(endpoints(&replicas));
        all_ready(&client, 3).await;

        // Not idempotent, so each failure reaches the caller.
        let mut failures = 0;
        guard(async {
            while !endpoint(&client, &bad.key()).ejected {
                match client.record(0).timeout(CALL_TIMEOUT).await {
                    Ok(tag) => assert_ne!(tag, bad.tag()),
                    Err(err) => {
                        assert_eq!(err.kind(), ErrorKind::Internal, "{kind:?}: {err}");
                        failures += 1;
                    }
                }
            }
        })
        .await;
        assert_eq!(failures, 3, "{kind:?}");
        assert_eq!(bad.runs(Method::Record), 3);

        let sent = endpoint(&client, &bad.key()).calls;
        for _ in 0..300 {
            let tag = guard(client.record(0).timeout(CALL_TIMEOUT)).await.unwrap();
            assert_ne!(tag, bad.tag(), "{kind:?}");
        }
        assert_eq!(bad.runs(Method::Record), 3, "{kind:?}: an ejected replica got calls");
        let after = endpoint(&client, &bad.key());
        assert!(after.ejected);
        assert_eq!(after.calls, sent);
    }
}

over_kinds! {
    /// A server shut down gracefully loses no call: a call in progress on it finishes there
    /// (though its method is not idempotent), idempotent calls that reach it while it drains
    /// are refused and retried elsewhere, and the server ends once it is drained.
    async fn a_gracefully_stopped_server_finishes_its_calls(kind) {
        let mut replicas = start_replicas(kind, 3).await;
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .backoff(short_backoff())
            .balance(endpoints(&replicas));
        all_ready(&client, 3).await;
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..2).map(|_| whoami_loop(&client, &stop)).collect();
        wait_for(|| replicas.iter().all(|r| r.runs(Method::Whoami) >= 20)).await;

        replicas[0].hold(Method::Record);
        let draining = park_call_on(&replicas[0], Method::Record, || {
            client.record(5).timeout(CALL_TIMEOUT).into_future()
        })
        .await;
        let server = replicas[0].shut_down();
        let before: Vec<u64> = replicas[1..].iter().map(|r| r.runs(Method::Whoami)).collect();
        wait_for(|| {
            replicas[1..]
                .iter()
                .zip(&before)
                .all(|(r, &b)| r.runs(Method::Whoami) >= b + 100)
        })
        .await;
        assert!(!draining.is_finished());
        assert!(!server.is_finished(), "{kind:?}: the server closed with a call in progress");

        replicas[0].release(Method::Record);
        assert_eq!(guard(draining).await.unwrap().unwrap(), 0, "{kind:?}");
        assert_eq!(replicas[0].recorded(), [5]);
        guard(server).await.unwrap().unwrap();
        stop.store(true, Ordering::SeqCst);
        for caller in callers {
            for result in guard(caller).await.unwrap() {
                result.unwrap_or_else(|err| panic!("{kind:?}: a call failed: {err}"));
            }
        }
    }
}

over_kinds! {
    /// Failure accrual takes a replica back once it recovers, even when a probe (the first
    /// call let through after its ejection) times out: a probe that ends without an answer
    /// must not leave the replica set aside for good.
    async fn an_ejected_replica_is_probed_again_after_a_probe_times_out(kind) {
        let replicas = start_replicas(kind, 2).await;
        let bad = &replicas[1];
        bad.set_broken(true);
        let client = FleetClient::builder()
            .strategy(RoundRobin::new())
            .failure_accrual(FailureAccrual {
                min_ejection: Duration::from_millis(20),
                max_ejection: Duration::from_millis(20),
                ..FailureAccrual::new(1)
            })
            .balance(endpoints(&replicas));
        all_ready(&client, 2).await;

        // One failure ejects it.
        guard(async {
            while !endpoint(&client, &bad.key()).ejected {
                let _ = client.record(0).timeout(CALL_TIMEOUT).await;
            }
        })
        .await;
        assert_eq!(bad.runs(Method::Record), 1);

        // It recovers, but the first call it gets after the ejection, the probe, times out.
        bad.set_broken(false);
        bad.hold(Method::Slow);
        guard(async {
            loop {
                let result = client.slow(0).timeout(Duration::from_millis(50)).await;
                if bad.runs(Method::Slow) == 1 {
                    let err = result.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
                    break;
                }
                assert_eq!(result.unwrap(), 0);
            }
        })
        .await;
        bad.release(Method::Slow);

        // A later probe finds it healthy, and it takes calls again. Its ejections last
        // 20 ms; seconds of calls without one reaching it mean it is never probed again.
        let taken_back = tokio::time::timeout(Duration::from_secs(5), async {
            while bad.runs(Method::Whoami) == 0 {
                client.whoami().timeout(CALL_TIMEOUT).await.unwrap();
            }
        })
        .await;
        assert!(
            taken_back.is_ok(),
            "{kind:?}: the recovered replica never got a call again: {:?}",
            endpoint(&client, &bad.key())
        );
        assert!(!endpoint(&client, &bad.key()).ejected);
    }
}
