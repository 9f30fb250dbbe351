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
//! Against an etcd of your own, set `ETCD_ENDPOINTS` (comma-separated `host:port`s), and as
//! it needs: `ETCD_CA_FILE` (the PEM of the CA that signed etcd's certificate: TLS),
//! `ETCD_CERT_FILE` and `ETCD_KEY_FILE` (a client certificate and key, for
//! `--client-cert-auth`), `ETCD_USER` and `ETCD_PASSWORD` (a user whose role may write
//! `/services/inventory/`; the server and the client both use it then).

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

/// How the server and the client reach etcd: endpoints, and each one's TLS and user.
struct Settings {
    endpoints: Vec<String>,
    server: (Option<EtcdTls>, Option<(String, String)>),
    client: (Option<EtcdTls>, Option<(String, String)>),
}

/// The etcd of `ETCD_ENDPOINTS` and the files and user the environment names.
fn from_environment(endpoints: &str) -> Result<Settings, Box<dyn Error>> {
    let read = |var: &str| -> Result<Option<String>, Box<dyn Error>> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(path) => std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|err| format!("{var}={}: {err}", path.to_string_lossy()).into()),
        }
    };
    let tls = match (
        read("ETCD_CA_FILE")?,
        read("ETCD_CERT_FILE")?,
        read("ETCD_KEY_FILE")?,
    ) {
        (None, _, _) => None,
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls::new(ca).identity(cert, key)),
        (Some(ca), _, _) => Some(EtcdTls::new(ca)),
    };
    let user = match (std::env::var("ETCD_USER"), std::env::var("ETCD_PASSWORD")) {
        (Ok(user), Ok(password)) => Some((user, password)),
        _ => None,
    };
    Ok(Settings {
        endpoints: endpoints.split(',').map(str::to_string).collect(),
        server: (tls.clone(), user.clone()),
        client: (tls, user),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Kept until the end: dropping it stops the etcd it started.
    let mut own_etcd = None;
    let settings = match std::env::var("ETCD_ENDPOINTS") {
        Ok(endpoints) => {
            println!("etcd at {endpoints} (from ETCD_ENDPOINTS)");
            from_environment(&endpoints)?
        }
        Err(_) => {
            let etcd = start_etcd().await?;
            let settings = own_settings(&etcd)?;
            own_etcd = Some(etcd);
            settings
        }
    };
    run(settings).await?;
    drop(own_etcd);
    Ok(())
}

/// An etcd of its own, as production clusters run it.
async fn start_etcd() -> Result<EtcdProcess, Box<dyn Error>> {
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
    println!(
        "etcd at {} (TLS, client certificates required, authentication on)",
        etcd.url()
    );
    Ok(etcd)
}

/// The server and the client each with a client certificate of their own, and a user.
fn own_settings(etcd: &EtcdProcess) -> Result<Settings, Box<dyn Error>> {
    let ca = etcd.ca_pem().ok_or("the etcd was started without TLS")?;
    let (cert, key) = etcd.client_identity("inventory-server")?;
    let server_tls = EtcdTls::new(ca.clone()).identity(cert, key);
    let (cert, key) = etcd.client_identity("inventory-client")?;
    let client_tls = EtcdTls::new(ca).identity(cert, key);
    Ok(Settings {
        endpoints: vec![etcd.addr()],
        server: (
            Some(server_tls),
            Some(("inventory-server".into(), "s3rver".into())),
        ),
        client: (
            Some(client_tls),
            Some(("inventory-client".into(), "cl1ent".into())),
        ),
    })
}

async fn run(settings: Settings) -> Result<(), Box<dyn Error>> {
    // Server: its TLS settings, and the user that may register.
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::new()
            .add_service(InventoryServer::new(Replica::new("a")))
            .serve(listener),
    );
    let mut registrar =
        EtcdRegistrar::new(&settings.endpoints, PREFIX, "a", addr).ttl(Duration::from_secs(5));
    if let Some(tls) = settings.server.0 {
        registrar = registrar.tls(tls);
    }
    if let Some((user, password)) = &settings.server.1 {
        registrar = registrar.auth(user, password);
    }
    let registration = registrar.register().await?;
    println!(
        "server a on {addr}: registered as {}{}",
        registration.key(),
        as_user(&settings.server.1)
    );

    // Client: its TLS settings, and its user (one that may only read, in an etcd of its own).
    let mut discovery = EtcdDiscovery::new(&settings.endpoints, PREFIX);
    if let Some(tls) = settings.client.0 {
        discovery = discovery.tls(tls);
    }
    if let Some((user, password)) = &settings.client.1 {
        discovery = discovery.auth(user, password);
    }
    let client = client_builder().discover(discovery);
    if !wait_until(PATIENCE, || !endpoints(&client).is_empty()).await {
        return Err("the client did not discover the server in time".into());
    }
    println!(
        "client: discovered {:?}{}",
        endpoints(&client)
            .into_iter()
            .map(|(key, _)| key)
            .collect::<Vec<_>>(),
        as_user(&settings.client.1)
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

/// ` as `user`` for a user, nothing without.
fn as_user(user: &Option<(String, String)>) -> String {
    user.as_ref()
        .map_or_else(String::new, |(user, _)| format!(" as `{user}`"))
}
