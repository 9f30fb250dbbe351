//! One call through a pool: choose an endpoint, send, and retry when that is safe.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::breaker;
use super::pool::{Member, Pool, PoolHandle};
use crate::client::ConnectionCall;
use crate::context::Metadata;
use crate::error::{ErrorKind, RpcError};
use crate::observe;
use crate::protocol::FrameBuilder;
use crate::server::BoxFuture;

/// Times a call may find its chosen connection already gone before it is sent, before it
/// gives up (each time, that endpoint is set aside and another chosen).
const MAX_STALE_PICKS: u32 = 16;

/// A call's request, ready for a pool.
pub(crate) struct ManagedCall {
    pub(crate) builder: FrameBuilder,
    pub(crate) method: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) metadata: Metadata,
    pub(crate) key: Option<u64>,
    pub(crate) idempotent: bool,
    /// The call's span, for its attempts.
    pub(crate) span: tracing::Span,
}

/// Runs `call` through `handle`'s pool, within its deadline; the result is the response
/// body. The call keeps the pool running (as a call on one connection keeps that open), even
/// if every client handle is dropped meanwhile.
pub(crate) fn run(
    handle: Arc<PoolHandle>,
    call: ManagedCall,
) -> BoxFuture<Result<Bytes, RpcError>> {
    Box::pin(async move {
        let pool = handle.pool();
        let result = match call.timeout {
            None => attempts(&pool, call, None).await,
            Some(timeout) => {
                let deadline = Instant::now() + timeout;
                tokio::time::timeout_at(deadline.into(), attempts(&pool, call, Some(deadline)))
                    .await
                    .unwrap_or_else(|_| Err(RpcError::deadline(timeout)))
            }
        };
        drop(handle);
        result
    })
}

async fn attempts(
    pool: &Pool,
    call: ManagedCall,
    deadline: Option<Instant>,
) -> Result<Bytes, RpcError> {
    pool.calls.fetch_add(1, Ordering::Relaxed);
    pool.budget.deposit();
    let body_len = call.builder.body_len();
    let mut builder = Some(call.builder);
    // The encoded arguments, kept to send again once the first frame is gone.
    let mut body: Option<Bytes> = None;
    let mut tried: Vec<Arc<Member>> = Vec::new();
    let mut attempts = 0u32;
    let mut stale = 0u32;
    loop {
        let (member, handle) = pool.acquire(call.key, &tried).await?;
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(RpcError::deadline(call.timeout.unwrap_or_default()));
        }
        let builder = match (builder.take(), &body) {
            (Some(builder), _) => builder,
            (None, Some(body)) => FrameBuilder::with_body(body),
            (None, None) => unreachable!("the body is kept once the first frame is built"),
        };
        let shared = &handle.shared;
        let id = shared.next_id();
        let frame =
            builder.finish_request_with(id, call.method, timeout, &shared.metadata, &call.metadata);
        if body.is_none() {
            body = Some(frame.slice(frame.len() - body_len..));
        }
        let load = member.track();
        let result =
            match ConnectionCall::start(Arc::clone(&handle), id, frame, std::task::Waker::noop()) {
                Ok(sent) => {
                    member.sent();
                    sent.await
                }
                Err(err) if err.kind() == ErrorKind::Protocol => return Err(err),
                Err(err) => {
                    // The connection was gone before the request left: it never reached a
                    // server, so any call may go elsewhere, and it is no retry.
                    drop(load);
                    member.lost(&handle);
                    stale += 1;
                    if stale > MAX_STALE_PICKS {
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
                return Ok(response);
            }
            Err(err) => err,
        };
        if breaker::counts(err.kind()) {
            member.failure(&pool.config.accrual);
        }
        if err.kind() == ErrorKind::Disconnected {
            member.lost(&handle);
        }
        let retryable = call.idempotent
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
