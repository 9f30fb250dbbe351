//! An `etcd` of one's own: a one-member cluster started on free loopback ports with a data
//! directory of its own in the temporary directory, waited for until it is healthy, and
//! killed (its directory deleted) when dropped. The `etcd_cluster` example starts one when
//! `ETCD_ENDPOINTS` is not set, and the etcd tests (`tests/tests/etcd.rs`) one per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::inventory::free_ports;

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
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EtcdError::Setup(err) | EtcdError::Spawn { source: err, .. } => Some(err),
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
        // A directory per etcd: a process (a test binary) may start several.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-etcd-{name}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let [client_port, peer_port] = free_ports()?;
        let mut etcd = EtcdProcess {
            child: None,
            pid: 0,
            binary: binary.into(),
            name: name.to_owned(),
            patience,
            dir,
            client_port,
            peer_port,
        };
        // On an error, `etcd` is dropped: the process killed and the directory deleted.
        etcd.launch().await?;
        Ok(etcd)
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
        let client = format!("http://127.0.0.1:{}", self.client_port);
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
            .arg("--log-level=warn");
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
            if healthy(self.client_port).await {
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
