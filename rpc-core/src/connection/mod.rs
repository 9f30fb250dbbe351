//! The connection layer of the client: one connection's pending calls ([`pending`]), its
//! I/O task ([`driver`]) and the calls sent on it ([`ConnectionCall`], [`send`]).
//!
//! The layers above hold [`Handle`]s: the balancing layer (`balance`) keeps one per
//! endpoint, the user-facing client (`client`) one for a client made from a transport.
//! Nothing here knows either of them.

mod driver;
mod pending;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

pub(crate) use pending::Shared;

use crate::compress::{Body, Compression, Packer};
use crate::context::Metadata;
use crate::descriptor::ServiceDescriptor;
use crate::error::{ErrorKind, RpcError};
use crate::frame::Frame;
use crate::keepalive::Keepalive;
use crate::load::ReportedLoad;
use crate::observe::MethodTable;
use crate::protocol::FrameBuilder;
use crate::streaming::{ItemSource, RemoteStream, DEFAULT_MAX_BUFFERED_STREAM_BYTES};
use crate::transport::Transport;

/// The default limit on the size of one frame, sent or received: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 << 20;

/// The least a connection's first frame (the client's `Hello`, which carries its schema)
/// may be, whatever the maximum frame size: a server set to small frames still reads the
/// `Hello` of a service with many methods.
pub const MIN_HELLO_LIMIT: usize = 256 << 10;

/// What every connection of a client is opened with.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionOptions {
    pub(crate) max_frame_size: usize,
    /// The most stream data the connection buffers for its consumers.
    pub(crate) max_buffered_stream_bytes: usize,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) metadata: Metadata,
    /// Metric handles to share (a balancing client's, for all its connections); `None`
    /// makes the connection its own.
    pub(crate) metrics: Option<MethodTable>,
    /// The codecs to offer the server; `None`: no compression.
    pub(crate) compression: Option<Compression>,
    /// Where the server's load reports go (a balancing client's endpoint); `None` asks for
    /// none.
    pub(crate) load: Option<Arc<ReportedLoad>>,
}

impl Default for ConnectionOptions {
    fn default() -> ConnectionOptions {
        ConnectionOptions {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_buffered_stream_bytes: DEFAULT_MAX_BUFFERED_STREAM_BYTES,
            keepalive: None,
            metadata: Metadata::new(),
            metrics: None,
            compression: None,
            load: None,
        }
    }
}

/// One client connection. It closes when the last handle (and the last call made through
/// one) is gone.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Opens a connection over `transport` for the service `desc`: queues `Hello` (the
    /// first calls follow it in the same write) and spawns the connection's I/O task, so it
    /// must be called within a tokio runtime.
    pub(crate) fn open<T: Transport>(
        transport: T,
        desc: &'static ServiceDescriptor,
        options: &ConnectionOptions,
    ) -> Arc<Handle> {
        let (shared, engine) = Shared::new(desc, options);
        let shared = Arc::new(shared);
        tokio::spawn(driver::run(Arc::clone(&shared), engine, transport));
        Arc::new(Handle { shared })
    }

    /// Waits until the connection is gone, and says why.
    pub(crate) async fn closed(&self) -> RpcError {
        self.shared.closed().await
    }

    /// The request frame of call `id`: the encoded arguments in `builder`, with the
    /// connection's metadata before the call's own; compressed if the server accepted a
    /// codec and the body is large enough. Then the plain body, when the frame does not end
    /// with it (it is compressed), for a balancing client to send again.
    ///
    /// This runs in the caller's task, so compressing here holds up no other call.
    pub(crate) fn request(
        &self,
        id: u64,
        builder: FrameBuilder,
        method: u32,
        timeout: Option<Duration>,
        metadata: &Metadata,
    ) -> (Frame, Option<Bytes>) {
        if let Some(packer) = self.shared.packer.get() {
            if packer.wants(builder.body_len()) {
                return self.packed_request(packer, id, builder, method, timeout, metadata);
            }
        }
        let ours = &self.shared.metadata;
        (
            builder.finish_request_with(id, method, timeout, ours, metadata),
            None,
        )
    }

    /// A request whose body is worth compressing: its packed frame and its plain body
    /// (kept to send again on a connection that may not compress), or the plain frame if
    /// packing does not pay. Out of line: most requests are small.
    #[inline(never)]
    fn packed_request(
        &self,
        packer: &Packer,
        id: u64,
        mut builder: FrameBuilder,
        method: u32,
        timeout: Option<Duration>,
        metadata: &Metadata,
    ) -> (Frame, Option<Bytes>) {
        let ours = &self.shared.metadata;
        // A request too large for the frame size limit is not compressed: `send` fails it
        // as it would without compression, so the limit is exactly as strict.
        let plain_len =
            FrameBuilder::request_len(id, method, timeout, ours, metadata, builder.body_len());
        if plain_len <= self.shared.max_frame_size {
            if let Some(packed) = packer.pack(builder.body()) {
                let frame = packed.finish_packed_request_with(id, method, timeout, ours, metadata);
                return (frame, Some(builder.into_body()));
            }
        }
        (
            builder.finish_request_with(id, method, timeout, ours, metadata),
            None,
        )
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// The streams of a call of a streaming method.
pub(crate) struct StreamParts {
    /// The items of its `Streaming<T>` argument, to send after the request.
    pub(crate) input: Option<ItemSource>,
    /// Whether it returns `Streaming<T>`: the answer is then a stream, not a response.
    pub(crate) output: bool,
}

/// What sending a request gave: a response to wait for, or the stream that answers it.
pub(crate) enum Sent {
    Response(ConnectionCall),
    Stream(RemoteStream),
}

/// Sends `frame`, the request of call `id`, on `handle`'s connection, with the streams of a
/// streaming method: the one path every call takes onto a connection, unary or streamed,
/// made directly or by a balancing client. Fails at once, without sending, if the
/// connection is gone or the frame too large.
#[inline]
pub(crate) fn send(
    handle: Arc<Handle>,
    id: u64,
    frame: Frame,
    streams: Option<StreamParts>,
    waker: &Waker,
) -> Result<Sent, RpcError> {
    let shared = &handle.shared;
    if frame.len() > shared.max_frame_size {
        return Err(too_large(frame.len(), shared.max_frame_size));
    }
    let (input, output) = streams.map_or((None, false), |parts| (parts.input, parts.output));
    if output {
        let inbox = shared.inbox(id);
        shared.start(id, frame, None, input, Some(Arc::clone(&inbox)))?;
        return Ok(Sent::Stream(RemoteStream::new(inbox)));
    }
    shared.start(id, frame, Some(waker), input, None)?;
    Ok(Sent::Response(ConnectionCall {
        handle,
        id,
        done: false,
    }))
}

/// One request sent on one connection, waiting for its response. Dropping it before the
/// response arrives cancels the call (the server is sent `Cancel`).
pub(crate) struct ConnectionCall {
    handle: Arc<Handle>,
    id: u64,
    done: bool,
}

impl ConnectionCall {
    /// The response body, or why there is none.
    #[inline]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Body, RpcError>> {
        let outcome = self.handle.shared.poll_response(self.id, cx);
        if outcome.is_ready() {
            self.done = true;
        }
        outcome
    }

    /// Gives up on the call: forgets it and tells the server.
    pub(crate) fn cancel(&mut self) {
        if !self.done {
            self.done = true;
            self.handle.shared.cancel(self.id);
        }
    }
}

impl Drop for ConnectionCall {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Future for ConnectionCall {
    type Output = Result<Body, RpcError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        ConnectionCall::poll(&mut self, cx)
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
