//! Transports for the rpc framework.
//!
//! Every transport is an [`rpc_core::Transport`]: a duplex of frames (a frame to send may be
//! made of parts, see [`rpc_core::Frame`]). They are interchangeable: a client and server
//! written against one work over any other.
//!
//! | module | connect | listen |
//! | --- | --- | --- |
//! | [`tcp`] | [`tcp::connect(addr)`](tcp::connect) | [`tcp::bind(addr)`](tcp::bind) → listener with `local_addr()` |
//! | [`unix`] | [`unix::connect(path)`](unix::connect) | [`unix::bind(path)`](unix::bind) |
//! | [`memory`] | [`memory::pair()`] → `(client_end, server_end)` | [`memory::listener()`] → `(listener, connector)` |
//! | `tls` (feature `tls`) | `tls::connect(addr, server_name, client_config)` | `tls::bind(addr, server_config)` → listener with `local_addr()` |
//!
//! Each module also has a connector (`tcp::connector(addr)`, `unix::connector(path)`,
//! `tls::connector(addr, server_name, config)`, and the memory listener's connector) for
//! clients that reconnect or balance over several endpoints: see `rpc_core::ClientBuilder`.
//!
//! The `tls` feature adds the `tls` module: TLS and mutual TLS over TCP, with rustls and
//! its `ring` provider. Any other byte stream (a pipe, a TLS stream of your own) becomes a
//! transport with [`framing::framed`].
//!
//! With the `dns` feature, `dns::Dns` finds a balancing client's endpoints in DNS (A/AAAA
//! or SRV records) and follows them as they change.
//!
//! With the `sim` feature, [`sim`](mod@sim) runs servers and clients in simulated hosts on
//! turmoil's deterministic network, in simulated time.
//!
//! With the `nats` feature, [`nats`] carries connections through NATS subjects: servers
//! serve a subject in a queue group, and clients reach one of them by the subject alone.
//!
//! With the `etcd` feature, [`etcd`] registers servers in etcd and lets clients balance over
//! the servers registered there; with the `zookeeper` feature, [`zookeeper`] does the same with
//! ZooKeeper (ephemeral nodes, the session as the server's liveness), with the same entry
//! format.
#![deny(missing_docs)]

#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod framing;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
mod registry;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
pub mod unix;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;
