//! An `etcd` of one's own: a one-member cluster started on free loopback ports with a data
//! directory of its own in the temporary directory, waited for until it is healthy, and
//! killed (its directory deleted) when dropped. The `etcd_cluster` example starts one when
//! `ETCD_ENDPOINTS` is not set, and the etcd tests (`tests/tests/etcd.rs`) one per test.
//!
//! [`EtcdProcess::builder`] starts it as production clusters run: over TLS, with
//! certificates made at start-up by a throwaway CA (optionally requiring client
//! certificates), and with authentication enabled and users of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::inventory::free_ports;

/// The password of etcd's `root` user when the harness enables authentication.
pub const ROOT_PASSWORD: &str = "root-secret";

/// An `etcd` process; see the [module docs](self).
#[derive(Debug)]
pub struct EtcdProcess {
    /// `None` once killed.
    child: Option<Child>,
    /// The process id of the latest start.
    pid: u32,
    binary: PathBuf,
    name: String,
    patience: Duration,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Serves `/health` over plain HTTP whatever the client port speaks.
    metrics_port: u16,
    /// With TLS: the CA that signed etcd's certificate.
    ca: Option<Ca>,
    client_cert_auth: bool,
    /// Whether authentication is enabled: [`admin`](EtcdProcess::admin) is then `root`.
    auth: bool,
}

/// A throwaway certificate authority, made at start-up.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Ca { issuer })
    }

    /// A certificate (PEM) and its key (PEM) for `names`, for `purpose`.
    fn issue(
        &self,
        names: &[&str],
        purposes: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = purposes;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The PEM of a CA made up on the spot, which signed nothing anyone uses: a wrong CA to trust.
pub fn unrelated_ca_pem() -> Result<String, rcgen::Error> {
    Ok(Ca::new("an unrelated CA")?.issuer.pem())
}

/// A client certificate and key (PEM) for `name` signed by a CA made up on the spot, which
/// no etcd trusts: a certificate an etcd with `--client-cert-auth` refuses.
pub fn unrelated_client_identity(name: &str) -> Result<(String, String), rcgen::Error> {
    Ca::new("an unrelated CA")?.issue(&[name], vec![ExtendedKeyUsagePurpose::ClientAuth])
}

/// What etcd a [`EtcdProcess::builder`] starts.
#[derive(Debug)]
#[must_use]
pub struct EtcdBuilder {
    binary: PathBuf,
    name: String,
    patience: Duration,
    tls: bool,
    client_cert_auth: bool,
    auth: bool,
    users: Vec<(String, String, Access, String)>,
}

/// What a user made by [`EtcdBuilder::user`] may do with the keys under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read them (list, get, watch).
    Read,
    /// Read and write them.
    ReadWrite,
}

impl EtcdBuilder {
    /// How long it may take to become healthy (default 30 s).
    pub fn patience(mut self, patience: Duration) -> EtcdBuilder {
        self.patience = patience;
        self
    }

    /// Serves clients over TLS only (`https://`), with a certificate for `127.0.0.1` and
    /// `localhost` signed by a CA made at start-up: [`EtcdProcess::ca_pem`].
    pub fn tls(mut self) -> EtcdBuilder {
        self.tls = true;
        self
    }

    /// TLS, and clients must present a certificate signed by the same CA
    /// (`--client-cert-auth`): [`EtcdProcess::client_identity`] makes them.
    pub fn mutual_tls(mut self) -> EtcdBuilder {
        self.tls = true;
        self.client_cert_auth = true;
        self
    }

    /// Enables authentication: the user `root` ([`ROOT_PASSWORD`]) with the `root` role,
    /// and the users given with [`user`](EtcdBuilder::user).
    pub fn auth(mut self) -> EtcdBuilder {
        self.auth = true;
        self
    }

    /// With [`auth`](EtcdBuilder::auth): a user `name` with `password`, whose role (also
    /// called `name`) has `access` to the keys under `prefix`.
    pub fn user(mut self, name: &str, password: &str, access: Access, prefix: &str) -> EtcdBuilder {
        self.users
            .push((name.into(), password.into(), access, prefix.into()));
        self
    }

    /// Starts it, and waits until it is healthy (and its users are made).
    pub async fn start(self) -> Result<EtcdProcess, EtcdError> {
        // A directory per etcd: a process (a test binary) may start several.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-etcd-{}-{}-{}",
            self.name,
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let [client_port, peer_port, metrics_port] = free_ports()?;
        let mut etcd = EtcdProcess {
            child: None,
            pid: 0,
            binary: self.binary,
            name: self.name,
            patience: self.patience,
            dir,
            client_port,
            peer_port,
            metrics_port,
            ca: None,
            client_cert_auth: self.client_cert_auth,
            auth: false,
        };
        // On an error, `etcd` is dropped: the process killed and the directory deleted.
        if self.tls {
            etcd.make_certificates()?;
        }
        etcd.launch().await?;
        if self.auth {
            etcd.enable_auth(&self.users).await?;
            etcd.auth = true;
        }
        Ok(etcd)
    }
}

/// Why an etcd did not start.
#[derive(Debug)]
pub enum EtcdError {
    /// Its directory, log file or ports could not be had.
    Setup(std::io::Error),
    /// The binary could not be run (`NotFound`: it is not installed).
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before it became healthy.
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// Its log, which is deleted with its directory.
        log: String,
    },
    /// It was not healthy within the patience given.
    Unhealthy {
        /// How long it was given.
        patience: Duration,
        /// Its log so far.
        log: String,
    },
    /// Its certificates could not be made.
    Certificates(rcgen::Error),
    /// Setting up its users and enabling authentication, or a request as `root`, failed.
    Auth(etcd_client::Error),
}

impl From<rcgen::Error> for EtcdError {
    fn from(err: rcgen::Error) -> EtcdError {
        EtcdError::Certificates(err)
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Setup(err) => write!(f, "could not prepare to start etcd: {err}"),
            EtcdError::Spawn { binary, source } => {
                write!(f, "could not start `{}` ({source})", binary.display())
            }
            EtcdError::Exited { status, log } => {
                write!(f, "etcd exited at start-up ({status}); its log:\n{log}")
            }
            EtcdError::Unhealthy { patience, log } => write!(
                f,
                "etcd did not become healthy within {patience:?}; its log:\n{log}"
            ),
            EtcdError::Certificates(err) => write!(f, "could not make etcd's certificates: {err}"),
            EtcdError::Auth(err) => write!(f, "could not enable etcd's authentication: {err}"),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EtcdError::Setup(err) | EtcdError::Spawn { source: err, .. } => Some(err),
            EtcdError::Certificates(err) => Some(err),
            EtcdError::Auth(err) => Some(err),
            EtcdError::Exited { .. } | EtcdError::Unhealthy { .. } => None,
        }
    }
}

impl From<std::io::Error> for EtcdError {
    fn from(err: std::io::Error) -> EtcdError {
        EtcdError::Setup(err)
    }
}

impl EtcdProcess {
    /// Starts `binary` (e.g. `etcd`, found on the `PATH`) as the one member, `name`, of a new
    /// cluster, and waits up to `patience` until it is healthy (it has a leader).
    pub async fn start(
        binary: impl Into<PathBuf>,
        name: &str,
        patience: Duration,
    ) -> Result<EtcdProcess, EtcdError> {
        EtcdProcess::builder(binary, name)
            .patience(patience)
            .start()
            .await
    }

    /// An etcd `binary` as the one member `name` of a new cluster, with options: TLS,
    /// authentication.
    pub fn builder(binary: impl Into<PathBuf>, name: &str) -> EtcdBuilder {
        EtcdBuilder {
            binary: binary.into(),
            name: name.to_owned(),
            patience: Duration::from_secs(30),
            tls: false,
            client_cert_auth: false,
            auth: false,
            users: Vec::new(),
        }
    }

    /// With TLS: the PEM of the CA that signed etcd's certificate (and signs client
    /// certificates it accepts).
    pub fn ca_pem(&self) -> Option<String> {
        self.ca.as_ref().map(|ca| ca.issuer.pem())
    }

    /// With TLS: a new client certificate for `name`, signed by etcd's CA (PEM certificate,
    /// PEM key).
    pub fn client_identity(&self, name: &str) -> Result<(String, String), EtcdError> {
        let ca = self.ca.as_ref().ok_or_else(|| {
            EtcdError::Setup(std::io::Error::other("this etcd was started without TLS"))
        })?;
        Ok(ca.issue(&[name], vec![ExtendedKeyUsagePurpose::ClientAuth])?)
    }

    /// Its client URL: `https://127.0.0.1:port` with TLS, `http://…` without.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// `host:port` of its client URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The port of its client URL (also its HTTP gateway's).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The process id of its latest start.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log so far (stdout and stderr, over every start).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Kills etcd (SIGKILL: no goodbye to anyone). Its data stays, for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports, with its data.
    pub async fn restart(&mut self) -> Result<(), EtcdError> {
        self.kill();
        self.launch().await
    }

    /// Kills etcd and starts a new, empty one on the same ports: every key and lease is gone.
    pub async fn restart_empty(&mut self) -> Result<(), EtcdError> {
        self.kill();
        std::fs::remove_dir_all(self.dir.join("data"))?;
        self.launch().await
    }

    fn launch_command(&self) -> Command {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let name = &self.name;
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .arg("--log-level=warn");
        if self.ca.is_some() {
            command
                .arg(format!(
                    "--cert-file={}",
                    self.dir.join("etcd.pem").display()
                ))
                .arg(format!(
                    "--key-file={}",
                    self.dir.join("etcd-key.pem").display()
                ));
            if self.client_cert_auth {
                command.arg("--client-cert-auth").arg(format!(
                    "--trusted-ca-file={}",
                    self.dir.join("ca.pem").display()
                ));
            }
        }
        command
    }

    async fn launch(&mut self) -> Result<(), EtcdError> {
        // Appended to: a restarted etcd's log follows the one before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .launch_command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| EtcdError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        self.pid = child.id();
        self.child = Some(child);
        self.wait_healthy().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// Polls `/health` on the client port until etcd says it is healthy.
    async fn wait_healthy(&mut self) -> Result<(), EtcdError> {
        let since = Instant::now();
        loop {
            let exited = (self.child.as_mut()).and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(EtcdError::Exited {
                    status,
                    log: self.log(),
                });
            }
            if healthy(self.metrics_port).await {
                return Ok(());
            }
            if since.elapsed() > self.patience {
                return Err(EtcdError::Unhealthy {
                    patience: self.patience,
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl EtcdProcess {
    /// Makes the CA and etcd's certificate, into its directory.
    fn make_certificates(&mut self) -> Result<(), EtcdError> {
        let ca = Ca::new("etcd test CA")?;
        let (cert, key) = ca.issue(
            &["127.0.0.1", "localhost"],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        std::fs::write(self.dir.join("etcd.pem"), cert)?;
        std::fs::write(self.dir.join("etcd-key.pem"), key)?;
        std::fs::write(self.dir.join("ca.pem"), ca.issuer.pem())?;
        self.ca = Some(ca);
        Ok(())
    }

    /// Revokes `lease` as `root` would (`etcdctl lease revoke`): its keys are deleted.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), EtcdError> {
        let revoke = async { self.admin().await?.lease_revoke(lease).await };
        match tokio::time::timeout(self.patience, revoke).await {
            Ok(result) => result.map(drop).map_err(EtcdError::Auth),
            Err(_) => Err(EtcdError::Unhealthy {
                patience: self.patience,
                log: self.log(),
            }),
        }
    }

    /// A client as an administrator connects: with the TLS etcd needs, as `root` once
    /// authentication is enabled (before, no user: it makes them).
    async fn admin(&self) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new().with_connect_timeout(self.patience);
        if self.auth {
            options = options.with_user("root", ROOT_PASSWORD);
        }
        if let Some(ca) = &self.ca {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca.issuer.pem()));
            if self.client_cert_auth {
                let (cert, key) = ca
                    .issue(&["root"], vec![ExtendedKeyUsagePurpose::ClientAuth])
                    .map_err(|err| etcd_client::Error::InvalidArgs(err.to_string()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        Client::connect([self.url()], Some(options)).await
    }

    /// Makes `root` and the users, then enables authentication.
    async fn enable_auth(
        &self,
        users: &[(String, String, Access, String)],
    ) -> Result<(), EtcdError> {
        let setup = async {
            let mut client = self.admin().await?;
            client.user_add("root", ROOT_PASSWORD, None).await?;
            // etcd knows the role `root` without its being added.
            client.user_grant_role("root", "root").await?;
            for (name, password, access, prefix) in users {
                client
                    .user_add(name.as_str(), password.as_str(), None)
                    .await?;
                client.role_add(name.as_str()).await?;
                let permission = match access {
                    Access::Read => Permission::read(prefix.as_str()),
                    Access::ReadWrite => Permission::read_write(prefix.as_str()),
                };
                client
                    .role_grant_permission(name.as_str(), permission.with_prefix())
                    .await?;
                client.user_grant_role(name.as_str(), name.as_str()).await?;
            }
            client.auth_enable().await?;
            Ok(())
        };
        match tokio::time::timeout(self.patience, setup).await {
            Ok(result) => result.map_err(EtcdError::Auth),
            Err(_) => Err(EtcdError::Unhealthy {
                patience: self.patience,
                log: self.log(),
            }),
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test: its output is the only place the log is left.
        if std::thread::panicking() {
            eprintln!(
                "etcd's log ({}):\n{}",
                self.log_path().display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| format!("(unreadable: {err})"))
}

/// Whether etcd answers `GET /health` with `"health":"true"` (it is up and has a leader).
async fn healthy(port: u16) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).contains(r#""health":"true""#))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}
