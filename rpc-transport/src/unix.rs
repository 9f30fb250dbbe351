//! Unix domain sockets: `connect` and `bind` by path.
//!
//! `bind` removes a socket file left behind by a process that is gone (nobody accepts on
//! it), but never a file that is not a socket or a socket someone is listening on. The
//! listener removes its socket file when dropped.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use rpc_core::Listener;
//!
//! let path = std::env::temp_dir().join(format!("rpc-doc-{}.sock", std::process::id()));
//! let mut listener = rpc_transport::unix::bind(&path).await?;
//! let _client_end = rpc_transport::unix::connect(&path).await?;
//! let _server_end = listener.accept().await.expect("open")?;
//! # Ok(()) }
//! ```

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::framing::{Framed, DEFAULT_MAX_FRAME_SIZE};

/// A Unix socket connection carrying frames.
pub type UnixTransport = Framed<UnixStream>;

/// Connects to the socket at `path`.
pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixTransport> {
    let stream = UnixStream::connect(path).await?;
    tune(&stream);
    Ok(Framed::new(stream))
}

/// A [`Connect`](rpc_core::Connect) for reconnecting and balancing clients: connects to the
/// socket at `path` each time a new connection is needed.
pub fn connector(path: impl AsRef<Path>) -> UnixConnector {
    UnixConnector {
        path: path.as_ref().to_path_buf(),
    }
}

/// Connects to one Unix socket path whenever asked; see [`connector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixConnector {
    path: PathBuf,
}

impl UnixConnector {
    /// The socket path it connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl rpc_core::Connect for UnixConnector {
    type Transport = UnixTransport;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<UnixTransport>> + Send {
        connect(self.path.as_path())
    }
}

/// Socket buffer size asked for on each Unix socket.
const SOCKET_BUFFER: usize = 1 << 20;

/// Unix sockets default to ~200 KiB of buffer, so a 1 MiB message crosses in five pieces,
/// each a round of wake-ups between the writing and the reading task (often on two
/// threads); a larger buffer lets it cross in one. It is a ceiling, not an allocation: an
/// idle connection costs nothing more. The kernel caps it (`net.core.wmem_max`); failing
/// to raise it only costs speed.
fn tune(stream: &UnixStream) {
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
}

/// Listens on a socket at `path`, replacing a stale socket file (see the module docs).
pub async fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    let path = path.as_ref();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process is listening on {}", path.display()),
                ))
            }
            // Nobody listens: a leftover of a process that is gone.
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?;
            }
            Err(err) => return Err(err),
        }
    }
    let inner = tokio::net::UnixListener::bind(path)?;
    let identity = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    Ok(UnixListener {
        inner,
        path: path.to_path_buf(),
        identity,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        http: false,
    })
}

/// A Unix socket listener; give it to [`rpc_core::Server::serve`].
#[derive(Debug)]
pub struct UnixListener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this listener made, to remove only that one.
    identity: Option<(u64, u64)>,
    max_frame_size: usize,
    /// Hand HTTP connections back to the server (`set_http`).
    http: bool,
}

impl UnixListener {
    /// The path it listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.identity)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl rpc_core::Listener for UnixListener {
    /// Unix clients are rarely bound to a name: the peer is the listener's own path.
    fn peer(&self, _transport: &UnixTransport) -> rpc_core::Peer {
        rpc_core::Peer::new().with_addr(format!("unix:{}", self.path.display()))
    }

    fn set_max_frame_size(&mut self, bytes: usize) {
        self.max_frame_size = bytes;
    }

    fn set_http(&mut self, on: bool) {
        self.http = on;
    }

    type Transport = UnixTransport;

    async fn accept(&mut self) -> Option<io::Result<UnixTransport>> {
        Some(self.inner.accept().await.map(|(stream, _)| {
            tune(&stream);
            Framed::new(stream)
                .with_max_frame_size(self.max_frame_size)
                .with_http(self.http)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rpc-unix-{}-{name}.sock", std::process::id()))
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let path = temp_path("stale");
        let _ = std::fs::remove_file(&path);
        // A socket file nobody listens on, as a crashed process leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = bind(&path).await.unwrap();
        assert!(connect(&path).await.is_ok());
        drop(listener);
        assert!(!path.exists(), "the listener removes its socket file");
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over() {
        let path = temp_path("live");
        let _ = std::fs::remove_file(&path);
        let first = bind(&path).await.unwrap();
        let err = bind(&path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(path.exists());
        drop(first);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let path = temp_path("regular");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind(&path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
    }
}
