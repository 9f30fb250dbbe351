//! In-process transport over channels, for unit tests and for services in one process.
//!
//! Frames travel as whole `Bytes` over bounded channels: no framing and no syscalls, but
//! every message is still encoded and decoded, so tests exercise the real codec.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use futures::{SinkExt, StreamExt};
//!
//! let (mut a, mut b) = rpc_transport::memory::pair();
//! a.send(bytes::Bytes::from_static(b"frame")).await?;
//! assert_eq!(&b.next().await.unwrap()?[..], b"frame");
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::{Sink, Stream};

/// Frames one direction of a pair may have queued before the sender waits.
const CAPACITY: usize = 256;

/// One direction of a connection: a bounded queue of frames. (A plain queue under a lock,
/// rather than a general-purpose channel: one sender and one receiver, no allocation per
/// frame.)
#[derive(Debug, Default)]
struct Pipe {
    state: Mutex<PipeState>,
}

#[derive(Debug, Default)]
struct PipeState {
    frames: VecDeque<Bytes>,
    /// The receiver waits for a frame.
    receiver: Option<Waker>,
    /// The sender waits for room.
    sender: Option<Waker>,
    /// No more frames will come (the sending end closed or was dropped).
    sender_gone: bool,
    /// Nobody will read (the receiving end was dropped).
    receiver_gone: bool,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // Every update leaves the state consistent: a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stores `waker` unless the one there already wakes the same task.
fn remember(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// One end of an in-memory connection: an [`rpc_core::Transport`].
///
/// When one end is dropped, the other reads the end of the stream, and sending to it fails
/// with [`io::ErrorKind::BrokenPipe`].
#[derive(Debug)]
pub struct MemoryTransport {
    outgoing: Arc<Pipe>,
    incoming: Arc<Pipe>,
}

/// A connected pair: `(client_end, server_end)`.
pub fn pair() -> (MemoryTransport, MemoryTransport) {
    let (a, b) = (Arc::new(Pipe::default()), Arc::new(Pipe::default()));
    (
        MemoryTransport {
            outgoing: Arc::clone(&a),
            incoming: Arc::clone(&b),
        },
        MemoryTransport {
            outgoing: b,
            incoming: a,
        },
    )
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the other end of the memory transport was dropped",
    )
}

impl Stream for MemoryTransport {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut pipe = self.incoming.lock();
        if let Some(frame) = pipe.frames.pop_front() {
            let sender = pipe.sender.take();
            drop(pipe);
            wake(sender);
            return Poll::Ready(Some(Ok(frame)));
        }
        if pipe.sender_gone {
            return Poll::Ready(None);
        }
        remember(&mut pipe.receiver, cx.waker());
        Poll::Pending
    }
}

impl Sink<Bytes> for MemoryTransport {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pipe = self.outgoing.lock();
        if pipe.receiver_gone || pipe.sender_gone {
            return Poll::Ready(Err(gone()));
        }
        if pipe.frames.len() < CAPACITY {
            return Poll::Ready(Ok(()));
        }
        remember(&mut pipe.sender, cx.waker());
        Poll::Pending
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let mut pipe = self.outgoing.lock();
        if pipe.receiver_gone || pipe.sender_gone {
            return Err(gone());
        }
        pipe.frames.push_back(frame);
        let receiver = pipe.receiver.take();
        drop(pipe);
        wake(receiver);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A frame is delivered as soon as the queue accepts it.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pipe = self.outgoing.lock();
        pipe.sender_gone = true;
        let receiver = pipe.receiver.take();
        drop(pipe);
        wake(receiver);
        Poll::Ready(Ok(()))
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let mut pipe = self.outgoing.lock();
        pipe.sender_gone = true;
        let receiver = pipe.receiver.take();
        drop(pipe);
        wake(receiver);
        let mut pipe = self.incoming.lock();
        pipe.receiver_gone = true;
        pipe.frames.clear();
        let sender = pipe.sender.take();
        drop(pipe);
        wake(sender);
    }
}

/// A listener of in-memory connections; see [`listener()`].
#[derive(Debug)]
pub struct MemoryListener {
    incoming: tokio::sync::mpsc::UnboundedReceiver<MemoryTransport>,
}

/// Makes new connections to a [`MemoryListener`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    outgoing: tokio::sync::mpsc::UnboundedSender<MemoryTransport>,
}

/// A listener and a connector to it, for several clients of one server in one process.
///
/// The listener is closed for good once every connector is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use rpc_core::Listener;
///
/// let (mut listener, connector) = rpc_transport::memory::listener();
/// let _client_end = connector.connect().await?;
/// let _server_end = listener.accept().await.expect("open")?;
/// # Ok(()) }
/// ```
pub fn listener() -> (MemoryListener, MemoryConnector) {
    let (outgoing, incoming) = tokio::sync::mpsc::unbounded_channel();
    (MemoryListener { incoming }, MemoryConnector { outgoing })
}

impl MemoryConnector {
    /// Opens a new connection to the listener; fails with
    /// [`io::ErrorKind::ConnectionRefused`] if the listener was dropped.
    pub async fn connect(&self) -> io::Result<MemoryTransport> {
        let (client_end, server_end) = pair();
        self.outgoing.send(server_end).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the memory listener was dropped",
            )
        })?;
        Ok(client_end)
    }
}

/// A memory connector is also a [`Connect`](rpc_core::Connect), for reconnecting and
/// balancing clients in tests: each connection is a new one to the listener.
impl rpc_core::Connect for MemoryConnector {
    type Transport = MemoryTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<MemoryTransport>> + Send {
        MemoryConnector::connect(self)
    }
}

impl rpc_core::Listener for MemoryListener {
    type Transport = MemoryTransport;

    async fn accept(&mut self) -> Option<io::Result<MemoryTransport>> {
        self.incoming.recv().await.map(Ok)
    }
}
