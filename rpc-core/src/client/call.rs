//! One call: [`Call`] (configure, then `.await`) and the future that runs it.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pin_project::pin_project;
use serde::Serialize;
use tokio::time::Sleep;

use super::pending::Slot;
use super::{Client, Handle, Inner};
use crate::balance::{self, ManagedCall};
use crate::codec;
use crate::context::{self, Metadata};
use crate::error::{ErrorKind, RpcError};
use crate::observe::ClientCall;
use crate::protocol::FrameBuilder;
use crate::server::BoxFuture;
use crate::streaming::{Inbox, ItemSource, RemoteStream};
use crate::waker;

thread_local! {
    /// Spare buffer space request frames are built in (see `FrameBuilder::in_arena`).
    static ARENA: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// A call of one method, ready to be sent: `.await` it for `Result<R, RpcError>`.
///
/// Generated client methods return it; nothing is sent until it is awaited. Set options
/// before awaiting:
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo(call: rpc_core::Call<i64>) -> Result<(), rpc_core::RpcError> {
/// let sum: i64 = call
///     .timeout(Duration::from_millis(50))
///     .metadata("authorization", "Bearer secret")
///     .await?;
/// # Ok(()) }
/// ```
///
/// The timeout is the call's deadline: if no response arrives in time, the call fails with
/// [`ErrorKind::DeadlineExceeded`] and the server, which is told the time remaining with the
/// request, stops the handler as well. A call made while a handler runs inherits what is
/// left of that handler's own deadline (see [`context`](crate::context)), unless
/// [`inherit_deadline(false)`](Call::inherit_deadline) says otherwise. Dropping the call (or
/// the future it became) before it completes cancels it: the server drops the handler's
/// future.
#[must_use = "a Call does nothing until it is awaited"]
pub struct Call<R> {
    client: Client,
    method: u32,
    frame: Result<FrameBuilder, RpcError>,
    timeout: Option<Duration>,
    decode: fn(&[u8]) -> Result<R, RpcError>,
    metadata: Metadata,
    inherit_deadline: bool,
    key: Option<u64>,
    /// The streams of a streaming method; `None` for the others (kept out of line so a
    /// plain call stays small).
    streams: Option<Box<Streams<R>>>,
}

/// The streams of one call of a streaming method.
struct Streams<R> {
    /// The items of its `Streaming<T>` argument, to send after the request.
    input: Option<ItemSource>,
    /// For a method returning `Streaming<T>`: makes the result from the received stream.
    output: Option<OutputMaker<R>>,
}

type OutputMaker<R> = Box<dyn FnOnce(RemoteStream, Option<Duration>) -> R + Send>;

impl<R> Call<R> {
    /// Adds the streams of a streaming method.
    pub(crate) fn with_streams(
        mut self,
        input: Option<ItemSource>,
        output: Option<OutputMaker<R>>,
    ) -> Call<R> {
        self.streams = Some(Box::new(Streams { input, output }));
        self
    }

    pub(crate) fn new<A: Serialize + ?Sized>(
        client: Client,
        method: u32,
        args: &A,
        decode: fn(&[u8]) -> Result<R, RpcError>,
    ) -> Call<R> {
        // Request frames of one thread are carved from one buffer: no allocation per call.
        let frame = ARENA.with(|arena| match arena.try_borrow_mut() {
            Ok(mut arena) => {
                let mut builder = FrameBuilder::in_arena(&mut arena);
                let encoded = codec::encode_value(args, builder.body_mut());
                builder.detach(&mut arena);
                encoded.map(|()| builder)
            }
            // A call made while encoding another (from inside a `Serialize` impl): it gets
            // a buffer of its own.
            Err(_) => {
                let mut builder = FrameBuilder::new();
                codec::encode_value(args, builder.body_mut()).map(|()| builder)
            }
        });
        Call {
            client,
            method,
            frame,
            timeout: None,
            decode,
            metadata: Metadata::new(),
            inherit_deadline: true,
            key: None,
            streams: None,
        }
    }

    /// Sets the call's deadline to `timeout` from when it is first polled.
    pub fn timeout(mut self, timeout: Duration) -> Call<R> {
        self.timeout = Some(timeout);
        self
    }

    /// Whether the call takes on what is left of the deadline of the handler it is made from
    /// (when it is made from one): `true` by default. The call's own
    /// [`timeout`](Call::timeout) applies either way; when both do, the earlier one wins.
    pub fn inherit_deadline(mut self, inherit: bool) -> Call<R> {
        self.inherit_deadline = inherit;
        self
    }

    /// Sends a key/value pair with the call, after the client's own metadata; the handler
    /// reads it with [`context::metadata`](crate::context::metadata).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Call<R> {
        self.metadata.insert(key, value);
        self
    }

    /// The key a consistent-hashing balancer routes this call by: calls with equal keys go
    /// to the same endpoint while the set of endpoints stays the same. Other strategies, and
    /// clients with one connection, ignore it.
    pub fn hash_key<K: Hash + ?Sized>(mut self, key: &K) -> Call<R> {
        self.key = Some(balance::hash_key(key));
        self
    }
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let desc = self.client.service();
        let method = desc
            .methods
            .get(self.method as usize)
            .map_or("?", |m| m.name);
        f.debug_struct("Call")
            .field("service", &desc.name)
            .field("method", &method)
            .field("timeout", &self.timeout)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl<R> IntoFuture for Call<R> {
    type Output = Result<R, RpcError>;
    type IntoFuture = CallFuture<R>;

    fn into_future(self) -> CallFuture<R> {
        CallFuture {
            sleep: None,
            state: State::Unsent(self),
            observed: ClientCall::off(),
        }
    }
}

enum State<R> {
    Unsent(Call<R>),
    /// On a connection the caller gave (`Client::new`).
    Waiting {
        call: ConnectionCall,
        decode: fn(&[u8]) -> Result<R, RpcError>,
        timeout: Option<Duration>,
    },
    /// A streaming call on a pooled client, waiting for a connection (streams are not
    /// retried: they go to one endpoint and stay there).
    Acquiring {
        connection: BoxFuture<Result<Arc<Handle>, RpcError>>,
        /// Boxed: this rare state must not make every call's future larger.
        call: Box<(Call<R>, Option<Duration>)>,
    },
    /// Run by the client's pool: endpoint choice, reconnection, retries.
    Managed {
        future: BoxFuture<Result<Bytes, RpcError>>,
        decode: fn(&[u8]) -> Result<R, RpcError>,
    },
    Finished,
}

/// The future of an awaited [`Call`]. Dropping it before it completes cancels the call.
#[pin_project(project = CallFutureProjection)]
#[must_use = "futures do nothing unless polled"]
pub struct CallFuture<R> {
    #[pin]
    sleep: Option<Sleep>,
    state: State<R>,
    /// The call's span and metrics, from when it is sent.
    observed: ClientCall,
}

#[inline]
/// The deadline a call runs under: its own timeout, or what is left of the handler's it is
/// made from, whichever ends first. `Err` if that has already passed.
fn effective_timeout(own: Option<Duration>, inherit: bool) -> Result<Option<Duration>, RpcError> {
    let inherited = if inherit { context::deadline() } else { None };
    let Some(deadline) = inherited else {
        return Ok(own);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(RpcError::new(
            ErrorKind::DeadlineExceeded,
            "the deadline of the call this one is made from had already passed, so it was \
             not sent",
        ));
    }
    Ok(Some(own.map_or(left, |own| own.min(left))))
}

impl<R> Future for CallFuture<R> {
    type Output = Result<R, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let State::Unsent(_) = this.state {
            let State::Unsent(mut call) = std::mem::replace(this.state, State::Finished) else {
                unreachable!()
            };
            let timeout = effective_timeout(call.timeout, call.inherit_deadline)?;
            match &call.client.inner {
                Inner::Connection(handle) => {
                    let handle = Arc::clone(handle);
                    if let Some(ready) = start_on(handle, call, timeout, &mut this, cx)? {
                        return Poll::Ready(Ok(ready));
                    }
                }
                Inner::Pool(pool) if call.streams.is_some() => {
                    let pool = Arc::clone(pool);
                    let key = call.key;
                    *this.state = State::Acquiring {
                        connection: Box::pin(async move {
                            let keep = pool;
                            keep.pool()
                                .acquire(key, &[])
                                .await
                                .map(|(_, handle)| handle)
                        }),
                        call: Box::new((call, timeout)),
                    };
                }
                Inner::Pool(pool) => {
                    let pool = Arc::clone(pool);
                    let args = call.frame.as_ref().map_or(0, FrameBuilder::body_len);
                    *this.observed = ClientCall::start(
                        pool.metrics(),
                        pool.desc(),
                        call.method,
                        None,
                        args,
                        &mut call.metadata,
                    );
                    let idempotent = pool
                        .desc()
                        .methods
                        .get(call.method as usize)
                        .is_some_and(|m| m.idempotent);
                    let future = balance::run(
                        pool,
                        ManagedCall {
                            builder: call.frame?,
                            method: call.method,
                            timeout,
                            metadata: call.metadata,
                            key: call.key,
                            idempotent,
                            span: this.observed.span(),
                        },
                    );
                    *this.state = State::Managed {
                        future,
                        decode: call.decode,
                    };
                }
            }
        }
        if let State::Acquiring { connection, .. } = this.state {
            let handle = match connection.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => {
                    *this.state = State::Finished;
                    return Poll::Ready(Err(err));
                }
                Poll::Ready(Ok(handle)) => handle,
            };
            let State::Acquiring { call, .. } = std::mem::replace(this.state, State::Finished)
            else {
                unreachable!()
            };
            let (call, timeout) = *call;
            if let Some(ready) = start_on(handle, call, timeout, &mut this, cx)? {
                return Poll::Ready(Ok(ready));
            }
        }

        let (response, decode) = match this.state {
            State::Waiting {
                call,
                decode,
                timeout,
            } => match call.poll(cx) {
                Poll::Ready(response) => (response, *decode),
                Poll::Pending => {
                    let expired = this
                        .sleep
                        .as_pin_mut()
                        .is_some_and(|sleep| sleep.poll(cx).is_ready());
                    if !expired {
                        return Poll::Pending;
                    }
                    call.cancel();
                    let err = RpcError::deadline(timeout.unwrap_or_default());
                    (Err(err), *decode)
                }
            },
            State::Managed { future, decode } => match future.as_mut().poll(cx) {
                Poll::Ready(response) => (response, *decode),
                Poll::Pending => return Poll::Pending,
            },
            State::Unsent(_) | State::Acquiring { .. } | State::Finished => {
                panic!("CallFuture polled after it completed")
            }
        };
        let (result, bytes) = match response {
            Ok(body) => (decode(&body), body.len()),
            Err(err) => (Err(err), 0),
        };
        this.observed.finish_with(result.as_ref(), bytes);
        *this.state = State::Finished;
        Poll::Ready(result)
    }
}

/// Sends `call` on the connection of `handle`. A call answered by a stream is complete at
/// once (`Some`, the stream); any other now waits for its response.
fn start_on<R>(
    handle: Arc<Handle>,
    call: Call<R>,
    timeout: Option<Duration>,
    this: &mut CallFutureProjection<'_, R>,
    cx: &mut Context<'_>,
) -> Result<Option<R>, RpcError> {
    let mut call = call;
    let builder = call.frame?;
    let shared = &handle.shared;
    let id = shared.next_id();
    *this.observed = ClientCall::start(
        &shared.metrics,
        shared.desc,
        call.method,
        Some(id),
        builder.body_len(),
        &mut call.metadata,
    );
    let frame =
        builder.finish_request_with(id, call.method, timeout, &shared.metadata, &call.metadata);
    let Some(streams) = call.streams else {
        let conn_call =
            this.observed
                .check(ConnectionCall::start(handle, id, frame, cx.waker()))?;
        if let Some(timeout) = timeout {
            this.sleep.set(Some(tokio::time::sleep(timeout)));
        }
        *this.state = State::Waiting {
            call: conn_call,
            decode: call.decode,
            timeout,
        };
        return Ok(None);
    };
    let Streams { input, output } = *streams;
    if frame.len() > shared.max_frame_size {
        return Err(too_large(frame.len(), shared.max_frame_size));
    }
    match output {
        Some(make) => {
            let inbox = Inbox::new(id, Arc::clone(&shared.notices));
            shared.start_stream(id, frame, Slot::Stream(Arc::clone(&inbox)), input)?;
            // The call is observed until its stream ends, not just until it starts.
            let observed = std::mem::replace(this.observed, ClientCall::off());
            let stream = RemoteStream::new(inbox).observing(observed);
            Ok(Some(make(stream, timeout)))
        }
        None => {
            shared.start_stream(id, frame, Slot::Waiting(Some(cx.waker().clone())), input)?;
            if let Some(timeout) = timeout {
                this.sleep.set(Some(tokio::time::sleep(timeout)));
            }
            *this.state = State::Waiting {
                call: ConnectionCall {
                    handle,
                    id,
                    done: false,
                },
                decode: call.decode,
                timeout,
            };
            Ok(None)
        }
    }
}

impl<R> fmt::Debug for CallFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Unsent(_) => "unsent",
            State::Waiting { .. } => "waiting",
            State::Managed { .. } => "managed",
            State::Acquiring { .. } => "acquiring",
            State::Finished => "finished",
        };
        f.debug_struct("CallFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// One request sent on one connection, waiting for its response. Dropping it before the
/// response arrives cancels the call (the server is sent `Cancel`).
pub(crate) struct ConnectionCall {
    handle: Arc<Handle>,
    id: u64,
    done: bool,
}

impl ConnectionCall {
    #[inline]
    /// Sends `frame`, a request with `id`, on the connection; fails at once if the
    /// connection is gone (the request was then not sent) or the frame is too large.
    pub(crate) fn start(
        handle: Arc<Handle>,
        id: u64,
        frame: Bytes,
        waker: &std::task::Waker,
    ) -> Result<ConnectionCall, RpcError> {
        let shared = &handle.shared;
        if frame.len() > shared.max_frame_size {
            return Err(too_large(frame.len(), shared.max_frame_size));
        }
        shared.start(id, frame, waker)?;
        Ok(ConnectionCall {
            handle,
            id,
            done: false,
        })
    }

    /// The response body, or why there is none.
    #[inline]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, RpcError>> {
        let outcome = {
            let mut calls = self.handle.shared.calls(self.id);
            match calls.get_mut(&self.id) {
                Some(Slot::Waiting(waker)) => {
                    waker::remember(waker, cx.waker());
                    return Poll::Pending;
                }
                Some(Slot::Done(_)) => match calls.remove(&self.id) {
                    Some(Slot::Done(outcome)) => outcome,
                    _ => unreachable!(),
                },
                Some(Slot::Stream(_)) | None => Err(RpcError::disconnected(
                    "the call was lost by its connection",
                )),
            }
        };
        self.done = true;
        Poll::Ready(outcome)
    }

    /// Gives up on the call: forgets it and tells the server.
    pub(crate) fn cancel(&mut self) {
        if !self.done {
            self.done = true;
            self.handle.shared.cancel(self.id);
        }
    }
}

#[cold]
fn too_large(len: usize, limit: usize) -> RpcError {
    RpcError::new(
        ErrorKind::Protocol,
        format!(
            "the request is {len} bytes, more than the frame size limit of {limit} bytes; \
             send large data in smaller calls"
        ),
    )
}

impl Drop for ConnectionCall {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Future for ConnectionCall {
    type Output = Result<Bytes, RpcError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        ConnectionCall::poll(&mut self, cx)
    }
}
