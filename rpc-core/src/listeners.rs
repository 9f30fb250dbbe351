//! Several listeners as one: a server that accepts on TCP and a Unix socket (or any mix)
//! with one set of services, one set of limits and one graceful shutdown.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll};
use futures::{Sink, Stream, StreamExt};

use crate::peer::Peer;
use crate::transport::{Frame, Listener, Transport};

/// Any number of [`Listener`]s, of any types, served as one by
/// [`Server::serve`](crate::Server::serve) or
/// [`serve_with_shutdown`](crate::Server::serve_with_shutdown): the server's services,
/// limits (`max_connections` counts them all) and shutdown apply to every listener.
///
/// ```
/// use rpc_core::{Listeners, Server};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let dir = std::env::temp_dir().join(format!("rpc-listeners-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let tcp = rpc_transport::tcp::bind("127.0.0.1:0").await?;
/// let unix = rpc_transport::unix::bind(dir.join("server.sock")).await?;
///
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = Server::new(); // .add_service(...)
/// let serving = tokio::spawn(server.serve_with_shutdown(
///     Listeners::new().with(tcp).with(unix),
///     async { let _ = stopped.await; },
/// ));
/// // ... later: one signal stops both listeners, and the calls in progress finish.
/// let _ = stop.send(());
/// serving.await??;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
///
/// Each accepted connection is a [`BoxTransport`]: the listener's own transport behind one
/// pointer, which costs a virtual call per read and write of a batch of frames. A listener
/// that closes for good (its `accept` returns `None`) leaves the others serving; the set
/// closes when all have.
#[must_use = "a Listeners does nothing until a server serves it"]
pub struct Listeners {
    /// Listeners not yet started, waiting for the server's frame size limit.
    waiting: Vec<Starter>,
    settings: Settings,
    running: SelectAll<BoxStream<'static, io::Result<BoxTransport>>>,
}

/// What the server told the set, for each listener when it starts.
#[derive(Debug, Clone, Copy, Default)]
struct Settings {
    max_frame_size: Option<usize>,
    http: bool,
}

/// Turns one listener, told the server's settings, into a stream of accepted transports.
type Starter = Box<dyn FnOnce(Settings) -> BoxStream<'static, io::Result<BoxTransport>> + Send>;

impl Listeners {
    /// No listeners yet; add them with [`with`](Listeners::with).
    pub fn new() -> Listeners {
        Listeners {
            waiting: Vec::new(),
            settings: Settings::default(),
            running: SelectAll::new(),
        }
    }

    /// Adds `listener`: the server accepts from it too.
    pub fn with<L: Listener>(mut self, listener: L) -> Listeners {
        self.waiting.push(Box::new(move |settings| {
            let mut listener = listener;
            if let Some(bytes) = settings.max_frame_size {
                listener.set_max_frame_size(bytes);
            }
            if settings.http {
                listener.set_http(true);
            }
            futures::stream::unfold(listener, |mut listener| async move {
                let accepted = listener.accept().await?.map(|transport| {
                    let peer = listener.peer(&transport);
                    BoxTransport {
                        inner: Box::new(transport),
                        peer,
                    }
                });
                Some((accepted, listener))
            })
            .boxed()
        }));
        self
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    /// Whether there are none (a server given none stops at once).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners::new()
    }
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Listener for Listeners {
    type Transport = BoxTransport;

    async fn accept(&mut self) -> Option<io::Result<BoxTransport>> {
        // Started on the first accept, after the server has told its settings. Each
        // listener's pending accept lives in its stream, so dropping this future (the
        // server shutting down) loses no connection.
        for start in self.waiting.drain(..) {
            self.running.push(start(self.settings));
        }
        self.running.next().await
    }

    fn set_max_frame_size(&mut self, bytes: usize) {
        self.settings.max_frame_size = Some(bytes);
    }

    fn set_http(&mut self, on: bool) {
        self.settings.http = on;
    }

    fn peer(&self, transport: &BoxTransport) -> Peer {
        transport.peer.clone()
    }
}

/// A connection accepted by one of a [`Listeners`]' listeners: its transport, boxed, and
/// what that listener said of its [peer](Listener::peer).
pub struct BoxTransport {
    inner: Box<dyn Transport>,
    peer: Peer,
}

impl BoxTransport {
    /// Who is at the other end, as the listener that accepted it reported.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl fmt::Debug for BoxTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxTransport")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Stream for BoxTransport {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.inner).poll_next(cx)
    }
}

impl Sink<Frame> for BoxTransport {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> io::Result<()> {
        Pin::new(&mut *self.inner).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_close(cx)
    }
}

crate::__sink_of_whole_frames!([] BoxTransport);
