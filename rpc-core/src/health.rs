//! The health check every [`Server`](crate::Server) hosts, for load balancers, orchestrators
//! and operators.
//!
//! Each server answers the [`Health`] service (wire name `rpc.Health`) next to its own, on
//! the same listener: `check("")` says whether the server as a whole serves, `check("Name")`
//! whether it hosts and serves the service `Name`. Services can be marked not serving
//! through a [`HealthReporter`] ([`Server::health_reporter`](crate::Server::health_reporter)),
//! e.g. while a dependency is down.
//!
//! A server that starts shutting down closes its idle connections at once, health checks'
//! included, and accepts no new ones, so a prober sees it go. To let balancers and
//! orchestrators move traffic away *before* that, mark the server
//! [`NotServing`](HealthStatus::NotServing) with the reporter, give them time to notice, and
//! then start the shutdown.
//!
//! ```
//! use rpc_core::health::{HealthClient, HealthStatus};
//! use rpc_core::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rpc_core::RpcError> {
//! let (listener, connector) = rpc_transport::memory::listener();
//! tokio::spawn(Server::new().serve(listener));
//! let health = HealthClient::new(connector.connect().await.expect("connect"));
//! assert_eq!(health.check(String::new()).await?, HealthStatus::Serving);
//! assert_eq!(health.check("Nope".into()).await?, HealthStatus::Unknown);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::service;

/// Whether a server, or one service on it, serves calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// It serves calls.
    Serving,
    /// It is hosted but does not serve now (shutting down, or marked so).
    NotServing,
    /// This server does not host a service of that name.
    Unknown,
}

/// The health check a server hosts: ask it with `HealthClient`.
#[service(name = "rpc.Health")]
pub trait Health {
    /// The status of `service` on this server, or of the server itself for `""`.
    #[rpc(idempotent)]
    async fn check(&self, service: String) -> HealthStatus;
}

/// Marks a server's services as serving or not; see
/// [`Server::health_reporter`](crate::Server::health_reporter). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HealthReporter {
    overrides: Arc<Mutex<HashMap<String, HealthStatus>>>,
}

impl HealthReporter {
    /// Reports `service` (`""` for the whole server) as `status` until set otherwise.
    /// Setting `Serving` again removes the override.
    pub fn set(&self, service: impl Into<String>, status: HealthStatus) {
        let mut overrides = crate::lock::lock(&self.overrides);
        let service = service.into();
        if status == HealthStatus::Serving {
            overrides.remove(&service);
        } else {
            overrides.insert(service, status);
        }
    }

    fn get(&self, service: &str) -> Option<HealthStatus> {
        crate::lock::lock(&self.overrides).get(service).copied()
    }
}

/// The server's side of [`Health`].
pub(crate) struct HealthCheck {
    pub(crate) services: HashSet<&'static str>,
    pub(crate) reporter: HealthReporter,
    pub(crate) shutdown: CancellationToken,
}

impl Health for HealthCheck {
    async fn check(&self, service: String) -> HealthStatus {
        if !service.is_empty() && !self.services.contains(service.as_str()) {
            return HealthStatus::Unknown;
        }
        if self.shutdown.is_cancelled() {
            return HealthStatus::NotServing;
        }
        let whole = self.reporter.get("");
        whole
            .or_else(|| self.reporter.get(&service))
            .unwrap_or(HealthStatus::Serving)
    }
}
