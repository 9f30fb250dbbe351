//! Keepalive pings: noticing a peer that is gone without closing the connection.
//!
//! A peer whose machine died, or whose network path broke, sends no FIN: TCP keeps the
//! connection open and every call on it would wait for its deadline (or forever). Either
//! side can send `Ping`; the other answers `Pong` at once, even while its handlers are busy.
//! If nothing at all arrives within `timeout` of a ping, the connection is presumed dead.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use crate::outgoing::Outgoing;
use crate::protocol::Message;
use crate::waker;

/// When to ping a quiet peer, and how long to wait for an answer.
///
/// A connection pings only after `interval` without receiving anything, so a busy connection
/// sends no pings at all. Any frame from the peer counts as an answer.
///
/// The clock is coarse, so that receiving costs nothing: it looks once per `interval`
/// whether anything arrived since its last look. A ping therefore goes out after one to two
/// `interval`s of silence, and a peer that vanished is given up on within
/// `2 × interval + timeout` of the last frame it sent (70 s with a built client's default
/// of 30 s and 10 s). Choose `interval` for that bound.
///
/// ```
/// use std::time::Duration;
/// use rpc_core::Keepalive;
///
/// let keepalive = Keepalive::new(Duration::from_secs(10), Duration::from_secs(5));
/// assert_eq!(keepalive.interval, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time after which a ping is sent (up to twice this; see above).
    pub interval: Duration,
    /// Time to wait for any frame after a ping before the connection is presumed dead.
    pub timeout: Duration,
}

impl Keepalive {
    /// Ping after `interval` of silence; give up `timeout` after the ping.
    pub fn new(interval: Duration, timeout: Duration) -> Keepalive {
        Keepalive { interval, timeout }
    }
}

/// The keepalive state of one connection.
pub(crate) struct KeepaliveTimer {
    config: Keepalive,
    sleep: Pin<Box<Sleep>>,
    /// A frame arrived since the timer was last armed.
    heard: bool,
    /// A ping is out and nothing was heard since.
    pinged: bool,
    nonce: u64,
    /// The waker the timer was last polled with: polling it again costs atomics, so it is
    /// polled only when it was reset or the task's waker changed, and otherwise just checked.
    registered: Option<Waker>,
    armed: bool,
}

impl KeepaliveTimer {
    pub(crate) fn new(config: Keepalive) -> KeepaliveTimer {
        KeepaliveTimer {
            config,
            sleep: Box::pin(tokio::time::sleep(config.interval)),
            heard: false,
            pinged: false,
            nonce: 0,
            registered: None,
            armed: true,
        }
    }

    /// Something arrived from the peer.
    pub(crate) fn heard(&mut self) {
        self.heard = true;
        if self.pinged {
            // The answer to a ping: the next one is due one interval from now, not when the
            // wait for this answer would have run out.
            self.pinged = false;
            self.heard = false;
            self.rearm(self.config.interval);
        }
    }

    fn rearm(&mut self, after: Duration) {
        self.sleep.as_mut().reset(Instant::now() + after);
        self.armed = true;
    }

    /// One look per wake-up of a connection: `heard` says whether it read a frame; a ping
    /// due is queued on `unsent`. `Err(waited)`: no answer in `waited`, the peer is presumed
    /// dead.
    pub(crate) fn tick(
        &mut self,
        heard: bool,
        unsent: &mut Outgoing,
        cx: &mut Context<'_>,
    ) -> Result<(), Duration> {
        if heard {
            self.heard();
        }
        match self.poll(cx) {
            Poll::Ready(Ok(ping)) => unsent.push(ping),
            Poll::Ready(Err(waited)) => return Err(waited),
            Poll::Pending => {}
        }
        Ok(())
    }

    /// `Ready(Ok(ping))`: send this ping. `Ready(Err(waited))`: no answer in `waited`, the
    /// peer is presumed dead.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Duration>> {
        loop {
            let fresh = waker::remember(&mut self.registered, cx.waker()) || self.armed;
            if fresh {
                self.armed = false;
                if self.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            } else if !self.sleep.is_elapsed() {
                return Poll::Pending;
            }
            if self.heard {
                self.heard = false;
                self.pinged = false;
                self.rearm(self.config.interval);
                continue;
            }
            if self.pinged {
                return Poll::Ready(Err(self.config.timeout));
            }
            self.pinged = true;
            self.nonce = self.nonce.wrapping_add(1);
            self.rearm(self.config.timeout);
            let ping = Message::Ping { nonce: self.nonce }.to_frame();
            // Arm the timer with this task's waker before handing the ping out.
            self.armed = false;
            let _ = self.sleep.as_mut().poll(cx);
            return Poll::Ready(Ok(ping));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn pings_when_quiet_and_gives_up_without_answer() {
        let config = Keepalive::new(Duration::from_secs(10), Duration::from_secs(2));
        let mut timer = KeepaliveTimer::new(config);
        let ping = poll_fn(|cx| timer.poll(cx)).await;
        assert!(ping.is_ok());
        let start = Instant::now();
        let dead = poll_fn(|cx| timer.poll(cx)).await;
        assert_eq!(dead, Err(Duration::from_secs(2)));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn anything_heard_counts_as_an_answer() {
        let config = Keepalive::new(Duration::from_secs(10), Duration::from_secs(2));
        let mut timer = KeepaliveTimer::new(config);
        assert!(poll_fn(|cx| timer.poll(cx)).await.is_ok());
        timer.heard();
        // Heard: no verdict, the next event is another ping one interval later.
        assert!(poll_fn(|cx| timer.poll(cx)).await.is_ok());
    }
}
