//! An `etcd` of one's own: a one-member cluster started on free loopback ports with a data
//! directory of its own in the temporary directory, waited for until it is healthy, and
//! killed (its directory deleted) when dropped. The `etcd_cluster` example starts one when
//! `ETCD_ENDPOINTS` is not set, and the etcd tests (`tests/tests/etcd.rs`) one per test.
//!
//! [`EtcdProcess::builder`] starts it as production clusters run: over TLS, with
//! certificates made at start-up by a throwaway CA (optionally requiring client
//! certificates), and with authentication enabled and users of its own.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub use crate::daemon::StartError;
use crate::daemon::{answers, Daemon};
use crate::inventory::free_ports;

/// The password of etcd's `root` user when the harness enables authentication.
pub const ROOT_PASSWORD: &str = "root-secret";

/// An `etcd` process; see the [module docs](self).
#[derive(Debug)]
pub struct EtcdProcess {
    daemon: Daemon,
    name: String,
    patience: Duration,
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
        let label = format!("etcd-{}", self.name);
        let daemon =
            Daemon::new("etcd", &label, self.binary, self.patience).map_err(StartError::Setup)?;
        let [client_port, peer_port, metrics_port] = free_ports().map_err(StartError::Setup)?;
        let mut etcd = EtcdProcess {
            daemon,
            name: self.name,
            patience: self.patience,
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

/// Why an etcd did not start, or the harness could not do what was asked of it.
#[derive(Debug)]
pub enum EtcdError {
    /// The process did not start, or was not healthy in time.
    Start(StartError),
    /// Its certificates could not be made.
    Certificates(rcgen::Error),
    /// Setting up its users and enabling authentication, or a request as `root`, failed.
    Auth(etcd_client::Error),
    /// A request as `root` got no answer within the patience given.
    TimedOut(Duration),
}

impl EtcdError {
    /// Whether the `etcd` binary is not installed.
    pub fn is_not_installed(&self) -> bool {
        matches!(self, EtcdError::Start(err) if err.is_not_installed())
    }
}

impl From<rcgen::Error> for EtcdError {
    fn from(err: rcgen::Error) -> EtcdError {
        EtcdError::Certificates(err)
    }
}

impl From<StartError> for EtcdError {
    fn from(err: StartError) -> EtcdError {
        EtcdError::Start(err)
    }
}

impl From<std::io::Error> for EtcdError {
    fn from(err: std::io::Error) -> EtcdError {
        EtcdError::Start(StartError::Setup(err))
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Start(err) => err.fmt(f),
            EtcdError::Certificates(err) => write!(f, "could not make etcd's certificates: {err}"),
            EtcdError::Auth(err) => write!(f, "could not enable etcd's authentication: {err}"),
            EtcdError::TimedOut(after) => {
                write!(f, "etcd did not answer a request as root within {after:?}")
            }
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EtcdError::Start(err) => Some(err),
            EtcdError::Certificates(err) => Some(err),
            EtcdError::Auth(err) => Some(err),
            EtcdError::TimedOut(_) => None,
        }
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
            EtcdError::from(std::io::Error::other("this etcd was started without TLS"))
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
        self.daemon.pid()
    }

    /// Its log so far (stdout and stderr, over every start).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Kills etcd (SIGKILL: no goodbye to anyone). Its data stays, for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Kills etcd and starts it again on the same ports, with its data.
    pub async fn restart(&mut self) -> Result<(), EtcdError> {
        self.kill();
        self.launch().await
    }

    /// Kills etcd and starts a new, empty one on the same ports: every key and lease is gone.
    pub async fn restart_empty(&mut self) -> Result<(), EtcdError> {
        self.kill();
        std::fs::remove_dir_all(self.daemon.dir().join("data"))?;
        self.launch().await
    }

    fn launch_command(&self) -> Command {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let name = &self.name;
        let mut command = self.daemon.command();
        command
            .arg(format!("--name={name}"))
            .arg(format!(
                "--data-dir={}",
                self.daemon.dir().join("data").display()
            ))
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
                    self.daemon.dir().join("etcd.pem").display()
                ))
                .arg(format!(
                    "--key-file={}",
                    self.daemon.dir().join("etcd-key.pem").display()
                ));
            if self.client_cert_auth {
                command.arg("--client-cert-auth").arg(format!(
                    "--trusted-ca-file={}",
                    self.daemon.dir().join("ca.pem").display()
                ));
            }
        }
        command
    }

    async fn launch(&mut self) -> Result<(), EtcdError> {
        let command = self.launch_command();
        let port = self.metrics_port;
        // etcd is up and has a leader once `/health` says `"health":"true"`.
        let healthy = || {
            answers(
                port,
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                r#""health":"true""#,
            )
        };
        Ok(self.daemon.launch(command, healthy).await?)
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
        std::fs::write(self.daemon.dir().join("etcd.pem"), cert)?;
        std::fs::write(self.daemon.dir().join("etcd-key.pem"), key)?;
        std::fs::write(self.daemon.dir().join("ca.pem"), ca.issuer.pem())?;
        self.ca = Some(ca);
        Ok(())
    }

    /// Revokes `lease` as `root` would (`etcdctl lease revoke`): its keys are deleted.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), EtcdError> {
        let revoke = async { self.admin().await?.lease_revoke(lease).await };
        match tokio::time::timeout(self.patience, revoke).await {
            Ok(result) => result.map(drop).map_err(EtcdError::Auth),
            Err(_) => Err(EtcdError::TimedOut(self.patience)),
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
            Err(_) => Err(EtcdError::TimedOut(self.patience)),
        }
    }
}
