//! Streams of items in either direction of a call: [`Streaming<T>`].
//!
//! A method may take one `Streaming<T>` argument (the client sends items), return
//! `Streaming<T>` (the server sends items), or both. Items travel as `StreamItem` frames of
//! the call's id (small ones many to a `StreamItems` frame between peers that both read
//! them: see the `run` module), and a stream ends with `StreamEnd` (success or an error).
//!
//! Flow control is by credit, per stream and direction, counted in bytes as HTTP/2 does
//! (between two peers of this revision; they agree on it in their announcements, see
//! `StreamEngine::settle`): each item is charged its body bytes plus [`ITEM_OVERHEAD`], and
//! a sender may have at most a window of charged bytes that the receiver has not yet
//! taken: [`INITIAL_BYTE_WINDOW`] until the receiver first grants credit, [`BYTE_WINDOW`]
//! after. The receiver grants more (`Credit`) as its consumer takes items. So a consumer
//! that stops reading makes the producer wait, and **a stream's receiver holds at most
//! [`BYTE_WINDOW`] (4 MiB) of items, counting each item's body plus [`ITEM_OVERHEAD`]
//! (64) bytes** (so at most 4 MiB of bodies and 65,536 items), or one item alone if it is
//! larger, plus what the sender has encoded but not yet written. With a peer of the
//! previous revision the window is [`WINDOW`] items instead (each at most the frame size
//! limit), unchanged. Dropping either end stops the other: the receiver's drop sends
//! `Cancel` to the sender.

mod engine;
mod inbox;
mod pump;
mod run;

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};

use crate::error::RpcError;

pub(crate) use engine::{ConnectionWindow, InboxMaker, StreamEngine};
pub use inbox::RemoteStream;
pub(crate) use inbox::StreamEnded;
pub(crate) use inbox::{Inbox, Notice};
pub(crate) use pump::Encoding;
pub use pump::ItemSource;
pub(crate) use run::{check as check_run, RunStats, ITEM_RUNS};

/// The item window: the most items a receiver holds per stream before the sender must wait
/// for credit, on a connection whose peer does not credit bytes (a peer of the previous
/// protocol revision, which never sets the byte-credit flag (256) in its announcement). Between two
/// peers of this revision the [`BYTE_WINDOW`] applies instead.
pub const WINDOW: u32 = 32;

/// The byte window: what a receiver holds per stream before the sender must wait for
/// credit, once both sides said they credit bytes and the receiver granted the stream
/// credit once (until then, [`INITIAL_BYTE_WINDOW`]). Each item is charged its body bytes
/// (as sent, compressed or not) plus [`ITEM_OVERHEAD`], so a stream's receiver holds at
/// most 4 MiB of item bodies and at most 65,536 items (or one item alone, if it is larger).
pub const BYTE_WINDOW: u32 = 4 << 20;

/// A byte-credited stream's window until its receiver first grants it credit: what a
/// stream whose consumer never reads (dropped before its first item, say) costs at most,
/// where [`BYTE_WINDOW`] is what a consumer that reads gets.
pub const INITIAL_BYTE_WINDOW: u32 = 64 << 10;

/// What each item is charged in a byte window on top of its body: the receiver's own cost
/// of holding an item, so that a stream of empty or tiny items is bounded too.
pub const ITEM_OVERHEAD: u32 = 64;

/// The flag a side sets in the `items` of its announcement (`Credit` with
/// `CONNECTION_ID`) to say it credits streams in bytes: the client in its announcement, the
/// server in a second announcement that answers the client's.
pub(crate) const BYTE_CREDIT: u32 = 1 << 8;

/// The flag a client sets in its announcement to say it reads `Load` messages (the
/// server's load reports, see `crate::load`). No answer comes: a server that knows it
/// sends them, one that does not never does. Balancing clients set it; a single
/// connection, which has no choice to make, does not, and gets none.
pub(crate) const LOAD_REPORTS: u32 = 1 << 10;

/// A byte-credited stream's window: whether its receiver granted it credit yet.
pub(crate) fn byte_window(opened: bool) -> u64 {
    u64::from(if opened {
        BYTE_WINDOW
    } else {
        INITIAL_BYTE_WINDOW
    })
}

/// How the peer credits this connection's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreditMode {
    /// Not known yet: a client's streams keep to both windows until the server says.
    Pending,
    /// By items, [`WINDOW`] per stream: a peer of the previous revision.
    Items,
    /// By charged bytes: [`INITIAL_BYTE_WINDOW`] per stream until its first credit, then
    /// [`BYTE_WINDOW`].
    Bytes,
}

/// The default bound on the stream data one connection buffers for its consumers: 32 MiB
/// (see `Server::max_buffered_stream_bytes` and `ClientBuilder::max_buffered_stream_bytes`).
pub const DEFAULT_MAX_BUFFERED_STREAM_BYTES: usize = 32 << 20;

/// Where `part`, a slice of `frame`, lies in it.
pub(crate) fn span(frame: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    start..start.wrapping_add(part.len())
}

/// `frame` narrowed to its `span`: the frame's own handle on its buffer moves to the part,
/// where slicing would take (and then drop) a second one.
pub(crate) fn narrow(mut frame: Bytes, span: std::ops::Range<usize>) -> Bytes {
    if span.start > span.end || span.end > frame.len() {
        // Cannot happen: the decoder borrows every part from the frame.
        debug_assert!(
            false,
            "{span:?} is not within a frame of {} bytes",
            frame.len()
        );
        return Bytes::new();
    }
    frame.truncate(span.end);
    frame.advance(span.start);
    frame
}

/// A stream of `T`s passed to or returned from an RPC method; it yields
/// `Result<T, RpcError>`.
///
/// Build one from any stream to send it ([`Streaming::new`], [`Streaming::from_results`],
/// [`Streaming::iter`]); one received from the peer yields its items as they arrive, in
/// order, and ends with the peer's end: `None` after success, or an `Err` item followed by
/// `None` when the peer (or the connection, or the deadline) failed it.
///
/// Read one with [`next`](Streaming::next) (no trait to import) or
/// [`try_next`](Streaming::try_next), or through its [`Stream`] impl with any stream
/// combinator.
///
/// ```
/// use rpc_core::Streaming;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut numbers = Streaming::iter(1..=3);
/// let mut seen = Vec::new();
/// while let Some(n) = numbers.next().await {
///     seen.push(n.expect("a local stream of plain items never fails"));
/// }
/// assert_eq!(seen, [1, 2, 3]);
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct Streaming<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Local(Pin<Box<dyn Stream<Item = Result<T, RpcError>> + Send>>),
    Remote {
        stream: RemoteStream,
        decode: fn(&Bytes) -> Result<T, RpcError>,
    },
    Done,
}

impl<T> Streaming<T> {
    /// A stream that sends the items of `stream`.
    pub fn new<S>(stream: S) -> Streaming<T>
    where
        S: Stream<Item = T> + Send + 'static,
        T: 'static,
    {
        Streaming {
            inner: Inner::Local(Box::pin(stream.map(Ok))),
        }
    }

    /// A stream that sends the items of `stream` and ends at its first `Err`, which the
    /// receiver gets as its last item.
    pub fn from_results<S>(stream: S) -> Streaming<T>
    where
        S: Stream<Item = Result<T, RpcError>> + Send + 'static,
    {
        Streaming {
            inner: Inner::Local(Box::pin(stream)),
        }
    }

    /// A stream that sends the items of `items`.
    pub fn iter<I>(items: I) -> Streaming<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: 'static,
    {
        Streaming::new(futures::stream::iter(items))
    }

    /// The next item: `None` once the stream has ended, after its last item or after an
    /// `Err`. The same as `futures::StreamExt::next`, without importing it.
    // Named as `StreamExt::next` on purpose: code that imports the trait gets the same
    // future, and code that does not needs no import. It is not an `Iterator`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> futures::stream::Next<'_, Self> {
        StreamExt::next(self)
    }

    /// The next item, with the stream's error as the `Err`: `Ok(None)` once it has ended.
    /// For reading with `?`:
    ///
    /// ```
    /// use rpc_core::{RpcError, Streaming};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), RpcError> {
    /// let mut words = Streaming::iter(["a", "b"]);
    /// while let Some(word) = words.try_next().await? {
    ///     println!("{word}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_next(&mut self) -> futures::stream::TryNext<'_, Self> {
        futures::TryStreamExt::try_next(self)
    }

    /// A stream fed by the connection.
    pub(crate) fn from_remote(
        stream: RemoteStream,
        decode: fn(&Bytes) -> Result<T, RpcError>,
    ) -> Self {
        Streaming {
            inner: Inner::Remote { stream, decode },
        }
    }

    /// What sends this stream's items as frames.
    pub(crate) fn into_source(
        self,
        encode: fn(T, &mut crate::codec::BodyWriter<'_>) -> Result<(), RpcError>,
    ) -> ItemSource
    where
        T: 'static,
    {
        ItemSource(Box::new(Encoding {
            stream: self,
            encode,
            packing: None,
        }))
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match &mut self.inner {
            Inner::Local(stream) => match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => return Poll::Ready(Some(Ok(item))),
                Poll::Ready(Some(Err(err))) => Some(Err(err)),
                Poll::Ready(None) => None,
                Poll::Pending => return Poll::Pending,
            },
            Inner::Remote { stream, decode } => match stream.poll_item(cx) {
                Poll::Ready(Some(Ok(body))) => {
                    let item = decode(&body);
                    crate::buffers::recycle(body);
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(Some(Err(err))) => Some(Err(err)),
                Poll::Ready(None) => None,
                Poll::Pending => return Poll::Pending,
            },
            Inner::Done => return Poll::Ready(None),
        };
        // An error or the end: the stream is over (a remote one tells its peer, if needed,
        // when it is dropped here).
        self.inner = Inner::Done;
        Poll::Ready(item)
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Local(_) => "local",
            Inner::Remote { .. } => "remote",
            Inner::Done => "done",
        };
        f.debug_struct("Streaming").field("kind", &kind).finish()
    }
}

/// Streams travel as stream frames, never inside a message body: these impls exist so that
/// `FooRequest` and `FooResponse` can derive serde's traits, and always fail.
impl<T> serde::Serialize for Streaming<T> {
    fn serialize<S: serde::Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "a Streaming<T> is sent as stream items, not serialized inside a message",
        ))
    }
}

impl<'de, T> serde::Deserialize<'de> for Streaming<T> {
    fn deserialize<D: serde::Deserializer<'de>>(_deserializer: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a Streaming<T> is received as stream items, not deserialized from a message",
        ))
    }
}

// `Streaming<T>` holds only boxed streams, fn pointers and handles: it can move freely.
impl<T> Unpin for Streaming<T> {}
