//! The HTTP gateway, with curl as the client: what reaches the handler (metadata, peer,
//! deadline, trace context), TLS, Unix sockets, the gateway off, shutdown.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::guard;
use rpc_core::{context, service, Server};
use tokio::sync::Notify;

#[service]
pub trait Probe {
    /// The metadata `key`, as the handler sees it.
    async fn header(&self, key: String) -> Option<String>;
    /// The caller's address and the trace id, as the handler sees them.
    async fn whoami(&self) -> (Option<String>, Option<String>);
    /// Waits until released, or its deadline.
    async fn wait(&self) -> u32;
}

#[derive(Clone, Default)]
struct ProbeImpl {
    started: Arc<Notify>,
    release: Arc<Notify>,
}

impl Probe for ProbeImpl {
    async fn header(&self, key: String) -> Option<String> {
        context::metadata().get_str(&key).map(str::to_owned)
    }
    async fn whoami(&self) -> (Option<String>, Option<String>) {
        let addr = context::peer().and_then(|p| p.addr().map(str::to_owned));
        let trace = context::trace().map(|t| format!("{:032x}", t.trace_id()));
        (addr, trace)
    }
    async fn wait(&self) -> u32 {
        self.started.notify_one();
        self.release.notified().await;
        1
    }
}

/// Runs curl with `args`: (body, status).
async fn curl(args: &[&str]) -> (String, u16) {
    let mut all: Vec<String> = ["-sS", "--max-time", "30", "-w", "\n%{http_code}"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(&all)
            .output()
            .expect("run curl (apt-get install curl)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let Some((body, status)) = text.rsplit_once('\n') else {
        panic!(
            "curl printed no status: {text:?} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    (body.to_owned(), status.parse().unwrap_or(0))
}

fn probe_server() -> Server {
    Server::new()
        .http(true)
        .add_service(ProbeServer::new(ProbeImpl::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_become_metadata_and_the_peer_and_trace_reach_the_handler() {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(probe_server().serve(listener));
    let url = format!("http://{addr}/Probe/header");
    let (body, status) =
        curl(&["-H", "x-tenant: acme", "-d", r#"{"key": "x-tenant"}"#, &url]).await;
    assert_eq!((body.trim(), status), (r#""acme""#, 200));
    // Not passed on: headers about the HTTP exchange itself.
    let (body, _) = curl(&["-d", r#"{"key": "host"}"#, &url]).await;
    assert_eq!(body.trim(), "null");

    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (body, status) = curl(&[
        "-H",
        &format!("traceparent: {trace}"),
        "-X",
        "POST",
        &format!("http://{addr}/Probe/whoami"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let (peer, trace_id): (Option<String>, Option<String>) = serde_json::from_str(&body).unwrap();
    assert!(peer.is_some_and(|p| p.starts_with("127.0.0.1:")), "{body}");
    assert_eq!(
        trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_header_is_the_calls_deadline() {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(probe_server().serve(listener));
    let url = format!("http://{addr}/Probe/wait");
    let (body, status) = curl(&["-H", "rpc-timeout-ms: 100", "-X", "POST", &url]).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains(r#""kind":"deadline_exceeded""#), "{body}");
    let (body, status) = curl(&["-H", "rpc-timeout-ms: soon", "-X", "POST", &url]).await;
    assert_eq!(status, 400, "{body}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_and_tls() {
    let path = common::socket_path();
    let listener = rpc_transport::unix::bind(&path).await.unwrap();
    let server = tokio::spawn(probe_server().serve(listener));
    let (body, status) = curl(&[
        "--unix-socket",
        path.to_str().unwrap(),
        "-d",
        r#"{"key": "x"}"#,
        "http://localhost/Probe/header",
    ])
    .await;
    assert_eq!((body.trim(), status), ("null", 200));
    server.abort();

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let config = rpc_transport::tls::server_config(cert.pem(), key.serialize_pem()).unwrap();
    let listener = rpc_transport::tls::bind("127.0.0.1:0", config)
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(probe_server().serve(listener));
    let ca_path = std::env::temp_dir().join(format!("rpc-http-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (body, status) = curl(&[
        "--cacert",
        ca_path.to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        "-H",
        "x-over: tls",
        "-d",
        r#"{"key": "x-over"}"#,
        &format!("https://localhost:{port}/Probe/header"),
    ])
    .await;
    std::fs::remove_file(&ca_path).unwrap();
    assert_eq!((body.trim(), status), (r#""tls""#, 200));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_http_is_refused_as_another_protocol() {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Server::new()
            .add_service(ProbeServer::new(ProbeImpl::default()))
            .serve(listener),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-d", "{}"])
            .arg(format!("http://{addr}/Probe/wait"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    // The server answers in its own protocol and closes: no HTTP response.
    assert!(!output.status.success());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_http_call_in_progress_finish() {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probe = ProbeImpl::default();
    let release = Arc::clone(&probe.release);
    let started = Arc::clone(&probe.started);
    let stop = Arc::new(Notify::new());
    let signal = {
        let stop = Arc::clone(&stop);
        async move { stop.notified().await }
    };
    let server = tokio::spawn(
        Server::new()
            .http(true)
            .add_service(ProbeServer::new(probe))
            .serve_with_shutdown(listener, signal),
    );
    let call =
        tokio::spawn(
            async move { curl(&["-X", "POST", &format!("http://{addr}/Probe/wait")]).await },
        );
    // Shut down once the call is in progress.
    guard(started.notified()).await;
    stop.notify_one();
    release.notify_one();
    let (body, status) = guard(call).await.unwrap();
    assert_eq!((body.trim(), status), ("1", 200));
    guard(server).await.unwrap().unwrap();
}

/// Server middleware apply to calls over HTTP too: a rate limit per tenant answers `429`
/// with `Retry-After`, and a refusal by an asynchronous check its own status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_govern_http_calls_too() {
    use rpc_core::governance::{KeyBy, RateLimit};
    use rpc_core::middleware::authorize_with;
    use rpc_core::RpcError;

    let limit = RateLimit::builder()
        .rate(1, std::time::Duration::from_secs(3600))
        .key_by(KeyBy::Metadata("x-tenant"))
        .build()
        .unwrap();
    let auth = authorize_with(|call: &rpc_core::middleware::ServerCall| {
        let tenant = call.metadata().get_str("x-tenant").map(str::to_owned);
        async move {
            match tenant {
                Some(_) => Ok(()),
                None => Err(RpcError::unauthenticated("send x-tenant")),
            }
        }
    });
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(probe_server().layer(auth).layer(limit).serve(listener));
    let url = format!("http://{addr}/Probe/header");
    let (body, status) = curl(&["-d", r#"{"key": "x"}"#, &url]).await;
    assert_eq!(status, 401, "{body}");
    let (body, status) = curl(&["-H", "x-tenant: acme", "-d", r#"{"key": "x"}"#, &url]).await;
    assert_eq!((body.trim(), status), ("null", 200));
    let (body, status) = curl(&["-i", "-H", "x-tenant: acme", "-d", r#"{"key": "x"}"#, &url]).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("retry-after: "),
        "{body}"
    );
    assert!(body.contains(r#""kind":"rate_limited""#), "{body}");
    assert!(body.contains(r#""retry_after_ms":"#), "{body}");
    server.abort();
}
