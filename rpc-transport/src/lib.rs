//! Transports for the rpc framework.
//!
//! Every transport is an [`rpc_core::Transport`]: a duplex of whole frames. They are
//! interchangeable: a client and server written against one work over any other.
//!
//! | module | connect | listen |
//! | --- | --- | --- |
//! | [`memory`] | [`memory::pair()`] → `(client_end, server_end)` | [`memory::listener()`] → `(listener, connector)` |
#![deny(missing_docs)]

pub mod memory;
