//! etcd as production clusters run it: over TLS (with and without client certificates) and
//! with users and passwords, for registration and discovery; and the errors a wrong CA, a
//! missing client certificate, a wrong password or a missing permission give.
//!
//! Each test starts its own etcd (the `etcd` binary, or the one `ETCD_BIN` names) through the
//! harness of the examples, which makes a CA, etcd's certificate and client certificates at
//! start-up, and creates users and enables authentication with etcd's own API. Built only
//! with the feature `etcd`. Tests wait for conditions under a hang guard; none sleeps to let
//! something happen, and none asserts on timing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::balance::Backoff;
use rpc_core::Server;
use rpc_examples::etcd_process::{
    unrelated_ca_pem, unrelated_client_identity, Access, EtcdBuilder, EtcdProcess as Etcd,
};
use rpc_examples::inventory::{
    client_builder, endpoints, wait_until, InventoryClient, InventoryServer, Replica,
};
use rpc_transport::etcd::{EtcdDiscovery, EtcdRegistrar, EtcdTls, Registration};
use tokio::task::JoinHandle;

/// Long enough never to fire on a slow, busy machine; short enough that a hang fails the test
/// instead of blocking the suite.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// What a request to etcd may take: far more than it needs, so a failure that should come
/// at once is not mistaken for a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const PREFIX: &str = "/rpc-tests/secure";
/// The permissions the users get: the prefix's keys, `PREFIX/…`.
const PREFIX_DIR: &str = "/rpc-tests/secure/";
const WRITER: (&str, &str) = ("inventory-server", "writer-secret");
const READER: (&str, &str) = ("inventory-client", "reader-secret");

fn etcd() -> EtcdBuilder {
    let binary = std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
    Etcd::builder(binary, "secure").patience(HANG_GUARD)
}

/// With authentication: a user who may write the prefix, and one who may only read it.
fn with_users(builder: EtcdBuilder) -> EtcdBuilder {
    builder
        .auth()
        .user(WRITER.0, WRITER.1, Access::ReadWrite, PREFIX_DIR)
        .user(READER.0, READER.1, Access::Read, PREFIX_DIR)
}

async fn start(builder: EtcdBuilder) -> Etcd {
    builder.start().await.unwrap_or_else(|err| match err {
        err if err.is_not_installed() => panic!(
            "the etcd tests need the `etcd` binary, which was not found: install it with \
             `apt-get install etcd-server` (or set ETCD_BIN to its path)"
        ),
        err => panic!("{err}"),
    })
}

async fn guard<F: std::future::IntoFuture>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish"))
}

/// The TLS settings a client of `etcd` needs: its CA, and a client certificate of its own
/// when etcd requires one.
fn tls_for(etcd: &Etcd, client_certificate: bool) -> EtcdTls {
    let tls = EtcdTls::new(etcd.ca_pem().expect("etcd runs with TLS"));
    if client_certificate {
        let (cert, key) = etcd
            .client_identity("rpc-test")
            .expect("a client certificate");
        tls.identity(cert, key)
    } else {
        tls
    }
}

/// A server named `name` on a free port, registered by `registrar` (given its address).
struct Running {
    registration: Registration,
    _task: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(
    name: &str,
    registrar: impl FnOnce(String) -> EtcdRegistrar,
) -> Result<Running, rpc_transport::etcd::EtcdError> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address").to_string();
    let task = tokio::spawn(
        Server::new()
            .add_service(InventoryServer::new(Replica::new(name)))
            .serve(listener),
    );
    let task = AbortOnDrop(task);
    let registration = guard(
        "registering",
        registrar(addr).request_timeout(REQUEST_TIMEOUT).register(),
    )
    .await?;
    Ok(Running {
        registration,
        _task: task,
    })
}

/// Registers server `a` with `registrar`, discovers it with `discovery`, and calls it.
async fn round_trip(registrar: impl FnOnce(String) -> EtcdRegistrar, discovery: EtcdDiscovery) {
    let server = serve("a", registrar)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(server.registration.key(), format!("{PREFIX}/a"));
    let client: InventoryClient =
        client_builder().discover(discovery.request_timeout(REQUEST_TIMEOUT));
    assert!(
        wait_until(HANG_GUARD, || endpoints(&client).len() == 1).await,
        "the client never discovered the server: {:?}",
        endpoints(&client)
    );
    let stock = guard("a call", client.stock("apples".into()))
        .await
        .expect("the call succeeds");
    assert_eq!((stock.units, stock.server.as_str()), (120, "a"));
    guard("deregistering", server.registration.deregister())
        .await
        .expect("deregistering succeeds");
    assert!(
        wait_until(HANG_GUARD, || endpoints(&client).is_empty()).await,
        "the client never dropped the deregistered server: {:?}",
        endpoints(&client)
    );
}

#[tokio::test]
async fn over_tls_without_a_client_certificate() {
    let etcd = start(etcd().tls()).await;
    let (url, tls) = (etcd.addr(), tls_for(&etcd, false));
    let registrar_tls = tls.clone();
    round_trip(
        |addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).tls(registrar_tls),
        // A full `https://` URL works as well as `host:port`.
        EtcdDiscovery::new([etcd.url()], PREFIX).tls(tls),
    )
    .await;
}

#[tokio::test]
async fn over_mutual_tls() {
    let etcd = start(etcd().mutual_tls()).await;
    let url = etcd.addr();
    round_trip(
        |addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).tls(tls_for(&etcd, true)),
        EtcdDiscovery::new([&url], PREFIX).tls(tls_for(&etcd, true)),
    )
    .await;
}

#[tokio::test]
async fn with_users_over_mutual_tls_the_reader_discovers() {
    let etcd = start(with_users(etcd().mutual_tls())).await;
    let url = etcd.addr();
    round_trip(
        |addr| {
            EtcdRegistrar::new([&url], PREFIX, "a", addr)
                .tls(tls_for(&etcd, true))
                .auth(WRITER.0, WRITER.1)
        },
        // The client's user may only read the prefix: all discovery needs.
        EtcdDiscovery::new([&url], PREFIX)
            .tls(tls_for(&etcd, true))
            .auth(READER.0, READER.1),
    )
    .await;
}

#[tokio::test]
async fn with_users_over_plain_text() {
    let etcd = start(with_users(etcd())).await;
    let url = etcd.addr();
    round_trip(
        |addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).auth(WRITER.0, WRITER.1),
        EtcdDiscovery::new([&url], PREFIX).auth(READER.0, READER.1),
    )
    .await;
}

/// A restarted etcd has forgotten every auth token it handed out. The server's keepalive
/// and the client's watch break with the restart, and must authenticate again (or have
/// their stale token refreshed) to go on: the lease revoked after the restart is replaced
/// by a new one, with the user's permission, and the client follows.
#[tokio::test]
async fn registration_and_discovery_outlive_a_restart_that_forgets_every_token() {
    let mut etcd = start(with_users(etcd().tls())).await;
    let url = etcd.addr();
    let server = serve("a", |addr| {
        EtcdRegistrar::new([&url], PREFIX, "a", addr)
            .tls(tls_for(&etcd, false))
            .auth(WRITER.0, WRITER.1)
            // Retry soon: the restart takes a moment.
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let client: InventoryClient = client_builder().discover(
        EtcdDiscovery::new([&url], PREFIX)
            .tls(tls_for(&etcd, false))
            .auth(READER.0, READER.1)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .request_timeout(REQUEST_TIMEOUT),
    );
    assert!(
        wait_until(HANG_GUARD, || endpoints(&client).len() == 1).await,
        "the client never discovered the server"
    );

    guard("restarting etcd", etcd.restart())
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let before = server.registration.lease_id();
    guard("revoking the lease", etcd.revoke_lease(before))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let registration = &server.registration;
    assert!(
        wait_until(HANG_GUARD, || registration.lease_id() != before).await,
        "the server never registered again after its lease was revoked"
    );
    // The client's watch, remade after the restart, sees a server that joins now.
    let _b = serve("b", |addr| {
        EtcdRegistrar::new([&url], PREFIX, "b", addr)
            .tls(tls_for(&etcd, false))
            .auth(WRITER.0, WRITER.1)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        wait_until(HANG_GUARD, || endpoints(&client).len() == 2).await,
        "the client did not follow the servers after the restart: {:?}",
        endpoints(&client)
    );
    let stock = guard("a call", client.stock("pears".into()))
        .await
        .expect("the call succeeds");
    assert_eq!(stock.units, 45);
}

/// Registering with `registrar` fails; the error, for the test to look at.
async fn refused(
    registrar: impl FnOnce(String) -> EtcdRegistrar,
) -> rpc_transport::etcd::EtcdError {
    match serve("a", registrar).await {
        Ok(running) => panic!("registering succeeded, as {}", running.registration.key()),
        Err(err) => {
            assert!(
                !err.is_timeout(),
                "a timeout rather than a clear refusal: {err}"
            );
            err
        }
    }
}

#[tokio::test]
async fn a_wrong_ca_is_a_clear_tls_error() {
    let etcd = start(etcd().tls()).await;
    let url = etcd.addr();
    let wrong = EtcdTls::new(unrelated_ca_pem().expect("a CA"));
    let err = refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).tls(wrong)).await;
    let text = err.to_string();
    assert!(err.is_tls(), "{text}");
    assert!(
        text.contains(&format!("the TLS handshake with etcd at {url} failed"))
            && text.contains("not signed by the CA given")
            && text.contains("give the CA that signed etcd's certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_client_certificate_is_a_clear_tls_error() {
    let etcd = start(etcd().mutual_tls()).await;
    let url = etcd.addr();
    let err =
        refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).tls(tls_for(&etcd, false)))
            .await;
    let text = err.to_string();
    assert!(err.is_tls(), "{text}");
    assert!(
        text.contains("etcd requires a client certificate and none was given")
            && text.contains("EtcdTls::identity"),
        "{text}"
    );
}

#[tokio::test]
async fn an_untrusted_client_certificate_is_a_clear_tls_error() {
    let etcd = start(etcd().mutual_tls()).await;
    let url = etcd.addr();
    let (cert, key) = unrelated_client_identity("intruder").expect("a certificate");
    let tls = EtcdTls::new(etcd.ca_pem().expect("TLS")).identity(cert, key);
    let err = refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).tls(tls)).await;
    let text = err.to_string();
    assert!(err.is_tls(), "{text}");
    assert!(
        text.contains("etcd refused our client certificate")
            && text.contains("signed by the CA in etcd's --trusted-ca-file"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_against_a_plain_text_etcd_is_a_clear_tls_error() {
    let etcd = start(etcd()).await;
    let url = etcd.addr();
    let tls = EtcdTls::new(unrelated_ca_pem().expect("a CA"));
    let err = refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).tls(tls)).await;
    let text = err.to_string();
    assert!(err.is_tls(), "{text}");
    assert!(text.contains("etcd does not answer in TLS"), "{text}");
}

#[tokio::test]
async fn plain_text_against_a_tls_etcd_says_so() {
    let etcd = start(etcd().tls()).await;
    let url = etcd.addr();
    let err = refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr)).await;
    let text = err.to_string();
    assert!(err.is_tls(), "{text}");
    assert!(
        text.contains("as an etcd serving TLS does to a plain-text client")
            && text.contains("EtcdTls::new(ca_pem)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_unauthenticated() {
    let etcd = start(with_users(etcd().tls())).await;
    let url = etcd.addr();
    let err = refused(|addr| {
        EtcdRegistrar::new([&url], PREFIX, "a", addr)
            .tls(tls_for(&etcd, false))
            .auth(WRITER.0, "not-the-password")
    })
    .await;
    let text = err.to_string();
    assert!(err.is_unauthenticated(), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "the password is in the error: {text}"
    );
    assert!(
        text.contains(&format!(
            "etcd at {url} refused user `{}`'s password",
            WRITER.0
        )),
        "{text}"
    );
}

#[tokio::test]
async fn no_user_against_an_etcd_with_auth_is_unauthenticated() {
    let etcd = start(with_users(etcd())).await;
    let url = etcd.addr();
    let err = refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr)).await;
    let text = err.to_string();
    assert!(err.is_unauthenticated(), "{text}");
    assert!(
        text.contains("has authentication enabled and no user was given"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reader_may_not_register() {
    let etcd = start(with_users(etcd())).await;
    let url = etcd.addr();
    let err =
        refused(|addr| EtcdRegistrar::new([&url], PREFIX, "a", addr).auth(READER.0, READER.1))
            .await;
    let text = err.to_string();
    assert!(err.is_permission_denied(), "{text}");
    assert!(
        text.contains(&format!(
            "user `{}` may not write keys under `{PREFIX_DIR}`",
            READER.0
        )) && text.contains(&format!(
            "etcdctl role grant-permission <role> readwrite {PREFIX_DIR} --prefix"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn endpoints_that_contradict_the_tls_settings_are_refused_at_once() {
    // Nothing listens: the endpoints are refused before anything is sent.
    let err = refused(|addr| EtcdRegistrar::new(["https://127.0.0.1:9"], PREFIX, "a", addr)).await;
    assert!(err.is_invalid_argument(), "{err}");
    assert!(
        err.to_string().contains("no TLS settings were given"),
        "{err}"
    );
    let tls = EtcdTls::new(unrelated_ca_pem().expect("a CA"));
    let err =
        refused(|addr| EtcdRegistrar::new(["http://127.0.0.1:9"], PREFIX, "a", addr).tls(tls))
            .await;
    assert!(err.is_invalid_argument(), "{err}");
}

#[tokio::test]
async fn settings_that_are_not_pem_are_refused_at_once() {
    let err = refused(|addr| {
        EtcdRegistrar::new(["127.0.0.1:9"], PREFIX, "a", addr).tls(EtcdTls::new("/etc/etcd/ca.pem"))
    })
    .await;
    assert!(err.is_invalid_argument(), "{err}");
    assert!(
        err.to_string()
            .contains("the CA given is not a PEM certificate"),
        "{err}"
    );
    let ca = unrelated_ca_pem().expect("a CA");
    let (cert, _key) = unrelated_client_identity("a").expect("a certificate");
    let err = refused(|addr| {
        EtcdRegistrar::new(["127.0.0.1:9"], PREFIX, "a", addr)
            .tls(EtcdTls::new(ca).identity(cert, "not a key"))
    })
    .await;
    assert!(err.is_invalid_argument(), "{err}");
    assert!(
        err.to_string()
            .contains("the client key given is not a PEM private key"),
        "{err}"
    );
}

/// What the code under test logs at `warn` and above, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }

    /// A subscriber writing here, for this thread (a `#[tokio::test]` runs every task on
    /// its one thread, the client's discovery included).
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish()
    }
}

#[tokio::test]
async fn discovery_logs_a_wrong_password_and_a_missing_read_permission() {
    let etcd =
        start(with_users(etcd()).user("outsider", "outsider-secret", Access::Read, "/elsewhere/"))
            .await;
    let url = etcd.addr();
    let logs = Logs::default();
    let _logging = tracing::subscriber::set_default(logs.subscriber());

    let _wrong_password: InventoryClient = client_builder()
        .discover(EtcdDiscovery::new([&url], PREFIX).auth(READER.0, "not-the-password"));
    let expected = format!("etcd at {url} refused user `{}`'s password", READER.0);
    assert!(
        wait_until(HANG_GUARD, || logs.text().contains(&expected)).await,
        "no warning says `{expected}`: {}",
        logs.text()
    );

    let _no_permission: InventoryClient = client_builder()
        .discover(EtcdDiscovery::new([&url], PREFIX).auth("outsider", "outsider-secret"));
    let expected = [
        format!("user `outsider` may not read keys under `{PREFIX_DIR}`"),
        format!("etcdctl role grant-permission <role> read {PREFIX_DIR} --prefix"),
    ];
    assert!(
        wait_until(HANG_GUARD, || expected
            .iter()
            .all(|words| logs.text().contains(words)))
        .await,
        "no warning says {expected:?}: {}",
        logs.text()
    );
    assert!(!logs.text().contains("not-the-password"), "{}", logs.text());
}
