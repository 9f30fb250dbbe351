//! One call on the server, from its first poll to its outcome: [`InFlight`] while its
//! handler runs (polled by the connection, within its deadline and context), [`Finished`]
//! once it is done or stopped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use pin_project::pin_project;

use super::dispatch::{Answer, Handler};
use crate::context::{self, CallContext};
use crate::deadline::Deadline;
use crate::descriptor::MethodInfo;
use crate::error::{ErrorKind, RpcError};
use crate::log;
use crate::observe::Observed;
use crate::waker;

/// What became of a handler.
pub(crate) enum Outcome<R> {
    Done(R),
    /// A middleware answered, with this encoded result.
    Encoded(bytes::Bytes),
    Failed(RpcError),
    /// The caller cancelled: nobody waits for a reply.
    Cancelled,
}

impl<R> Outcome<R> {
    /// The outcome of a handler that ran to its end or panicked.
    pub(crate) fn of(result: std::thread::Result<Answer<R>>, method: &MethodInfo) -> Outcome<R> {
        match result {
            Ok(Answer::Typed(response)) => Outcome::Done(response),
            Ok(Answer::Encoded(body)) => Outcome::Encoded(body),
            Ok(Answer::Failed(err)) => Outcome::Failed(err),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a non-string panic payload");
                log::handler_panicked(method.name, what);
                Outcome::Failed(RpcError::new(
                    ErrorKind::Internal,
                    format!(
                        "the handler of `{}` panicked: {what}; the server and the connection \
                         carry on",
                        method.name
                    ),
                ))
            }
        }
    }
}

/// One running handler, with its deadline.
#[pin_project]
pub(crate) struct InFlight<R> {
    pub(crate) id: u64,
    pub(crate) method: &'static MethodInfo,
    #[pin]
    pub(crate) deadline: Deadline,
    pub(crate) deadline_at: Option<Instant>,
    /// Installed as the thread's current context while the handler is polled.
    pub(crate) context: Option<CallContext>,
    #[pin]
    pub(crate) handler: Handler<R>,
    /// The caller sent `Cancel`: finish without polling the handler again.
    pub(crate) cancelled: bool,
    /// The waker `FuturesUnordered` gave this call, to wake it when it is cancelled.
    pub(crate) waker: Option<Waker>,
    /// The call's span and metrics.
    pub(crate) observed: Observed,
}

impl<R> InFlight<R> {
    pub(crate) fn cancel(self: Pin<&mut Self>) {
        let this = self.project();
        *this.cancelled = true;
        if let Some(waker) = this.waker.take() {
            waker.wake();
        }
    }
}

/// A call whose handler is done (or was stopped).
pub(crate) struct Finished<R> {
    pub(crate) id: u64,
    pub(crate) method: &'static MethodInfo,
    pub(crate) outcome: Outcome<R>,
    pub(crate) observed: Observed,
    /// The call's deadline, which a result stream inherits.
    pub(crate) deadline: Option<Instant>,
}

impl<R: Send + 'static> Future for InFlight<R> {
    type Output = Finished<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if *this.cancelled {
            return Poll::Ready(Finished {
                id: *this.id,
                method: this.method,
                outcome: Outcome::Cancelled,
                observed: std::mem::replace(this.observed, Observed::off()),
                deadline: None,
            });
        }
        waker::remember(this.waker, cx.waker());
        let (handler, context) = (this.handler, this.context);
        let polled = this
            .observed
            .in_span(|| context::enter(context, || handler.poll(cx)));
        let outcome = match polled {
            Poll::Ready(result) => Outcome::of(result, this.method),
            Poll::Pending => match this.deadline.as_mut().poll_expired(cx) {
                Poll::Ready(_) => Outcome::Failed(RpcError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "the handler of `{}` did not finish within the call's deadline of {:?} \
                         and was stopped",
                        this.method.name,
                        this.deadline.timeout()
                    ),
                )),
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(Finished {
            id: *this.id,
            method: this.method,
            outcome,
            observed: std::mem::replace(this.observed, Observed::off()),
            deadline: *this.deadline_at,
        })
    }
}
