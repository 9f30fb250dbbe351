//! The shape both registries' `Registration` shares: a background task that keeps the
//! registration, stopped when it is dropped, and deregistering on a signal.

use std::fmt::Display;
use std::future::Future;

use tokio::task::JoinHandle;

/// The background task that keeps a registration (a lease alive, a session's node there).
/// Dropping it aborts the task.
#[derive(Debug)]
pub(crate) struct Background {
    task: Option<JoinHandle<()>>,
}

impl Background {
    pub(crate) fn new(task: JoinHandle<()>) -> Background {
        Background { task: Some(task) }
    }

    /// Aborts the task and waits until it has stopped, so it does nothing more behind the
    /// caller's back (grants no lease, makes no new session).
    pub(crate) async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits for `signal`, then runs `deregister` (a `Registration::deregister` not started
/// yet); a failure goes to `failed`, to be logged.
pub(crate) async fn deregister_on<E: Display>(
    signal: impl Future<Output = ()>,
    deregister: impl Future<Output = Result<(), E>>,
    failed: impl FnOnce(E),
) {
    signal.await;
    if let Err(err) = deregister.await {
        failed(err);
    }
}
