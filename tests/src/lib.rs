//! End-to-end tests of the rpc framework live in `tests/`; this crate has no code of its own
//! but for the doc tests below, which compile (and, unless marked `no_run`, run) every Rust
//! block of the README and of `docs/`, so the documentation cannot drift from the code.

/// The Rust blocks of `README.md`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct Readme;

/// The Rust blocks of `docs/architecture.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/architecture.md")]
pub struct Architecture;

/// The Rust blocks of `docs/clients.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/clients.md")]
pub struct Clients;

/// The Rust blocks of `docs/compression.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/compression.md")]
pub struct Compression;

/// The Rust blocks of `docs/discovery.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/discovery.md")]
pub struct Discovery;

/// The Rust blocks of `docs/fleet.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/fleet.md")]
pub struct Fleet;

/// The Rust blocks of `docs/etcd.md`, which need the feature `etcd` (and so `protoc`).
#[cfg(all(doctest, feature = "etcd"))]
#[doc = include_str!("../../docs/etcd.md")]
pub struct Etcd;

/// The Rust blocks of `docs/nats.md`, which need the feature `nats`.
#[cfg(all(doctest, feature = "nats"))]
#[doc = include_str!("../../docs/nats.md")]
pub struct Nats;

/// The Rust blocks of `docs/zookeeper.md`, which need the feature `zookeeper`.
#[cfg(all(doctest, feature = "zookeeper"))]
#[doc = include_str!("../../docs/zookeeper.md")]
pub struct Zookeeper;

/// The Rust blocks of `docs/governance.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/governance.md")]
pub struct Governance;

/// The Rust blocks of `docs/http.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/http.md")]
pub struct Http;

/// The Rust blocks of `docs/schema.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/schema.md")]
pub struct Schema;

/// The Rust blocks of `docs/observability.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/observability.md")]
pub struct Observability;

/// The Rust blocks of `docs/performance.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/performance.md")]
pub struct Performance;

/// The Rust blocks of `docs/protocol.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/protocol.md")]
pub struct Protocol;

/// The Rust blocks of `docs/security.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/security.md")]
pub struct Security;

/// The Rust blocks of `docs/servers.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/servers.md")]
pub struct Servers;

/// The Rust blocks of `docs/streaming.md`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/streaming.md")]
pub struct Streaming;

/// The Rust blocks of `fuzz/README.md`.
#[cfg(doctest)]
#[doc = include_str!("../../fuzz/README.md")]
pub struct Fuzzing;
