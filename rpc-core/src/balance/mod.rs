//! Reconnection, load balancing, retries and failure accrual for clients built with a
//! [`ClientBuilder`](crate::ClientBuilder).
//!
//! A client made from one transport (`FooClient::new(transport)`) is one connection and
//! none of this applies to it. A client built from a connector or a set of endpoints keeps
//! a connection to each endpoint, remaking lost ones in the background with exponential
//! backoff ([`Backoff`]); sends each call to the endpoint a [`Strategy`] chooses among the
//! connected ones; sets aside endpoints whose calls keep failing ([`FailureAccrual`]); and
//! retries calls of methods marked `#[rpc(idempotent)]` that failed with `Disconnected` or
//! `Overloaded`, on another endpoint when there is one, within the call's deadline and a
//! [`RetryBudget`]. A method not so marked is never sent twice.
//!
//! ```no_run
//! use std::time::Duration;
//! use rpc_core::balance::{Endpoint, LeastLoaded};
//! use rpc_core::service;
//!
//! #[service]
//! pub trait Store {
//!     #[rpc(idempotent)]
//!     async fn get(&self, key: String) -> Option<String>;
//! }
//!
//! # async fn demo() -> Result<(), rpc_core::RpcError> {
//! let client = StoreClient::builder()
//!     .strategy(LeastLoaded::new())
//!     .balance(["10.0.0.1:4000", "10.0.0.2:4000", "10.0.0.3:4000"].map(|addr| {
//!         Endpoint::new(addr, rpc_transport::tcp::connector(addr))
//!     }));
//! let value = client.get("k".into()).timeout(Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

mod backoff;
mod breaker;
mod budget;
mod pool;
mod run;
mod stats;
mod strategy;

pub use backoff::Backoff;
pub use breaker::FailureAccrual;
pub use budget::RetryBudget;
pub use stats::{ClientStats, EndpointState, EndpointStats};
pub use strategy::{
    ConsistentHash, Endpoints, LeastLoaded, Random, RoundRobin, Strategy, Weighted,
};

pub(crate) use pool::{Pool, PoolConfig, PoolHandle};
pub(crate) use run::{run, ManagedCall};
pub(crate) use strategy::hash_key;

/// One endpoint of a balancing client: a key that names it (an address, a pod name) and a
/// connector to reach it.
///
/// ```
/// use rpc_core::balance::Endpoint;
///
/// let endpoint = Endpoint::new("a", rpc_transport::tcp::connector("127.0.0.1:4000")).weight(3);
/// assert_eq!((endpoint.key(), endpoint.get_weight()), ("a", 3));
/// ```
#[derive(Debug, Clone)]
pub struct Endpoint<C> {
    pub(crate) key: String,
    pub(crate) connector: C,
    pub(crate) weight: u32,
}

impl<C> Endpoint<C> {
    /// An endpoint of weight 1.
    pub fn new(key: impl Into<String>, connector: C) -> Endpoint<C> {
        Endpoint {
            key: key.into(),
            connector,
            weight: 1,
        }
    }

    /// Sets the weight the [`Weighted`] and [`ConsistentHash`] strategies give it.
    pub fn weight(mut self, weight: u32) -> Endpoint<C> {
        self.weight = weight;
        self
    }

    /// The endpoint's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The endpoint's weight.
    pub fn get_weight(&self) -> u32 {
        self.weight
    }
}

/// A change to the endpoints of a balancing client, from a discovery source (see
/// [`ClientBuilder::discover`](crate::ClientBuilder::discover)).
#[derive(Debug, Clone)]
pub enum Change<C> {
    /// A new endpoint, or a new connector or weight for the one with the same key.
    Insert(Endpoint<C>),
    /// The endpoint with this key is gone: it gets no new calls, and its connection closes
    /// once the calls in progress on it finish.
    Remove(String),
}
