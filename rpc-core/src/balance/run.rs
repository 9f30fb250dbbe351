//! One call through a pool: choose an endpoint, send, and retry when that is safe. Unary and
//! streamed calls take the same path; a streamed call is never sent twice, and its attempt
//! is accounted (load, failures) until its stream ends. A unary call of an idempotent method
//! on a client that hedges takes a path of its own, [`hedged`], so that the plain path costs
//! nothing more when hedging is off.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::breaker::{self, FailureAccrual};
use super::hedge::Hedging;
use super::pool::{Load, Member, Pool, PoolHandle};
use crate::boxed::BoxFuture;
use crate::connection::{self, ConnectionCall, Handle, Sent, StreamParts};
use crate::context::Metadata;
use crate::error::{ErrorKind, RpcError};
use crate::frame::Frame;
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
    let pool = handle.pool();
    if let Some(hedging) = &pool.hedging {
        if call.idempotent && call.streams.is_none() {
            let hedging = Arc::clone(hedging);
            return Box::pin(async move {
                let result = hedged(&pool, &hedging, call).await;
                drop(handle);
                result
            });
        }
    }
    Box::pin(async move {
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
    let mut body: Option<Frame> = None;
    let mut tried: Vec<Arc<Member>> = Vec::new();
    let mut attempts = 0u32;
    let mut stale = 0u32;
    let streamed = call.streams.is_some();
    loop {
        let (member, handle) = pool.acquire(call.key, &tried).await?;
        let timeout = match call.deadline {
            Some((deadline, timeout)) => {
                let left = deadline.saturating_duration_since(crate::clock::now());
                if left.is_zero() {
                    return Err(RpcError::deadline(timeout));
                }
                Some(left)
            }
            None => None,
        };
        let builder = match (builder.take(), &body) {
            (Some(builder), _) => builder,
            (None, Some(body)) => FrameBuilder::with_body_parts(body),
            (None, None) => unreachable!("the body is kept once the first frame is built"),
        };
        let id = handle.shared.next_id();
        let (frame, plain) = handle.request(id, builder, call.method, timeout, &call.metadata);
        if body.is_none() {
            body = Some(resend_body(&frame, plain, body_len));
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
            // Refused by a live connection (a request over the frame size limit): the same
            // anywhere. A closed one refuses with its own closing error, whatever its kind
            // (a server's goodbye may say `Protocol`), and the call goes elsewhere.
            Err(err) if !handle.shared.is_closed() => return Err(err),
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
        let err = retry_or_give_up(pool, err, retryable, attempts)?;
        let again = tried.iter().any(|t| Arc::ptr_eq(t, &member));
        tried.push(member);
        if again || err.kind() == ErrorKind::Overloaded {
            // The same endpoint again, or one that said it is busy: give it a moment.
            let delay = pool.config.retry_backoff.delay_with(attempts, pool.rng());
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether a call whose `attempts`-th attempt failed with `err` is sent again: `Ok` gives
/// the error back and counts the retry, `Err` is the error to give up with (not retryable,
/// `max_attempts` reached, or the retry budget spent).
fn retry_or_give_up(
    pool: &Pool,
    err: RpcError,
    retryable: bool,
    attempts: u32,
) -> Result<RpcError, RpcError> {
    if !retryable {
        return Err(err);
    }
    if attempts >= pool.config.max_attempts {
        return Err(RpcError::new(
            err.kind(),
            format!(
                "{} (gave up after {attempts} failed attempts, the client's max_attempts)",
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
                 needed retries or hedges)",
                err.message()
            ),
        ));
    }
    pool.retries.fetch_add(1, Ordering::Relaxed);
    Ok(err)
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

/// What is left of a call's deadline for its next request: `None` without one, an error
/// once it has passed.
fn time_left(deadline: Option<(Instant, Duration)>) -> Result<Option<Duration>, RpcError> {
    match deadline {
        Some((deadline, timeout)) => {
            let left = deadline.saturating_duration_since(crate::clock::now());
            if left.is_zero() {
                return Err(RpcError::deadline(timeout));
            }
            Ok(Some(left))
        }
        None => Ok(None),
    }
}

/// The encoded arguments of a request, kept to send again: the plain body (a compressed
/// frame does not end with it, and another connection may not compress), or the end of the
/// frame, sharing its buffers.
fn resend_body(frame: &Frame, plain: Option<Bytes>, body_len: usize) -> Frame {
    match plain {
        Some(plain) => Frame::new(plain),
        None => frame.suffix(body_len),
    }
}

/// The request frames of a hedged call: the first is built from the call's builder, the
/// others around the encoded arguments, kept from the first.
struct Request {
    builder: Option<FrameBuilder>,
    body: Option<Frame>,
    body_len: usize,
}

impl Request {
    fn frame(
        &mut self,
        handle: &Handle,
        id: u64,
        call: &HedgedCall,
        timeout: Option<Duration>,
    ) -> Frame {
        let builder = match (self.builder.take(), &self.body) {
            (Some(builder), _) => builder,
            (None, Some(body)) => FrameBuilder::with_body_parts(body),
            // Unreachable: the body is kept when the first frame is built; an empty body is
            // still a correct request should it ever be reached.
            (None, None) => FrameBuilder::new(),
        };
        let (frame, plain) = handle.request(id, builder, call.method, timeout, &call.metadata);
        if self.body.is_none() {
            self.body = Some(resend_body(&frame, plain, self.body_len));
        }
        frame
    }
}

/// What a hedged call needs of its [`ManagedCall`] besides the frame.
struct HedgedCall {
    method: u32,
    deadline: Option<(Instant, Duration)>,
    metadata: Metadata,
    key: Option<u64>,
    span: tracing::Span,
}

/// One request of a hedged call, waiting for its answer.
struct InFlight {
    member: Arc<Member>,
    handle: Arc<Handle>,
    id: u64,
    /// Which request of the call it is (from 1), for the call's span.
    attempt: u32,
    /// Sent as a hedge (rather than first, or as a retry after a failure).
    hedge: bool,
    sent_at: Instant,
    /// Dropping it before it is answered cancels the request: the connection forgets it
    /// and sends the server `Cancel`, so the server drops the handler. That is how the
    /// losing request of a hedged call is stopped.
    response: ConnectionCall,
    _load: Load,
}

/// Sends one request of a hedged call to `member`. An error means the connection was gone
/// before the request left (or the frame is too large: `Protocol`).
fn send_to(
    member: Arc<Member>,
    handle: Arc<Handle>,
    request: &mut Request,
    call: &HedgedCall,
    timeout: Option<Duration>,
    attempt: u32,
    hedge: bool,
) -> Result<InFlight, (RpcError, Arc<Member>, Arc<Handle>)> {
    let id = handle.shared.next_id();
    let frame = request.frame(&handle, id, call, timeout);
    let load = member.track();
    match connection::send(
        Arc::clone(&handle),
        id,
        frame,
        None,
        std::task::Waker::noop(),
    ) {
        Ok(Sent::Response(response)) => {
            member.sent();
            Ok(InFlight {
                member,
                handle,
                id,
                attempt,
                hedge,
                sent_at: crate::clock::now(),
                response,
                _load: load,
            })
        }
        // A call without streams is answered by one response; `send` gives a stream only
        // to a call that asked for one.
        Ok(Sent::Stream(_)) => Err((
            RpcError::new(
                ErrorKind::Internal,
                "a call that returns no stream was answered with one",
            ),
            member,
            handle,
        )),
        Err(err) => Err((err, member, handle)),
    }
}

/// Sends a hedged call's first request, or a retry: to the endpoint the strategy picks,
/// waiting for one if the pool says to, and elsewhere if the chosen connection was gone.
async fn send_first(
    pool: &Pool,
    request: &mut Request,
    call: &HedgedCall,
    tried: &mut Vec<Arc<Member>>,
    attempt: u32,
) -> Result<InFlight, RpcError> {
    let mut stale = 0u32;
    loop {
        let (member, handle) = pool.acquire(call.key, tried).await?;
        let timeout = time_left(call.deadline)?;
        match send_to(member, handle, request, call, timeout, attempt, false) {
            Ok(sent) => {
                tried.push(Arc::clone(&sent.member));
                return Ok(sent);
            }
            Err((err, _, handle)) if !handle.shared.is_closed() => return Err(err),
            Err((err, member, handle)) => {
                // Never reached a server: it may go elsewhere, and it is no retry.
                member.lost(&handle);
                stale += 1;
                if stale > MAX_STALE_PICKS {
                    return Err(err);
                }
                tried.push(member);
            }
        }
    }
}

/// What woke a hedged call.
enum Event {
    /// The request at this index of the requests in flight was answered.
    Answered(usize, Result<crate::compress::Body, RpcError>),
    /// The hedging delay passed.
    Hedge,
}

/// A unary call of an idempotent method on a client that hedges: the first request goes
/// where the strategy says; while it is unanswered after the hedging delay, another goes to
/// an endpoint not yet tried (within the retry budget and the hedge's `max_attempts`); the
/// first answer wins, and dropping the requests still in flight cancels them. A request
/// that fails while another is in flight leaves the call to that one; when none is left,
/// the call is retried as on the plain path.
async fn hedged(pool: &Pool, hedging: &Hedging, call: ManagedCall) -> Result<Reply, RpcError> {
    pool.calls.fetch_add(1, Ordering::Relaxed);
    pool.budget.deposit();
    let mut request = Request {
        body_len: call.builder.body_len(),
        builder: Some(call.builder),
        body: None,
    };
    let call = HedgedCall {
        method: call.method,
        deadline: call.deadline,
        metadata: call.metadata,
        key: call.key,
        span: call.span,
    };
    // Read once per call: a percentile delay changes as answers come in.
    let delay = hedging.delay(call.method);
    let mut tried: Vec<Arc<Member>> = Vec::new();
    let mut in_flight: Vec<InFlight> = Vec::with_capacity(2);
    // Requests sent so far, and those since the last retry (which `max_attempts` bounds).
    let mut sent = 1u32;
    let mut racing = 1u32;
    let mut failures = 0u32;
    in_flight.push(send_first(pool, &mut request, &call, &mut tried, sent).await?);
    // One timer for the whole call, re-armed after each request while hedges remain.
    let timer = tokio::time::sleep(delay.unwrap_or(Duration::ZERO));
    let mut timer = std::pin::pin!(timer);
    let mut armed = delay.is_some();
    loop {
        let event = std::future::poll_fn(|cx| {
            for (i, attempt) in in_flight.iter_mut().enumerate() {
                if let Poll::Ready(result) = attempt.response.poll(cx) {
                    return Poll::Ready(Event::Answered(i, result));
                }
            }
            if armed && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Hedge);
            }
            Poll::Pending
        })
        .await;
        let (index, result) = match event {
            Event::Answered(index, result) => (index, result),
            Event::Hedge => {
                armed = false;
                let Some(delay) = delay else { continue };
                if racing >= hedging.max_attempts() {
                    continue;
                }
                // No endpoint left that is not already working on the call: no hedge.
                let Some((member, handle)) = pool.pick_fresh(call.key, &tried) else {
                    continue;
                };
                let Ok(timeout) = time_left(call.deadline) else {
                    // The deadline passed: the caller is about to give up on the call.
                    continue;
                };
                if !pool.budget.withdraw() {
                    pool.hedges_refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match send_to(member, handle, &mut request, &call, timeout, sent + 1, true) {
                    Ok(attempt) => {
                        sent += 1;
                        racing += 1;
                        pool.hedges.fetch_add(1, Ordering::Relaxed);
                        tried.push(Arc::clone(&attempt.member));
                        in_flight.push(attempt);
                        if racing < hedging.max_attempts() {
                            timer.as_mut().reset(tokio::time::Instant::now() + delay);
                            armed = true;
                        }
                    }
                    Err((_, member, handle)) => {
                        // Its connection was gone: skip this hedge rather than wait for
                        // another endpoint; the first request still runs.
                        member.lost(&handle);
                        tried.push(member);
                    }
                }
                continue;
            }
        };
        let attempt = in_flight.swap_remove(index);
        observe::attempt(
            &call.span,
            attempt.attempt,
            attempt.id,
            &attempt.member.key,
            result.as_ref().map(drop),
        );
        let err = match result {
            Ok(body) => {
                attempt.member.success();
                hedging.answered(call.method, crate::clock::since(attempt.sent_at));
                if attempt.hedge {
                    pool.hedges_won.fetch_add(1, Ordering::Relaxed);
                }
                // Returning drops the other requests, which cancels them.
                return Ok(Reply::Body(body));
            }
            Err(err) => err,
        };
        record_failure(&attempt.member, &attempt.handle, &err, &pool.config.accrual);
        failures += 1;
        if !in_flight.is_empty() {
            // Another request of the call may still answer.
            continue;
        }
        let retryable = matches!(err.kind(), ErrorKind::Disconnected | ErrorKind::Overloaded);
        let err = retry_or_give_up(pool, err, retryable, failures)?;
        let again = tried
            .iter()
            .filter(|t| Arc::ptr_eq(t, &attempt.member))
            .count()
            > 1;
        if again || err.kind() == ErrorKind::Overloaded {
            // The same endpoint again, or one that said it is busy: give it a moment.
            let delay = pool.config.retry_backoff.delay_with(failures, pool.rng());
            tokio::time::sleep(delay).await;
        }
        drop(attempt);
        sent += 1;
        racing = 1;
        in_flight.push(send_first(pool, &mut request, &call, &mut tried, sent).await?);
        if let Some(delay) = delay {
            timer.as_mut().reset(tokio::time::Instant::now() + delay);
            armed = true;
        }
    }
}
