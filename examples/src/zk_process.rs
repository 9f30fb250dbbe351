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
use std::process::Command;
use std::time::Duration;

pub use crate::daemon::StartError;
use crate::daemon::{answers, Daemon};
use crate::inventory::free_ports;

/// Debian's jars: the server, and a logger for it (without one, it logs nothing).
const DEBIAN_CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// A ZooKeeper server process; see the [module docs](self).
#[derive(Debug)]
pub struct ZkProcess {
    daemon: Daemon,
    classpath: String,
    tick: Duration,
    client_port: u16,
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
        let java = std::env::var_os("JAVA").map_or_else(|| PathBuf::from("java"), PathBuf::from);
        let daemon = Daemon::new("ZooKeeper", &format!("zk-{name}"), java, patience)?;
        let [client_port] = free_ports()?;
        let mut zk = ZkProcess {
            daemon,
            classpath: std::env::var("ZOOKEEPER_CLASSPATH")
                .unwrap_or_else(|_| DEBIAN_CLASSPATH.to_string()),
            tick,
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
        self.daemon.pid()
    }

    /// Its log so far (stdout and stderr, over every start).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Kills ZooKeeper (SIGKILL: no goodbye to anyone). Its data stays, for
    /// [`restart`](Self::restart).
    pub fn kill(&mut self) {
        self.daemon.kill();
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
        self.daemon.dir().join("data")
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
        let path = self.daemon.dir().join("zoo.cfg");
        std::fs::write(&path, config)?;
        Ok(path)
    }

    fn launch_command(&self, config: &Path) -> Command {
        let mut command = self.daemon.command();
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
        let command = self.launch_command(&config);
        let port = self.client_port;
        // ZooKeeper answers the `srvr` four-letter word with its statistics once it serves
        // ("not currently serving requests" until it has loaded its data).
        let serving = || answers(port, b"srvr", "Mode: standalone");
        self.daemon.launch(command, serving).await
    }
}
