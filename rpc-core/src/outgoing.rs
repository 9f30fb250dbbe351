//! Frames on their way into a transport: the queue both ends of a connection keep.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, SinkExt};

use crate::frame::Frame;

use crate::transport::Transport;

/// How long sending the last frames and closing may take before a connection is simply
/// dropped (a peer that stops reading must not hold a task forever).
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `last` (whatever was still queued, a `Goodbye`), flushes, and closes our side,
/// all within `within`; errors only mean the peer is already gone.
pub(crate) async fn close_with<T: Transport + ?Sized>(
    transport: &mut T,
    last: impl IntoIterator<Item = impl Into<Frame>>,
    within: Duration,
) {
    let _ = tokio::time::timeout(within, async {
        for frame in last {
            transport.feed(frame.into()).await?;
        }
        transport.close().await
    })
    .await;
}

/// Frames not yet accepted by the transport, and whether what it accepted is flushed.
#[derive(Default)]
pub(crate) struct Outgoing {
    frames: VecDeque<Frame>,
    /// Bytes in `frames`.
    bytes: usize,
    /// The transport accepted frames since its last completed flush.
    unflushed: bool,
}

impl Outgoing {
    #[inline]
    pub(crate) fn push(&mut self, frame: impl Into<Frame>) {
        let frame = frame.into();
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    #[inline]
    pub(crate) fn extend(&mut self, frames: impl IntoIterator<Item = impl Into<Frame>>) {
        for frame in frames {
            self.push(frame);
        }
    }

    /// Frames waiting for the transport.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes waiting for the transport.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Everything was handed over and flushed.
    pub(crate) fn is_done(&self) -> bool {
        self.frames.is_empty() && !self.unflushed
    }

    /// The frames still waiting, for a last write when closing.
    pub(crate) fn take(&mut self) -> VecDeque<Frame> {
        self.bytes = 0;
        std::mem::take(&mut self.frames)
    }

    /// Hands every frame the transport will take and flushes them as one batch.
    #[inline]
    pub(crate) fn poll_send<T: Transport + ?Sized>(
        &mut self,
        mut transport: Pin<&mut T>,
        cx: &mut Context<'_>,
    ) -> io::Result<()> {
        while !self.frames.is_empty() {
            match transport.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(frame) = self.frames.pop_front() {
                        self.bytes -= frame.len();
                        transport.as_mut().start_send(frame)?;
                        self.unflushed = true;
                    }
                }
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => break,
            }
        }
        if self.unflushed {
            if let Poll::Ready(result) = Sink::poll_flush(transport, cx) {
                result?;
                self.unflushed = false;
            }
        }
        Ok(())
    }
}
