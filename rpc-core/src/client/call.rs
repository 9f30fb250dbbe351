//! One call: [`Call`] (configure, then `.await`) and the future that runs it.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::codec::EncodeArgs;
use bytes::Bytes;
use pin_project::pin_project;

use super::{Client, ClientLayers, Inner};
use crate::balance::{self, ManagedCall, Reply};
use crate::boxed::BoxFuture;
use crate::compress::Body;
use crate::connection::{self, ConnectionCall, Handle, Sent, StreamParts};
use crate::context::Metadata;
use crate::deadline::{effective_timeout, Deadline};
use crate::error::RpcError;
use crate::middleware::reply::{self, Reply as Answer};
use crate::middleware::ClientCall as Intercepted;
use crate::observe::ClientCall;
use crate::protocol::FrameBuilder;
use crate::streaming::{ItemSource, RemoteStream};

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
/// [`ErrorKind::DeadlineExceeded`](crate::ErrorKind::DeadlineExceeded) and the server, which is told the time remaining with the
/// request, stops the handler as well. A call made while a handler runs inherits what is
/// left of that handler's own deadline (see [`context`](crate::context)), unless
/// [`inherit_deadline(false)`](Call::inherit_deadline) says otherwise. Dropping the call (or
/// the future it became) before it completes cancels it: the server drops the handler's
/// future.
#[must_use = "a Call does nothing until it is awaited"]
pub struct Call<R> {
    client: Client,
    timeout: Option<Duration>,
    inherit_deadline: bool,
    /// What starting the call needs besides the client (see [`Call::into_start`]).
    start: Start<R>,
}

/// A call, without its client and deadline settings.
struct Start<R> {
    method: u32,
    frame: Result<FrameBuilder, RpcError>,
    decode: fn(&Bytes) -> Result<R, RpcError>,
    metadata: Metadata,
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

type OutputMaker<R> = Box<dyn FnOnce(RemoteStream) -> R + Send>;

impl<R> Streams<R> {
    /// What the connection layer is given to send and receive, and what makes the call's
    /// result from a received stream.
    fn split(streams: Option<Box<Streams<R>>>) -> (Option<StreamParts>, Option<OutputMaker<R>>) {
        let Some(streams) = streams else {
            return (None, None);
        };
        let Streams { input, output } = *streams;
        let parts = StreamParts {
            input,
            output: output.is_some(),
        };
        (Some(parts), output)
    }
}

impl<R> Call<R> {
    /// What the call goes through (its client's connection, pool or middleware), moved
    /// out rather than cloned, and the rest of the call.
    fn into_start(self) -> (Inner, Start<R>) {
        (self.client.into_inner(), self.start)
    }

    /// Adds the streams of a streaming method.
    pub(crate) fn with_streams(
        mut self,
        input: Option<ItemSource>,
        output: Option<OutputMaker<R>>,
    ) -> Call<R> {
        self.start.streams = Some(Box::new(Streams { input, output }));
        self
    }

    pub(crate) fn new<A: EncodeArgs>(
        client: Client,
        method: u32,
        args: A,
        decode: fn(&Bytes) -> Result<R, RpcError>,
    ) -> Call<R> {
        // Request frames of one thread are carved from one buffer: no allocation per call.
        let frame = ARENA.with(|arena| match arena.try_borrow_mut() {
            Ok(mut arena) => {
                let mut builder = FrameBuilder::in_arena(&mut arena);
                let encoded = args.encode_args(&mut builder.writer());
                builder.detach(&mut arena);
                encoded.map(|()| builder)
            }
            // A call made while encoding another (from inside a `Serialize` impl): it gets
            // a buffer of its own.
            Err(_) => {
                let mut builder = FrameBuilder::new();
                args.encode_args(&mut builder.writer()).map(|()| builder)
            }
        });
        Call::assemble(client, method, frame, decode)
    }

    /// A call whose request body is already encoded (the JSON gateway's).
    pub(crate) fn from_body(
        client: Client,
        method: u32,
        body: &[u8],
        decode: fn(&Bytes) -> Result<R, RpcError>,
    ) -> Call<R> {
        let mut builder = FrameBuilder::new();
        builder.body_mut().extend_from_slice(body);
        Call::assemble(client, method, Ok(builder), decode)
    }

    fn assemble(
        client: Client,
        method: u32,
        frame: Result<FrameBuilder, RpcError>,
        decode: fn(&Bytes) -> Result<R, RpcError>,
    ) -> Call<R> {
        Call {
            client,
            timeout: None,
            inherit_deadline: true,
            start: Start {
                method,
                frame,
                decode,
                metadata: Metadata::new(),
                key: None,
                streams: None,
            },
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
        self.start.metadata.insert(key, value);
        self
    }

    /// How important the call is, for servers that shed load by priority (see
    /// [`Priority`](crate::governance::Priority)): sent as the `rpc-priority` metadata pair.
    pub fn priority(self, priority: crate::governance::Priority) -> Call<R> {
        self.metadata(crate::governance::Priority::METADATA_KEY, priority.as_str())
    }

    /// The key a consistent-hashing balancer routes this call by: calls with equal keys go
    /// to the same endpoint while the set of endpoints stays the same. Other strategies, and
    /// clients with one connection, ignore it.
    pub fn hash_key<K: Hash + ?Sized>(mut self, key: &K) -> Call<R> {
        self.start.key = Some(balance::hash_key(key));
        self
    }
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let desc = self.client.service();
        let method = desc
            .methods
            .get(self.start.method as usize)
            .map_or("?", |m| m.name);
        f.debug_struct("Call")
            .field("service", &desc.name)
            .field("method", &method)
            .field("timeout", &self.timeout)
            .field("metadata", &self.start.metadata)
            .finish()
    }
}

impl<R> IntoFuture for Call<R> {
    type Output = Result<R, RpcError>;
    type IntoFuture = CallFuture<R>;

    fn into_future(self) -> CallFuture<R> {
        CallFuture {
            deadline: Deadline::none(),
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
        decode: fn(&Bytes) -> Result<R, RpcError>,
    },
    /// Run by the client's pool: endpoint choice, reconnection, retries.
    Managed {
        future: BoxFuture<Result<Reply, RpcError>>,
        decode: fn(&Bytes) -> Result<R, RpcError>,
        /// Makes the result of a method returning a stream (boxed: rare, and the state of
        /// every call's future must stay small).
        output: Option<Box<(OutputMaker<R>, Option<Instant>)>>,
    },
    /// Run through the client's middleware, which send it (or not) on the bare client.
    Layered {
        future: BoxFuture<Result<Answer, RpcError>>,
        decode: fn(&Bytes) -> Result<R, RpcError>,
        output: Option<OutputMaker<R>>,
    },
    Finished,
}

/// The future of an awaited [`Call`]. Dropping it before it completes cancels the call.
#[pin_project(project = CallFutureProjection)]
#[must_use = "futures do nothing unless polled"]
pub struct CallFuture<R> {
    /// The call's deadline, whichever path it takes.
    #[pin]
    deadline: Deadline,
    state: State<R>,
    /// The call's span and metrics, from when it is sent.
    observed: ClientCall,
}

impl<R> Future for CallFuture<R> {
    type Output = Result<R, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let State::Unsent(_) = this.state {
            let State::Unsent(call) = std::mem::replace(this.state, State::Finished) else {
                unreachable!()
            };
            let timeout = effective_timeout(call.timeout, call.inherit_deadline)?;
            if timeout.is_some() {
                this.deadline.as_mut().set(timeout);
            }
            // The call's own handle on the connection is moved, not cloned: a reference
            // count that every concurrent call touches is a cache line they all contend on.
            let (inner, call) = call.into_start();
            let ready = match inner {
                Inner::Connection(handle) => start_on(handle, call, timeout, &mut this, cx)?,
                Inner::Pool(pool) => {
                    start_managed(pool, call, timeout, &mut this)?;
                    None
                }
                Inner::Layered(layers) => {
                    start_layered(&layers, call, timeout, &mut this)?;
                    None
                }
            };
            if let Some(ready) = ready {
                return Poll::Ready(Ok(ready));
            }
        }

        let (response, decode) = match this.state {
            State::Waiting { call, decode } => match call.poll(cx) {
                Poll::Ready(response) => (response, *decode),
                Poll::Pending => match this.deadline.poll_expired(cx) {
                    Poll::Ready(err) => {
                        call.cancel();
                        (Err(err), *decode)
                    }
                    Poll::Pending => return Poll::Pending,
                },
            },
            State::Managed {
                future,
                decode,
                output,
            } => match future.as_mut().poll(cx) {
                Poll::Ready(Ok(Reply::Body(body))) => (Ok(body), *decode),
                Poll::Ready(Ok(Reply::Stream(stream))) => {
                    let Some(output) = output.take() else {
                        *this.state = State::Finished;
                        return Poll::Ready(Err(RpcError::protocol(
                            "the server answered a call with a stream it does not return",
                        )));
                    };
                    let (make, deadline) = *output;
                    let left = deadline.map(|d| d.saturating_duration_since(crate::clock::now()));
                    let observed = std::mem::replace(this.observed, ClientCall::off());
                    *this.state = State::Finished;
                    return Poll::Ready(Ok(make(stream.with_deadline(left).observing(observed))));
                }
                Poll::Ready(Err(err)) => (Err(err), *decode),
                Poll::Pending => match this.deadline.poll_expired(cx) {
                    // Dropping the pool's future (below) cancels the attempt in progress.
                    Poll::Ready(err) => (Err(err), *decode),
                    Poll::Pending => return Poll::Pending,
                },
            },
            State::Layered {
                future,
                decode,
                output,
            } => match future.as_mut().poll(cx) {
                Poll::Ready(Ok(Answer(reply::Kind::Body(body)))) => {
                    (Ok(Body::Plain(body)), *decode)
                }
                Poll::Ready(Ok(Answer(reply::Kind::Stream(stream)))) => {
                    // The stream's deadline and observation are the inner call's.
                    let result = match output.take() {
                        Some(make) => Ok(make(stream)),
                        None => Err(RpcError::protocol(
                            "the server answered a call with a stream it does not return",
                        )),
                    };
                    *this.state = State::Finished;
                    return Poll::Ready(result);
                }
                Poll::Ready(Ok(Answer(reply::Kind::Value(_)))) => {
                    let err = RpcError::new(
                        crate::ErrorKind::Internal,
                        "a client middleware passed back a server-side result",
                    );
                    (Err(err), *decode)
                }
                Poll::Ready(Err(err)) => (Err(err), *decode),
                Poll::Pending => match this.deadline.poll_expired(cx) {
                    // Dropping the chain (below) cancels the call in progress.
                    Poll::Ready(err) => (Err(err), *decode),
                    Poll::Pending => return Poll::Pending,
                },
            },
            State::Unsent(_) | State::Finished => {
                panic!("CallFuture polled after it completed")
            }
        };
        // A compressed response is opened here, in the caller's task, not the I/O task's.
        let (result, bytes) = match response.and_then(Body::open) {
            Ok(body) => {
                let (result, len) = (decode(&body), body.len());
                crate::buffers::recycle(body);
                (result, len)
            }
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
    call: Start<R>,
    timeout: Option<Duration>,
    this: &mut CallFutureProjection<'_, R>,
    cx: &mut Context<'_>,
) -> Result<Option<R>, RpcError> {
    let mut call = call;
    let builder = call.frame?;
    let id = handle.shared.next_id();
    *this.observed = ClientCall::start(
        &handle.shared.metrics,
        handle.shared.desc,
        call.method,
        Some(id),
        builder.body_len(),
        &mut call.metadata,
    );
    let (frame, _) = handle.request(id, builder, call.method, timeout, &call.metadata);
    let (parts, output) = Streams::split(call.streams);
    match this
        .observed
        .check(connection::send(handle, id, frame, parts, cx.waker()))?
    {
        Sent::Response(call_on) => {
            *this.state = State::Waiting {
                call: call_on,
                decode: call.decode,
            };
            Ok(None)
        }
        Sent::Stream(stream) => {
            let Some(make) = output else {
                // `send` answers with a stream only a call that asked for one.
                return Err(RpcError::new(
                    crate::ErrorKind::Internal,
                    "a call that returns no stream was answered with one",
                ));
            };
            // The call is observed until its stream ends, not just until it starts.
            let observed = std::mem::replace(this.observed, ClientCall::off());
            Ok(Some(make(
                stream.with_deadline(timeout).observing(observed),
            )))
        }
    }
}

/// Hands `call` to the client's pool.
fn start_managed<R>(
    pool: Arc<balance::PoolHandle>,
    call: Start<R>,
    timeout: Option<Duration>,
    this: &mut CallFutureProjection<'_, R>,
) -> Result<(), RpcError> {
    let mut call = call;
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
    let deadline = timeout.map(|timeout| (crate::clock::now() + timeout, timeout));
    let (streams, output) = Streams::split(call.streams);
    let output = output.map(|make| Box::new((make, deadline.map(|(at, _)| at))));
    let future = balance::run(
        pool,
        ManagedCall {
            builder: this.observed.check(call.frame)?,
            method: call.method,
            deadline,
            metadata: call.metadata,
            key: call.key,
            idempotent,
            streams,
            span: this.observed.span(),
        },
    );
    *this.state = State::Managed {
        future,
        decode: call.decode,
        output,
    };
    Ok(())
}

impl<R> fmt::Debug for CallFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Unsent(_) => "unsent",
            State::Waiting { .. } => "waiting",
            State::Managed { .. } => "managed",
            State::Layered { .. } => "layered",
            State::Finished => "finished",
        };
        f.debug_struct("CallFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// What the end of a client's middleware stack gets from the server: a response body or a
/// stream.
enum Raw {
    Body(Bytes),
    Stream(RemoteStream),
}

fn raw_body(body: &Bytes) -> Result<Raw, RpcError> {
    Ok(Raw::Body(body.clone()))
}

/// Runs `call` through the client's middleware; the end of the chain sends it as a call of
/// the same client without middleware.
fn start_layered<R>(
    layers: &ClientLayers,
    call: Start<R>,
    timeout: Option<Duration>,
    this: &mut CallFutureProjection<'_, R>,
) -> Result<(), RpcError> {
    let Start {
        method,
        frame,
        decode,
        metadata,
        key,
        streams,
    } = call;
    let mut builder = frame?;
    let desc = layers.bare.service();
    let Some(info) = desc.methods.get(method as usize) else {
        return Err(RpcError::new(
            crate::ErrorKind::Internal,
            format!("`{}` has no method {method}", desc.name),
        ));
    };
    let (input, output) = match streams {
        Some(streams) => (streams.input, streams.output),
        None => (None, None),
    };
    let returns_stream = output.is_some();
    let request = Intercepted {
        service: desc,
        method: info,
        metadata,
        deadline: timeout.and_then(|timeout| crate::clock::now().checked_add(timeout)),
        body: builder.body_copy(),
    };
    let bare = layers.bare.clone();
    let future = layers.stack.run(
        request,
        Box::new(
            move |request: Intercepted| -> BoxFuture<Result<Answer, RpcError>> {
                let mut sent = Call::assemble(bare, method, Ok(builder), raw_body);
                sent.timeout = request.remaining();
                // The deadline was settled before the middleware ran.
                sent.inherit_deadline = false;
                sent.start.metadata = request.metadata;
                sent.start.key = key;
                if input.is_some() || returns_stream {
                    let output: Option<OutputMaker<Raw>> =
                        returns_stream.then(|| Box::new(Raw::Stream) as OutputMaker<Raw>);
                    sent = sent.with_streams(input, output);
                }
                Box::pin(async move {
                    Ok(match sent.await? {
                        Raw::Body(body) => Answer::from_body(body),
                        Raw::Stream(stream) => Answer(reply::Kind::Stream(stream)),
                    })
                })
            },
        ),
    );
    *this.state = State::Layered {
        future,
        decode,
        output,
    };
    Ok(())
}
