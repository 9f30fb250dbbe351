//! A ZooKeeper of one's own: a standalone server started from Debian's packages (`zookeeperd`,
//! whose jars are in `/usr/share/java`) on a free loopback port with a data directory of its
//! own in the temporary directory, waited for until it serves, and killed (its directory
//! deleted) when dropped. The `zk_cluster` example starts one when `ZOOKEEPER_SERVERS` is not
//! set, and the ZooKeeper tests (`tests/tests/zookeeper.rs`) one per test.
//!
//! It runs `java -cp <classpath> org.apache.zookeeper.server.ZooKeeperServerMain zoo.cfg`
//! with a `zoo.cfg` it writes: the classpath is Debian's `zookeeper.jar` (whose manifest
//! names the jars it needs, as Debian's `zkEnv.sh` relies on) and `slf4j-simple.jar`, so the
//! server logs to its log file; `ZOOKEEPER_CLASSPATH` replaces it, and `JAVA` names the `java`
//! to run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::inventory::free_ports;

/// Debian's jars: the server, and a logger for it (without one, it logs nothing).
const DEBIAN_CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// A ZooKeeper server process; see the [module docs](self).
#[derive(Debug)]
pub struct ZkProcess {
    /// `None` once killed.
    child: Option<Child>,
    /// The process id of the latest start.
    pid: u32,
    java: PathBuf,
    classpath: String,
    tick: Duration,
    patience: Duration,
    dir: PathBuf,
    client_port: u16,
}

/// Why a ZooKeeper did not start.
#[derive(Debug)]
pub enum StartError {
    /// Its directory, configuration, log file or port could not be had.
    Setup(std::io::Error),
    /// Java could not be run (`NotFound`: it is not installed).
    Spawn {
        /// The `java` binary.
        java: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before it served.
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// Its log, which is deleted with its directory.
        log: String,
    },
    /// It did not serve within the patience given.
    Unhealthy {
        /// How long it was given.
        patience: Duration,
        /// Its log so far.
        log: String,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Setup(err) => write!(f, "could not prepare to start ZooKeeper: {err}"),
            StartError::Spawn { java, source } => {
                write!(f, "could not start `{}` ({source})", java.display())
            }
            StartError::Exited { status, log } => write!(
                f,
                "ZooKeeper exited at start-up ({status}); is Debian's `zookeeperd` installed \
                 (its jars in /usr/share/java)? Its log:\n{log}"
            ),
            StartError::Unhealthy { patience, log } => write!(
                f,
                "ZooKeeper did not serve within {patience:?}; its log:\n{log}"
            ),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Setup(err) | StartError::Spawn { source: err, .. } => Some(err),
            StartError::Exited { .. } | StartError::Unhealthy { .. } => None,
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(err: std::io::Error) -> StartError {
        StartError::Setup(err)
    }
}

impl ZkProcess {
    /// Starts a standalone ZooKeeper ticking every `tick` (its shortest session is two
    /// ticks; its longest is raised to a minute, so clients get the timeouts they ask for),
    /// and waits up to `patience` until it serves. `name` tells its directory apart from
    /// others'.
    pub async fn start(
        name: &str,
        tick: Duration,
        patience: Duration,
    ) -> Result<ZkProcess, StartError> {
        // A directory per server: a process (a test binary) may start several.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rpc-zk-{name}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let [client_port] = free_ports()?;
        let mut zk = ZkProcess {
            child: None,
            pid: 0,
            java: std::env::var_os("JAVA").map_or_else(|| PathBuf::from("java"), PathBuf::from),
            classpath: std::env::var("ZOOKEEPER_CLASSPATH")
                .unwrap_or_else(|_| DEBIAN_CLASSPATH.to_string()),
            tick,
            patience,
            dir,
            client_port,
        };
        // On an error, `zk` is dropped: the process killed and the directory deleted.
        zk.launch().await?;
        Ok(zk)
    }

    /// `host:port` clients connect to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The port clients connect to.
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

    /// Kills ZooKeeper (SIGKILL: no goodbye to anyone). Its data stays, for
    /// [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills ZooKeeper and starts it again on the same port, with its data: its nodes and
    /// its sessions (which clients that reconnect in time keep) are still there.
    pub async fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        self.launch().await
    }

    /// Kills ZooKeeper and starts a new, empty one on the same port: every node and session
    /// is gone.
    pub async fn restart_empty(&mut self) -> Result<(), StartError> {
        self.kill();
        std::fs::remove_dir_all(self.data_dir())?;
        self.launch().await
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes `zoo.cfg` (again: its directory may be new).
    fn write_config(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(self.data_dir())?;
        let tick = self.tick.as_millis().max(1);
        let config = format!(
            "tickTime={tick}\n\
             dataDir={}\n\
             clientPort={}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout={}\n\
             maxSessionTimeout=60000\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=srvr,ruok\n",
            self.data_dir().display(),
            self.client_port,
            2 * tick,
        );
        let path = self.dir.join("zoo.cfg");
        std::fs::write(&path, config)?;
        Ok(path)
    }

    fn launch_command(&self, config: &Path) -> Command {
        let mut command = Command::new(&self.java);
        command
            // A small, quick-starting JVM: tests run several at once on small machines.
            .arg("-Xmx256m")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=info")
            .arg("-cp")
            .arg(&self.classpath)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(config);
        command
    }

    async fn launch(&mut self) -> Result<(), StartError> {
        let config = self.write_config()?;
        // Appended to: a restarted server's log follows the one before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .launch_command(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| StartError::Spawn {
                java: self.java.clone(),
                source,
            })?;
        self.pid = child.id();
        self.child = Some(child);
        self.wait_serving().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("zookeeper.log")
    }

    /// Asks `srvr` on the client port until ZooKeeper says it serves.
    async fn wait_serving(&mut self) -> Result<(), StartError> {
        let since = Instant::now();
        loop {
            let exited = (self.child.as_mut()).and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(StartError::Exited {
                    status,
                    log: self.log(),
                });
            }
            if serving(self.client_port).await {
                return Ok(());
            }
            if since.elapsed() > self.patience {
                return Err(StartError::Unhealthy {
                    patience: self.patience,
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ZkProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test: its output is the only place the log is left.
        if std::thread::panicking() {
            eprintln!(
                "ZooKeeper's log ({}):\n{}",
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

/// Whether ZooKeeper answers the `srvr` four-letter word with its statistics (it answers
/// "not currently serving requests" until it has loaded its data).
async fn serving(port: u16) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"srvr").await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).contains("Mode: standalone"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}
