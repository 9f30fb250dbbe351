//! The length-prefixed framer: turns any byte stream into an [`rpc_core::Transport`].
//!
//! A frame on the wire is a `u32` little-endian length followed by that many bytes. The
//! framer enforces a maximum frame size from the length prefix, before buffering anything,
//! so a peer announcing 4 GiB costs nothing but an error. Reading decodes every complete
//! frame in the buffer from one `read`; writing queues frames and sends them all in one
//! vectored write per flush (small frames are copied together, large ones are sent from
//! their own buffer without a copy).
//!
//! TCP and Unix sockets use it; so can any `AsyncRead + AsyncWrite`, e.g. a TLS stream:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use futures::{SinkExt, StreamExt};
//!
//! let (a, b) = tokio::io::duplex(1024); // stands in for a TLS stream
//! let (mut a, mut b) = (rpc_transport::framing::framed(a), rpc_transport::framing::framed(b));
//! a.send(bytes::Bytes::from_static(b"hello")).await?;
//! assert_eq!(&b.next().await.unwrap()?[..], b"hello");
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Sink, Stream};
use rpc_core::Frame;
use tokio::io::{AsyncRead, AsyncWrite};

/// The default maximum frame size, sent or received: 8 MiB (as the server's default).
pub const DEFAULT_MAX_FRAME_SIZE: usize = rpc_core::DEFAULT_MAX_FRAME_SIZE;

/// Frames (and parts) smaller than this are copied into the batch buffer; larger ones are
/// written from their own buffer (vectored): no copy, and the batch buffer, which an idle
/// connection keeps, stays small.
const COPY_THRESHOLD: usize = 1 << 10;
/// What the batch buffer grows by at least: a few small frames' worth, and no more, so
/// an idle connection pins little (its `Hello` is written from its own buffer).
const STAGING_MIN: usize = 256;
/// Buffered output beyond which `poll_ready` flushes before taking more.
const WRITE_HIGH_WATER: usize = 256 << 10;
/// Read buffers larger than this are released once empty, so an idle connection pins at
/// most this much (and, after small calls, about `READ_CHUNK_MIN`).
const READ_CHUNK: usize = 8 << 10;
/// The smallest and largest read buffer allocated at a time.
const READ_CHUNK_MIN: usize = 1000;
const READ_CHUNK_MAX: usize = 64 << 10;
/// How much a burst of large frames is read at a time (at least one frame).
const LARGE_READ: usize = 256 << 10;
/// The most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Wraps `io` in the framer with the default maximum frame size.
pub fn framed<IO>(io: IO) -> Framed<IO>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    Framed::new(io)
}

/// A byte stream carrying length-prefixed frames; an [`rpc_core::Transport`].
pub struct Framed<IO> {
    /// `None` once the connection was handed to HTTP (`with_http`).
    io: Option<IO>,
    /// Connections whose first bytes are an HTTP request are handed back, not read.
    http: bool,
    max_frame_size: usize,
    read_buf: BytesMut,
    /// The peer closed its side.
    eof: bool,
    /// How much to allocate for the next read (adapts to the traffic).
    read_chunk: usize,
    /// Drop the read buffer once it is empty, whatever its size (after the `Hello`).
    release_read_buf: bool,
    /// The length of the last frame if it was large (0 if not): in a burst of large
    /// frames, the next is read into room for a few like it.
    large_run: u32,
    /// Frames ready to write, in order.
    chunks: VecDeque<Bytes>,
    /// Small frames (and the prefixes of large ones) being gathered into one buffer.
    staging: BytesMut,
    /// Bytes in `chunks` and `staging` together.
    queued: usize,
    /// No frame has been received yet: the first bytes are checked for a TLS record.
    first: bool,
    /// No frame has been taken yet: the next one is the `Hello`, allowed up to
    /// `rpc_core::MIN_HELLO_LIMIT` even when the maximum frame size is smaller.
    hello: bool,
    /// The peer sent something that is no frame: what it sends from then on is read and
    /// dropped, until it closes.
    poisoned: bool,
}

impl<IO> Framed<IO>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// Wraps `io`, with the default maximum frame size.
    pub fn new(io: IO) -> Framed<IO> {
        Framed {
            io: Some(io),
            http: false,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            read_buf: BytesMut::new(),
            eof: false,
            read_chunk: READ_CHUNK_MIN,
            release_read_buf: false,
            large_run: 0,
            chunks: VecDeque::new(),
            staging: BytesMut::new(),
            queued: 0,
            first: true,
            hello: true,
            poisoned: false,
        }
    }

    /// Sets the largest frame this end accepts or sends, in bytes.
    ///
    /// A larger length prefix from the peer fails the stream with
    /// [`io::ErrorKind::InvalidData`] before the frame is buffered; sending a larger frame
    /// fails with [`io::ErrorKind::InvalidInput`].
    pub fn with_max_frame_size(mut self, bytes: usize) -> Framed<IO> {
        self.max_frame_size = bytes.min(u32::MAX as usize);
        self
    }

    /// Makes a connection whose first bytes are an HTTP request end this stream with an
    /// error carrying the connection ([`rpc_core::HttpConnection`]), for a server's HTTP
    /// gateway; listeners set it when the server asks ([`rpc_core::Listener::set_http`]).
    pub fn with_http(mut self, on: bool) -> Framed<IO> {
        self.http = on;
        self
    }

    /// The wrapped stream.
    ///
    /// # Panics
    ///
    /// After the framer handed its connection over as an [`rpc_core::HttpConnection`]
    /// (only with [`with_http`](Framed::with_http) on): the stream then belongs to whoever
    /// took it from the error.
    pub fn get_ref(&self) -> &IO {
        match &self.io {
            Some(io) => io,
            None => panic!("Framed::get_ref after the connection was handed to HTTP"),
        }
    }

    /// The stream, or the error of a framer whose connection was handed to HTTP.
    fn io(&mut self) -> io::Result<Pin<&mut IO>> {
        self.io.as_mut().map(Pin::new).ok_or_else(handed_over)
    }

    /// Whether the buffered first bytes start an HTTP request: `Some(true)` yes, `Some(false)`
    /// no, `None` too few bytes yet to tell.
    fn starts_http(&self) -> Option<bool> {
        const METHODS: [&[u8]; 7] = [
            b"GET ",
            b"POST ",
            b"PUT ",
            b"HEAD ",
            b"DELETE ",
            b"OPTIONS ",
            b"PATCH ",
        ];
        let buf = &self.read_buf[..];
        let mut undecided = false;
        for method in METHODS {
            if buf.starts_with(method) {
                return Some(true);
            }
            if method.starts_with(buf) {
                undecided = true;
            }
        }
        (!undecided || self.eof).then_some(false)
    }

    /// Takes the next complete frame out of the read buffer, if there is one.
    fn parse_frame(&mut self) -> io::Result<Option<Bytes>> {
        if self.read_buf.len() < 4 {
            return Ok(None);
        }
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&self.read_buf[..4]);
        let len = u32::from_le_bytes(prefix) as usize;
        if self.first && self.http {
            match self.starts_http() {
                Some(true) => {
                    let buffered = std::mem::take(&mut self.read_buf).freeze();
                    return match self.io.take() {
                        Some(io) => Err(rpc_core::HttpConnection::new(io, buffered).into_error()),
                        None => Ok(None),
                    };
                }
                Some(false) => {}
                None => return Ok(None),
            }
        }
        if self.first {
            match tls_record(&self.read_buf) {
                TlsRecord::No => self.first = false,
                // A frame starting with these bytes is at least 64 KiB long: waiting for
                // two more bytes before deciding costs nothing.
                TlsRecord::NeedMore if !self.eof => return Ok(None),
                TlsRecord::NeedMore => self.first = false,
                TlsRecord::Yes(why) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why));
                }
            }
        }
        // The first frame is a client's `Hello`, which carries its schema: a server set to
        // small frames still takes one of a service with many methods.
        let limit = if self.hello {
            self.max_frame_size.max(rpc_core::MIN_HELLO_LIMIT)
        } else {
            self.max_frame_size
        };
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                oversized_message(len, limit, &self.read_buf),
            ));
        }
        if self.read_buf.len() < 4 + len {
            // Room for the whole frame, so it arrives in as few reads as possible.
            if 4 + len > READ_CHUNK_MAX && self.read_buf.capacity() < 4 + len {
                // A large frame gets a buffer of its own; in a burst, with room for a few
                // frames like it, read by fewer calls.
                let mut buf = large_buffer(len, self.large_run > 0);
                buf.extend_from_slice(&self.read_buf);
                self.read_buf = buf;
            } else {
                self.read_buf.reserve(4 + len - self.read_buf.len());
            }
            return Ok(None);
        }
        self.first = false;
        let hello = std::mem::take(&mut self.hello);
        if hello {
            // The `Hello`, with its schema, is often the largest frame a connection gets:
            // the buffer it grew is not kept, and the next are sized by the calls.
            self.read_chunk = READ_CHUNK_MIN;
            self.release_read_buf = true;
        }
        self.read_buf.advance(4);
        let frame = self.read_buf.split_to(len).freeze();
        // A large frame leaves the buffer it filled to its reader alone, so that the buffer
        // can go back to the pool once decoded, unless the buffer has room for another
        // frame like it (then it goes when there is nothing more to read).
        let large = len > READ_CHUNK_MAX;
        // (Not the `Hello`: a large one is no sign of more.)
        self.large_run = if large && !hello { len as u32 } else { 0 };
        let room_for_another = large && self.read_buf.capacity() >= 4 + len;
        if self.read_buf.is_empty()
            && !room_for_another
            && (self.release_read_buf || self.read_buf.capacity() > READ_CHUNK || large)
        {
            self.read_buf = BytesMut::new();
            self.release_read_buf = false;
        }
        Ok(Some(frame))
    }

    /// After an unparseable frame: reads and drops whatever the peer still sends, so that
    /// an end that answers with an error and then waits for the peer to close (rather than
    /// closing with unread data, which resets the connection and can destroy the answer
    /// before the peer reads it) sees the close. Ends the stream when the peer closes.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut scratch = [0u8; 2048];
        for _ in 0..32 {
            if self.eof {
                return Poll::Ready(None);
            }
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(None);
            };
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            ready!(Pin::new(io).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                self.eof = true;
            }
        }
        // A peer sending fast does not keep this task to itself.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Queues a part of a frame: a small one is gathered into one buffer with the rest, a
    /// large one written from its own (one more entry for `writev`, no copy).
    #[inline]
    fn queue_part(&mut self, part: Bytes) {
        if part.len() < COPY_THRESHOLD {
            if self.staging.capacity() - self.staging.len() < part.len() {
                // Room for a run of small frames at once, so that reclaiming the buffer
                // (once what was written from it is gone) is not a per-frame step.
                self.staging.reserve(part.len().max(STAGING_MIN));
            }
            self.staging.extend_from_slice(&part);
        } else {
            if !self.staging.is_empty() {
                self.chunks.push_back(self.staging.split().freeze());
            }
            self.chunks.push_back(part);
        }
    }

    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.chunks.is_empty() {
            // Only small frames: written straight from the batch buffer, which is then
            // reused as it is (the common case of calls and replies).
            while !self.staging.is_empty() {
                let Some(io) = self.io.as_mut() else {
                    return Poll::Ready(Err(handed_over()));
                };
                let written = ready!(Pin::new(io).poll_write(cx, &self.staging))?;
                if written == 0 {
                    return Poll::Ready(Err(write_zero()));
                }
                self.queued -= written;
                if written == self.staging.len() {
                    self.staging.clear();
                } else {
                    self.staging.advance(written);
                }
            }
        } else if !self.staging.is_empty() {
            self.chunks.push_back(self.staging.split().freeze());
        }
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Err(handed_over()));
            };
            let written = ready!(Pin::new(io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(write_zero()));
            }
            self.queued -= written;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.chunks.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    if let Some(done) = self.chunks.pop_front() {
                        // A large part (a payload sent without a copy) is the next large
                        // read's buffer, or a decoded payload's.
                        rpc_core::buffers::recycle(done);
                    }
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        if self.staging.capacity() > WRITE_HIGH_WATER {
            self.staging = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// An empty read buffer for a frame of `len` bytes (after its prefix), taken from the pool
/// if it has one; with `burst`, room for as many such frames as fit in `LARGE_READ`.
fn large_buffer(len: usize, burst: bool) -> BytesMut {
    let frames = if burst {
        (LARGE_READ / (4 + len)).max(1)
    } else {
        1
    };
    // (`Bytes` is the way from a `Vec` to a `BytesMut`; it keeps the capacity.)
    BytesMut::from(Bytes::from(rpc_core::buffers::take((4 + len) * frames)))
}

fn write_zero() -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        "the connection accepts no more data",
    )
}

fn handed_over() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was handed to the HTTP gateway",
    )
}

/// Whether the first bytes of a connection are a TLS record rather than a frame.
enum TlsRecord {
    No,
    NeedMore,
    Yes(&'static str),
}

/// Recognises the two TLS records a plain end can receive first: a TLS client's
/// `ClientHello` (a handshake record, content type 22) and a TLS server's alert (content
/// type 21, two bytes long) refusing the plain bytes it was sent. Their first bytes (type,
/// then record version 3.1 to 3.3), read as a frame's length, announce at least 66,325 bytes,
/// and the three bytes after must match too, so a real first frame is not mistaken for TLS.
fn tls_record(buf: &[u8]) -> TlsRecord {
    const ALERT: u8 = 21;
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    let (Some(&kind), Some(&major), Some(&minor)) = (buf.first(), buf.get(1), buf.get(2)) else {
        return TlsRecord::No;
    };
    if !matches!(kind, ALERT | HANDSHAKE) || major != 3 || !(1..=3).contains(&minor) {
        return TlsRecord::No;
    }
    let (Some(&hi), Some(&lo), Some(&body)) = (buf.get(3), buf.get(4), buf.get(5)) else {
        return TlsRecord::NeedMore;
    };
    let record_len = usize::from(hi) << 8 | usize::from(lo);
    if kind == ALERT && record_len == 2 && matches!(body, 1 | 2) {
        TlsRecord::Yes(
            "the peer speaks TLS: it answered with a TLS alert; connect with \
             rpc_transport::tls (and the server's name and CA)",
        )
    } else if kind == HANDSHAKE && record_len <= 1 << 14 && body == CLIENT_HELLO {
        TlsRecord::Yes(
            "the peer speaks TLS: it sent a TLS ClientHello; serve it with \
             rpc_transport::tls::bind, or have it connect without TLS",
        )
    } else {
        TlsRecord::No
    }
}

/// Says why a length prefix is refused, and what the bytes looked like.
fn oversized_message(len: usize, max: usize, buf: &[u8]) -> String {
    let head = &buf[..buf.len().min(16)];
    let mut text = format!(
        "the peer announced a frame of {len} bytes, more than the limit of {max} bytes \
         (max_frame_size)"
    );
    if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        text.push_str(&format!(
            "; it sent text (\"{}\"): is the peer speaking another protocol, such as HTTP?",
            String::from_utf8_lossy(head).escape_debug()
        ));
    }
    text
}

impl<IO> Stream for Framed<IO>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.poisoned {
                return this.poll_discard(cx);
            }
            match this.parse_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(err) => {
                    this.poisoned = true;
                    this.read_buf = BytesMut::new();
                    return Poll::Ready(Some(Err(err)));
                }
            }
            if this.eof {
                return Poll::Ready(if this.read_buf.is_empty() {
                    None
                } else {
                    let have = this.read_buf.len();
                    this.read_buf.clear();
                    Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the peer closed the connection in the middle of a frame ({have} bytes of it received)"),
                    )))
                });
            }
            if this.read_buf.capacity() - this.read_buf.len() < 256 {
                if this.read_buf.is_empty() && this.large_run > 0 {
                    // In a burst of large frames the next is likely alike: it is read
                    // straight into room for it, not into a chunk it would outgrow.
                    this.read_buf = large_buffer(this.large_run as usize, true);
                } else {
                    this.read_buf.reserve(this.read_chunk);
                }
            }
            let room = this.read_buf.capacity() - this.read_buf.len();
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(Some(Err(handed_over())));
            };
            let n = match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut this.read_buf) {
                Poll::Ready(n) => n?,
                Poll::Pending => {
                    // Nothing more to read now: a large buffer kept for the frames of a
                    // burst is not kept while the connection is idle.
                    if this.read_buf.is_empty() && this.read_buf.capacity() > READ_CHUNK {
                        let idle = std::mem::take(&mut this.read_buf);
                        rpc_core::buffers::recycle_vec(Vec::from(idle));
                    }
                    return Poll::Pending;
                }
            };
            if n == 0 {
                this.eof = true;
            }
            // Size the next buffer by what arrives: small for calls one at a time (a buffer
            // that small comes from the allocator's per-thread cache), larger for bursts.
            if n == room {
                this.read_chunk = (this.read_chunk * 2).min(READ_CHUNK_MAX);
            } else if n < this.read_chunk / 4 {
                this.read_chunk = (this.read_chunk / 2).max(READ_CHUNK_MIN);
            }
        }
    }
}

impl<IO> Sink<Frame> for Framed<IO>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.queued >= WRITE_HIGH_WATER {
            ready!(self.poll_write_queue(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> io::Result<()> {
        let len = frame.len();
        if len > self.max_frame_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame of {len} bytes is more than the limit of {} bytes (max_frame_size)",
                    self.max_frame_size
                ),
            ));
        }
        let this = &mut *self;
        this.queued += 4 + len;
        this.staging.put_u32_le(len as u32);
        match frame.into_single() {
            Ok(only) => this.queue_part(only),
            Err(parts) => parts.into_parts().for_each(|part| this.queue_part(part)),
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_queue(cx))?;
        self.io()?.poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Sink::<Frame>::poll_flush(self.as_mut(), cx))?;
        self.io()?.poll_shutdown(cx)
    }
}

rpc_core::__sink_of_whole_frames!(
    [IO] Framed<IO>
    where IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
);

impl<IO: fmt::Debug> fmt::Debug for Framed<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framed")
            .field("io", &self.io)
            .field("max_frame_size", &self.max_frame_size)
            .field("buffered_in", &self.read_buf.len())
            .field("queued_out", &self.queued)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_of_every_size_round_trip_in_order() {
        let (a, b) = tokio::io::duplex(64 << 10);
        let (mut a, mut b) = (framed(a), framed(b));
        let sizes = [
            0usize,
            1,
            100,
            COPY_THRESHOLD - 1,
            COPY_THRESHOLD,
            300_000,
            7,
        ];
        let writer = tokio::spawn(async move {
            for (i, size) in sizes.iter().enumerate() {
                a.feed(Bytes::from(vec![i as u8; *size])).await.unwrap();
            }
            SinkExt::<Frame>::close(&mut a).await.unwrap();
        });
        for (i, size) in sizes.iter().enumerate() {
            let frame = b.next().await.unwrap().unwrap();
            assert_eq!(frame.len(), *size);
            assert!(frame.iter().all(|&x| x == i as u8));
        }
        assert!(b.next().await.is_none());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn an_oversized_prefix_fails_before_buffering() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b).with_max_frame_size(1000);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let err = b.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("4294967295"), "{err}");
        assert!(b.read_buf.capacity() < 64 << 10);
    }

    #[tokio::test]
    async fn after_an_error_the_rest_is_dropped_until_the_peer_closes() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b).with_max_frame_size(1000);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert!(b.next().await.unwrap().is_err());
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                a.write_all(&[0xab; 1000]).await.unwrap();
            }
        });
        // Reads everything the writer sends (it would block on a full pipe otherwise), then
        // the end of the stream.
        assert!(b.next().await.is_none());
        writer.await.unwrap();
        assert!(b.read_buf.capacity() < 64 << 10);
    }

    #[tokio::test]
    async fn http_is_recognised() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b);
        a.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            .await
            .unwrap();
        let err = b.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("HTTP"), "{err}");
    }

    #[tokio::test]
    async fn a_tls_alert_is_recognised() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b);
        // A fatal decode_error alert, as a TLS server answers plain bytes.
        a.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32])
            .await
            .unwrap();
        let err = b.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("speaks TLS"), "{err}");
        assert!(err.to_string().contains("rpc_transport::tls"), "{err}");
    }

    #[tokio::test]
    async fn a_tls_client_hello_is_recognised() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b);
        a.write_all(&[0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0])
            .await
            .unwrap();
        let err = b.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("ClientHello"), "{err}");
    }

    #[tokio::test]
    async fn a_first_frame_that_only_starts_like_tls_is_a_frame() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (mut a, mut b) = (framed(a), framed(b));
        // Its length prefix reads as a TLS handshake record header; what follows does not.
        let len = u32::from_le_bytes([0x16, 0x03, 0x01, 0x00]) as usize;
        let frame = Bytes::from(vec![7u8; len]);
        let writer = tokio::spawn(async move { a.send(frame).await.map(|()| a) });
        let got = b.next().await.unwrap().unwrap();
        assert_eq!(got.len(), len);
        let _a = writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn only_the_first_frame_is_checked_for_tls() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b).with_max_frame_size(100);
        a.write_all(&[1, 0, 0, 0, 9]).await.unwrap();
        assert_eq!(&b.next().await.unwrap().unwrap()[..], [9]);
        a.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32])
            .await
            .unwrap();
        let err = b.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("max_frame_size"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = framed(b);
        a.write_all(&10u32.to_le_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let err = b.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(b.next().await.is_none());
    }

    #[tokio::test]
    async fn the_buffer_a_large_first_frame_grew_is_not_kept() {
        let (mut a, b) = tokio::io::duplex(64 << 10);
        let mut b = framed(b);
        // A `Hello` of 3 KiB and a small call behind it, in one write.
        let mut bytes = 3072u32.to_le_bytes().to_vec();
        bytes.extend([7; 3072]);
        bytes.extend(2u32.to_le_bytes());
        bytes.extend(b"hi");
        a.write_all(&bytes).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap().len(), 3072);
        assert_eq!(&b.next().await.unwrap().unwrap()[..], b"hi");
        assert!(b.read_buf.capacity() <= READ_CHUNK_MIN);
    }

    #[tokio::test]
    async fn a_burst_of_large_frames_is_read_a_few_at_a_time_and_not_kept_when_idle() {
        use futures::FutureExt;
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut b = framed(b);
        let size = 70_000usize;
        let mut bytes = Vec::new();
        for i in 0..12u8 {
            bytes.extend((size as u32).to_le_bytes());
            bytes.extend(std::iter::repeat_n(i, size));
        }
        a.write_all(&bytes).await.unwrap();
        let mut frames = Vec::new();
        for i in 0..12u8 {
            let frame = b.next().await.unwrap().unwrap();
            assert!(frame.len() == size && frame.iter().all(|&x| x == i));
            frames.push(frame);
        }
        // From the second large frame on (the first, like a `Hello`, is not a burst yet),
        // frames come in buffers of a few, back to back.
        let shared = frames
            .windows(2)
            .filter(|w| w[1].as_ptr() == w[0].as_ptr().wrapping_add(size + 4))
            .count();
        assert!(
            shared >= 4,
            "{shared} frames followed another in its buffer"
        );
        // Nothing more to read: the buffer is not kept while the connection is idle.
        assert!(b.next().now_or_never().is_none());
        assert!(b.read_buf.capacity() <= READ_CHUNK);
    }

    #[tokio::test]
    async fn sending_an_oversized_frame_is_refused() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut a = framed(a).with_max_frame_size(10);
        let err = a.send(Bytes::from(vec![0; 11])).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use futures::StreamExt;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #[test]
        fn arbitrary_byte_streams_never_panic_the_reader(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
        ) {
            runtime().block_on(async {
                let (mut a, b) = tokio::io::duplex(1 << 16);
                let mut b = framed(b).with_max_frame_size(1024);
                for chunk in &chunks {
                    a.write_all(chunk).await.unwrap();
                }
                drop(a);
                while let Some(item) = b.next().await {
                    if item.is_err() {
                        break;
                    }
                }
            });
        }

        #[test]
        fn frames_survive_any_chunking(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10),
            split in 1usize..50,
        ) {
            runtime().block_on(async {
                let mut wire = Vec::new();
                for f in &frames {
                    wire.extend_from_slice(&(f.len() as u32).to_le_bytes());
                    wire.extend_from_slice(f);
                }
                let (mut a, b) = tokio::io::duplex(1 << 16);
                let mut b = framed(b);
                for chunk in wire.chunks(split) {
                    a.write_all(chunk).await.unwrap();
                }
                drop(a);
                for f in &frames {
                    assert_eq!(&b.next().await.unwrap().unwrap()[..], &f[..]);
                }
                assert!(b.next().await.is_none());
            });
        }
    }
}
