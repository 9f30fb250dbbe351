//! The main demo: a server and a client in one process, talking over TCP on loopback.
//!
//! Run it with `cargo run -p rpc-examples --bin hello`.

use rpc_core::Server;
use rpc_examples::{GreeterClient, GreeterServer, Greetings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Server: bind a free port on loopback and serve the Greeter there in the background.
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::new()
            .add_service(GreeterServer::new(Greetings::default()))
            .serve(listener),
    );
    println!("server listening on {addr}");

    // Client: connect, then call the trait's methods as if they were local async fns.
    let client = GreeterClient::new(rpc_transport::tcp::connect(addr).await?);
    for name in ["Ada", "Grace", "Barbara"] {
        let greeting = client.hello(name.to_string()).await?;
        println!("hello({name:?}) -> {greeting:?}");
    }

    // Calls made at the same time share the one connection.
    let (a, b) = tokio::join!(client.hello("Edsger".into()), client.count());
    println!("concurrently: hello -> {:?}, count -> {:?}", a?, b?);

    println!(
        "the server has given {} greetings; done",
        client.count().await?
    );
    Ok(())
}
