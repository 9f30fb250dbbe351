//! Services shared by the example programs in `src/bin/`.
#![deny(missing_docs)]

use rpc_core::service;

#[cfg(feature = "etcd")]
pub mod etcd_process;
pub mod inventory;

/// A greeting service: the one the `hello`, `server` and `client` examples use.
#[service]
pub trait Greeter {
    /// Returns a greeting for `name`.
    async fn hello(&self, name: String) -> String;
    /// How many greetings this server has given.
    async fn count(&self) -> u64;
}

/// An implementation of [`Greeter`] that counts its greetings.
#[derive(Default)]
pub struct Greetings {
    given: std::sync::atomic::AtomicU64,
}

impl Greeter for Greetings {
    async fn hello(&self, name: String) -> String {
        use std::sync::atomic::Ordering;
        self.given.fetch_add(1, Ordering::Relaxed);
        format!("Hello, {name}!")
    }

    async fn count(&self) -> u64 {
        self.given.load(std::sync::atomic::Ordering::Relaxed)
    }
}
