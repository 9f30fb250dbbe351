//! Connections through [NATS](https://nats.io) subjects (cargo feature `nats`).
//!
//! A client reaches a service by a subject instead of an address. Servers [`bind`] the
//! subject in a queue group; each connection a client opens with [`connect`] (or a
//! [`connector`]) starts with a hello published on that subject, which NATS hands to one
//! member of the group. That member answers from a private subject of its own, and from
//! then on the connection's frames flow between the two private subjects (inboxes), so
//! everything above the [`Transport`](rpc_core::Transport) trait — multiplexed calls,
//! streams, deadlines, cancellation, keepalive — works as over TCP. A client with
//! reconnection (`ClientBuilder::connect(nats::connector(..))`) that loses its member
//! opens a new connection, which NATS gives to a member still there.
//!
//! ```no_run
//! use rpc_core::{service, Server};
//! use rpc_transport::nats;
//!
//! #[service]
//! pub trait Inventory {
//!     #[rpc(idempotent)]
//!     async fn stock(&self, item: String) -> u32;
//! }
//!
//! struct Shelf;
//! impl Inventory for Shelf {
//!     async fn stock(&self, _item: String) -> u32 { 7 }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Server: every member binds the same subject.
//! let server_side = async_nats::connect("127.0.0.1:4222").await?;
//! let listener = nats::bind(&server_side, "services.inventory").await?;
//! tokio::spawn(Server::new().add_service(InventoryServer::new(Shelf)).serve(listener));
//!
//! // Client: a reconnecting client of whichever member NATS picks.
//! let client_side = async_nats::connect("127.0.0.1:4222").await?;
//! let inventory = InventoryClient::builder()
//!     .connect(nats::connector(&client_side, "services.inventory"));
//! assert_eq!(inventory.stock("apples".into()).await?, 7);
//! # Ok(()) }
//! ```
//!
//! The `async_nats::Client` is yours: connect it with the options your NATS needs (TLS,
//! credentials, its own reconnect policy). `async-nats` is re-exported as
//! [`nats::async_nats`](async_nats) so that its version matches.
//!
//! # What NATS does and does not give, and what this module does about it
//!
//! - **Message size.** NATS refuses messages larger than its `max_payload` (1 MiB by
//!   default). A frame larger than that is **split** into several messages and joined again
//!   by the receiver, so any frame up to the connection's frame limit crosses (the
//!   receiver's limit is [`DEFAULT_MAX_FRAME_SIZE`], or the server's
//!   `Server::max_frame_size`; a larger frame fails that connection with `InvalidData`).
//! - **Loss.** NATS delivers at most once: a message in flight when the NATS server
//!   restarts, or one a slow receiver's subscription has no room for, is dropped silently.
//!   Each message carries a sequence number, so a receiver that misses one fails the
//!   connection (`io::ErrorKind::ConnectionAborted`) rather than letting a call wait for an
//!   answer that will never come: the calls on it fail with `Disconnected` (and idempotent
//!   ones are retried on a new connection). A NATS restart that loses nothing breaks
//!   nothing: `async-nats` reconnects and subscribes again, and the connections go on.
//! - **A peer that disappears.** NATS tells no one when a subscriber goes away. Frames are
//!   published with a reply subject, so when the peer's subscription is gone NATS answers
//!   the next frame with a "no responders" status, and the connection fails with
//!   `ConnectionReset`; a quiet connection sends such frames through the client's keepalive
//!   pings (`ClientBuilder::keepalive`, on by default), so a member killed while a call
//!   waits on it is noticed within one keepalive interval.
//! - **No server.** [`connect`] fails with `ConnectionRefused` when no one subscribes to
//!   the subject, and with `TimedOut` when no member answers within the handshake timeout
//!   ([`NatsConnector::handshake_timeout`], 5 s by default).
//!
//! The wire format inside the messages is described in `docs/nats.md`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

pub use async_nats;
use async_nats::{Client, StatusCode, Subject, Subscriber};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, Stream, StreamExt};
use rpc_core::Frame;

pub use crate::framing::DEFAULT_MAX_FRAME_SIZE;

/// The first message of a connection, published on the service's subject with the
/// client's inbox as its reply subject. The version lets a later protocol refuse clearly.
const HELLO: &[u8] = b"rpc-nats/1 hello";
/// The member's answer, published to the client's inbox with the member's own inbox as its
/// reply subject.
const ACCEPT: &[u8] = b"rpc-nats/1 accept";
/// How a member refuses a hello of a version it does not speak; the reason follows.
const REFUSE: &[u8] = b"rpc-nats refuse: ";
/// What every hello of any version starts with.
const HELLO_FAMILY: &[u8] = b"rpc-nats/";

/// The bytes before a message's data: its kind, then its sequence number (u32, little
/// endian) in the direction it travels.
const HEADER: usize = 5;
/// The message ends a frame (or is a whole frame).
const KIND_LAST: u8 = 0;
/// The message is a piece of a frame that the next message continues.
const KIND_PIECE: u8 = 1;
/// The sender closed the connection; no data follows.
const KIND_CLOSE: u8 = 2;

/// The queue group that every listener of a subject joins: one member gets each hello.
const QUEUE_GROUP: &str = "rpc";
/// Default time a member has to answer a hello.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame is never cut in pieces smaller than this, whatever NATS says its limit is.
const MIN_PIECE: usize = 512;

/// Opens one connection to a member of the group serving `subject`.
///
/// Fails with `ConnectionRefused` if nobody serves `subject`, `TimedOut` if no member
/// answered within 5 s, `InvalidData` if what answered is not an rpc server of this
/// protocol version. For a client that reconnects, use [`connector`].
pub async fn connect(client: &Client, subject: &str) -> io::Result<NatsTransport> {
    connector(client, subject).open().await
}

/// A [`Connect`](rpc_core::Connect) for reconnecting and balancing clients: each new
/// connection goes to whichever member of `subject`'s group NATS picks.
pub fn connector(client: &Client, subject: &str) -> NatsConnector {
    NatsConnector {
        client: client.clone(),
        subject: subject.to_owned(),
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
    }
}

/// Connects to the servers of one subject whenever asked; see [`connector`].
#[derive(Clone)]
pub struct NatsConnector {
    client: Client,
    subject: String,
    handshake_timeout: Duration,
    max_frame_size: usize,
}

impl fmt::Debug for NatsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnector")
            .field("subject", &self.subject)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_frame_size", &self.max_frame_size)
            .finish_non_exhaustive()
    }
}

impl NatsConnector {
    /// How long a member has to answer the hello (5 s by default).
    pub fn handshake_timeout(mut self, timeout: Duration) -> NatsConnector {
        self.handshake_timeout = timeout;
        self
    }

    /// The largest frame accepted from the server ([`DEFAULT_MAX_FRAME_SIZE`] by default).
    pub fn max_frame_size(mut self, bytes: usize) -> NatsConnector {
        self.max_frame_size = bytes;
        self
    }

    /// The subject it connects to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    async fn open(&self) -> io::Result<NatsTransport> {
        let subject = &self.subject;
        let inbox = self.client.new_inbox();
        let mut incoming = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|err| nats_error(format!("subscribing to an inbox for {subject}"), err))?;
        self.client
            .publish_with_reply(subject.clone(), inbox.clone(), Bytes::from_static(HELLO))
            .await
            .map_err(|err| nats_error(format!("publishing a hello on {subject}"), err))?;
        let answer = tokio::time::timeout(self.handshake_timeout, incoming.next())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no rpc server on NATS subject {subject} answered within {:?}; check \
                         that one is running, and that it and this client reach the same NATS",
                        self.handshake_timeout
                    ),
                )
            })?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("the NATS client closed while connecting to {subject}"),
                )
            })?;
        if answer.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "no rpc server listens on NATS subject {subject}; start one with \
                     rpc_transport::nats::bind, or check the subject"
                ),
            ));
        }
        if let Some(reason) = answer.payload.strip_prefix(REFUSE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the rpc server on NATS subject {subject} refused the connection: {}",
                    String::from_utf8_lossy(reason)
                ),
            ));
        }
        match answer.reply {
            Some(peer) if answer.payload == ACCEPT => Ok(NatsTransport::new(
                self.client.clone(),
                incoming,
                inbox.into(),
                peer,
                self.max_frame_size,
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "what answered on NATS subject {subject} is not an rpc server (it does not \
                     speak the rpc-nats/1 protocol); check the subject"
                ),
            )),
        }
    }
}

impl rpc_core::Connect for NatsConnector {
    type Transport = NatsTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<NatsTransport>> + Send {
        self.open()
    }
}

/// Serves `subject`: joins its queue group, so that each new connection to it comes to one
/// of the listeners bound to it, wherever they run. Give the listener to
/// [`Server::serve`](rpc_core::Server::serve).
pub async fn bind(client: &Client, subject: &str) -> io::Result<NatsListener> {
    let hellos = client
        .queue_subscribe(subject.to_owned(), QUEUE_GROUP.to_owned())
        .await
        .map_err(|err| nats_error(format!("subscribing to {subject}"), err))?;
    Ok(NatsListener {
        client: client.clone(),
        subject: subject.to_owned(),
        hellos,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
    })
}

/// The server side of a subject; see [`bind`]. Dropping it leaves the queue group (the
/// connections it accepted go on).
pub struct NatsListener {
    client: Client,
    subject: String,
    hellos: Subscriber,
    max_frame_size: usize,
}

impl fmt::Debug for NatsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsListener")
            .field("subject", &self.subject)
            .field("max_frame_size", &self.max_frame_size)
            .finish_non_exhaustive()
    }
}

impl NatsListener {
    /// The subject it serves.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Answers one hello: a private inbox for the connection, announced to the client.
    async fn welcome(&self, client_inbox: Subject) -> io::Result<NatsTransport> {
        let inbox = self.client.new_inbox();
        // Subscribed before the client hears of it: NATS handles this connection's
        // commands in order, so the client's first frame finds the subscription.
        let incoming = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|err| nats_error("subscribing to a connection's inbox", err))?;
        self.client
            .publish_with_reply(
                client_inbox.clone(),
                inbox.clone(),
                Bytes::from_static(ACCEPT),
            )
            .await
            .map_err(|err| nats_error("answering a hello", err))?;
        Ok(NatsTransport::new(
            self.client.clone(),
            incoming,
            inbox.into(),
            client_inbox,
            self.max_frame_size,
        ))
    }
}

impl rpc_core::Listener for NatsListener {
    type Transport = NatsTransport;

    async fn accept(&mut self) -> Option<io::Result<NatsTransport>> {
        loop {
            let hello = self.hellos.next().await?;
            let Some(reply) = hello.reply else {
                tracing::debug!(subject = %self.subject, "ignored a message without a reply subject");
                continue;
            };
            if hello.payload != HELLO {
                if hello.payload.starts_with(HELLO_FAMILY) {
                    // Another version of this protocol: say so, rather than let it time out.
                    let why = format!(
                        "this server speaks rpc-nats/1, the client sent {:?}",
                        String::from_utf8_lossy(&hello.payload)
                    );
                    let refusal = [REFUSE, why.as_bytes()].concat();
                    let _ = self.client.publish(reply, refusal.into()).await;
                }
                tracing::debug!(subject = %self.subject, "ignored a message that is not an rpc-nats hello");
                continue;
            }
            return Some(self.welcome(reply).await);
        }
    }

    fn set_max_frame_size(&mut self, bytes: usize) {
        self.max_frame_size = bytes;
    }

    fn peer(&self, transport: &NatsTransport) -> rpc_core::Peer {
        rpc_core::Peer::new().with_addr(format!("nats:{}", transport.peer.as_str()))
    }
}

/// The sending half: publishes one message at a time. Boxed once per connection because
/// `async-nats` publishes with an `async fn`, whose future has no name to store.
type Publisher = Pin<Box<dyn Sink<Bytes, Error = io::Error> + Send>>;

/// One connection over NATS: frames to the peer's inbox, frames from its own.
pub struct NatsTransport {
    client: Client,
    incoming: Subscriber,
    publisher: Publisher,
    /// Where the peer receives.
    peer: Subject,
    /// Messages cut from frames and not yet handed to the publisher.
    queued: VecDeque<Bytes>,
    /// Sequence number of the next message sent.
    sent: u32,
    /// Sequence number expected of the next message received.
    expected: u32,
    /// The pieces of a frame received so far.
    partial: BytesMut,
    max_frame_size: usize,
    /// The close message was queued (`poll_close` or a clean drop sends it once).
    closed: bool,
    /// The receiving side ended (the peer closed, or an error was returned).
    finished: bool,
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("peer", &self.peer.as_str())
            .field("sent", &self.sent)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    fn new(
        client: Client,
        incoming: Subscriber,
        inbox: Subject,
        peer: Subject,
        max_frame_size: usize,
    ) -> NatsTransport {
        let publisher = futures::sink::unfold(
            (client.clone(), peer.clone(), inbox),
            |(client, peer, inbox), message: Bytes| async move {
                // The reply subject is our inbox: when the peer's subscription is gone, NATS
                // answers there with "no responders" (see the module docs).
                client
                    .publish_with_reply(peer.clone(), inbox.clone(), message)
                    .await
                    .map_err(|err| nats_error(format!("publishing to {}", peer.as_str()), err))?;
                Ok::<_, io::Error>((client, peer, inbox))
            },
        );
        NatsTransport {
            client,
            incoming,
            publisher: Box::pin(publisher),
            peer,
            queued: VecDeque::new(),
            sent: 0,
            expected: 0,
            partial: BytesMut::new(),
            max_frame_size,
            closed: false,
            finished: false,
        }
    }

    /// The subject the peer receives on.
    pub fn peer_subject(&self) -> &str {
        self.peer.as_str()
    }

    /// Cuts `frame` into messages of at most NATS's `max_payload`, and queues them.
    fn queue_frame(&mut self, frame: Frame) {
        let piece = self
            .client
            .max_payload()
            .saturating_sub(HEADER)
            .max(MIN_PIECE);
        let len = frame.len();
        let count = len.div_ceil(piece).max(1);
        // One buffer for every message of the frame, split into them without copying.
        let mut buf = BytesMut::with_capacity(len + count * HEADER);
        let mut parts = frame.into_parts();
        let mut current = parts.next().unwrap_or_default();
        for index in 0..count {
            let kind = if index + 1 == count {
                KIND_LAST
            } else {
                KIND_PIECE
            };
            buf.put_u8(kind);
            buf.put_u32_le(self.sent);
            self.sent = self.sent.wrapping_add(1);
            let mut room = piece;
            while room > 0 {
                if current.is_empty() {
                    match parts.next() {
                        Some(next) => current = next,
                        None => break,
                    }
                    continue;
                }
                let take = room.min(current.len());
                buf.put_slice(&current.split_to(take));
                room -= take;
            }
            self.queued.push_back(buf.split().freeze());
        }
    }

    fn close_message(&mut self) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER);
        buf.put_u8(KIND_CLOSE);
        buf.put_u32_le(self.sent);
        buf.freeze()
    }

    /// Hands queued messages to the publisher until none is left or it is busy.
    fn poll_send_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(message) = self.queued.pop_front() {
            match self.publisher.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => self.publisher.as_mut().start_send(message)?,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    self.queued.push_front(message);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes in one received message; a whole frame when it completes one.
    fn receive(&mut self, message: async_nats::Message) -> Option<io::Result<Bytes>> {
        if message.status == Some(StatusCode::NO_RESPONDERS) {
            return Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!(
                    "the peer at NATS subject {} is gone (NATS has no subscriber for it)",
                    self.peer.as_str()
                ),
            )));
        }
        let mut payload = message.payload;
        if payload.len() < HEADER {
            return Some(Err(invalid(format!(
                "a message of {} bytes from NATS subject {}, too short to be a frame",
                payload.len(),
                self.peer.as_str()
            ))));
        }
        let kind = payload[0];
        let seq = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
        if kind == KIND_CLOSE {
            return None;
        }
        if seq != self.expected {
            return Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "NATS lost {} message(s) from {} (a NATS restart, or a subscriber too slow \
                     for its buffer); the connection is closed so that no call waits for an \
                     answer that will not come",
                    seq.wrapping_sub(self.expected),
                    self.peer.as_str()
                ),
            )));
        }
        self.expected = self.expected.wrapping_add(1);
        let data = payload.split_off(HEADER);
        if self.partial.len() + data.len() > self.max_frame_size {
            return Some(Err(invalid(format!(
                "a frame from {} is larger than the limit of {} bytes",
                self.peer.as_str(),
                self.max_frame_size
            ))));
        }
        match kind {
            KIND_LAST if self.partial.is_empty() => Some(Ok(data)),
            KIND_LAST => {
                self.partial.extend_from_slice(&data);
                Some(Ok(self.partial.split().freeze()))
            }
            KIND_PIECE => {
                self.partial.extend_from_slice(&data);
                None
            }
            other => Some(Err(invalid(format!(
                "a message of unknown kind {other} from {}",
                self.peer.as_str()
            )))),
        }
    }
}

impl Stream for NatsTransport {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.finished {
            let Some(message) = ready!(this.incoming.poll_next_unpin(cx)) else {
                break;
            };
            let closes = message.payload.first() == Some(&KIND_CLOSE);
            match this.receive(message) {
                Some(Ok(frame)) => return Poll::Ready(Some(Ok(frame))),
                Some(Err(err)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(err)));
                }
                None if closes => this.finished = true,
                None => {}
            }
        }
        this.finished = true;
        Poll::Ready(None)
    }
}

impl Sink<Frame> for NatsTransport {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send_queued(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> io::Result<()> {
        self.queue_frame(frame);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_queued(cx))?;
        self.publisher.as_mut().poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.closed = true;
            let close = self.close_message();
            self.queued.push_back(close);
        }
        ready!(self.poll_send_queued(cx))?;
        self.publisher.as_mut().poll_close(cx)
    }
}

impl Drop for NatsTransport {
    /// Tells the peer at once, rather than at its next frame (see the module docs): a best
    /// effort, when a runtime is there to publish from.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let close = self.close_message();
        let (client, peer) = (self.client.clone(), self.peer.clone());
        runtime.spawn(async move {
            let _ = client.publish(peer, close).await;
        });
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// An `async-nats` error while doing `action`, as an `io::Error` that says both.
fn nats_error(action: impl fmt::Display, err: impl std::error::Error) -> io::Error {
    io::Error::other(format!(
        "{action} failed: {err}; check the connection to NATS"
    ))
}
