//! The health check every server hosts (`rpc.Health`): what it answers for the server, for
//! its services and for names it does not host; overrides through a `HealthReporter`; what
//! it says while the server shuts down; and a user's own `rpc.Health` taking its place.

mod common;

use std::future::IntoFuture;
use std::time::Duration;

use common::{guard, lab, next_event, Event, Harness, Kind, LabClient, LabServer, KINDS};
use rpc_core::health::{HealthClient, HealthStatus};
use rpc_core::{service, ErrorKind, Server};
use tokio::sync::oneshot;

use HealthStatus::{NotServing, Serving, Unknown};

fn lab_server() -> Server {
    let (imp, _events) = lab();
    Server::new().add_service(LabServer::new(imp))
}

async fn check(health: &HealthClient, service: &str) -> HealthStatus {
    guard(health.check(service.to_string()))
        .await
        .unwrap_or_else(|err| panic!("check({service:?}) failed: {err}"))
}

/// A health client of a server running on a fresh transport of `kind`.
async fn health_client(kind: Kind, server: Server) -> (HealthClient, Harness) {
    let mut harness = Harness::start(kind, server).await;
    (HealthClient::new(harness.connect().await), harness)
}

#[service(name = "pkg.Renamed")]
pub trait Renamed {
    async fn ping(&self) -> u8;
}

struct RenamedImpl;
impl Renamed for RenamedImpl {
    async fn ping(&self) -> u8 {
        1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_answers_for_itself_and_its_services() {
    for kind in KINDS {
        let server = lab_server().add_service(RenamedServer::new(RenamedImpl));
        let (health, _h) = health_client(kind, server).await;
        assert_eq!(check(&health, "").await, Serving, "{kind:?}");
        assert_eq!(check(&health, "Lab").await, Serving, "{kind:?}");
        // Services are known by their wire names.
        assert_eq!(check(&health, "pkg.Renamed").await, Serving, "{kind:?}");
        assert_eq!(check(&health, "Renamed").await, Unknown, "{kind:?}");
        // Names it does not host, exactly.
        assert_eq!(check(&health, "Nope").await, Unknown, "{kind:?}");
        assert_eq!(check(&health, "lab").await, Unknown, "{kind:?}");
        assert_eq!(check(&health, " Lab").await, Unknown, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_no_services_of_its_own_is_serving() {
    for kind in KINDS {
        let (health, _h) = health_client(kind, Server::new()).await;
        assert_eq!(check(&health, "").await, Serving, "{kind:?}");
        assert_eq!(check(&health, "Lab").await, Unknown, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_and_the_services_share_a_listener() {
    let (imp, _events) = lab();
    let mut harness =
        Harness::start(Kind::Tcp, Server::new().add_service(LabServer::new(imp))).await;
    let lab = LabClient::new(harness.connect().await);
    let health = HealthClient::new(harness.connect().await);
    assert_eq!(guard(lab.add(1, 2)).await.unwrap(), 3);
    assert_eq!(check(&health, "Lab").await, Serving);
    assert_eq!(guard(lab.add(3, 4)).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_overrides_until_set_serving_again() {
    for kind in KINDS {
        let server = lab_server().add_service(RenamedServer::new(RenamedImpl));
        let reporter = server.health_reporter();
        let (health, _h) = health_client(kind, server).await;

        // One service: only it.
        reporter.set("Lab", NotServing);
        assert_eq!(check(&health, "Lab").await, NotServing, "{kind:?}");
        assert_eq!(check(&health, "pkg.Renamed").await, Serving, "{kind:?}");
        assert_eq!(check(&health, "").await, Serving, "{kind:?}");
        reporter.set("Lab", Serving);
        assert_eq!(check(&health, "Lab").await, Serving, "{kind:?}");

        // The whole server: every service it hosts.
        reporter.set("", NotServing);
        assert_eq!(check(&health, "").await, NotServing, "{kind:?}");
        assert_eq!(check(&health, "Lab").await, NotServing, "{kind:?}");
        assert_eq!(check(&health, "pkg.Renamed").await, NotServing, "{kind:?}");
        // A name it does not host stays unknown.
        assert_eq!(check(&health, "Nope").await, Unknown, "{kind:?}");
        reporter.set("", Serving);
        assert_eq!(check(&health, "").await, Serving, "{kind:?}");
        assert_eq!(check(&health, "Lab").await, Serving, "{kind:?}");

        // An override for a name the server does not host changes nothing.
        reporter.set("Nope", NotServing);
        assert_eq!(check(&health, "Nope").await, Unknown, "{kind:?}");
        assert_eq!(check(&health, "").await, Serving, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporter_set_before_the_server_starts_applies() {
    for kind in KINDS {
        let server = lab_server();
        let reporter = server.health_reporter();
        let clone = reporter.clone();
        reporter.set("Lab", NotServing);
        drop(reporter);
        let (health, _h) = health_client(kind, server).await;
        assert_eq!(check(&health, "Lab").await, NotServing, "{kind:?}");
        // A clone of the reporter is the same reporter.
        clone.set("Lab", Serving);
        assert_eq!(check(&health, "Lab").await, Serving, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_is_advice_calls_still_run() {
    for kind in [Kind::MemoryListener, Kind::Tcp, Kind::Unix] {
        let server = lab_server();
        let reporter = server.health_reporter();
        let mut harness = Harness::start(kind, server).await;
        let health = HealthClient::new(harness.connect().await);
        let lab = LabClient::new(harness.connect().await);
        reporter.set("", NotServing);
        assert_eq!(check(&health, "Lab").await, NotServing, "{kind:?}");
        assert_eq!(guard(lab.add(1, 2)).await.unwrap(), 3, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_health_client_works() {
    let (listener, connector) = rpc_transport::memory::listener();
    let server = lab_server();
    let reporter = server.health_reporter();
    let _serving = tokio::spawn(server.serve(listener));
    let health = HealthClient::builder().connect(connector);
    assert_eq!(check(&health, "").await, Serving);
    reporter.set("Lab", NotServing);
    assert_eq!(check(&health, "Lab").await, NotServing);
}

/// A user's own health service, under the built-in one's wire name and with its signature.
mod own {
    use rpc_core::health::HealthStatus;
    use rpc_core::service;

    #[service(name = "rpc.Health")]
    pub trait OwnHealth {
        /// Same name, argument and return type as written in `rpc_core::health::Health`, so
        /// the same fingerprint.
        async fn check(&self, service: String) -> HealthStatus;
    }

    pub struct Mine;
    impl OwnHealth for Mine {
        async fn check(&self, service: String) -> HealthStatus {
            if service == "mine" {
                HealthStatus::Serving
            } else {
                HealthStatus::NotServing
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rpc_health_replaces_the_built_in_one() {
    for kind in KINDS {
        // Registering the name does not panic (the built-in one is added only if absent).
        let server = lab_server().add_service(own::OwnHealthServer::new(own::Mine));
        let (health, _h) = health_client(kind, server).await;
        assert_eq!(check(&health, "mine").await, Serving, "{kind:?}");
        assert_eq!(check(&health, "").await, NotServing, "{kind:?}");
        assert_eq!(check(&health, "Lab").await, NotServing, "{kind:?}");
    }
}

#[service(name = "rpc.Health")]
pub trait OtherHealth {
    async fn check(&self, service: String, verbose: bool) -> String;
}

struct Other;
impl OtherHealth for Other {
    async fn check(&self, service: String, _verbose: bool) -> String {
        service
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rpc_health_of_another_shape_is_incompatible_with_the_health_client() {
    for kind in KINDS {
        let server = lab_server().add_service(OtherHealthServer::new(Other));
        let mut harness = Harness::start(kind, server).await;
        let health = HealthClient::new(harness.connect().await);
        let err = guard(health.check(String::new())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Incompatible, "{kind:?}: {err}");
        assert!(err.to_string().contains("check"), "{err}");
    }
}

/// A listener of `kind` served with `serve_with_shutdown`, and a way to connect to it.
enum Endpoint {
    Memory(rpc_transport::memory::MemoryConnector),
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl Endpoint {
    async fn connect(&self) -> common::AnyTransport {
        match self {
            Endpoint::Memory(c) => Box::new(c.connect().await.unwrap()),
            Endpoint::Tcp(addr) => Box::new(rpc_transport::tcp::connect(*addr).await.unwrap()),
            Endpoint::Unix(path) => Box::new(rpc_transport::unix::connect(path).await.unwrap()),
        }
    }
}

async fn serve_with_shutdown(
    kind: Kind,
    server: Server,
    stop: oneshot::Receiver<()>,
) -> (Endpoint, tokio::task::JoinHandle<std::io::Result<()>>) {
    let signal = async move {
        let _ = stop.await;
    };
    match kind {
        Kind::MemoryListener => {
            let (listener, connector) = rpc_transport::memory::listener();
            let serving = tokio::spawn(server.serve_with_shutdown(listener, signal));
            (Endpoint::Memory(connector), serving)
        }
        Kind::Tcp => {
            let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let serving = tokio::spawn(server.serve_with_shutdown(listener, signal));
            (Endpoint::Tcp(addr), serving)
        }
        Kind::Unix => {
            let path = common::socket_path();
            let listener = rpc_transport::unix::bind(&path).await.unwrap();
            let serving = tokio::spawn(server.serve_with_shutdown(listener, signal));
            (Endpoint::Unix(path), serving)
        }
        Kind::MemoryPair => unreachable!("a pair has no listener"),
    }
}

/// A server with a health connection open and a slow call in progress, that has just been
/// told to shut down and is draining (its `Lab` connection sheds new calls).
struct Draining {
    health: HealthClient,
    lab: LabClient,
    release: std::sync::Arc<tokio::sync::Notify>,
    slow: tokio::task::JoinHandle<Result<u64, rpc_core::RpcError>>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn draining(kind: Kind) -> Draining {
    let (imp, mut events) = lab();
    let release = imp.release.clone();
    let (stop, stopped) = oneshot::channel();
    let (endpoint, serving) = serve_with_shutdown(
        kind,
        Server::new().add_service(LabServer::new(imp)),
        stopped,
    )
    .await;
    let health = HealthClient::new(endpoint.connect().await);
    assert_eq!(check(&health, "").await, Serving, "{kind:?}");
    let lab = LabClient::new(endpoint.connect().await);
    let slow = tokio::spawn(lab.block(1).into_future());
    assert_eq!(next_event(&mut events).await, Event::Started(1), "{kind:?}");

    stop.send(()).unwrap();
    // Wait (polling a condition) until the server drains: new calls are shed.
    let shed = guard(async {
        loop {
            match lab.add(1, 1).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(err) => break err,
            }
        }
    })
    .await;
    assert_eq!(shed.kind(), ErrorKind::Overloaded, "{kind:?}: {shed}");
    assert!(!slow.is_finished(), "{kind:?}");
    Draining {
        health,
        lab,
        release,
        slow,
        serving,
    }
}

impl Draining {
    /// Lets the slow call finish; the server then ends.
    async fn finish(self, kind: Kind) {
        self.release.notify_one();
        assert_eq!(guard(self.slow).await.unwrap().unwrap(), 1, "{kind:?}");
        guard(self.serving).await.unwrap().unwrap();
        let err = guard(self.lab.add(1, 1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{kind:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_never_reports_serving() {
    // As documented (rpc_core::health): an idle health connection is closed as soon as the
    // shutdown starts, so a check on it fails (`Disconnected`); should one get through, it
    // answers `NotServing`. Either way a balancer never hears `Serving` from a server that
    // is going away.
    for kind in [Kind::MemoryListener, Kind::Tcp, Kind::Unix] {
        let drain = draining(kind).await;
        for service in ["", "Lab"] {
            match guard(drain.health.check(service.into())).await {
                Ok(NotServing) => {}
                Ok(other) => panic!("{kind:?}: check({service:?}) while draining: {other:?}"),
                Err(err) => assert!(
                    matches!(err.kind(), ErrorKind::Disconnected | ErrorKind::Overloaded),
                    "{kind:?}: {err}"
                ),
            }
        }
        drain.finish(kind).await;
    }
}
