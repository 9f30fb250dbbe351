//! Middleware and the governance policies built on them, end to end over memory and TCP:
//! server and client middleware (refuse, answer, add metadata, order, scope, panics),
//! asynchronous authorization, rate limits, adaptive concurrency with priority and deadline
//! shedding, and a client-side fallback.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::replica::{FleetClient, Method, Replica};
use common::{guard, lab, lab_client, next_event, Event, Kind, LabClient, LabServer};
use rpc_core::governance::{AdaptiveConcurrency, KeyBy, Priority, RateLimit};
use rpc_core::middleware::{authorize_with, from_fn, ClientCall, Next, Reply, ServerCall};
use rpc_core::{context, service, ErrorKind, RpcError, Server};

const KINDS: [Kind; 2] = [Kind::MemoryListener, Kind::Tcp];

/// A service that shows the test what its handlers see.
#[service]
pub trait Probe {
    /// The metadata value under `key`, as the handler sees it.
    async fn meta(&self, key: String) -> Option<String>;
    /// Counts its runs.
    async fn count(&self) -> u64;
    /// Sleeps `ms` milliseconds (tokio time), then returns `ms`.
    async fn work(&self, ms: u64) -> u64;
}

#[derive(Clone, Default)]
struct ProbeImpl {
    runs: Arc<AtomicU64>,
}

impl Probe for ProbeImpl {
    async fn meta(&self, key: String) -> Option<String> {
        context::metadata().get_str(&key).map(str::to_owned)
    }
    async fn count(&self) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }
    async fn work(&self, ms: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

async fn probe(kind: Kind, server: Server, probe: ProbeImpl) -> (ProbeClient, common::Harness) {
    let mut harness =
        common::Harness::start(kind, server.add_service(ProbeServer::new(probe))).await;
    let client = ProbeClient::new(harness.connect().await);
    (client, harness)
}

#[tokio::test]
async fn server_middleware_refuse_answer_and_pass_metadata_on() {
    for kind in KINDS {
        let policy = from_fn(|mut call: ServerCall, next: Next<ServerCall>| async move {
            assert_eq!(call.service(), "Probe");
            if call.metadata().get_str("deny").is_some() {
                return Err(RpcError::permission_denied(
                    "denied by the test's middleware",
                ));
            }
            if call.metadata().get_str("answer").is_some() {
                return Reply::encode(&Some("answered".to_string()));
            }
            call.metadata_mut().insert("added", "by middleware");
            next.run(call).await
        });
        let state = ProbeImpl::default();
        let (client, _harness) = probe(kind, Server::new().layer(policy), state.clone()).await;

        let seen = guard(client.meta("added".into())).await;
        assert_eq!(seen, Ok(Some("by middleware".into())), "{kind:?}");
        // The caller's own metadata is still there.
        let seen = guard(client.meta("mine".into()).metadata("mine", "yes")).await;
        assert_eq!(seen, Ok(Some("yes".into())), "{kind:?}");

        let err = guard(client.count().metadata("deny", "1"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{kind:?}");
        let answered = guard(client.meta("x".into()).metadata("answer", "1")).await;
        assert_eq!(answered, Ok(Some("answered".into())), "{kind:?}");
        // Neither the refused nor the answered call reached a handler.
        assert_eq!(state.runs.load(Ordering::SeqCst), 0, "{kind:?}");
        assert_eq!(guard(client.count()).await, Ok(1), "{kind:?}");
    }
}

#[tokio::test]
async fn middleware_run_in_order_and_only_where_scoped() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let named = |name: &'static str| {
        let log = Arc::clone(&log);
        from_fn(move |call: ServerCall, next: Next<ServerCall>| {
            let log = Arc::clone(&log);
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("{name} in {}", call.method()));
                let outcome = next.run(call).await;
                log.lock().unwrap().push(format!("{name} out"));
                outcome
            }
        })
    };
    let server = Server::new()
        .layer(named("all"))
        .layer_for(&ProbeClient::DESCRIPTOR, named("service"))
        .layer_for(&LabClient::DESCRIPTOR, named("other service"))
        .layer_for_method(&ProbeClient::DESCRIPTOR, "count", named("count only"));
    let (client, _harness) = probe(Kind::Tcp, server, ProbeImpl::default()).await;

    guard(client.count()).await.expect("count");
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        [
            "all in count",
            "service in count",
            "count only in count",
            "count only out",
            "service out",
            "all out"
        ]
    );
    guard(client.meta("k".into())).await.expect("meta");
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        ["all in meta", "service in meta", "service out", "all out"]
    );
}

#[test]
#[should_panic(expected = "`Probe` has no method `cuont`; its methods are meta, count, work")]
fn a_method_scope_with_a_typo_is_refused_when_configured() {
    let _ = Server::new().layer_for_method(
        &ProbeClient::DESCRIPTOR,
        "cuont",
        from_fn(|call: ServerCall, next: Next<ServerCall>| next.run(call)),
    );
}

#[tokio::test]
async fn a_panicking_middleware_fails_its_call_and_the_server_goes_on() {
    for kind in KINDS {
        let policy = from_fn(|call: ServerCall, next: Next<ServerCall>| async move {
            if call.metadata().get_str("boom").is_some() {
                panic!("middleware exploded");
            }
            next.run(call).await
        });
        let (client, _harness) =
            probe(kind, Server::new().layer(policy), ProbeImpl::default()).await;
        let err = guard(client.count().metadata("boom", "1"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{kind:?}");
        assert!(err.message().contains("middleware exploded"), "{err}");
        assert_eq!(guard(client.count()).await, Ok(1), "{kind:?}");
    }
}

#[tokio::test]
async fn asynchronous_authorization_sees_the_peer_and_the_token() {
    for kind in KINDS {
        let auth = authorize_with(move |call: &ServerCall| {
            let token = call.metadata().get_str("authorization").map(str::to_owned);
            let over_tcp = call.peer().and_then(|peer| peer.ip()).is_some();
            async move {
                // Stands for a key service asked over the network.
                tokio::task::yield_now().await;
                match token.as_deref() {
                    Some("Bearer good") => Ok(()),
                    Some(_) => Err(RpcError::permission_denied("not this token")),
                    None => Err(RpcError::unauthenticated(format!(
                        "no token (tcp: {over_tcp})"
                    ))),
                }
            }
        });
        let (client, _harness) = probe(kind, Server::new().layer(auth), ProbeImpl::default()).await;
        let err = guard(client.count()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert_eq!(
            err.message(),
            format!("no token (tcp: {})", kind == Kind::Tcp)
        );
        let err = guard(client.count().metadata("authorization", "Bearer bad"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            guard(client.count().metadata("authorization", "Bearer good")).await,
            Ok(1)
        );
    }
}

#[tokio::test]
async fn client_middleware_add_metadata_refuse_and_answer_locally() {
    for kind in KINDS {
        let mut harness = common::Harness::start(
            kind,
            Server::new().add_service(ProbeServer::new(ProbeImpl::default())),
        )
        .await;
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sent);
        let client = rpc_core::Client::new(harness.connect().await, &ProbeClient::DESCRIPTOR)
            .layer(from_fn(
                move |mut call: ClientCall, next: Next<ClientCall>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    call.metadata_mut().insert("tenant", "acme");
                    next.run(call)
                },
            ))
            .layer_for_method(
                "count",
                from_fn(|call: ClientCall, next: Next<ClientCall>| async move {
                    if call.metadata().get_str("offline").is_some() {
                        return Reply::encode(&99u64);
                    }
                    let reply = next.run(call).await?;
                    // The server's answer, still encoded: a client middleware can read it.
                    assert_eq!(reply.decode::<u64>(), Some(Ok(1)));
                    Ok(reply)
                }),
            );
        let client = ProbeClient::from_client(client);
        assert_eq!(
            guard(client.meta("tenant".into())).await,
            Ok(Some("acme".into()))
        );
        assert_eq!(guard(client.count().metadata("offline", "1")).await, Ok(99));
        assert_eq!(guard(client.count()).await, Ok(1));
        assert_eq!(sent.load(Ordering::SeqCst), 3);
    }
}

/// The fallback of the docs: a balancing client whose endpoints are all down answers from a
/// local default instead of failing.
#[tokio::test]
async fn a_client_fallback_answers_when_every_endpoint_is_down() {
    for kind in KINDS {
        let mut replica = Replica::start(kind, 7).await;
        let fallback = from_fn(|call: ClientCall, next: Next<ClientCall>| async move {
            match next.run(call).await {
                Err(err)
                    if matches!(err.kind(), ErrorKind::Disconnected | ErrorKind::Overloaded) =>
                {
                    Reply::encode(&0u32)
                }
                outcome => outcome,
            }
        });
        let client = FleetClient::builder()
            .layer(fallback)
            .connect_timeout(Duration::from_secs(2))
            .balance([replica.endpoint()]);
        assert_eq!(guard(client.whoami()).await, Ok(7), "{kind:?}");
        replica.kill().await;
        assert_eq!(
            guard(client.whoami()).await,
            Ok(0),
            "{kind:?}: the fallback's answer"
        );
    }
}

#[tokio::test]
async fn a_rate_limit_per_tenant_refuses_with_a_time_to_retry() {
    for kind in KINDS {
        let limit = RateLimit::builder()
            .rate(2, Duration::from_secs(3600))
            .key_by(KeyBy::Metadata("tenant"))
            .build()
            .expect("valid");
        let state = ProbeImpl::default();
        let server = Server::new().layer_for_method(&ProbeClient::DESCRIPTOR, "count", limit);
        let (client, _harness) = probe(kind, server, state.clone()).await;
        for _ in 0..2 {
            guard(client.count().metadata("tenant", "acme"))
                .await
                .expect("within the rate");
        }
        let err = guard(client.count().metadata("tenant", "acme"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited, "{kind:?}: {err}");
        let after = err
            .retry_after()
            .expect("a rate-limited call says when to retry");
        assert!(
            after > Duration::from_secs(60) && after <= Duration::from_secs(1800),
            "{after:?}"
        );
        assert!(err.message().contains("2 calls per 3600s"), "{err}");
        assert_eq!(
            state.runs.load(Ordering::SeqCst),
            2,
            "the refused call never ran"
        );
        // Another tenant, and another method, are not limited by acme's bucket.
        guard(client.count().metadata("tenant", "globex"))
            .await
            .expect("another tenant");
        guard(client.meta("k".into()).metadata("tenant", "acme"))
            .await
            .expect("another method");
    }
}

#[tokio::test]
async fn a_rate_limit_by_peer_ip_over_tcp() {
    let limit = RateLimit::builder()
        .rate(1, Duration::from_secs(3600))
        .key_by(KeyBy::PeerIp)
        .per_method(false)
        .build()
        .expect("valid");
    let (client, _harness) =
        probe(Kind::Tcp, Server::new().layer(limit), ProbeImpl::default()).await;
    guard(client.count()).await.expect("the first call");
    let err = guard(client.meta("k".into())).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::RateLimited,
        "one bucket for every method: {err}"
    );
}

/// Buckets refill on the runtime's clock: in paused (or simulated) time, an hour passes
/// when the runtime says so.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_refills_in_the_runtimes_time() {
    let limit = RateLimit::builder()
        .rate(1, Duration::from_secs(3600))
        .build()
        .expect("valid");
    let server = Server::new().layer_for_method(&ProbeClient::DESCRIPTOR, "count", limit);
    let (client, _harness) = probe(Kind::MemoryPair, server, ProbeImpl::default()).await;
    guard(client.count()).await.expect("the first call");
    let err = guard(client.count()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    let wait = err.retry_after().expect("when to retry");
    assert!(wait > Duration::from_secs(3500), "{wait:?}");
    tokio::time::advance(wait).await;
    guard(client.count())
        .await
        .expect("an hour later, a token again");
}

#[test]
fn bad_rate_limits_are_refused_when_built() {
    let zero = RateLimit::builder()
        .rate(0, Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(
        zero.to_string()
            .contains("a rate of 0 calls lets no call through"),
        "{zero}"
    );
    let burst = RateLimit::builder().burst(0).build().unwrap_err();
    assert!(burst.to_string().contains("a burst of 0"), "{burst}");
    let period = RateLimit::builder()
        .rate(5, Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(period.to_string().contains("period is 0"), "{period}");
}

static REFUSED_SEEN: AtomicUsize = AtomicUsize::new(0);

fn rate_limited_whoami(server: Server) -> Server {
    let limit = RateLimit::builder()
        .rate(1, Duration::from_secs(3600))
        .build()
        .expect("valid");
    let count = from_fn(|call: ServerCall, next: Next<ServerCall>| async move {
        let outcome = next.run(call).await;
        if matches!(&outcome, Err(err) if err.kind() == ErrorKind::RateLimited) {
            REFUSED_SEEN.fetch_add(1, Ordering::SeqCst);
        }
        outcome
    });
    server.layer(count).layer(limit)
}

#[tokio::test]
async fn a_balancing_client_neither_retries_a_rate_limited_call_nor_blames_the_endpoint() {
    let replica = Replica::start_with(Kind::Tcp, 1, rate_limited_whoami).await;
    let client = FleetClient::builder().balance([replica.endpoint()]);
    assert_eq!(guard(client.whoami()).await, Ok(1));
    let err = guard(client.whoami()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert!(err.retry_after().is_some());
    assert_eq!(
        REFUSED_SEEN.load(Ordering::SeqCst),
        1,
        "sent once, not retried"
    );
    let stats = client.client().stats().expect("a balancing client");
    assert_eq!(stats.retries, 0);
    assert!(stats.endpoints.iter().all(|e| !e.ejected), "{stats:?}");
    assert_eq!(replica.runs(Method::Whoami), 1);
}

#[test]
fn bad_adaptive_limits_are_refused_when_built() {
    let zero = AdaptiveConcurrency::builder()
        .limits(0, 10)
        .build()
        .unwrap_err();
    assert!(zero.to_string().contains("minimum limit of 0"), "{zero}");
    let inverted = AdaptiveConcurrency::builder()
        .limits(10, 5)
        .build()
        .unwrap_err();
    assert!(
        inverted.to_string().contains("above the maximum"),
        "{inverted}"
    );
    let tolerance = AdaptiveConcurrency::builder()
        .tolerance(0.5)
        .build()
        .unwrap_err();
    assert!(
        tolerance.to_string().contains("tolerance of 0.5"),
        "{tolerance}"
    );
}

#[tokio::test]
async fn lower_priorities_are_shed_first() {
    for kind in KINDS {
        // A fixed limit of 4: sheddable calls may fill 2 places, default ones 3, critical 4.
        let limit = AdaptiveConcurrency::builder()
            .limits(4, 4)
            .build()
            .expect("valid");
        let (lab, mut events) = lab();
        let release = Arc::clone(&lab.release);
        let (client, _harness) = lab_client(
            kind,
            Server::new()
                .layer(limit.clone())
                .add_service(LabServer::new(lab)),
        )
        .await;
        let mut blocked = Vec::new();
        for tag in 0..2 {
            let client = client.clone();
            blocked.push(tokio::spawn(async move { client.block(tag).await }));
            assert_eq!(next_event(&mut events).await, Event::Started(tag));
        }
        let err = guard(client.add(1, 1).priority(Priority::Sheddable))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{kind:?}: {err}");
        assert!(err.message().contains("sheddable"), "{err}");
        assert_eq!(
            guard(client.add(1, 1)).await,
            Ok(2),
            "{kind:?}: a default call has room"
        );

        let third = client.clone();
        blocked.push(tokio::spawn(async move { third.block(2).await }));
        assert_eq!(next_event(&mut events).await, Event::Started(2));
        let err = guard(client.add(1, 1)).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Overloaded,
            "{kind:?}: default calls fill 3 of 4"
        );
        assert_eq!(
            guard(client.add(2, 2).priority(Priority::Critical)).await,
            Ok(4)
        );
        assert_eq!(limit.in_flight(), 3);

        release.notify_waiters();
        for call in blocked {
            guard(call).await.expect("join").expect("released");
        }
        assert_eq!(limit.in_flight(), 0);
    }
}

#[tokio::test]
async fn a_call_that_would_miss_its_deadline_is_refused_at_once() {
    for kind in KINDS {
        let limit = AdaptiveConcurrency::builder().build().expect("valid");
        let state = ProbeImpl::default();
        let (client, _harness) = probe(kind, Server::new().layer(limit), state.clone()).await;
        // Each takes at least 100 ms, so the method's typical time is at least that.
        for _ in 0..3 {
            assert_eq!(guard(client.work(100)).await, Ok(100));
        }
        let err = guard(client.work(100).timeout(Duration::from_millis(80)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
        assert!(err.message().contains("refused at once"), "{kind:?}: {err}");
        assert_eq!(
            state.runs.load(Ordering::SeqCst),
            3,
            "the refused call never ran"
        );
        // With time enough, it runs.
        let enough = client.work(100).timeout(Duration::from_secs(20));
        assert_eq!(guard(enough).await, Ok(100));
    }
}

/// Tower's layers wrap calls through `CallService`: here tower's own concurrency limit
/// holds a second call back until the first is done.
#[tokio::test]
async fn tower_layers_wrap_calls() {
    use tower::{Service, ServiceBuilder, ServiceExt};

    for kind in KINDS {
        let (lab, mut events) = lab();
        let release = Arc::clone(&lab.release);
        let (client, _harness) =
            lab_client(kind, Server::new().add_service(LabServer::new(lab))).await;
        let mut first = ServiceBuilder::new()
            .concurrency_limit(1)
            .service(rpc_core::tower::CallService);
        let mut second = first.clone();

        let held = ServiceExt::<rpc_core::Call<u64>>::ready(&mut first)
            .await
            .expect("ready")
            .call(client.block(1));
        let held = tokio::spawn(held);
        assert_eq!(next_event(&mut events).await, Event::Started(1));
        let mut waiting = std::pin::pin!(ServiceExt::<rpc_core::Call<i64>>::ready(&mut second));
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "the limit's one permit is taken"
        );

        release.notify_waiters();
        assert_eq!(guard(held).await.expect("join"), Ok(1));
        let ready = guard(waiting).await.expect("ready");
        assert_eq!(guard(ready.call(client.add(1, 2))).await, Ok(3), "{kind:?}");
    }
}
