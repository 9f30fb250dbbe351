//! `#[rpc(idempotent)]` marks a method's descriptor entry, leaves its fingerprint alone and
//! is removed from the trait, so implementations are written as usual.

use rpc_core::service;

#[service]
pub trait Store {
    /// Reads the value under `key`.
    #[rpc(idempotent)]
    async fn get(&self, key: String) -> Option<String>;
    async fn put(&self, key: String, value: String);
}

/// The same signatures, none idempotent.
#[service]
pub trait Plain {
    async fn get(&self, key: String) -> Option<String>;
    async fn put(&self, key: String, value: String);
}

pub struct Nothing;

impl Store for Nothing {
    async fn get(&self, _key: String) -> Option<String> {
        None
    }
    async fn put(&self, _key: String, _value: String) {}
}

fn assert_service<S: rpc_core::Service>(_: S) {}

fn main() {
    assert_service(StoreServer::new(Nothing));
    let get = StoreClient::DESCRIPTOR.method("get").unwrap();
    let put = StoreClient::DESCRIPTOR.method("put").unwrap();
    assert!(get.idempotent);
    assert!(!put.idempotent);
    // Idempotence is not on the wire.
    let plain = PlainClient::DESCRIPTOR.method("get").unwrap();
    assert!(!plain.idempotent);
    assert_eq!(get.fingerprint, plain.fingerprint);
    let server_get = StoreServer::<Nothing>::DESCRIPTOR.method("get").unwrap();
    assert!(server_get.idempotent);
    let _: fn() -> rpc_core::ClientBuilder<StoreClient> = StoreClient::builder;
}
