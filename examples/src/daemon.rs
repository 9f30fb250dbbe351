//! What the harnesses of real servers (`etcd_process`, `zk_process`, `nats_process`) share:
//! a server process with a directory of its own in the temporary directory, its output
//! appended to a log file there, waited for until it is ready, restartable, and killed (its
//! directory deleted) when dropped. A test that fails prints the log, the only place it is
//! left.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server process; see the [module docs](self).
#[derive(Debug)]
pub struct Daemon {
    /// What it is, for messages: "etcd", "ZooKeeper", "nats-server".
    name: &'static str,
    binary: PathBuf,
    patience: Duration,
    dir: PathBuf,
    /// `None` until started, and once killed.
    child: Option<Child>,
    /// The process id of the latest start.
    pid: u32,
}

/// Why a server did not start.
#[derive(Debug)]
pub enum StartError {
    /// Its directory, files or ports could not be had.
    Setup(std::io::Error),
    /// The binary could not be run (`NotFound`: it is not installed).
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before it was ready.
    Exited {
        /// What it is.
        name: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// Its log, which is deleted with its directory.
        log: String,
    },
    /// It was not ready within the patience given.
    NotReady {
        /// What it is.
        name: &'static str,
        /// How long it was given.
        patience: Duration,
        /// Its log so far.
        log: String,
    },
}

impl StartError {
    /// Whether the binary is not installed.
    pub fn is_not_installed(&self) -> bool {
        matches!(self, StartError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Setup(err) => write!(f, "could not prepare to start a server: {err}"),
            StartError::Spawn { binary, source } => {
                write!(f, "could not start `{}` ({source})", binary.display())
            }
            StartError::Exited { name, status, log } => {
                write!(f, "{name} exited at start-up ({status}); its log:\n{log}")
            }
            StartError::NotReady {
                name,
                patience,
                log,
            } => write!(
                f,
                "{name} was not ready within {patience:?}; its log:\n{log}"
            ),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Setup(err) | StartError::Spawn { source: err, .. } => Some(err),
            StartError::Exited { .. } | StartError::NotReady { .. } => None,
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(err: std::io::Error) -> StartError {
        StartError::Setup(err)
    }
}

impl Daemon {
    /// A server `name` to run from `binary`, with a new, empty directory of its own (`label`
    /// tells it apart in the temporary directory), waited for up to `patience` at each start.
    pub fn new(
        name: &'static str,
        label: &str,
        binary: impl Into<PathBuf>,
        patience: Duration,
    ) -> std::io::Result<Daemon> {
        // A directory per server: a process (a test binary) may start several.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-{label}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Daemon {
            name,
            binary: binary.into(),
            patience,
            dir,
            child: None,
            pid: 0,
        })
    }

    /// Its directory, for its data, configuration and certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command that runs its binary, for [`launch`](Self::launch).
    pub fn command(&self) -> Command {
        Command::new(&self.binary)
    }

    /// The process id of its latest start.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log so far (stdout and stderr, over every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_else(|err| format!("(unreadable: {err})"))
    }

    /// Runs `command` (from [`command`](Self::command)), its output appended to the log (a
    /// restarted server's log follows the one before), and polls `ready` until it says yes,
    /// the process exits, or the patience runs out.
    pub async fn launch<F>(
        &mut self,
        mut command: Command,
        ready: impl Fn() -> F,
    ) -> Result<(), StartError>
    where
        F: Future<Output = bool>,
    {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| StartError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        self.pid = child.id();
        self.child = Some(child);
        let since = Instant::now();
        loop {
            let exited = (self.child.as_mut()).and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(StartError::Exited {
                    name: self.name,
                    status,
                    log: self.log(),
                });
            }
            if ready().await {
                return Ok(());
            }
            if since.elapsed() > self.patience {
                return Err(StartError::NotReady {
                    name: self.name,
                    patience: self.patience,
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process (SIGKILL: no goodbye to anyone). Its directory stays, for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // A failing test: its output is the only place the log is left.
        if std::thread::panicking() {
            eprintln!(
                "{}'s log ({}):\n{}",
                self.name,
                self.log_path().display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A readiness check: whether the server on loopback `port` answers `request` (sent once
/// connected; nothing if it is empty) with something in which `expect` appears, read until
/// it does or the server closes the connection, all within 2 s.
pub async fn answers(port: u16, request: &[u8], expect: &str) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        if !request.is_empty() {
            stream.write_all(request).await?;
        }
        let mut answer = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            answer.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&answer).contains(expect) {
                return std::io::Result::Ok(true);
            }
            if n == 0 {
                return Ok(false);
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}
