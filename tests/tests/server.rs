//! The server's life cycle: several services on one listener, graceful shutdown, and what
//! dropping a serve future does.

mod common;

use std::future::IntoFuture;
use std::time::Duration;

use common::{guard, lab, next_event, Event, Harness, Kind, LabClient, LabServer};
use rpc_core::{service, ErrorKind, Server};
use rpc_transport::memory;
use tokio::sync::oneshot;

/// The transports with a listener.
const LISTENERS: [Kind; 3] = [Kind::MemoryListener, Kind::Tcp, Kind::Unix];

/// A listener of `kind` and a way to connect to it, for tests that drive `serve*` by hand.
async fn listen(kind: Kind) -> (Listener, Connector) {
    match kind {
        Kind::MemoryListener => {
            let (listener, connector) = memory::listener();
            (Listener::Memory(listener), Connector::Memory(connector))
        }
        Kind::Tcp => {
            let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            (Listener::Tcp(listener), Connector::Tcp(addr))
        }
        Kind::Unix => {
            let path = common::socket_path();
            let listener = rpc_transport::unix::bind(&path).await.unwrap();
            (Listener::Unix(listener), Connector::Unix(path))
        }
        Kind::MemoryPair => unreachable!("a pair has no listener"),
    }
}

enum Listener {
    Memory(memory::MemoryListener),
    Tcp(rpc_transport::tcp::TcpListener),
    Unix(rpc_transport::unix::UnixListener),
}

enum Connector {
    Memory(memory::MemoryConnector),
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl Connector {
    async fn connect(&self) -> std::io::Result<common::AnyTransport> {
        Ok(match self {
            Connector::Memory(c) => Box::new(c.connect().await?),
            Connector::Tcp(addr) => Box::new(rpc_transport::tcp::connect(*addr).await?),
            Connector::Unix(path) => Box::new(rpc_transport::unix::connect(path).await?),
        })
    }
}

/// `serve_with_shutdown` on any listener.
fn serve_with_shutdown(
    server: Server,
    listener: Listener,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    match listener {
        Listener::Memory(l) => tokio::spawn(server.serve_with_shutdown(l, signal)),
        Listener::Tcp(l) => tokio::spawn(server.serve_with_shutdown(l, signal)),
        Listener::Unix(l) => tokio::spawn(server.serve_with_shutdown(l, signal)),
    }
}

#[service]
pub trait Greeter {
    /// Greets.
    async fn greet(&self, name: String) -> String;
}

struct English;
impl Greeter for English {
    async fn greet(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_hosts_several_services() {
    for kind in LISTENERS {
        let (imp, _events) = lab();
        let server = Server::new()
            .add_service(LabServer::new(imp))
            .add_service(GreeterServer::new(English));
        let mut harness = Harness::start(kind, server).await;
        let lab = LabClient::new(harness.connect().await);
        let greeter = GreeterClient::new(harness.connect().await);
        assert_eq!(
            guard(greeter.greet("Ada".into())).await.unwrap(),
            "Hello, Ada!"
        );
        assert_eq!(guard(lab.add(1, 2)).await.unwrap(), 3);
    }
}

#[test]
#[should_panic(expected = "a service named `Greeter` is already hosted")]
fn hosting_one_name_twice_is_a_programming_error() {
    let _ = Server::new()
        .add_service(GreeterServer::new(English))
        .add_service(GreeterServer::new(English));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_calls_in_progress_finish_and_sheds_new_ones() {
    for kind in LISTENERS {
        let (imp, mut events) = lab();
        let release = imp.release.clone();
        let (listener, connector) = listen(kind).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = serve_with_shutdown(
            Server::new().add_service(LabServer::new(imp)),
            listener,
            async move {
                let _ = stopped.await;
            },
        );
        let client = LabClient::new(connector.connect().await.unwrap());
        let slow = tokio::spawn(client.block(1).into_future());
        assert_eq!(next_event(&mut events).await, Event::Started(1));

        stop.send(()).unwrap();
        // Once the connection has seen the signal, new calls are shed with Overloaded.
        let err = guard(async {
            loop {
                match client.add(1, 1).await {
                    Ok(_) => tokio::task::yield_now().await,
                    Err(err) => break err,
                }
            }
        })
        .await;
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
        assert!(err.to_string().contains("shutting down"), "{err}");
        // No new connections are accepted.
        assert!(connector.connect().await.is_err());

        // The call in progress finishes and gets its answer; then the server is done.
        release.notify_one();
        assert_eq!(guard(slow).await.unwrap().unwrap(), 1);
        guard(serving).await.unwrap().unwrap();
        let err = guard(client.add(1, 1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_handlers_that_outlive_the_grace_period() {
    for kind in LISTENERS {
        let (imp, mut events) = lab();
        let (listener, connector) = listen(kind).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = serve_with_shutdown(
            Server::new()
                .add_service(LabServer::new(imp))
                .shutdown_grace(Duration::from_millis(20)),
            listener,
            async move {
                let _ = stopped.await;
            },
        );
        let client = LabClient::new(connector.connect().await.unwrap());
        let stuck = tokio::spawn(client.block(2).into_future());
        assert_eq!(next_event(&mut events).await, Event::Started(2));
        stop.send(()).unwrap();
        assert_eq!(next_event(&mut events).await, Event::Dropped(2));
        guard(serving).await.unwrap().unwrap();
        let err = guard(stuck).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ends_when_the_listener_closes_and_its_connections_end() {
    let (imp, _events) = lab();
    let (listener, connector) = memory::listener();
    let serving = tokio::spawn(
        Server::new()
            .add_service(LabServer::new(imp))
            .serve(listener),
    );
    let client = LabClient::new(connector.connect().await.unwrap());
    drop(connector);
    // The listener is closed for good, but the open connection is still served.
    assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);
    assert!(!serving.is_finished());
    drop(client);
    guard(serving).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_connection_ends_when_the_client_goes_away() {
    let (imp, mut events) = lab();
    let (client_end, server_end) = memory::pair();
    let serving = tokio::spawn(
        Server::new()
            .add_service(LabServer::new(imp))
            .serve_connection(server_end),
    );
    let client = LabClient::new(client_end);
    let pending = tokio::spawn(client.block(3).into_future());
    assert_eq!(next_event(&mut events).await, Event::Started(3));
    pending.abort();
    drop(client);
    assert_eq!(next_event(&mut events).await, Event::Dropped(3));
    guard(serving).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_service_fails_serve_connection() {
    let (client_end, server_end) = memory::pair();
    let serving = tokio::spawn(
        Server::new()
            .add_service(GreeterServer::new(English))
            .serve_connection(server_end),
    );
    let (imp, _events) = lab();
    drop(imp);
    let client = LabClient::new(client_end);
    let err = guard(client.add(1, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    let served = guard(serving).await.unwrap();
    assert!(served.unwrap_err().to_string().contains("`Lab`"));
}

/// One server on a TCP listener, a Unix socket and an in-memory listener at once: the same
/// services on each, each connection's peer as its own listener reports it, and one signal
/// that shuts them all down gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_serves_several_listeners_with_one_shutdown() {
    use rpc_core::{context, Listeners};

    #[service]
    pub trait Whoami {
        /// The caller's address as the server saw it, if any.
        async fn whoami(&self) -> Option<String>;
    }
    struct Mirror;
    impl Whoami for Mirror {
        async fn whoami(&self) -> Option<String> {
            context::peer().and_then(|peer| peer.addr().map(str::to_owned))
        }
    }

    let (mut listeners, mut connectors) = (Listeners::new(), Vec::new());
    for kind in LISTENERS {
        let (listener, connector) = listen(kind).await;
        listeners = match listener {
            Listener::Memory(l) => listeners.with(l),
            Listener::Tcp(l) => listeners.with(l),
            Listener::Unix(l) => listeners.with(l),
        };
        connectors.push(connector);
    }
    assert_eq!(listeners.len(), 3);

    let (imp, mut events) = lab();
    let release = imp.release.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::new()
        .add_service(LabServer::new(imp))
        .add_service(WhoamiServer::new(Mirror));
    let stats = server.stats();
    let serving = tokio::spawn(server.serve_with_shutdown(listeners, async move {
        let _ = stopped.await;
    }));

    let (mut labs, mut whos) = (Vec::new(), Vec::new());
    for (kind, connector) in LISTENERS.into_iter().zip(&connectors) {
        let lab = LabClient::new(connector.connect().await.unwrap());
        assert_eq!(guard(lab.add(2, 3)).await.unwrap(), 5, "{kind:?}");
        let who = WhoamiClient::new(connector.connect().await.unwrap());
        let peer = guard(who.whoami()).await.unwrap();
        match kind {
            // The client's own address, as the TCP listener reports it.
            Kind::Tcp => assert!(peer.is_some_and(|addr| addr.starts_with("127.0.0.1:"))),
            Kind::Unix | Kind::MemoryListener => {}
            Kind::MemoryPair => unreachable!(),
        }
        labs.push(lab);
        whos.push(who);
    }
    // Counted together, against one `max_connections`.
    assert_eq!(stats.open_connections(), 6);

    // A call in progress on each listener's connection when the signal comes.
    let mut slow = Vec::new();
    for (n, lab) in labs.iter().enumerate() {
        slow.push(tokio::spawn(lab.block(n as u64).into_future()));
        assert!(matches!(next_event(&mut events).await, Event::Started(_)));
    }
    stop.send(()).unwrap();
    // Every listener stops accepting...
    for connector in &connectors {
        let refused = guard(async {
            loop {
                match connector.connect().await {
                    Err(_) => break,
                    // Accepted by the kernel before the listener closed: the server never
                    // serves it; wait for the listener to go.
                    Ok(_) => tokio::task::yield_now().await,
                }
            }
        });
        refused.await;
    }
    // ...and the calls in progress on all of them finish and get their answers.
    for _ in 0..slow.len() {
        // One permit at a time: each wakes one handler, waiting or about to wait.
        release.notify_one();
        assert!(matches!(next_event(&mut events).await, Event::Finished(_)));
    }
    let mut answers = Vec::new();
    for call in slow {
        answers.push(guard(call).await.unwrap().unwrap());
    }
    answers.sort_unstable();
    assert_eq!(answers, [0, 1, 2]);
    guard(serving).await.unwrap().unwrap();
}
