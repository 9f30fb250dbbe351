//! Services shared by the example programs in `src/bin/`.
#![deny(missing_docs)]

use rpc_core::{service, Streaming};
use serde::{Deserialize, Serialize};

#[cfg(any(feature = "etcd", feature = "nats", feature = "zookeeper"))]
pub mod daemon;
#[cfg(feature = "etcd")]
pub mod etcd_process;
pub mod inventory;
#[cfg(feature = "nats")]
pub mod nats_process;
#[cfg(any(feature = "etcd", feature = "nats", feature = "zookeeper"))]
pub mod registry_demo;
#[cfg(feature = "zookeeper")]
pub mod zk_process;

/// A language a greeting can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Language {
    /// "Hello".
    English,
    /// "Bonjour".
    French,
    /// Not spoken by this server: greeting in it fails.
    Klingon,
}

/// Why a greeting failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GreetError {
    /// The server does not speak the language.
    UnknownLanguage(Language),
    /// The name was empty.
    EmptyName,
}

/// A greeting service: the one the `hello`, `server` and `client` examples use.
#[service]
pub trait Greeter {
    /// Returns a greeting for `name`.
    async fn hello(&self, name: String) -> String;
    /// How many greetings this server has given.
    async fn count(&self) -> u64;
    /// A greeting for `name` in `language`, or why there is none.
    async fn greet(&self, name: String, language: Language) -> Result<String, GreetError>;
    /// `times` greetings for `name`, one after the other.
    async fn repeat(&self, name: String, times: u32) -> Streaming<String>;
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

    async fn greet(&self, name: String, language: Language) -> Result<String, GreetError> {
        if name.is_empty() {
            return Err(GreetError::EmptyName);
        }
        match language {
            Language::English => Ok(self.hello(name).await),
            Language::French => Ok(format!("Bonjour, {name} !")),
            Language::Klingon => Err(GreetError::UnknownLanguage(language)),
        }
    }

    async fn repeat(&self, name: String, times: u32) -> Streaming<String> {
        Streaming::iter((1..=times).map(move |i| format!("Hello #{i}, {name}!")))
    }
}
