//! A chat room by bidirectional streaming: each member sends lines and receives everything
//! said in the room, over one call that stays open.
//!
//! Run it with `cargo run -p rpc-examples --bin chat`.
//!
//! `join` takes the member's lines as a `Streaming<String>` argument and returns the room's
//! conversation as a `Streaming<Said>`. The server fans lines out with a broadcast channel.
//! Three members join over TCP, wait until the room has them, say two lines each, and read
//! until they have heard all six; then they leave by ending their streams.

use futures::channel::mpsc;
use rpc_core::{service, Server, Streaming};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// One line said in the room, or a member coming or going.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Said {
    /// Who said it.
    pub who: String,
    /// What they said (`None`: they joined).
    pub text: Option<String>,
}

#[service]
pub trait Chat {
    /// Joins the room as `name`: every line of `lines` is said to the room, and the result
    /// is everything said in the room from now on. Ending `lines` leaves the room.
    async fn join(&self, name: String, lines: Streaming<String>) -> Streaming<Said>;
}

struct Room {
    said: broadcast::Sender<Said>,
}

impl Chat for Room {
    async fn join(&self, name: String, mut lines: Streaming<String>) -> Streaming<Said> {
        // Listen before announcing, so the member hears their own arrival.
        let heard = self.said.subscribe();
        let _ = self.said.send(Said {
            who: name.clone(),
            text: None,
        });
        // The member's lines go to the room from a task of their own, while the returned
        // stream carries the room back to them.
        let said = self.said.clone();
        tokio::spawn(async move {
            while let Some(Ok(text)) = lines.next().await {
                let _ = said.send(Said {
                    who: name.clone(),
                    text: Some(text),
                });
            }
        });
        Streaming::new(futures::stream::unfold(heard, |mut heard| async move {
            loop {
                match heard.recv().await {
                    Ok(said) => return Some((said, heard)),
                    // A member too slow to keep up skips what it missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (said, _) = broadcast::channel(1024);
    tokio::spawn(
        Server::new()
            .add_service(ChatServer::new(Room { said }))
            .serve(listener),
    );

    let names = ["ada", "grace", "linus"];
    let mut members = Vec::new();
    for name in names {
        let client = ChatClient::new(rpc_transport::tcp::connect(addr).await?);
        let (say, lines) = mpsc::unbounded::<String>();
        let mut room = client.join(name.into(), Streaming::new(lines)).await?;
        // Wait to hear our own arrival: from then on we hear everything.
        while let Some(said) = room.next().await {
            if said?.who == name {
                break;
            }
        }
        println!("{name} joined");
        members.push((name, say, room));
    }

    for (name, say, _) in &members {
        say.unbounded_send(format!("hello from {name}"))?;
        say.unbounded_send(format!("{name} says bye"))?;
    }
    for (name, say, mut room) in members {
        let mut lines = Vec::new();
        while lines.len() < 2 * names.len() {
            match room.next().await {
                Some(said) => {
                    if let Said {
                        who,
                        text: Some(text),
                    } = said?
                    {
                        lines.push(format!("{who}: {text}"));
                    }
                }
                None => return Err(format!("{name}'s room closed early").into()),
            }
        }
        println!("{name} heard {} lines: {}", lines.len(), lines.join(" | "));
        // Ending our lines leaves the room; dropping the room stream stops our copy of it.
        drop(say);
    }
    Ok(())
}
