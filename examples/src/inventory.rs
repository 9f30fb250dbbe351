//! The inventory service, and what the `cluster` and `etcd_cluster` examples share around it.
//!
//! Both examples start copies of themselves as servers, make calls through one balancing
//! client while a server crashes, and count who answered what.

use std::time::Duration;

use rpc_core::service;
use serde::{Deserialize, Serialize};

/// How many units of an item a server has, and which server said so.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stock {
    /// Units in stock.
    pub units: u32,
    /// The server that answered (the demo counts calls per server with it).
    pub server: String,
}

/// A read-only inventory, replicated on every server.
#[service]
pub trait Inventory {
    /// Reads are safe to repeat: the client may retry them on another server.
    #[rpc(idempotent)]
    async fn stock(&self, item: String) -> Stock;
}

/// One replica of the inventory.
pub struct Replica {
    name: String,
}

impl Replica {
    /// A replica that gives `name` as the server in its answers.
    pub fn new(name: impl Into<String>) -> Replica {
        Replica { name: name.into() }
    }
}

impl Inventory for Replica {
    async fn stock(&self, item: String) -> Stock {
        // Pretend to look the item up, so calls take a little time and some are always in
        // flight when a server is killed.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let units = match item.as_str() {
            "apples" => 120,
            "pears" => 45,
            "plums" => 8,
            _ => 0,
        };
        Stock {
            units,
            server: self.name.clone(),
        }
    }
}
