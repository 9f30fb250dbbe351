//! The shape both registries' discovery shares: a watcher that reconnects with a backoff,
//! run as a stream of changes behind a public type of each registry's own.

use std::future::Future;

use futures::stream::{BoxStream, StreamExt};
use rpc_core::balance::{Backoff, Change};
use tokio::time::Instant;

use crate::tcp::TcpConnector;

/// What follows a registry: hands out the next change, waiting (and reconnecting, as often as
/// needed) until there is one.
pub(crate) trait Watcher: Send + 'static {
    /// The next change.
    fn next(&mut self) -> impl Future<Output = Change<TcpConnector>> + Send + '_;
}

/// The never-ending stream of `watcher`'s changes. It does its work only while polled.
pub(crate) fn changes(watcher: impl Watcher) -> BoxStream<'static, Change<TcpConnector>> {
    futures::stream::unfold(watcher, |mut watcher| async move {
        let change = watcher.next().await;
        Some((change, watcher))
    })
    .boxed()
}

/// Attempts to (re)start a session that failed in a row, and the backoff they make.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    failures: u32,
}

impl Retries {
    /// Waits out the backoff for the failures so far (not at all before the first).
    pub(crate) async fn pause(&self, backoff: &Backoff) {
        let delay = backoff.delay(self.failures);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Starting a session failed.
    pub(crate) fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// The session that started at `started` failed.
    pub(crate) fn ended(&mut self, started: Instant, backoff: &Backoff) {
        // A session that lasted starts the backoff over; one that failed at once goes on
        // with it.
        let lasted = started.elapsed() > backoff.max;
        self.failures = if lasted {
            1
        } else {
            self.failures.saturating_add(1)
        };
    }
}

/// Defines a registry's public stream of changes, `$watch` (with the docs given), made by
/// [`changes`], and makes `$discovery` a [`Discover`](rpc_core::balance::Discover) source of
/// it through its `watch` method.
macro_rules! watch_stream {
    ($(#[$doc:meta])* $watch:ident, $discovery:ident) => {
        $(#[$doc])*
        pub struct $watch {
            changes: ::futures::stream::BoxStream<
                'static,
                ::rpc_core::balance::Change<$crate::tcp::TcpConnector>,
            >,
        }

        impl $watch {
            fn new(watcher: impl $crate::registry::Watcher) -> $watch {
                $watch {
                    changes: $crate::registry::changes(watcher),
                }
            }
        }

        impl ::std::fmt::Debug for $watch {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($watch)).finish_non_exhaustive()
            }
        }

        impl ::futures::stream::Stream for $watch {
            type Item = ::rpc_core::balance::Change<$crate::tcp::TcpConnector>;

            fn poll_next(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Option<Self::Item>> {
                ::futures::stream::StreamExt::poll_next_unpin(&mut self.changes, cx)
            }
        }

        impl ::rpc_core::balance::Discover for $discovery {
            type Connector = $crate::tcp::TcpConnector;
            type Changes = $watch;

            fn into_changes(self) -> $watch {
                self.watch()
            }
        }
    };
}

pub(crate) use watch_stream;
