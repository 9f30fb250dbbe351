//! A TCP proxy that a test can cut (every connection through it dropped, new ones refused)
//! and mend: a network cut between one party and a server (a registry, a NATS server).
//! What the server sees is what a crash or a lost network looks like to it: its connections
//! closing, or going quiet.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; see the module docs. Connect to [`addr`](Cuttable::addr) instead of the
/// server's.
pub struct Cuttable {
    port: u16,
    open: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Cuttable {
    /// A proxy to `target` (`host:port`), open.
    pub async fn to(target: String) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let task = tokio::spawn({
            let open = Arc::clone(&open);
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut is_open = open.subscribe();
                    if !*is_open.borrow_and_update() {
                        continue; // dropped: refused
                    }
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = is_open.wait_for(|open| !*open) => {}
                        }
                    });
                }
            }
        });
        Cuttable { port, open, task }
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every connection through it, and refuses new ones until mended.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    #[allow(dead_code)] // not every test binary mends
    pub fn mend(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.task.abort();
    }
}
