//! The server's `Authorize` hook, the peer a handler sees, and the per-address connection
//! limit. Every test that applies runs over every transport in `common::KINDS`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{guard, Harness, Kind, KINDS};
use rpc_core::{
    context, service, Authorize, CallInfo, ConnectionInfo, ErrorKind, RpcError, Server,
};

/// A service whose handler counts its runs and reports the peer it saw.
#[service]
pub trait Guarded {
    async fn whoami(&self) -> Option<String>;
    async fn public(&self) -> u32;
}

#[derive(Clone, Default)]
struct GuardedImpl {
    runs: Arc<AtomicUsize>,
}

impl Guarded for GuardedImpl {
    async fn whoami(&self) -> Option<String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        context::peer().and_then(|peer| peer.addr().map(str::to_string))
    }
    async fn public(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        7
    }
}

const TOKEN: &str = "Bearer s3cret";

/// Lets `public` through; `whoami` needs the bearer token.
fn bearer(call: &CallInfo<'_>) -> Result<(), RpcError> {
    if call.method() == "public" {
        return Ok(());
    }
    match call.metadata().get_str("authorization") {
        Some(TOKEN) => Ok(()),
        Some(_) => Err(RpcError::permission_denied(
            "this token may not call `whoami`",
        )),
        None => Err(RpcError::unauthenticated(
            "no `authorization` metadata: send `Bearer <token>`",
        )),
    }
}

async fn start(kind: Kind, server: Server) -> (GuardedClient, Harness) {
    let mut harness = Harness::start(kind, server).await;
    let client = GuardedClient::new(harness.connect().await);
    (client, harness)
}

#[tokio::test]
async fn a_call_without_its_token_is_refused_before_the_handler() {
    for kind in KINDS {
        let service = GuardedImpl::default();
        let runs = Arc::clone(&service.runs);
        let server = Server::new()
            .authorize(bearer)
            .add_service(GuardedServer::new(service));
        let (client, _harness) = start(kind, server).await;

        let err = guard(client.whoami()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{kind:?}: {err}");
        assert!(err.message().contains("send `Bearer <token>`"), "{err}");

        let err = guard(client.whoami().metadata("authorization", "Bearer nope"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{kind:?}: {err}");
        assert!(err.message().contains("may not call `whoami`"), "{err}");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "{kind:?}: a refused call ran"
        );

        // The connection is still good, for allowed calls and for the right token.
        assert_eq!(guard(client.public()).await, Ok(7));
        guard(client.whoami().metadata("authorization", TOKEN))
            .await
            .unwrap_or_else(|err| panic!("{kind:?}: {err}"));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{kind:?}");
    }
}

#[tokio::test]
async fn a_token_set_on_the_client_travels_with_every_call() {
    for kind in [Kind::MemoryListener, Kind::Tcp, Kind::Unix] {
        let server = Server::new()
            .authorize(bearer)
            .add_service(GuardedServer::new(GuardedImpl::default()));
        let mut harness = Harness::start(kind, server).await;
        let transport = harness.connect().await;
        let client: GuardedClient = GuardedClient::builder()
            .metadata("authorization", TOKEN)
            .transport(transport);
        for _ in 0..3 {
            guard(client.whoami())
                .await
                .unwrap_or_else(|err| panic!("{kind:?}: {err}"));
        }
    }
}

/// Refuses connections to `Guarded` from anyone, and records what it saw.
#[derive(Clone, Default)]
struct Doorman {
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Authorize for Doorman {
    fn connection(&self, connection: &ConnectionInfo<'_>) -> Result<(), RpcError> {
        self.seen.lock().unwrap().push((
            connection.service().to_string(),
            connection.peer().to_string(),
        ));
        Err(RpcError::permission_denied(
            "connections from this network are not allowed",
        ))
    }
}

#[tokio::test]
async fn a_refused_connection_fails_its_calls_with_the_hooks_error() {
    for kind in KINDS {
        let doorman = Doorman::default();
        let service = GuardedImpl::default();
        let runs = Arc::clone(&service.runs);
        let server = Server::new()
            .authorize(doorman.clone())
            .add_service(GuardedServer::new(service));
        let (client, _harness) = start(kind, server).await;

        let err = guard(client.public()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{kind:?}: {err}");
        assert!(
            err.message().contains("not allowed"),
            "{kind:?}: the hook's message reaches the caller: {err}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let seen = doorman.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{kind:?}");
        assert_eq!(seen[0].0, "Guarded");
        match kind {
            Kind::Tcp => assert!(seen[0].1.starts_with("127.0.0.1:"), "{}", seen[0].1),
            Kind::Unix => assert!(seen[0].1.starts_with("unix:"), "{}", seen[0].1),
            _ => assert_eq!(seen[0].1, "unknown peer"),
        }
    }
}

#[tokio::test]
async fn a_pooled_client_refused_by_every_server_says_so() {
    let server = Server::new()
        .authorize(Doorman::default())
        .add_service(GuardedServer::new(GuardedImpl::default()));
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let client: GuardedClient =
        GuardedClient::builder().connect(rpc_transport::tcp::connector(addr));
    let err = guard(client.public()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("not allowed"), "{err}");
}

#[tokio::test]
async fn a_panicking_hook_refuses_with_internal_and_the_server_lives_on() {
    for kind in KINDS {
        let server = Server::new()
            .authorize(|call: &CallInfo<'_>| {
                if call.method() == "whoami" {
                    panic!("a bug in the hook");
                }
                Ok(())
            })
            .add_service(GuardedServer::new(GuardedImpl::default()));
        let (client, _harness) = start(kind, server).await;
        let err = guard(client.whoami()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{kind:?}: {err}");
        assert!(
            err.message().contains("authorization hook panicked"),
            "{err}"
        );
        assert_eq!(guard(client.public()).await, Ok(7), "{kind:?}");
    }
}

#[tokio::test]
async fn handlers_see_their_peer() {
    for kind in KINDS {
        let server = Server::new().add_service(GuardedServer::new(GuardedImpl::default()));
        let (client, _harness) = start(kind, server).await;
        let seen = guard(client.whoami()).await.unwrap();
        match kind {
            Kind::Tcp => {
                let addr = seen.expect("a TCP peer has an address");
                assert!(addr.starts_with("127.0.0.1:"), "{addr}");
            }
            Kind::Unix => assert!(seen.is_some_and(|addr| addr.starts_with("unix:"))),
            Kind::MemoryPair | Kind::MemoryListener => assert_eq!(seen, None),
        }
    }
}

#[tokio::test]
async fn the_health_check_can_be_let_through() {
    let server = Server::new()
        .authorize(|call: &CallInfo<'_>| {
            if call.service() == "rpc.Health" {
                Ok(())
            } else {
                Err(RpcError::unauthenticated("no credentials"))
            }
        })
        .add_service(GuardedServer::new(GuardedImpl::default()));
    let (listener, connector) = rpc_transport::memory::listener();
    tokio::spawn(server.serve(listener));
    let health = rpc_core::health::HealthClient::new(connector.connect().await.unwrap());
    let status = guard(health.check(String::new())).await.unwrap();
    assert_eq!(status, rpc_core::health::HealthStatus::Serving);
    let guarded = GuardedClient::new(connector.connect().await.unwrap());
    let err = guard(guarded.public()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn connections_per_ip_are_limited_and_freed_when_they_close() {
    let server = Server::new()
        .max_connections_per_ip(2)
        .add_service(GuardedServer::new(GuardedImpl::default()));
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = server.stats();
    tokio::spawn(server.serve(listener));

    let connect = || async { GuardedClient::new(rpc_transport::tcp::connect(addr).await.unwrap()) };
    let first = connect().await;
    let second = connect().await;
    assert_eq!(guard(first.public()).await, Ok(7));
    assert_eq!(guard(second.public()).await, Ok(7));

    let third = connect().await;
    let err = guard(third.public()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    assert!(err.message().contains("max_connections_per_ip"), "{err}");
    assert!(err.message().contains("127.0.0.1"), "{err}");

    // Closing one frees its place: wait until the server has seen it go.
    drop(first);
    guard(async {
        while stats.open_connections() > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let fourth = connect().await;
    assert_eq!(guard(fourth.public()).await, Ok(7));
}
