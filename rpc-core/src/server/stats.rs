//! Counters a server keeps, readable while it runs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::load::LoadState;

/// Live counters of a [`Server`](crate::Server), from [`Server::stats`](crate::Server::stats).
///
/// Cheap to clone; every clone reads the same counters.
///
/// ```
/// let server = rpc_core::Server::new();
/// let stats = server.stats();
/// assert_eq!(stats.open_connections(), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Bytes of received stream items handlers have not taken yet, over all connections.
    stream_bytes: Arc<AtomicUsize>,
    /// Calls in progress and the utilization the service set, for load reports.
    load: Arc<LoadState>,
}

impl ServerStats {
    /// Connections being served now (including ones still waiting for their `Hello`).
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Connections accepted since the server started.
    pub fn accepted_connections(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused because the server was at its `max_connections`.
    pub fn refused_connections(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Bytes of stream items that clients sent and handlers have not read yet, over all
    /// connections: what the server holds for calls with a `Streaming<T>` argument (each
    /// connection at most its [`max_buffered_stream_bytes`](crate::Server::max_buffered_stream_bytes)).
    pub fn buffered_stream_bytes(&self) -> usize {
        self.inner.stream_bytes.load(Ordering::Relaxed)
    }

    /// Calls whose handlers are running now, over all connections (a call answered at its
    /// handler's first poll is never counted).
    pub fn calls_in_progress(&self) -> usize {
        self.inner.load.in_flight()
    }

    /// The server's load figures, shared with each connection and the load reporter.
    pub(crate) fn load(&self) -> Arc<LoadState> {
        Arc::clone(&self.inner.load)
    }

    /// The counter of buffered stream bytes, shared with each connection's window.
    pub(crate) fn stream_bytes(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.inner.stream_bytes)
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub(crate) fn open(&self) -> OpenConnection {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    pub(crate) fn refused(&self) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps one connection counted as open; dropped with the connection's task, however it
/// ends (even when aborted).
pub(crate) struct OpenConnection(ServerStats);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}
