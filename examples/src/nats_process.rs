//! A `nats-server` of one's own: started on a free loopback port with a directory of its own
//! in the temporary directory (its configuration and log), waited for until it greets
//! clients, and killed (its directory deleted) when dropped. The `nats_cluster` example
//! starts one when `NATS_URL` is not set, and the NATS tests (`tests/tests/nats.rs`) one per
//! test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::inventory::free_ports;

/// A `nats-server` process; see the [module docs](self).
#[derive(Debug)]
pub struct NatsProcess {
    /// `None` once killed.
    child: Option<Child>,
    binary: PathBuf,
    patience: Duration,
    dir: PathBuf,
    port: u16,
}

/// Why a nats-server did not start.
#[derive(Debug)]
pub enum NatsError {
    /// Its directory, configuration or port could not be had.
    Setup(std::io::Error),
    /// The binary could not be run (`NotFound`: it is not installed).
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before it greeted a client.
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// Its log, which is deleted with its directory.
        log: String,
    },
    /// It did not greet a client within the patience given.
    Unready {
        /// How long it was given.
        patience: Duration,
        /// Its log so far.
        log: String,
    },
}

impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsError::Setup(err) => write!(f, "could not prepare to start nats-server: {err}"),
            NatsError::Spawn { binary, source } => write!(
                f,
                "could not start `{}` ({source}); on Debian: apt-get install nats-server",
                binary.display()
            ),
            NatsError::Exited { status, log } => {
                write!(
                    f,
                    "nats-server exited at start-up ({status}); its log:\n{log}"
                )
            }
            NatsError::Unready { patience, log } => write!(
                f,
                "nats-server did not greet a client within {patience:?}; its log:\n{log}"
            ),
        }
    }
}

impl std::error::Error for NatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NatsError::Setup(err) | NatsError::Spawn { source: err, .. } => Some(err),
            NatsError::Exited { .. } | NatsError::Unready { .. } => None,
        }
    }
}

impl From<std::io::Error> for NatsError {
    fn from(err: std::io::Error) -> NatsError {
        NatsError::Setup(err)
    }
}

impl NatsProcess {
    /// Starts `binary` (e.g. `nats-server`, found on the `PATH`) with NATS's default message
    /// size limit (1 MiB), and waits up to `patience` until it greets clients.
    pub async fn start(
        binary: impl Into<PathBuf>,
        patience: Duration,
    ) -> Result<NatsProcess, NatsError> {
        NatsProcess::start_with(binary, patience, None).await
    }

    /// As [`start`](Self::start), with `max_payload` as the largest message it accepts.
    pub async fn start_with(
        binary: impl Into<PathBuf>,
        patience: Duration,
        max_payload: Option<usize>,
    ) -> Result<NatsProcess, NatsError> {
        // A directory per server: a process (a test binary) may start several.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-nats-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let [port] = free_ports()?;
        let mut config = format!("host: 127.0.0.1\nport: {port}\n");
        if let Some(bytes) = max_payload {
            config.push_str(&format!("max_payload: {bytes}\n"));
        }
        std::fs::write(dir.join("nats.conf"), config)?;
        let mut nats = NatsProcess {
            child: None,
            binary: binary.into(),
            patience,
            dir,
            port,
        };
        // On an error, `nats` is dropped: the process killed and the directory deleted.
        nats.launch().await?;
        Ok(nats)
    }

    /// Its URL, for `async_nats::connect`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its log so far (over every start).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Kills nats-server (SIGKILL: every message in flight is lost).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills nats-server and starts it again on the same port.
    pub async fn restart(&mut self) -> Result<(), NatsError> {
        self.kill();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), NatsError> {
        // Appended to: a restarted server's log follows the one before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| NatsError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        self.wait_ready().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    /// Connects until the server greets with its `INFO` line.
    async fn wait_ready(&mut self) -> Result<(), NatsError> {
        let since = Instant::now();
        loop {
            let exited = (self.child.as_mut()).and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(NatsError::Exited {
                    status,
                    log: self.log(),
                });
            }
            if greets(self.port).await {
                return Ok(());
            }
            if since.elapsed() > self.patience {
                return Err(NatsError::Unready {
                    patience: self.patience,
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test: its output is the only place the log is left.
        if std::thread::panicking() {
            eprintln!(
                "nats-server's log ({}):\n{}",
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

/// Whether a NATS server on `port` sends its `INFO` greeting.
async fn greets(port: u16) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut greeting = [0; 5];
        stream.read_exact(&mut greeting).await?;
        std::io::Result::Ok(&greeting == b"INFO ")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}
