//! The length-prefixed framer (`rpc_transport::framing`) reading arbitrary bytes, delivered
//! in arbitrary chunks with spurious `Pending`s in between, under a small `max_frame_size`.
//!
//! Checked on every input:
//! - no panic;
//! - the frames and the error that come out are exactly what a plain reading of the format
//!   gives (`u32` little-endian length, that many bytes; a length over the limit is
//!   `InvalidData` as soon as its prefix is in; bytes left at the end are `UnexpectedEof`).
//!   The first frame, a client's `Hello`, may be up to `MIN_HELLO_LIMIT` whatever the limit;
//!   one that starts like a TLS record is `InvalidData`;
//! - after the error the stream ends, once the framer has read (and dropped) all the rest;
//! - the framer never returns `Pending` without arranging a wake-up;
//! - the read buffer never grows past what the limit (or the `Hello`'s allowance) allows,
//!   so a lying length prefix allocates nothing, as seen from the spare room every read is
//!   offered;
//! - writing the frames back through the same framer, with writes cut short at arbitrary
//!   points, gives back exactly the bytes they were read from.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use futures::task::ArcWake;
use futures::{Sink, Stream};
use libfuzzer_sys::fuzz_target;
use rpc_core::Frame;
use rpc_transport::framing::Framed;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest limit tried: small, so that oversized prefixes are common.
const MAX_LIMIT: usize = 4096;

/// The framer's read buffer may be as large as one whole frame with its prefix, plus the
/// read-ahead it allocates (at most 64 KiB at a time), doubled for `BytesMut`'s growth
/// policy. What matters is that it does not follow the lengths the peer claims.
fn capacity_bound(limit: usize) -> usize {
    2 * (4 + limit) + 2 * (64 << 10) + 4096
}

/// A deterministic stream of small numbers from the input's seed (xorshift64*): the input's
/// bytes stay the frames themselves, which keeps libFuzzer's mutations meaningful.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The byte stream under the framer: hands out `wire` in pieces, sometimes says `Pending`
/// first, and records what it sees of the framer's buffer; takes writes in short pieces.
struct Peer {
    wire: Vec<u8>,
    fed: usize,
    rng: Rng,
    max_piece: usize,
    /// The last call said `Pending`.
    stalled: bool,
    /// For each read: the bytes fed before it, and the spare room the framer offered.
    reads: Vec<(usize, usize)>,
    written: Vec<u8>,
}

impl Peer {
    fn piece(&mut self) -> usize {
        1 + (self.rng.next() as usize) % self.max_piece
    }

    /// A spurious `Pending` about one time in four, never twice in a row (the next call
    /// goes through); the task is woken at once, as a real source would when data arrives.
    fn stall(&mut self, cx: &mut Context<'_>) -> bool {
        self.stalled = !self.stalled && self.rng.next().is_multiple_of(4);
        if self.stalled {
            cx.waker().wake_by_ref();
        }
        self.stalled
    }
}

impl AsyncRead for Peer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall(cx) {
            return Poll::Pending;
        }
        let entry = (self.fed, buf.remaining());
        self.reads.push(entry);
        let n = self
            .piece()
            .min(buf.remaining())
            .min(self.wire.len() - self.fed);
        let start = self.fed;
        buf.put_slice(&self.wire[start..start + n]);
        self.fed += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(bytes)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.stall(cx) {
            return Poll::Pending;
        }
        // A short write that may end inside any of the slices.
        let mut room = self.piece();
        let mut n = 0;
        for slice in slices {
            let take = slice.len().min(room);
            self.written.extend_from_slice(&slice[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a plain reading of the format gives: the frames, then how the stream ends.
fn expected(wire: &[u8], limit: usize) -> (Vec<&[u8]>, Option<io::ErrorKind>) {
    let mut frames = Vec::new();
    let mut rest = wire;
    loop {
        if rest.is_empty() {
            return (frames, None);
        }
        let first = frames.is_empty();
        if first && starts_like_tls(rest) {
            return (frames, Some(io::ErrorKind::InvalidData));
        }
        if rest.len() < 4 {
            return (frames, Some(io::ErrorKind::UnexpectedEof));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > allowed(limit, first) {
            return (frames, Some(io::ErrorKind::InvalidData));
        }
        if rest.len() - 4 < len {
            return (frames, Some(io::ErrorKind::UnexpectedEof));
        }
        frames.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
}

/// The most a frame may be: the first, a client's `Hello`, up to `MIN_HELLO_LIMIT`
/// whatever the limit.
fn allowed(limit: usize, first: bool) -> usize {
    if first {
        limit.max(rpc_core::MIN_HELLO_LIMIT)
    } else {
        limit
    }
}

/// A TLS `ClientHello` record (type 22, version 3.1 to 3.3, a length of at most 16 KiB,
/// handshake type 1) or a TLS alert (type 21, same versions, length 2, level 1 or 2): what a
/// plain end may receive first from a TLS peer.
fn starts_like_tls(wire: &[u8]) -> bool {
    let [kind, 3, 1..=3, hi, lo, body, ..] = *wire else {
        return false;
    };
    let len = usize::from(hi) << 8 | usize::from(lo);
    (kind == 22 && len <= 1 << 14 && body == 1) || (kind == 21 && len == 2 && matches!(body, 1 | 2))
}

/// Records whether the task was woken.
struct Woken(AtomicBool);

impl ArcWake for Woken {
    fn wake_by_ref(this: &Arc<Self>) {
        this.0.store(true, Ordering::Relaxed);
    }
}

/// Polls `op` on the framer until it is ready. The peer never waits for anything (its
/// `Pending`s wake the task at once), so a `Pending` from the framer without a wake-up
/// would leave the task asleep for good: a hang.
fn ready<T>(
    framed: &mut Framed<Peer>,
    what: &str,
    mut op: impl FnMut(Pin<&mut Framed<Peer>>, &mut Context<'_>) -> Poll<T>,
) -> T {
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = futures::task::waker(Arc::clone(&woken));
    let mut cx = Context::from_waker(&waker);
    loop {
        woken.0.store(false, Ordering::Relaxed);
        match op(Pin::new(framed), &mut cx) {
            Poll::Ready(value) => return value,
            Poll::Pending => assert!(
                woken.0.load(Ordering::Relaxed),
                "the framer waits ({what}) with nothing to wake it"
            ),
        }
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let limit = u.int_in_range(0..=MAX_LIMIT)?;
    let max_piece = u.int_in_range(1..=300)?;
    let seed: u64 = u.arbitrary()?;
    let wire = u.take_rest().to_vec();
    let (want, want_end) = expected(&wire, limit);

    let peer = Peer {
        wire: wire.clone(),
        fed: 0,
        // xorshift must not start at zero.
        rng: Rng(seed | 1),
        max_piece,
        stalled: false,
        reads: Vec::new(),
        written: Vec::new(),
    };
    let mut framed = Framed::new(peer).with_max_frame_size(limit);

    let mut got: Vec<Bytes> = Vec::new();
    let mut consumed = 0;
    // `Framed` lends its stream by shared reference only: the reads already checked.
    let mut checked = 0;
    let end = loop {
        let item = ready(&mut framed, "poll_next", |f, cx| f.poll_next(cx));
        // Every read of this poll came before the frame it returned was taken out.
        let reads = &framed.get_ref().reads;
        for &(fed, spare) in &reads[checked..] {
            let capacity = fed - consumed + spare;
            assert!(
                capacity <= capacity_bound(allowed(limit, true)),
                "the read buffer holds {capacity} bytes with a limit of {limit}"
            );
        }
        checked = reads.len();
        match item {
            Some(Ok(frame)) => {
                assert!(
                    frame.len() <= allowed(limit, got.is_empty()),
                    "a frame over the limit came through"
                );
                consumed += 4 + frame.len();
                got.push(frame);
            }
            Some(Err(err)) => break Some(err.kind()),
            None => break None,
        }
    };
    assert_eq!(got.len(), want.len(), "the frames differ from the format's");
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(&got[..], *want, "a frame differs from the format's");
    }
    assert_eq!(
        end, want_end,
        "the stream ends differently from the format's"
    );
    // After the error, the stream ends: at once for a frame cut short; after reading (and
    // dropping) all the peer still sends for an unparseable one, so that the peer sees an
    // answer and the close rather than a reset.
    if end.is_some() {
        assert!(ready(&mut framed, "poll_next", |f, cx| f.poll_next(cx)).is_none());
        assert_eq!(framed.get_ref().fed, wire.len(), "the rest was not read");
    }

    // The frames go back out as the bytes they came from, each sent in two parts (cut in
    // the middle, so that large ones are written from their own buffers). The limit binds
    // sending with no allowance: a first frame read over it is refused.
    let mut sent_bytes = Vec::new();
    let mut at = 0;
    for frame in got {
        let whole = &wire[at..at + 4 + frame.len()];
        at += whole.len();
        ready(&mut framed, "poll_ready", |f, cx| {
            Sink::<Frame>::poll_ready(f, cx)
        })
        .expect("poll_ready");
        let mut parts = Frame::new(frame.slice(..frame.len() / 2));
        parts.push(frame.slice(frame.len() / 2..));
        let sent = Pin::new(&mut framed).start_send(parts);
        if frame.len() > allowed(limit, false) {
            let err = sent.expect_err("a frame over the limit is refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        } else {
            sent.expect("a frame within the limit is sent");
            sent_bytes.extend_from_slice(whole);
        }
    }
    ready(&mut framed, "poll_flush", |f, cx| {
        Sink::<Frame>::poll_flush(f, cx)
    })
    .expect("flush");
    assert_eq!(
        framed.get_ref().written,
        sent_bytes,
        "the frames written differ from the bytes they were read from"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
