//! One call through a pool: choose an endpoint, send, and retry when that is safe. Unary and
//! streamed calls take the same path; a streamed call is never sent twice, and its attempt
//! is accounted (load, failures) until its stream ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::breaker::{self, FailureAccrual};
use super::pool::{Load, Member, Pool, PoolHandle};
use crate::boxed::BoxFuture;
use crate::connection::{self, Handle, Sent, StreamParts};
use crate::context::Metadata;
use crate::error::{ErrorKind, RpcError};
use crate::observe;
use crate::protocol::FrameBuilder;
use crate::streaming::{RemoteStream, StreamEnded};

/// Times a call may find its chosen connection already gone before it is sent, before it
/// gives up (each time, that endpoint is set aside and another chosen).
const MAX_STALE_PICKS: u32 = 16;

/// A call's request, ready for a pool.
pub(crate) struct ManagedCall {
    pub(crate) builder: FrameBuilder,
    pub(crate) method: u32,
    /// The call's deadline, and the timeout it was set from (for the error).
    pub(crate) deadline: Option<(Instant, Duration)>,
    pub(crate) metadata: Metadata,
    pub(crate) key: Option<u64>,
    pub(crate) idempotent: bool,
    /// The streams of a streaming method.
    pub(crate) streams: Option<StreamParts>,
    /// The call's span, for its attempts.
    pub(crate) span: tracing::Span,
}

/// What a call through a pool came to.
pub(crate) enum Reply {
    /// The response body, opened by the caller.
    Body(crate::compress::Body),
    /// The stream that answers it.
    Stream(RemoteStream),
}

/// Runs `call` through `handle`'s pool. The call keeps the pool running (as a call on one
/// connection keeps that open), even if every client handle is dropped meanwhile. The
/// caller enforces the deadline (by dropping this future); attempts are sent with what is
/// left of it.
pub(crate) fn run(
    handle: Arc<PoolHandle>,
    call: ManagedCall,
) -> BoxFuture<Result<Reply, RpcError>> {
    Box::pin(async move {
        let pool = handle.pool();
        let result = attempts(&pool, call).await;
        drop(handle);
        result
    })
}

async fn attempts(pool: &Pool, mut call: ManagedCall) -> Result<Reply, RpcError> {
    pool.calls.fetch_add(1, Ordering::Relaxed);
    pool.budget.deposit();
    let body_len = call.builder.body_len();
    let mut builder = Some(call.builder);
    // The encoded arguments, kept to send again once the first frame is gone.
    let mut body: Option<Bytes> = None;
    let mut tried: Vec<Arc<Member>> = Vec::new();
    let mut attempts = 0u32;
    let mut stale = 0u32;
    let streamed = call.streams.is_some();
    loop {
        let (member, handle) = pool.acquire(call.key, &tried).await?;
        let timeout = match call.deadline {
            Some((deadline, timeout)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(RpcError::deadline(timeout));
                }
                Some(left)
            }
            None => None,
        };
        let builder = match (builder.take(), &body) {
            (Some(builder), _) => builder,
            (None, Some(body)) => FrameBuilder::with_body(body),
            (None, None) => unreachable!("the body is kept once the first frame is built"),
        };
        let id = handle.shared.next_id();
        let (frame, plain) = handle.request(id, builder, call.method, timeout, &call.metadata);
        if body.is_none() {
            // Kept to send again: the plain body (a compressed frame does not end with it,
            // and the next connection may not compress).
            body = Some(plain.unwrap_or_else(|| frame.slice(frame.len() - body_len..)));
        }
        let load = member.track();
        let sent = connection::send(
            Arc::clone(&handle),
            id,
            frame,
            call.streams.take(),
            std::task::Waker::noop(),
        );
        let result = match sent {
            Ok(Sent::Stream(stream)) => {
                member.sent();
                observe::attempt(&call.span, attempts + 1, id, &member.key, Ok(()));
                let attempt = StreamAttempt {
                    member,
                    handle,
                    _load: load,
                    accrual: pool.config.accrual,
                };
                return Ok(Reply::Stream(stream.on_end(Box::new(attempt))));
            }
            Ok(Sent::Response(response)) => {
                member.sent();
                response.await
            }
            Err(err) if err.kind() == ErrorKind::Protocol => return Err(err),
            Err(err) => {
                // The connection was gone before the request left: it never reached a
                // server, so any call may go elsewhere, and it is no retry. (Not a streamed
                // one: its stream went with the attempt.)
                drop(load);
                member.lost(&handle);
                stale += 1;
                if stale > MAX_STALE_PICKS || streamed {
                    return Err(err);
                }
                tried.push(member);
                continue;
            }
        };
        drop(load);
        observe::attempt(
            &call.span,
            attempts + 1,
            id,
            &member.key,
            result.as_ref().map(drop),
        );
        let err = match result {
            Ok(response) => {
                member.success();
                return Ok(Reply::Body(response));
            }
            Err(err) => err,
        };
        record_failure(&member, &handle, &err, &pool.config.accrual);
        let retryable = call.idempotent
            && !streamed
            && matches!(err.kind(), ErrorKind::Disconnected | ErrorKind::Overloaded);
        attempts += 1;
        if !retryable {
            return Err(err);
        }
        if attempts >= pool.config.max_attempts {
            return Err(RpcError::new(
                err.kind(),
                format!(
                    "{} (gave up after {attempts} attempts, the client's max_attempts)",
                    err.message()
                ),
            ));
        }
        if !pool.budget.withdraw() {
            pool.retries_refused.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::new(
                err.kind(),
                format!(
                    "{} (not retried: the client's retry budget is spent, as most recent calls \
                     needed retries)",
                    err.message()
                ),
            ));
        }
        pool.retries.fetch_add(1, Ordering::Relaxed);
        let again = tried.iter().any(|t| Arc::ptr_eq(t, &member));
        tried.push(member);
        if again || err.kind() == ErrorKind::Overloaded {
            // The same endpoint again, or one that said it is busy: give it a moment.
            let delay = pool.config.retry_backoff.delay_with(attempts, pool.rng());
            tokio::time::sleep(delay).await;
        }
    }
}

/// What a failed attempt says about its endpoint.
fn record_failure(member: &Member, handle: &Arc<Handle>, err: &RpcError, accrual: &FailureAccrual) {
    if breaker::counts(err.kind()) {
        member.failure(accrual);
    }
    if err.kind() == ErrorKind::Disconnected {
        member.lost(handle);
    }
}

/// A streamed call's attempt: it loads its endpoint until the stream ends, and its end
/// counts as the attempt's success or failure.
struct StreamAttempt {
    member: Arc<Member>,
    handle: Arc<Handle>,
    _load: Load,
    accrual: FailureAccrual,
}

impl StreamEnded for StreamAttempt {
    fn ended(self: Box<Self>, outcome: Option<Result<(), &RpcError>>) {
        match outcome {
            Some(Ok(())) => self.member.success(),
            Some(Err(err)) => record_failure(&self.member, &self.handle, err, &self.accrual),
            // Dropped by its consumer: says nothing about the endpoint.
            None => {}
        }
    }
}
