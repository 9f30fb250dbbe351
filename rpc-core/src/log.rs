//! Minimal logging of events a server operator should be able to see.
//!
//! Off by default, so a library never writes to a program's stderr unasked; set the
//! environment variable `RPC_LOG=1` to see them. (A `tracing` integration replaces this.)

use std::fmt;
use std::sync::OnceLock;

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("RPC_LOG").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Logs a warning: something went wrong with one connection or call, the server goes on.
pub(crate) fn warn(args: fmt::Arguments<'_>) {
    if enabled() {
        eprintln!("rpc warning: {args}");
    }
}
