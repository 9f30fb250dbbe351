//! A Greeter client in its own process; start the `server` example first.
//!
//! ```text
//! cargo run -p rpc-examples --bin client -- 127.0.0.1:4000 Ada
//! cargo run -p rpc-examples --bin client -- /tmp/greeter.sock Ada
//! ```

use rpc_examples::GreeterClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(address), name) = (args.next(), args.next()) else {
        eprintln!("usage: client <host:port | socket path> [name]");
        std::process::exit(2);
    };
    let name = name.unwrap_or_else(|| "world".to_string());
    let client = if address.contains('/') {
        GreeterClient::new(rpc_transport::unix::connect(&address).await?)
    } else {
        GreeterClient::new(rpc_transport::tcp::connect(&address).await?)
    };
    println!("{}", client.hello(name).await?);
    println!(
        "greetings given by the server so far: {}",
        client.count().await?
    );
    Ok(())
}
