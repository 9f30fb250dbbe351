//! A Greeter server in its own process; pair it with the `client` example, or call it with
//! curl: it also serves JSON over HTTP on the same port.
//!
//! ```text
//! cargo run -p rpc-examples --bin server -- 127.0.0.1:4000      # TCP
//! cargo run -p rpc-examples --bin server -- /tmp/greeter.sock   # Unix socket
//! cargo run -p rpc-examples --bin server -- 127.0.0.1:4000 --token s3cret
//! curl -d '{"name": "Ada"}' http://127.0.0.1:4000/Greeter/hello
//! ```
//!
//! With `--token T`, every call must carry the metadata (over HTTP: the header)
//! `authorization: Bearer T`. It stops on Ctrl-C, letting calls in progress finish.

use rpc_core::{CallInfo, RpcError, Server};
use rpc_examples::{GreeterServer, Greetings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(address) = args.next() else {
        eprintln!("usage: server <host:port | socket path> [--token TOKEN]");
        std::process::exit(2);
    };
    let token = match (args.next().as_deref(), args.next()) {
        (Some("--token"), Some(token)) => Some(token),
        (None, _) => None,
        _ => {
            eprintln!("usage: server <host:port | socket path> [--token TOKEN]");
            std::process::exit(2);
        }
    };
    let mut server = Server::new()
        .http(true)
        .add_service(GreeterServer::new(Greetings::default()));
    if let Some(token) = token {
        let expected = format!("Bearer {token}");
        server = server.authorize(move |call: &CallInfo<'_>| {
            match call.metadata().get_str("authorization") {
                Some(value) if value == expected => Ok(()),
                Some(_) => Err(RpcError::permission_denied(
                    "this token may not call the greeter",
                )),
                None => Err(RpcError::unauthenticated(
                    "send `authorization: Bearer <token>`",
                )),
            }
        });
    }
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
