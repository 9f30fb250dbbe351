//! The reflection service every [`Server`](crate::Server) hosts: what it serves, described
//! well enough to call it without the crate that defines it.
//!
//! Next to its own services and the [health check](crate::health), each server answers
//! [`Reflection`] (wire name `rpc.Reflection`): the names of the services it hosts, and for
//! each its [schema](crate::schema): methods with their argument names and types as
//! written, result types, streaming and idempotent flags, doc comments and the wire shape
//! of every type.
//!
//! ```
//! use rpc_core::reflection::ReflectionClient;
//! use rpc_core::{service, Server};
//!
//! /// Adds numbers.
//! #[service]
//! pub trait Calculator {
//!     /// The sum of `a` and `b`.
//!     async fn add(&self, a: i64, b: i64) -> i64;
//! }
//!
//! struct Calc;
//!
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rpc_core::RpcError> {
//! let (listener, connector) = rpc_transport::memory::listener();
//! tokio::spawn(Server::new().add_service(CalculatorServer::new(Calc)).serve(listener));
//! let reflection = ReflectionClient::new(connector.connect().await.expect("connect"));
//! assert_eq!(
//!     reflection.services().await?,
//!     ["Calculator", "rpc.Health", "rpc.Reflection"]
//! );
//! let calculator = reflection.describe("Calculator".into()).await?.expect("hosted");
//! let add = calculator.method("add").expect("a method");
//! assert_eq!(add.docs, "The sum of `a` and `b`.");
//! assert_eq!(add.args[1].name, "b");
//! assert_eq!(add.result.written, "i64");
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::descriptor::ServiceDescriptor;
use crate::schema::ServiceSchema;
use crate::service;

/// The reflection service a server hosts: ask it with `ReflectionClient`.
#[service(name = "rpc.Reflection")]
pub trait Reflection {
    /// The wire names of the services this server hosts, sorted (`rpc.Health` and
    /// `rpc.Reflection` among them).
    #[rpc(idempotent)]
    async fn services(&self) -> Vec<String>;

    /// The schema of the hosted service `service`, or `None` if the server does not host it.
    #[rpc(idempotent)]
    async fn describe(&self, service: String) -> Option<ServiceSchema>;
}

/// The server's side: the descriptors of what it hosts.
pub(crate) struct Hosted {
    pub(crate) services: Arc<[&'static ServiceDescriptor]>,
}

impl Hosted {
    /// The schema of the hosted service `name`.
    pub(crate) fn schema(&self, name: &str) -> Option<ServiceSchema> {
        Some(self.services.iter().find(|d| d.name == name)?.described())
    }
}

impl Reflection for Hosted {
    async fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.iter().map(|d| d.name.to_owned()).collect();
        names.sort_unstable();
        names
    }

    async fn describe(&self, service: String) -> Option<ServiceSchema> {
        self.schema(&service)
    }
}
