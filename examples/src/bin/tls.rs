//! TLS and a bearer token: a server that speaks only TLS and serves only callers with the
//! right token, and clients with the token, without it, with a wrong one, and one that does
//! not trust the server's CA.
//!
//! Run it with `cargo run -p rpc-examples --features tls --bin tls`. It makes a throwaway CA
//! and server certificate when it starts; in production they come from files
//! (`std::fs::read`).

use rpc_core::{CallInfo, RpcError, Server};
use rpc_examples::{GreeterClient, GreeterServer, Greetings};
use rpc_transport::tls;

/// The token a caller must send as `authorization: Bearer <token>`. A real server keeps its
/// tokens (or the keys that verify them) out of its source.
const TOKEN: &str = "example-token";

/// The Authorize hook: checks every call's token before its arguments are decoded, so a
/// refused call never reaches the handler.
fn check_token(call: &CallInfo<'_>) -> Result<(), RpcError> {
    match call.metadata().get_str("authorization") {
        Some(value) if value.strip_prefix("Bearer ") == Some(TOKEN) => Ok(()),
        Some(_) => Err(RpcError::permission_denied(
            "this token may not call the greeter",
        )),
        None => Err(RpcError::unauthenticated(
            "send `authorization: Bearer <token>`",
        )),
    }
}

/// A CA's certificate (PEM), and a server certificate for `name` it issued with its key.
struct Certificates {
    ca: String,
    server_cert: String,
    server_key: String,
}

fn make_certificates(ca_name: &str, name: &str) -> Result<Certificates, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![name.to_string()])?.signed_by(&key, &*ca)?;
    Ok(Certificates {
        ca: ca.pem(),
        server_cert: cert.pem(),
        server_key: key.serialize_pem(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = make_certificates("example CA", "localhost")?;

    // Server: TLS with the server's certificate, and the token check on every call.
    let config = tls::server_config(&certs.server_cert, &certs.server_key)?;
    let listener = tls::bind("127.0.0.1:0", config).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::new()
            .authorize(check_token)
            .add_service(GreeterServer::new(Greetings::default()))
            .serve(listener),
    );
    println!("TLS server listening on {addr}, certificate for `localhost`");

    // A client that trusts the CA and sends the token with every call.
    let config = tls::client_config(&certs.ca)?;
    let client = GreeterClient::builder()
        .metadata("authorization", format!("Bearer {TOKEN}"))
        .connect(tls::connector(addr, "localhost", config.clone()));
    let greeting = client.hello("Ada".into()).await?;
    println!("with the token:    hello(\"Ada\") -> {greeting:?}");

    // The same server, without the token: the call is refused before the handler runs.
    let transport = tls::connect(addr, "localhost", config).await?;
    let client = GreeterClient::new(transport);
    match client.hello("Mallory".into()).await {
        Ok(greeting) => println!("without a token:  unexpectedly answered {greeting:?}"),
        Err(err) => println!("without a token:  {:?} ({err})", err.kind()),
    }
    // ...and with a wrong one, on the same connection.
    let call = client
        .hello("Mallory".into())
        .metadata("authorization", "Bearer guessed");
    match call.await {
        Ok(greeting) => println!("a wrong token:    unexpectedly answered {greeting:?}"),
        Err(err) => println!("a wrong token:    {:?} ({err})", err.kind()),
    }

    // A client that does not trust the server's CA refuses the server's certificate.
    let stranger = make_certificates("some other CA", "localhost")?;
    let config = tls::client_config(&stranger.ca)?;
    match tls::connect(addr, "localhost", config).await {
        Ok(_) => println!("untrusted CA:     unexpectedly connected"),
        Err(err) => println!("untrusted CA:     io {:?} ({err})", err.kind()),
    }

    let count =
        GreeterClient::new(tls::connect(addr, "localhost", tls::client_config(&certs.ca)?).await?)
            .count()
            .metadata("authorization", format!("Bearer {TOKEN}"))
            .await?;
    println!("the handler ran {count} time(s): only for the call with the token");
    Ok(())
}
