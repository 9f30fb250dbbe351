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
//! [`RetryBudget`]. A method not so marked is never sent twice. A client told to [`Hedge`]
//! also sends a call of such a method that is slow to answer to a second endpoint, within
//! the same budget, and takes the first answer.
//!
//! The endpoints are a fixed list ([`ClientBuilder::balance`](crate::ClientBuilder::balance))
//! or come and go as a [`Discover`] source says
//! ([`ClientBuilder::discover`](crate::ClientBuilder::discover)): a stream of [`Change`]s, a
//! [`StaticList`], or DNS names (`rpc_transport::dns`, with its `dns` feature).
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
mod discover;
mod hedge;
mod pool;
mod run;
mod stats;
mod strategy;
mod subset;
mod zone;

pub use backoff::Backoff;
pub use breaker::FailureAccrual;
pub use budget::RetryBudget;
pub use discover::{Discover, StaticChanges, StaticList};
pub use hedge::{Hedge, HedgeError};
pub use stats::{ClientStats, EndpointState, EndpointStats};
pub use strategy::{
    seed_randomness, ConsistentHash, Endpoints, LeastLoaded, Random, RoundRobin, Strategy, Weighted,
};
pub use subset::Subset;
pub use zone::{Zone, ZONE};

pub(crate) use pool::{Pool, PoolConfig, PoolHandle};
pub(crate) use run::{run, ManagedCall, Reply};
pub(crate) use strategy::hash_key;

/// One endpoint of a balancing client: a key that names it (an address, a pod name), a
/// connector to reach it, a weight, and optional metadata (a zone, a version: whatever a
/// discovery source knows about it, for a [`Strategy`] to read through
/// [`Endpoints::metadata`]).
///
/// ```
/// use rpc_core::balance::Endpoint;
///
/// let endpoint = Endpoint::new("a", rpc_transport::tcp::connector("127.0.0.1:4000"))
///     .weight(3)
///     .metadata("zone", "eu-west-1a");
/// assert_eq!((endpoint.key(), endpoint.get_weight()), ("a", 3));
/// assert_eq!(endpoint.get_metadata("zone"), Some("eu-west-1a"));
/// assert_eq!(endpoint.get_metadata("version"), None);
/// ```
#[derive(Debug, Clone)]
pub struct Endpoint<C> {
    pub(crate) key: String,
    pub(crate) connector: C,
    pub(crate) weight: u32,
    /// Few entries, read rarely: a vector beats a map.
    pub(crate) metadata: Vec<(String, String)>,
}

impl<C> Endpoint<C> {
    /// An endpoint of weight 1, without metadata.
    pub fn new(key: impl Into<String>, connector: C) -> Endpoint<C> {
        Endpoint {
            key: key.into(),
            connector,
            weight: 1,
            metadata: Vec::new(),
        }
    }

    /// Sets the weight the [`Weighted`] and [`ConsistentHash`] strategies give it.
    pub fn weight(mut self, weight: u32) -> Endpoint<C> {
        self.weight = weight;
        self
    }

    /// Sets the metadata value of `key`, replacing an earlier value of the same key.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Endpoint<C> {
        let (key, value) = (key.into(), value.into());
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.metadata.push((key, value)),
        }
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

    /// The metadata value of `key`, if it has one.
    pub fn get_metadata(&self, key: &str) -> Option<&str> {
        metadata_value(&self.metadata, key)
    }

    /// Every metadata entry, in the order they were first set.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The endpoint's connector.
    pub fn connector(&self) -> &C {
        &self.connector
    }
}

fn metadata_value<'a>(metadata: &'a [(String, String)], key: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
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
