//! One call: [`Call`] (configure, then `.await`) and the future that runs it.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use serde::Serialize;
use tokio::time::Sleep;

use super::pending::Slot;
use super::Client;
use crate::codec;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::FrameBuilder;
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
/// let sum: i64 = call.timeout(Duration::from_millis(50)).await?;
/// # Ok(()) }
/// ```
///
/// The timeout is the call's deadline: if no response arrives in time, the call fails with
/// [`ErrorKind::DeadlineExceeded`] and the server, which is told the time remaining with the
/// request, stops the handler as well. Dropping the call (or the future it became) before it
/// completes cancels it: the server drops the handler's future.
#[must_use = "a Call does nothing until it is awaited"]
pub struct Call<R> {
    client: Client,
    method: u32,
    frame: Result<FrameBuilder, RpcError>,
    timeout: Option<Duration>,
    decode: fn(&[u8]) -> Result<R, RpcError>,
}

impl<R> Call<R> {
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
        }
    }

    /// Sets the call's deadline to `timeout` from when it is first polled.
    pub fn timeout(mut self, timeout: Duration) -> Call<R> {
        self.timeout = Some(timeout);
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
        }
    }
}

enum State<R> {
    Unsent(Call<R>),
    Waiting {
        client: Client,
        id: u64,
        decode: fn(&[u8]) -> Result<R, RpcError>,
        timeout: Option<Duration>,
    },
    Finished,
}

/// The future of an awaited [`Call`]. Dropping it before it completes cancels the call.
#[pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct CallFuture<R> {
    #[pin]
    sleep: Option<Sleep>,
    state: State<R>,
}

impl<R> Future for CallFuture<R> {
    type Output = Result<R, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let State::Unsent(_) = this.state {
            let State::Unsent(call) = std::mem::replace(this.state, State::Finished) else {
                unreachable!()
            };
            let builder = call.frame?;
            let shared = call.client.shared();
            let id = shared.next_id();
            let frame = builder.finish_request(id, call.method, call.timeout);
            if frame.len() > shared.max_frame_size {
                return Poll::Ready(Err(RpcError::new(
                    ErrorKind::Protocol,
                    format!(
                        "the request is {} bytes, more than the frame size limit of {} bytes; \
                         send large data in smaller calls",
                        frame.len(),
                        shared.max_frame_size
                    ),
                )));
            }
            shared.start(id, frame, cx.waker())?;
            if let Some(timeout) = call.timeout {
                this.sleep.set(Some(tokio::time::sleep(timeout)));
            }
            *this.state = State::Waiting {
                client: call.client,
                id,
                decode: call.decode,
                timeout: call.timeout,
            };
        }

        let State::Waiting {
            client,
            id,
            decode,
            timeout,
        } = this.state
        else {
            panic!("CallFuture polled after it completed");
        };
        let shared = client.shared();
        let outcome = {
            let mut calls = shared.calls(*id);
            match calls.get_mut(id) {
                Some(Slot::Waiting(waker)) => {
                    waker::remember(waker, cx.waker());
                    None
                }
                Some(Slot::Done(_)) => match calls.remove(id) {
                    Some(Slot::Done(outcome)) => Some(outcome),
                    _ => unreachable!(),
                },
                None => Some(Err(RpcError::disconnected(
                    "the call was lost by its connection",
                ))),
            }
        };
        let result = match outcome {
            Some(Ok(body)) => decode(&body),
            Some(Err(err)) => Err(err),
            None => {
                let expired = this
                    .sleep
                    .as_pin_mut()
                    .is_some_and(|sleep| sleep.poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                shared.cancel(*id);
                Err(RpcError::deadline(timeout.unwrap_or_default()))
            }
        };
        *this.state = State::Finished;
        Poll::Ready(result)
    }
}

#[pinned_drop]
impl<R> PinnedDrop for CallFuture<R> {
    fn drop(self: Pin<&mut Self>) {
        if let State::Waiting { client, id, .. } = &self.state {
            client.shared().cancel(*id);
        }
    }
}

impl<R> fmt::Debug for CallFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Unsent(_) => "unsent",
            State::Waiting { .. } => "waiting",
            State::Finished => "finished",
        };
        f.debug_struct("CallFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
