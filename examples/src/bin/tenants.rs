//! A multi-tenant server: an asynchronous authentication middleware that asks a key
//! service who a token belongs to, and a rate limit per tenant; then a client that shows
//! both at work, over loopback TCP.
//!
//! ```text
//! cargo run -p rpc-examples --bin tenants
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::governance::{KeyBy, RateLimit};
use rpc_core::middleware::{from_fn, Next, ServerCall};
use rpc_core::{ErrorKind, RpcError, Server};
use rpc_examples::{GreeterClient, GreeterServer, Greetings};

/// Stands for a service that knows which tenant each API token belongs to; asking it takes
/// a network round trip, so the check is asynchronous.
struct KeyService {
    tokens: HashMap<&'static str, &'static str>,
}

impl KeyService {
    async fn tenant_of(&self, token: &str) -> Option<&'static str> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.tokens.get(token).copied()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = Arc::new(KeyService {
        tokens: HashMap::from([("tok-acme", "acme"), ("tok-globex", "globex")]),
    });
    // Who is calling: the token's tenant, passed on to the handler and to the rate limit
    // below as the metadata pair `tenant`.
    let authenticate = from_fn(move |mut call: ServerCall, next: Next<ServerCall>| {
        let keys = Arc::clone(&keys);
        async move {
            let token = call
                .metadata()
                .get_str("authorization")
                .and_then(|value| value.strip_prefix("Bearer "))
                .ok_or_else(|| RpcError::unauthenticated("send `authorization: Bearer <token>`"))?
                .to_owned();
            let tenant = keys
                .tenant_of(&token)
                .await
                .ok_or_else(|| RpcError::unauthenticated("this token is unknown or revoked"))?;
            call.metadata_mut().insert("tenant", tenant);
            next.run(call).await
        }
    });
    // Each tenant may make 5 calls per second, in bursts of up to 3.
    let per_tenant = RateLimit::builder()
        .rate(5, Duration::from_secs(1))
        .burst(3)
        .key_by(KeyBy::Metadata("tenant"))
        .build()?;

    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::new()
        .layer(authenticate)
        .layer(per_tenant)
        .add_service(GreeterServer::new(Greetings::default()));
    tokio::spawn(server.serve(listener));
    println!("server on {addr}: tokens are checked with the key service, 5 calls/s per tenant");

    let client = GreeterClient::new(rpc_transport::tcp::connect(addr).await?);
    let err = client.hello("nobody".into()).await.unwrap_err();
    println!("without a token: {err}");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);

    // acme spends its burst; the fourth call is told when to come back.
    let mut refused = None;
    for i in 1..=4 {
        match client
            .hello(format!("acme #{i}"))
            .metadata("authorization", "Bearer tok-acme")
            .await
        {
            Ok(greeting) => println!("acme call {i}: {greeting}"),
            Err(err) => {
                println!("acme call {i}: {err}");
                refused = Some(err);
            }
        }
    }
    let refused = refused.ok_or("acme's fourth call should have been rate limited")?;
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
    // globex has a bucket of its own.
    let greeting = client
        .hello("globex".into())
        .metadata("authorization", "Bearer tok-globex")
        .await?;
    println!("globex meanwhile: {greeting}");

    let wait = refused
        .retry_after()
        .ok_or("a rate-limited call says when to retry")?;
    println!("acme waits {wait:?}, as told");
    tokio::time::sleep(wait).await;
    let greeting = client
        .hello("acme again".into())
        .metadata("authorization", "Bearer tok-acme")
        .await?;
    println!("acme after waiting: {greeting}");
    Ok(())
}
