//! etcd as production clusters run it: over mutual TLS, with authentication. A server
//! registers as a user who may write the service's prefix, a client discovers it as a user
//! who may only read it, and calls it.
//!
//! Run it with `cargo run -p rpc-examples --features etcd --bin etcd_secure`. It starts its
//! own `etcd` (`apt-get install etcd-server`, or the binary `ETCD_BIN` names) on free loopback
//! ports, with certificates made at start-up by a throwaway CA: etcd serves TLS only and
//! requires client certificates (`--client-cert-auth`), and has authentication enabled with
//! two users. It exits with a non-zero status if anything fails, so CI can run it.
//!
//! Against an etcd of your own, the same code takes the CA's PEM, a client certificate and
//! key, and the users and passwords from wherever you keep them.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use rpc_core::Server;
use rpc_examples::etcd_process::{Access, EtcdProcess};
use rpc_examples::inventory::{client_builder, endpoints, wait_until, InventoryServer, Replica};
use rpc_transport::etcd::{EtcdDiscovery, EtcdRegistrar, EtcdTls};

const PREFIX: &str = "/services/inventory";
/// The longest anything may take.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let binary = std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
    // The users' roles: the server's may write the prefix, the client's only read it.
    let etcd = EtcdProcess::builder(binary, "secure")
        .patience(PATIENCE)
        .mutual_tls()
        .auth()
        .user(
            "inventory-server",
            "s3rver",
            Access::ReadWrite,
            "/services/inventory/",
        )
        .user(
            "inventory-client",
            "cl1ent",
            Access::Read,
            "/services/inventory/",
        )
        .start()
        .await?;
    let ca = etcd.ca_pem().ok_or("the etcd was started without TLS")?;
    println!(
        "etcd at {} (TLS, client certificates required, authentication on)",
        etcd.url()
    );

    // Server: its own client certificate, and the user that may register.
    let (cert, key) = etcd.client_identity("inventory-server")?;
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::new()
            .add_service(InventoryServer::new(Replica::new("a")))
            .serve(listener),
    );
    let registration = EtcdRegistrar::new([etcd.addr()], PREFIX, "a", addr)
        .tls(EtcdTls::new(ca.clone()).identity(cert, key))
        .auth("inventory-server", "s3rver")
        .ttl(Duration::from_secs(5))
        .register()
        .await?;
    println!(
        "server a on {addr}: registered as {} over mutual TLS as `inventory-server`",
        registration.key()
    );

    // Client: a certificate of its own, and the user that may only read.
    let (cert, key) = etcd.client_identity("inventory-client")?;
    let discovery = EtcdDiscovery::new([etcd.addr()], PREFIX)
        .tls(EtcdTls::new(ca).identity(cert, key))
        .auth("inventory-client", "cl1ent");
    let client = client_builder().discover(discovery);
    if !wait_until(PATIENCE, || !endpoints(&client).is_empty()).await {
        return Err("the client did not discover the server in time".into());
    }
    println!(
        "client: discovered {:?} as `inventory-client`",
        endpoints(&client)
            .into_iter()
            .map(|(key, _)| key)
            .collect::<Vec<_>>()
    );
    let stock = client.stock("apples".into()).await?;
    println!(
        "client: stock(\"apples\") -> {} units, from server {}",
        stock.units, stock.server
    );

    registration.deregister().await?;
    server.abort();
    println!("server a: deregistered; done");
    Ok(())
}
