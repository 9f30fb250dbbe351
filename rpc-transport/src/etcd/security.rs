//! How to reach etcd: its endpoints, TLS, and a user. Shared by registration and discovery,
//! which both connect through [`Connection::connect`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::tls;

use super::{attempt, EtcdError, PING_INTERVAL, PING_TIMEOUT};

/// TLS to etcd: the CA that signed etcd's certificate, and optionally a client certificate
/// (for an etcd started with `--client-cert-auth`). Give it to
/// [`EtcdRegistrar::tls`](super::EtcdRegistrar::tls) and
/// [`EtcdDiscovery::tls`](super::EtcdDiscovery::tls).
///
/// With TLS, endpoints given as `host:port` are reached as `https://host:port`; `https://`
/// endpoints are taken as they are, and `http://` ones are refused.
///
/// ```no_run
/// use rpc_transport::etcd::EtcdTls;
/// # fn demo() -> std::io::Result<()> {
/// let tls = EtcdTls::new(std::fs::read_to_string("/etc/etcd/ca.pem")?)
///     // Only if etcd runs with --client-cert-auth:
///     .identity(
///         std::fs::read_to_string("/etc/inventory/etcd-client.pem")?,
///         std::fs::read_to_string("/etc/inventory/etcd-client-key.pem")?,
///     );
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdTls {
    ca_pem: String,
    identity: Option<(String, String)>,
    domain_name: Option<String>,
}

impl EtcdTls {
    /// Trusts etcd's certificate if `ca_pem` (PEM, one or more certificates) signed it. Only
    /// these CAs are trusted, not the system's.
    pub fn new(ca_pem: impl Into<String>) -> EtcdTls {
        EtcdTls {
            ca_pem: ca_pem.into(),
            identity: None,
            domain_name: None,
        }
    }

    /// Presents this client certificate (PEM, the certificate then any intermediates) with
    /// its private key (PEM): needed when etcd runs with `--client-cert-auth`, which accepts
    /// certificates signed by its `--trusted-ca-file`.
    pub fn identity(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> EtcdTls {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Checks etcd's certificate for this name rather than the endpoint's host (when
    /// endpoints are IP addresses and the certificate names a host, say).
    pub fn domain_name(mut self, name: impl Into<String>) -> EtcdTls {
        self.domain_name = Some(name.into());
        self
    }

    /// Refuses PEM that is not, before it fails deep in a handshake as something vaguer.
    fn check(&self) -> Result<(), String> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certificates = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map(|certs| certs.len())
        };
        match certificates(&self.ca_pem) {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(_) => {
                return Err("the CA given is not a PEM certificate (`-----BEGIN \
                     CERTIFICATE-----`); give the PEM of the CA that signed etcd's certificate"
                    .into())
            }
        }
        if let Some((cert, key)) = &self.identity {
            match certificates(cert) {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) => {
                    return Err("the client certificate given is not a PEM certificate \
                         (`-----BEGIN CERTIFICATE-----`)"
                        .into())
                }
            }
            if PrivateKeyDer::from_pem_slice(key.as_bytes()).is_err() {
                return Err(
                    "the client key given is not a PEM private key (`-----BEGIN \
                     PRIVATE KEY-----`)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    pub(super) fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    fn options(&self) -> TlsOptions {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.domain_name {
            tls = tls.domain_name(name.clone());
        }
        tls
    }
}

// By hand: the private key must not end up in logs.
impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .field("domain_name", &self.domain_name)
            .finish_non_exhaustive()
    }
}

/// A user and password, for an etcd with authentication enabled.
#[derive(Clone)]
pub(super) struct Credentials {
    pub(super) user: String,
    password: String,
}

// By hand: the password must not end up in logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Whether the keys are written (a registration) or read (discovery): says which permission
/// a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

/// Everything about reaching etcd that registration and discovery share: the endpoints, TLS,
/// the user, the time each request may take, and the keys (and access) it is for, which
/// errors name.
#[derive(Debug, Clone)]
pub(super) struct Connection {
    pub(super) endpoints: Vec<String>,
    pub(super) tls: Option<EtcdTls>,
    pub(super) credentials: Option<Credentials>,
    pub(super) request_timeout: Duration,
    /// The prefix, with one trailing `/`.
    pub(super) dir: String,
    pub(super) access: Access,
    /// Whether a request on these settings has succeeded (shared by their copies): then a
    /// closed connection is not a matter of TLS settings.
    worked: Arc<AtomicBool>,
}

impl Connection {
    pub(super) fn new(
        endpoints: Vec<String>,
        dir: String,
        access: Access,
        request_timeout: Duration,
    ) -> Connection {
        Connection {
            endpoints,
            tls: None,
            credentials: None,
            request_timeout,
            dir,
            access,
            worked: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn worked(&self) {
        self.worked.store(true, Ordering::Relaxed);
    }

    pub(super) fn has_worked(&self) -> bool {
        self.worked.load(Ordering::Relaxed)
    }

    pub(super) fn set_auth(&mut self, user: &str, password: &str) {
        self.credentials = Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        });
    }

    pub(super) fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.user.as_str())
    }

    /// The endpoints as etcd-client should get them: with TLS, `host:port` becomes
    /// `https://host:port`. Refuses a scheme that contradicts the TLS settings, which would
    /// otherwise fail later with a less telling error.
    fn urls(&self) -> Result<Vec<String>, EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::invalid(
                "connecting to etcd",
                "no etcd endpoint was given; pass at least one `host:port`",
            ));
        }
        let action = || format!("connecting to etcd at {}", self.endpoints.join(", "));
        self.endpoints
            .iter()
            .map(|endpoint| {
                let (https, http) = (
                    endpoint.starts_with("https://"),
                    endpoint.starts_with("http://"),
                );
                match (&self.tls, https, http) {
                    (Some(_), false, true) => Err(EtcdError::invalid(
                        action(),
                        format!(
                            "`{endpoint}` is plain HTTP but TLS settings were given; write \
                             `https://…` or just `host:port`"
                        ),
                    )),
                    (Some(_), false, false) => Ok(format!("https://{endpoint}")),
                    (None, true, _) => Err(EtcdError::invalid(
                        action(),
                        format!(
                            "`{endpoint}` is HTTPS but no TLS settings were given; give the CA \
                             that signed etcd's certificate with `.tls(EtcdTls::new(ca_pem))`"
                        ),
                    )),
                    _ => Ok(endpoint.clone()),
                }
            })
            .collect()
    }

    /// A client for the etcd cluster. (The connection itself is made on the first request,
    /// and remade by the client when lost; with a user, that first request is the
    /// authentication, so a wrong password fails here.)
    pub(super) async fn connect(&self) -> Result<Client, EtcdError> {
        let urls = self.urls()?;
        if let Some(tls) = &self.tls {
            tls.check().map_err(|why| {
                EtcdError::invalid(
                    format!("connecting to etcd at {}", self.endpoints.join(", ")),
                    why,
                )
            })?;
        }
        let limit = self.request_timeout;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(limit)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.options());
        }
        if let Some(credentials) = &self.credentials {
            // etcd's tokens expire (simple tokens after `--auth-token-ttl`, 5 min by
            // default, of not being used): a request refused for an invalid token
            // authenticates again and is retried, rather than failing a long-lived
            // registration or watch.
            options = options
                .with_user(&credentials.user, &credentials.password)
                .with_auto_token_refresh(true);
        }
        // Not `within`: without a user, making the client sends nothing, and proves nothing
        // about the settings.
        attempt(
            self,
            || format!("connecting to etcd at {}", self.endpoints.join(", ")),
            Client::connect(&urls, Some(options)),
        )
        .await
    }
}

impl Connection {
    /// Looks closer at an etcd that closed the connection without a word (see
    /// [`hung_up`](super::hung_up)): tonic's client does not pass on why. With TLS 1.3 the
    /// client finishes its side of the handshake before etcd checks the client certificate,
    /// so etcd's `certificate required` alert is lost in a closed connection; and an etcd
    /// serving TLS hangs up on a plain-text client's HTTP/2 preface. So this asks each
    /// endpoint again, plainly: over TLS it reads the alert etcd sends after the handshake;
    /// without TLS it starts a TLS handshake, which etcd takes as far as showing its
    /// certificate if it serves TLS. `None` if neither says anything telling.
    pub(super) async fn diagnose(&self) -> Option<TlsProblem> {
        let limit = self.request_timeout.min(Duration::from_secs(3));
        for endpoint in &self.endpoints {
            let host_port = endpoint
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let probe = async {
                match &self.tls {
                    Some(tls) => tls.probe(host_port).await,
                    None => speaks_tls(host_port)
                        .await
                        .then_some(TlsProblem::PlainToTls),
                }
            };
            if let Ok(Some(problem)) = tokio::time::timeout(limit, probe).await {
                return Some(problem);
            }
        }
        None
    }
}

/// The host of `host_port` (without an IPv6 address's brackets), for a TLS server name.
fn host(host_port: &str) -> Option<String> {
    let (host, _port) = host_port.rsplit_once(':')?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Whether the server at `host_port` speaks TLS: it goes as far in a handshake as to show a
/// certificate (which, trusting no CA, we refuse).
async fn speaks_tls(host_port: &str) -> bool {
    let Some(name) = host(host_port).and_then(|host| ServerName::try_from(host).ok()) else {
        return false;
    };
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let Ok(tcp) = tokio::net::TcpStream::connect(host_port).await else {
        return false;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(name, tcp).await {
        Ok(_) => true,
        Err(err) => matches!(
            tls_problem(&err),
            Some(
                TlsProblem::UnknownCa(_)
                    | TlsProblem::WrongName(_)
                    | TlsProblem::BadServerCertificate(_)
            )
        ),
    }
}

impl EtcdTls {
    /// Shakes hands with `host_port` as [`Connection::diagnose`] describes; what went wrong,
    /// if the handshake or the first read after it fails for a TLS reason.
    async fn probe(&self, host_port: &str) -> Option<TlsProblem> {
        use tokio::io::AsyncReadExt;

        let mut config = match &self.identity {
            Some((cert, key)) => tls::client_config_mtls(&self.ca_pem, cert, key),
            None => tls::client_config(&self.ca_pem),
        }
        .ok()?;
        // As etcd-client's own handshake would, but offering no protocol: the probe only
        // reads what etcd thinks of the handshake.
        config.alpn_protocols.clear();
        let host = match &self.domain_name {
            Some(name) => name.clone(),
            None => host(host_port)?,
        };
        let name = ServerName::try_from(host).ok()?;
        let tcp = tokio::net::TcpStream::connect(host_port).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = match connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(err) => return tls_problem(&err),
        };
        // etcd's verdict on our certificate comes after the handshake, as an alert; an etcd
        // content with us waits for our HTTP/2 preface and sends nothing, and the probe
        // ends with the timeout around it.
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Err(err) => tls_problem(&err),
            Ok(_) => None,
        }
    }
}

/// What went wrong in a TLS handshake with etcd, read from rustls's error in the chain of
/// `err`'s sources; `None` if it is not a TLS failure.
pub(super) fn tls_problem(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut next = Some(err);
    while let Some(err) = next {
        // `io::Error::source` skips the error it wraps, and tokio-rustls wraps rustls's
        // errors in `io::Error`s: look inside.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(TlsProblem::from_rustls(tls));
            }
        }
        // tonic's words when the peer hangs up on the client's hello: an etcd serving plain
        // text reads it as a broken HTTP/2 preface and closes the connection.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            if io.kind() == std::io::ErrorKind::UnexpectedEof && text.contains("tls handshake") {
                return Some(TlsProblem::NotTls(text));
            }
            // An alert that arrives after the handshake reaches hyper as rustls's words only,
            // not its error.
            if io.kind() == std::io::ErrorKind::InvalidData
                && CLIENT_CERTIFICATE_ALERTS
                    .iter()
                    .any(|alert| text.contains(&format!("received fatal alert: {alert}")))
            {
                return Some(TlsProblem::ClientCertificate(text));
            }
        }
        next = err.source();
    }
    None
}

/// The alerts (as rustls writes them) of a TLS server that refuses a client's certificate,
/// or the lack of one. Go's sends `certificate required` (TLS 1.3) or `bad certificate` when
/// there is none, `bad certificate` or `unknown CA` for one of an unknown CA.
const CLIENT_CERTIFICATE_ALERTS: [&str; 5] = [
    "CertificateRequired",
    "BadCertificate",
    "UnknownCA",
    "CertificateUnknown",
    "HandshakeFailure",
];

/// Why a TLS handshake with etcd failed, as far as it tells what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TlsProblem {
    /// etcd's certificate is not signed by the CA given.
    UnknownCa(String),
    /// etcd's certificate does not name the host connected to.
    WrongName(String),
    /// Any other problem with etcd's certificate (expired, ...).
    BadServerCertificate(String),
    /// etcd wants a client certificate, and got none or one it does not trust.
    ClientCertificate(String),
    /// What answered is not speaking TLS.
    NotTls(String),
    /// We do not speak TLS, and etcd hung up: it wants TLS.
    PlainToTls,
    /// Anything else rustls said.
    Other(String),
}

impl TlsProblem {
    fn from_rustls(err: &rustls::Error) -> TlsProblem {
        use rustls::{AlertDescription as Alert, CertificateError, Error};
        let text = err.to_string();
        match err {
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                TlsProblem::UnknownCa(text)
            }
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsProblem::WrongName(text),
            Error::InvalidCertificate(_) => TlsProblem::BadServerCertificate(text),
            // See CLIENT_CERTIFICATE_ALERTS.
            Error::AlertReceived(
                Alert::CertificateRequired
                | Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::HandshakeFailure,
            ) => TlsProblem::ClientCertificate(text),
            Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
                TlsProblem::NotTls(text)
            }
            _ => TlsProblem::Other(text),
        }
    }
}
