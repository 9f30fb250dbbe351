//! What a handler knows about the call it is serving: its deadline, metadata and trace.
//!
//! While the server polls a handler, the call's [`CallContext`] is the *current* context of
//! that thread; [`current`], [`deadline`], [`metadata`], [`peer`] and [`trace`] read it
//! (`current()` is `None` outside handlers, and for a call that carries neither a deadline
//! nor metadata and came over a connection whose listener knows nothing of its peer, such
//! as an in-memory one, unless the server started a trace for it, which it does only when
//! a `tracing` subscriber records its span). A client call made from
//! inside a handler inherits the remaining deadline by default, so a chain of services gives
//! up together instead of working on for a caller that has already gone:
//!
//! ```
//! use std::time::Duration;
//! use rpc_core::{context, service, RpcError, Server};
//!
//! #[service]
//! pub trait Front {
//!     async fn page(&self) -> Result<String, String>;
//! }
//! #[service]
//! pub trait Back {
//!     async fn data(&self) -> String;
//! }
//!
//! struct FrontImpl { back: BackClient }
//! impl Front for FrontImpl {
//!     async fn page(&self) -> Result<String, String> {
//!         // This call's deadline is whatever is left of `page`'s own (if it has one).
//!         let left = context::deadline().map(|d| d.saturating_duration_since(std::time::Instant::now()));
//!         assert!(left.is_some_and(|left| left <= Duration::from_secs(5)));
//!         self.back.data().await.map_err(|err| err.to_string())
//!     }
//! }
//! struct BackImpl;
//! impl Back for BackImpl {
//!     async fn data(&self) -> String { "data".into() }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), RpcError> {
//! let (back_end, back_server) = rpc_transport::memory::pair();
//! tokio::spawn(Server::new().add_service(BackServer::new(BackImpl)).serve_connection(back_server));
//! let (front_end, front_server) = rpc_transport::memory::pair();
//! let front = FrontImpl { back: BackClient::new(back_end) };
//! tokio::spawn(Server::new().add_service(FrontServer::new(front)).serve_connection(front_server));
//!
//! let page = FrontClient::new(front_end).page().timeout(Duration::from_secs(5)).await?;
//! assert_eq!(page.as_deref(), Ok("data"));
//! # Ok(()) }
//! ```
//!
//! The context belongs to the handler's future, not to its task: a task the handler spawns
//! starts without one. Carry it over with [`scope`]:
//! `tokio::spawn(context::scope(context::current(), work))`.
//!
//! The context also carries the call's place in a distributed trace, [`trace`]: client calls
//! made from the handler continue it (see [`observe`](crate::observe)).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pin_project::pin_project;

pub use crate::observe::TraceContext;
use crate::observe::TRACEPARENT;
pub use crate::peer::{Identity, Peer};

/// Key/value pairs sent with a call: keys are text, values are bytes.
///
/// Cheap to clone (the pairs are shared).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pairs: Option<Arc<Vec<(String, Bytes)>>>,
}

impl Metadata {
    /// No pairs.
    pub const fn new() -> Metadata {
        Metadata { pairs: None }
    }

    /// Adds a pair; a key may appear more than once.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) {
        let pairs = self.pairs.get_or_insert_with(Default::default);
        Arc::make_mut(pairs).push((key.into(), value.into()));
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The first value stored under `key`, if it is UTF-8 text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every pair, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.pairs
            .iter()
            .flat_map(|pairs| pairs.iter())
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.as_ref().is_none_or(|pairs| pairs.is_empty())
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.as_ref().map_or(0, |pairs| pairs.len())
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| {
                (
                    k,
                    match std::str::from_utf8(v) {
                        Ok(text) => format!("{text:?}"),
                        Err(_) => format!("{} bytes", v.len()),
                    },
                )
            }))
            .finish()
    }
}

impl<K: Into<String>, V: Into<Bytes>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Metadata {
        let mut metadata = Metadata::new();
        for (k, v) in iter {
            metadata.insert(k, v);
        }
        metadata
    }
}

/// The call a handler is serving: its deadline, metadata and trace context.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    deadline: Option<Instant>,
    metadata: Metadata,
    trace: Option<TraceContext>,
    peer: Option<Arc<Peer>>,
}

impl CallContext {
    /// A context with a deadline and metadata, e.g. to give work started outside any handler
    /// a deadline that client calls inherit (see [`scope`]). A valid `traceparent` in
    /// `metadata` becomes its [`trace`](CallContext::trace), which client calls continue:
    ///
    /// ```
    /// use rpc_core::context::{CallContext, Metadata};
    ///
    /// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// let metadata: Metadata = [("traceparent", header)].into_iter().collect();
    /// let context = CallContext::new(None, metadata);
    /// assert_eq!(context.trace().map(|t| t.to_string()).as_deref(), Some(header));
    /// ```
    pub fn new(deadline: Option<Instant>, metadata: Metadata) -> CallContext {
        let trace = trace_in(&metadata);
        CallContext {
            deadline,
            metadata,
            trace,
            peer: None,
        }
    }

    /// The context of a call, or `None` when it carries nothing (no deadline, no metadata,
    /// an in-memory peer), which reads the same and costs nothing to install.
    pub(crate) fn for_call(
        deadline: Option<Instant>,
        metadata: Metadata,
        peer: Option<&Arc<Peer>>,
    ) -> Option<CallContext> {
        (deadline.is_some() || !metadata.is_empty() || peer.is_some()).then(|| {
            let mut context = CallContext::new(deadline, metadata);
            context.peer = peer.cloned();
            context
        })
    }

    /// Who made the call: the connection's address and any identity its transport verified
    /// (a TLS client certificate). `None` when the listener could tell nothing (in-memory
    /// connections, [`Server::serve_connection`](crate::Server::serve_connection)).
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_deref()
    }

    /// Where the call sits in a distributed trace: the valid `traceparent` it came with, if
    /// any (or the trace the server started for it, when its span is recorded).
    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
    }

    pub(crate) fn set_trace(&mut self, trace: TraceContext) {
        self.trace = Some(trace);
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(crate::clock::now()))
    }

    /// The metadata the caller sent with the call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

thread_local! {
    /// The context of the handler being polled on this thread. A `Cell` rather than a
    /// `RefCell`: installing it around every handler poll is on the server's hot path, and
    /// a swap is the cheapest way to do it.
    static CURRENT: Cell<Option<CallContext>> = const { Cell::new(None) };
    /// Whether `CURRENT` holds a context: a plain flag is cheaper to read than the context,
    /// and most reads (every client call) find none.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Reads the current context without moving it out for good. Inlined, so that the common
/// case, no context, is one flag read in the caller.
#[inline]
fn peek<R>(f: impl FnOnce(Option<&CallContext>) -> R) -> R {
    if !ACTIVE.with(Cell::get) {
        return f(None);
    }
    peek_current(f)
}

#[inline(never)]
fn peek_current<R>(f: impl FnOnce(Option<&CallContext>) -> R) -> R {
    CURRENT.with(|current| {
        let context = current.take();
        let result = f(context.as_ref());
        current.set(context);
        result
    })
}

/// The context of the call being served on this thread, if any.
pub fn current() -> Option<CallContext> {
    peek(|context| context.cloned())
}

/// The current call's deadline, if it is being served and its caller set one.
#[inline]
pub fn deadline() -> Option<Instant> {
    peek(|context| context.and_then(|c| c.deadline))
}

/// The current call's metadata (empty outside a handler).
pub fn metadata() -> Metadata {
    peek(|context| context.map(|c| c.metadata.clone()).unwrap_or_default())
}

/// Who made the current call: its connection's address and any identity the transport
/// verified, such as a TLS client certificate (see [`CallContext::peer`]); `None` outside a
/// handler or when the listener could tell nothing.
pub fn peer() -> Option<Arc<Peer>> {
    peek(|context| context.and_then(|c| c.peer.clone()))
}

/// The current call's trace context (see [`CallContext::trace`]). Client calls made now
/// continue this trace.
///
/// While a subscriber records the server's `rpc.server` spans, this is that span's: the
/// caller's trace id with the server span's own id (the caller's span id is its
/// `parent_id`), or a new trace when the call came without one. Otherwise it is the
/// caller's `traceparent` as received, if any.
#[inline]
pub fn trace() -> Option<TraceContext> {
    peek(|context| context.and_then(|c| c.trace))
}

/// The trace context in `metadata`'s first `traceparent`, if that is valid.
fn trace_in(metadata: &Metadata) -> Option<TraceContext> {
    if metadata.is_empty() {
        return None;
    }
    metadata
        .get(TRACEPARENT)
        .and_then(|value| TraceContext::parse_bytes(value))
}

/// Runs `f` with `context` as the current one, restoring the previous one after (also if
/// `f` panics); `context` gets back what `f` left current (normally itself).
/// Replaces the metadata of the context being polled: middleware passing pairs on to the
/// handler they wrap.
pub(crate) fn set_metadata(metadata: Metadata) {
    if !ACTIVE.with(Cell::get) {
        return;
    }
    CURRENT.with(|current| {
        let mut context = current.take();
        if let Some(context) = &mut context {
            context.metadata = metadata;
        }
        current.set(context);
    });
}

#[inline]
pub(crate) fn enter<R>(context: &mut Option<CallContext>, f: impl FnOnce() -> R) -> R {
    if context.is_none() && !ACTIVE.with(Cell::get) {
        // Nothing to install and nothing to hide: the common case of calls without a
        // deadline or metadata costs one flag read.
        return f();
    }
    enter_slow(context, f)
}

fn enter_slow<R>(context: &mut Option<CallContext>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        slot: &'a mut Option<CallContext>,
        previous: Option<CallContext>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let previous = self.previous.take();
            ACTIVE.with(|active| active.set(previous.is_some()));
            *self.slot = CURRENT.with(|current| current.replace(previous));
        }
    }
    ACTIVE.with(|active| active.set(context.is_some()));
    let previous = CURRENT.with(|current| current.replace(context.take()));
    let _restore = Restore {
        slot: context,
        previous,
    };
    f()
}

/// Runs `future` with `context` as the current context whenever it is polled: the way to
/// carry a handler's deadline and metadata into a task it spawns, or to give a deadline to
/// work that is not a handler.
pub fn scope<F: Future>(context: Option<CallContext>, future: F) -> Scoped<F> {
    Scoped { context, future }
}

/// A future running with a [`CallContext`]; see [`scope`].
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<F> {
    context: Option<CallContext>,
    #[pin]
    future: F,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let future = this.future;
        enter(this.context, || future.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_installs_and_restores() {
        let mut outer = Some(CallContext::new(None, [("a", "1")].into_iter().collect()));
        let mut inner = Some(CallContext::new(Some(crate::clock::now()), Metadata::new()));
        assert!(current().is_none());
        enter(&mut outer, || {
            assert_eq!(metadata().get_str("a"), Some("1"));
            enter(&mut inner, || {
                assert!(deadline().is_some());
                assert!(metadata().is_empty());
            });
            assert!(deadline().is_none());
            let mut none = None;
            enter(&mut none, || assert!(current().is_none()));
            assert_eq!(metadata().get_str("a"), Some("1"));
        });
        assert!(current().is_none());
        assert!(outer.is_some() && inner.is_some());
    }

    #[test]
    fn metadata_keeps_order_and_duplicates() {
        let mut m = Metadata::new();
        assert!(m.is_empty());
        m.insert("k", "1");
        m.insert("k", "2");
        m.insert("bin", vec![0xff_u8]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get_str("k"), Some("1"));
        assert_eq!(m.get_str("bin"), None);
        let other: Metadata = [("x", "y")].into_iter().collect();
        assert_eq!(format!("{other:?}"), r#"{"x": "\"y\""}"#);
    }
}
