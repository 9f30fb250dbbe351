//! TLS and mutual TLS (`rpc_transport::tls`), end to end through a `#[service]`: calls
//! succeed, the client's certificate identity reaches the `Authorize` hook and handlers,
//! every refused certificate fails with the right kind and says why, plain and TLS ends
//! that meet fail at once, bearer tokens go through `Authorize`, and a client that never
//! finishes its handshake delays nobody else.
//!
//! Every certificate is made at run time by a throwaway CA (rcgen).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rpc_core::{
    context, service, Authorize, CallInfo, ConnectionInfo, ErrorKind, Listener, RpcError, Server,
};
use rpc_transport::tls;
use tokio::io::AsyncReadExt;

/// A hang guard only: long enough never to fire on a slow machine.
const HANG_GUARD: Duration = Duration::from_secs(30);

async fn guard<F: std::future::IntoFuture>(fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .expect("hang guard: the operation did not complete")
}

#[service]
pub trait Ledger {
    async fn add(&self, a: i64, b: i64) -> i64;
    /// The names of the caller's verified identity, as the handler sees them.
    async fn whoami(&self) -> Option<Vec<String>>;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
}

/// Counts the calls that reached a handler.
#[derive(Clone, Default)]
struct LedgerImpl {
    calls: Arc<AtomicUsize>,
}

impl Ledger for LedgerImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        a + b
    }
    async fn whoami(&self) -> Option<Vec<String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let peer = context::peer().expect("a handler knows its peer");
        assert!(
            peer.addr().is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{peer}"
        );
        peer.identity().map(|id| id.names().to_vec())
    }
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        data
    }
}

/// A throwaway certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate (PEM) and its private key (PEM).
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, name: &str) -> Leaf {
        self.issue(&[name], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A running TLS server hosting `Ledger`.
struct Running {
    addr: std::net::SocketAddr,
    calls: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start(config: tls::rustls::ServerConfig, server: Server) -> Running {
    let listener = tls::bind("127.0.0.1:0", config).await.unwrap();
    start_on(listener, server)
}

fn start_on(listener: tls::TlsListener, server: Server) -> Running {
    let addr = listener.local_addr().unwrap();
    let imp = LedgerImpl::default();
    let calls = Arc::clone(&imp.calls);
    let task = tokio::spawn(server.add_service(LedgerServer::new(imp)).serve(listener));
    Running {
        addr,
        calls,
        _task: AbortOnDrop(task),
    }
}

/// The CA, a server certificate for `localhost`, and a TLS server with it.
async fn tls_server(server: Server) -> (Ca, Running) {
    let ca = Ca::new("test CA");
    let leaf = ca.server("localhost");
    let config = tls::server_config(&leaf.cert, &leaf.key).unwrap();
    (ca, start(config, server).await)
}

/// A TLS server requiring client certificates from `client_ca`.
async fn mtls_server(server_ca: &Ca, client_ca: &Ca, server: Server) -> Running {
    let leaf = server_ca.server("localhost");
    let config = tls::server_config_mtls(&leaf.cert, &leaf.key, client_ca.pem()).unwrap();
    start(config, server).await
}

/// Makes one call on a fresh connection (`LedgerClient::new`); a refused `connect` counts
/// as the call's failure, with the io error's kind and message.
async fn call_new(
    addr: std::net::SocketAddr,
    config: tls::rustls::ClientConfig,
) -> Result<i64, (String, String)> {
    let transport = match guard(tls::connect(addr, "localhost", config)).await {
        Ok(t) => t,
        Err(err) => return Err((format!("io {:?}", err.kind()), err.to_string())),
    };
    let client = LedgerClient::new(transport);
    guard(client.add(20, 22))
        .await
        .map_err(|err| (format!("{:?}", err.kind()), err.to_string()))
}

/// Makes one call through a reconnecting client (`LedgerClient::builder().connect`).
async fn call_pooled(
    addr: std::net::SocketAddr,
    config: tls::rustls::ClientConfig,
) -> Result<i64, RpcError> {
    let client = LedgerClient::builder().connect(tls::connector(addr, "localhost", config));
    guard(client.add(20, 22)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_call_succeeds_both_ways_of_connecting() {
    let (ca, running) = tls_server(Server::new()).await;
    let config = tls::client_config(ca.pem()).unwrap();

    let transport = guard(tls::connect(running.addr, "localhost", config.clone()))
        .await
        .unwrap();
    assert_eq!(
        transport.get_ref().connection().alpn_protocol(),
        Some(tls::ALPN_PROTOCOL)
    );
    let client = LedgerClient::new(transport);
    assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);
    // No client certificate: the handler sees an address but no identity.
    assert_eq!(guard(client.whoami()).await.unwrap(), None);

    assert_eq!(call_pooled(running.addr, config).await.unwrap(), 42);
    assert_eq!(running.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_servers_limit_are_refused_over_tls_too() {
    let (ca, running) = tls_server(Server::new().max_frame_size(64 << 10)).await;
    let config = tls::client_config(ca.pem()).unwrap();
    let transport = guard(tls::connect(running.addr, "localhost", config))
        .await
        .unwrap();
    let client = LedgerClient::new(transport);
    assert_eq!(guard(client.echo(vec![7; 1000])).await.unwrap().len(), 1000);
    let err = guard(client.echo(vec![1; 100_000])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
}

/// Accepts connections only from `billing.internal`, and records every identity it saw.
#[derive(Clone, Default)]
struct OnlyBilling {
    seen: Arc<Mutex<Vec<Option<Vec<String>>>>>,
}

impl Authorize for OnlyBilling {
    fn connection(&self, connection: &ConnectionInfo<'_>) -> Result<(), RpcError> {
        let names = connection.peer().identity().map(|id| id.names().to_vec());
        let certificates = connection
            .peer()
            .identity()
            .map_or(0, |id| id.certificates().len());
        self.seen.lock().unwrap().push(names.clone());
        assert_eq!(connection.service(), "Ledger");
        match names {
            Some(names) if names.iter().any(|n| n == "billing.internal") => {
                assert!(certificates >= 1);
                Ok(())
            }
            Some(_) => Err(RpcError::permission_denied(
                "only billing.internal may use the ledger",
            )),
            None => Err(RpcError::unauthenticated("present a client certificate")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_identity_reaches_the_hook_and_the_handler() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let hook = OnlyBilling::default();
    let running = mtls_server(
        &server_ca,
        &client_ca,
        Server::new().authorize(hook.clone()),
    )
    .await;

    let billing = client_ca.client("billing.internal");
    let config = tls::client_config_mtls(server_ca.pem(), &billing.cert, &billing.key).unwrap();
    let transport = guard(tls::connect(running.addr, "localhost", config.clone()))
        .await
        .unwrap();
    let client = LedgerClient::new(transport);
    assert_eq!(
        guard(client.whoami()).await.unwrap(),
        Some(vec!["billing.internal".to_string()])
    );
    assert_eq!(
        hook.seen.lock().unwrap().as_slice(),
        [Some(vec!["billing.internal".to_string()])]
    );

    // The same through a reconnecting client.
    assert_eq!(call_pooled(running.addr, config).await.unwrap(), 42);

    // Another name from the same CA gets through TLS, and the hook refuses it by name.
    let intruder = client_ca.client("intruder.internal");
    let config = tls::client_config_mtls(server_ca.pem(), &intruder.cert, &intruder.key).unwrap();
    let (kind, message) = call_new(running.addr, config).await.unwrap_err();
    assert_eq!(kind, "PermissionDenied", "{message}");
    assert!(message.contains("only billing.internal"), "{message}");
    assert_eq!(running.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_for_another_name_is_refused() {
    let ca = Ca::new("test CA");
    let leaf = ca.server("other.example");
    let running = start(
        tls::server_config(&leaf.cert, &leaf.key).unwrap(),
        Server::new(),
    )
    .await;
    let config = tls::client_config(ca.pem()).unwrap();

    let (kind, message) = call_new(running.addr, config.clone()).await.unwrap_err();
    assert_eq!(kind, "io PermissionDenied", "{message}");
    assert!(
        message.contains("not valid for the name `localhost`") && message.contains("other.example"),
        "{message}"
    );

    let err = call_pooled(running.addr, config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("not valid for the name"), "{err}");
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_untrusted_ca_is_refused() {
    let (_ca, running) = tls_server(Server::new()).await;
    let stranger = Ca::new("some other CA");
    let config = tls::client_config(stranger.pem()).unwrap();

    let (kind, message) = call_new(running.addr, config.clone()).await.unwrap_err();
    assert_eq!(kind, "io PermissionDenied", "{message}");
    assert!(message.contains("not trusted: UnknownIssuer"), "{message}");
    assert!(message.contains("roots"), "{message}");

    let err = call_pooled(running.addr, config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
}

/// What a client the server refuses sees: with TLS 1.3 its own handshake completes and the
/// refusal (an alert) comes with its first read, so the call fails `Unauthenticated`; with
/// TLS 1.2 `connect` itself fails with `PermissionDenied`. Either says `expected`.
fn assert_refused(outcome: Result<i64, (String, String)>, expected: &str) {
    let (kind, message) = outcome.unwrap_err();
    assert!(
        kind == "Unauthenticated" || kind == "io PermissionDenied",
        "{kind}: {message}"
    );
    assert!(message.contains(expected), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_an_untrusted_ca_is_refused() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let running = mtls_server(&server_ca, &client_ca, Server::new()).await;
    let rogue = Ca::new("rogue CA").client("billing.internal");
    let config = tls::client_config_mtls(server_ca.pem(), &rogue.cert, &rogue.key).unwrap();

    assert_refused(
        call_new(running.addr, config.clone()).await,
        "the server refused this client's certificate",
    );
    let err = call_pooled(running.addr, config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(
        err.to_string()
            .contains("the server refused this client's certificate"),
        "{err}"
    );
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_1_2_a_refused_client_certificate_fails_connect() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let running = mtls_server(&server_ca, &client_ca, Server::new()).await;
    let rogue = Ca::new("rogue CA").client("billing.internal");
    // A configuration of one's own, from the same provider, limited to TLS 1.2: the server
    // refuses the certificate before the client's handshake completes.
    let mut roots = tls::rustls::RootCertStore::empty();
    for cert in tls::certificates(server_ca.pem()).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = tls::rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&tls::rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            tls::certificates(&rogue.cert).unwrap(),
            tls::private_key(&rogue.key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![tls::ALPN_PROTOCOL.to_vec()];

    let err = guard(tls::connect(running.addr, "localhost", config))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string()
            .contains("the server refused this client's certificate"),
        "{err}"
    );
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_refused() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let running = mtls_server(&server_ca, &client_ca, Server::new()).await;
    let config = tls::client_config(server_ca.pem()).unwrap();

    assert_refused(
        call_new(running.addr, config.clone()).await,
        "requires a client certificate",
    );
    let err = call_pooled(running.addr, config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(
        err.to_string().contains("requires a client certificate"),
        "{err}"
    );
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_to_a_tls_server_fails_at_once() {
    let (_ca, running) = tls_server(Server::new()).await;
    let transport = guard(rpc_transport::tcp::connect(running.addr))
        .await
        .unwrap();
    let client = LedgerClient::new(transport);
    let err = guard(client.add(1, 2)).await.unwrap_err();
    assert!(
        err.to_string().contains("speaks TLS") && err.to_string().contains("rpc_transport::tls"),
        "{err}"
    );
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_to_a_plain_server_fails_at_once() {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let imp = LedgerImpl::default();
    let calls = Arc::clone(&imp.calls);
    let task = AbortOnDrop(tokio::spawn(
        Server::new()
            .add_service(LedgerServer::new(imp))
            .serve(listener),
    ));
    let ca = Ca::new("test CA");
    let config = tls::client_config(ca.pem()).unwrap();

    let err = guard(tls::connect(addr, "localhost", config.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(
        err.to_string().contains("the server does not speak TLS"),
        "{err}"
    );

    let err = call_pooled(addr, config).await.unwrap_err();
    assert!(
        err.to_string().contains("the server does not speak TLS"),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    drop(task);
}

/// Checks `authorization: Bearer <token>`: none is `Unauthenticated` (the caller did not
/// say who it is), a wrong one `PermissionDenied` (it did, and is not allowed).
fn bearer(call: &CallInfo<'_>) -> Result<(), RpcError> {
    match call.metadata().get_str("authorization") {
        Some("Bearer open-sesame") => Ok(()),
        Some(_) => Err(RpcError::permission_denied(
            "this token may not use the ledger",
        )),
        None => Err(RpcError::unauthenticated(
            "send `authorization: Bearer <token>`",
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_before_the_handler_runs() {
    let (ca, running) = tls_server(Server::new().authorize(bearer)).await;
    let config = tls::client_config(ca.pem()).unwrap();
    let transport = guard(tls::connect(running.addr, "localhost", config.clone()))
        .await
        .unwrap();
    let client = LedgerClient::new(transport);

    let err = guard(client.add(1, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("Bearer <token>"), "{err}");

    let err = guard(client.add(1, 2).metadata("authorization", "Bearer guess"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);

    let sum = guard(
        client
            .add(1, 2)
            .metadata("authorization", "Bearer open-sesame"),
    )
    .await;
    assert_eq!(sum.unwrap(), 3);
    assert_eq!(running.calls.load(Ordering::SeqCst), 1);

    // Per client, on a reconnecting one.
    let client = LedgerClient::builder()
        .metadata("authorization", "Bearer open-sesame")
        .connect(tls::connector(running.addr, "localhost", config.clone()));
    assert_eq!(guard(client.add(2, 3)).await.unwrap(), 5);
    let client = LedgerClient::builder()
        .metadata("authorization", "Bearer stale")
        .connect(tls::connector(running.addr, "localhost", config));
    let err = guard(client.add(2, 3)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(running.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_blocks_nobody() {
    let ca = Ca::new("test CA");
    let leaf = ca.server("localhost");
    let config = tls::server_config(&leaf.cert, &leaf.key).unwrap();
    // Room for the silent ones and one more: they cannot hold the listener up.
    let listener = tls::bind("127.0.0.1:0", config)
        .await
        .unwrap()
        .with_max_handshakes(4);
    let running = start_on(listener, Server::new());

    // Connect and say nothing, holding the connections open.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            guard(tokio::net::TcpStream::connect(running.addr))
                .await
                .unwrap(),
        );
    }
    let config = tls::client_config(ca.pem()).unwrap();
    for _ in 0..3 {
        let transport = guard(tls::connect(running.addr, "localhost", config.clone()))
            .await
            .unwrap();
        let client = LedgerClient::new(transport);
        assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);
    }
    assert_eq!(call_pooled(running.addr, config).await.unwrap(), 42);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_is_cut_off() {
    let ca = Ca::new("test CA");
    let leaf = ca.server("localhost");
    let config = tls::server_config(&leaf.cert, &leaf.key).unwrap();
    let mut listener = tls::bind("127.0.0.1:0", config)
        .await
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(200));
    let addr = listener.local_addr().unwrap();
    // Accept in the background; only the silent connection's fate matters here.
    let accepting = AbortOnDrop(tokio::spawn(async move {
        while let Some(accepted) = listener.accept().await {
            drop(accepted);
        }
        Ok(())
    }));

    let mut silent = guard(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let mut buf = [0u8; 64];
    // The server closes it once the timeout passes: end of stream, nothing sent.
    let n = guard(silent.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    drop(accepting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reports_the_peer_address_and_identity() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let leaf = server_ca.server("localhost");
    let config = tls::server_config_mtls(&leaf.cert, &leaf.key, client_ca.pem()).unwrap();
    let mut listener = tls::bind("127.0.0.1:0", config).await.unwrap();
    let addr = listener.local_addr().unwrap();

    let job = client_ca.issue(
        &["batch.internal", "batch"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let config = tls::client_config_mtls(server_ca.pem(), &job.cert, &job.key).unwrap();
    let (client, server) = tokio::join!(
        tls::connect(addr, "localhost", config),
        guard(listener.accept())
    );
    let client = client.unwrap();
    let server = server.expect("open").unwrap();
    let peer = listener.peer(&server);
    let client_addr = client.get_ref().get_ref().local_addr().unwrap();
    assert_eq!(peer.addr(), Some(client_addr.to_string().as_str()));
    assert_eq!(peer.ip(), Some(client_addr.ip()));
    let identity = peer.identity().expect("a verified client certificate");
    assert_eq!(identity.names(), ["batch.internal", "batch"]);
    assert_eq!(identity.certificates().len(), 1);
    assert_eq!(
        &identity.certificates()[0][..],
        &tls::certificates(&job.cert).unwrap()[0][..]
    );
    // The client sees the server's identity the same way.
    let server_identity = client.get_ref().identity().unwrap();
    assert_eq!(server_identity.names(), ["localhost"]);
}
