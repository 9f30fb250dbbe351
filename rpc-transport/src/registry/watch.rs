//! What both registries' discovery shares: a watch that starts sessions anew with a
//! backoff, run as a stream of changes behind a public type of each registry's own.

use std::fmt::Display;
use std::future::Future;

use futures::stream::{BoxStream, StreamExt};
use rpc_core::balance::{Backoff, Change};
use tokio::time::Instant;

use super::Known;
use crate::tcp::TcpConnector;

/// How a registry is followed: starting a session (connecting, listing, watching) and
/// applying what it watches to the servers known. [`Watch`] does the rest.
pub(crate) trait Follow: Send + 'static {
    /// A live watch.
    type Session: Send;
    /// Why starting a session failed.
    type Error: Display + Send;

    /// How long to wait before starting a session again, by the failures in a row.
    fn backoff(&self) -> &Backoff;

    /// Starts a session, making `known` what is listed now.
    fn start(
        &mut self,
        known: &mut Known,
    ) -> impl Future<Output = Result<Self::Session, Self::Error>> + Send;

    /// When `session` started.
    fn started(session: &Self::Session) -> Instant;

    /// Waits for the session's next event and applies it to `known`; says why if the
    /// session is over.
    fn follow(
        &mut self,
        session: &mut Self::Session,
        known: &mut Known,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Starting a session failed with `err` (to be logged).
    fn start_failed(&self, err: Self::Error, known: &Known);

    /// `session` is over, for the reason `why`: ends it (to be logged).
    fn ended(&self, session: Self::Session, why: String, known: &Known);
}

/// Follows a registry with `F`, starting sessions anew as often as needed.
pub(crate) struct Watch<F: Follow> {
    follow: F,
    /// What the consumer has been told is registered, and the changes not handed out yet.
    known: Known,
    session: Option<F::Session>,
    retries: Retries,
}

impl<F: Follow> Watch<F> {
    /// Nothing known and no session yet; logs the servers in and out as `log`.
    pub(crate) fn new(follow: F, log: &'static str) -> Watch<F> {
        Watch {
            follow,
            known: Known::new(log),
            session: None,
            retries: Retries::default(),
        }
    }

    /// The next change; waits (and starts new sessions, as often as needed) until there is
    /// one.
    async fn next(&mut self) -> Change<TcpConnector> {
        loop {
            if let Some(change) = self.known.next() {
                return change;
            }
            let Some(session) = &mut self.session else {
                self.retries.pause(self.follow.backoff()).await;
                match self.follow.start(&mut self.known).await {
                    Ok(session) => self.session = Some(session),
                    Err(err) => {
                        self.retries.failed();
                        self.follow.start_failed(err, &self.known);
                    }
                }
                continue;
            };
            let Err(why) = self.follow.follow(session, &mut self.known).await else {
                continue;
            };
            self.retries
                .ended(F::started(session), self.follow.backoff());
            if let Some(session) = self.session.take() {
                self.follow.ended(session, why, &self.known);
            }
        }
    }

    /// The never-ending stream of changes. It does its work only while polled.
    pub(crate) fn changes(self) -> BoxStream<'static, Change<TcpConnector>> {
        futures::stream::unfold(self, |mut watch| async move {
            let change = watch.next().await;
            Some((change, watch))
        })
        .boxed()
    }
}

/// Attempts to (re)start a session that failed in a row, and the backoff they make.
#[derive(Debug, Default)]
struct Retries {
    failures: u32,
}

impl Retries {
    /// Waits out the backoff for the failures so far (not at all before the first).
    async fn pause(&self, backoff: &Backoff) {
        let delay = backoff.delay(self.failures);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Starting a session failed.
    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// The session that started at `started` failed.
    fn ended(&mut self, started: Instant, backoff: &Backoff) {
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

/// Defines a registry's public stream of changes, `$watch` (with the docs given), made of a
/// [`Watch`], and makes `$discovery` a [`Discover`](rpc_core::balance::Discover) source of
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
            fn new<F: $crate::registry::Follow>(watch: $crate::registry::Watch<F>) -> $watch {
                $watch {
                    changes: watch.changes(),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::stream::StreamExt;

    use super::*;
    use crate::registry::Entry;

    /// Fails to start once, then lists `a` and ends at once, then lists `b` and lasts.
    struct Script {
        backoff: Backoff,
        starts: u32,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Follow for Script {
        type Session = (u32, Instant);
        type Error = String;

        fn backoff(&self) -> &Backoff {
            &self.backoff
        }

        async fn start(&mut self, known: &mut Known) -> Result<(u32, Instant), String> {
            self.starts += 1;
            let listed = match self.starts {
                1 => return Err("refused".into()),
                2 => "a",
                _ => "b",
            };
            known.sync(HashMap::from([(listed.to_string(), Entry::new("h:1"))]));
            Ok((self.starts, Instant::now()))
        }

        fn started(session: &(u32, Instant)) -> Instant {
            session.1
        }

        async fn follow(
            &mut self,
            session: &mut (u32, Instant),
            _: &mut Known,
        ) -> Result<(), String> {
            if session.0 == 2 {
                return Err("over".into());
            }
            std::future::pending().await
        }

        fn start_failed(&self, err: String, _: &Known) {
            self.log
                .lock()
                .unwrap()
                .push(format!("start failed: {err}"));
        }

        fn ended(&self, session: (u32, Instant), why: String, known: &Known) {
            let (n, known) = (session.0, known.len());
            (self.log.lock().unwrap()).push(format!("session {n} ended: {why} ({known} known)"));
        }
    }

    #[tokio::test]
    async fn sessions_start_anew_and_changes_are_the_difference() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(1)),
            starts: 0,
            log: log.clone(),
        };
        let changes: Vec<String> = Watch::new(script, "test")
            .changes()
            .take(3)
            .map(|change| match change {
                Change::Insert(endpoint) => format!("+{}", endpoint.key()),
                Change::Remove(key) => format!("-{key}"),
            })
            .collect()
            .await;
        assert_eq!(changes, ["+a", "-a", "+b"]);
        assert_eq!(
            *log.lock().unwrap(),
            ["start failed: refused", "session 2 ended: over (1 known)"]
        );
    }

    #[test]
    fn a_session_that_lasted_starts_the_backoff_over() {
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        let mut retries = Retries::default();
        retries.failed();
        retries.failed();
        retries.ended(Instant::now(), &backoff);
        assert_eq!(retries.failures, 3);
        let long_ago = Instant::now() - Duration::from_millis(50);
        retries.ended(long_ago, &backoff);
        assert_eq!(retries.failures, 1);
    }
}
