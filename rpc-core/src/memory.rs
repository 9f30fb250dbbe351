//! The in-process transport's connected pair, used by rpc-transport's `memory` module
//! (where users find it) and by the server's HTTP gateway, which talks to its own services
//! over such pairs.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::{Sink, Stream};

use crate::frame::Frame;

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

/// One end of an in-memory connection: a [`Transport`](crate::Transport).
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

impl Sink<Frame> for MemoryTransport {
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

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> io::Result<()> {
        // A frame of parts becomes one buffer here, where the receiver would otherwise have
        // to: it decodes a message from one contiguous slice.
        let frame = frame.into_bytes();
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

crate::__sink_of_whole_frames!([] MemoryTransport);

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
