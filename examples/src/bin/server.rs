//! A Greeter server in its own process; pair it with the `client` example.
//!
//! ```text
//! cargo run -p rpc-examples --bin server -- 127.0.0.1:4000      # TCP
//! cargo run -p rpc-examples --bin server -- /tmp/greeter.sock   # Unix socket
//! ```
//!
//! It stops on Ctrl-C, letting calls in progress finish.

use rpc_core::Server;
use rpc_examples::{GreeterServer, Greetings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: server <host:port | socket path>");
        std::process::exit(2);
    };
    let server = Server::new().add_service(GreeterServer::new(Greetings::default()));
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // A path (containing '/') is a Unix socket; anything else is a TCP address.
    if address.contains('/') {
        let listener = rpc_transport::unix::bind(&address).await?;
        println!("listening on unix socket {address}");
        server.serve_with_shutdown(listener, ctrl_c).await?;
    } else {
        let listener = rpc_transport::tcp::bind(&address).await?;
        println!("listening on tcp {}", listener.local_addr()?);
        server.serve_with_shutdown(listener, ctrl_c).await?;
    }
    println!("shut down");
    Ok(())
}
