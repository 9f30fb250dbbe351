//! A `nats-server` of one's own: started on a free loopback port with a directory of its own
//! in the temporary directory (its configuration and log), waited for until it greets
//! clients, and killed (its directory deleted) when dropped. The `nats_cluster` example
//! starts one when `NATS_URL` is not set, and the NATS tests (`tests/tests/nats.rs`) one per
//! test.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::daemon::StartError;
use crate::daemon::{answers, Daemon};
use crate::inventory::free_ports;

/// A `nats-server` process; see the [module docs](self).
#[derive(Debug)]
pub struct NatsProcess {
    daemon: Daemon,
    port: u16,
}

impl NatsProcess {
    /// Starts `binary` (e.g. `nats-server`, found on the `PATH`) with NATS's default message
    /// size limit (1 MiB), and waits up to `patience` until it greets clients.
    pub async fn start(
        binary: impl Into<PathBuf>,
        patience: Duration,
    ) -> Result<NatsProcess, StartError> {
        NatsProcess::start_with(binary, patience, None).await
    }

    /// As [`start`](Self::start), with `max_payload` as the largest message it accepts.
    pub async fn start_with(
        binary: impl Into<PathBuf>,
        patience: Duration,
        max_payload: Option<usize>,
    ) -> Result<NatsProcess, StartError> {
        let daemon = Daemon::new("nats-server", "nats", binary, patience)?;
        let [port] = free_ports()?;
        let mut config = format!("host: 127.0.0.1\nport: {port}\n");
        if let Some(bytes) = max_payload {
            config.push_str(&format!("max_payload: {bytes}\n"));
        }
        std::fs::write(daemon.dir().join("nats.conf"), config)?;
        let mut nats = NatsProcess { daemon, port };
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
        self.daemon.log()
    }

    /// Kills nats-server (SIGKILL: every message in flight is lost).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Kills nats-server and starts it again on the same port.
    pub async fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), StartError> {
        let mut command = self.daemon.command();
        command.arg("-c").arg(self.daemon.dir().join("nats.conf"));
        let port = self.port;
        // A NATS server greets every client with `INFO {…}`.
        self.daemon
            .launch(command, || answers(port, b"", "INFO "))
            .await
    }
}
