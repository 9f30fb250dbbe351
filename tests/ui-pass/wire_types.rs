//! User types in every position, a type named `S` (which the server's own type parameter
//! must not shadow), a type used by several methods, and a service with no methods.

use rpc_core::{service, Server};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct S {
    pub value: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Failure {
    Missing,
}

#[service]
pub trait Store {
    async fn put(&self, key: String, value: S) -> Result<(), Failure>;
    async fn get(&self, key: String) -> Result<S, Failure>;
    async fn all(&self) -> Vec<(String, S)>;
}

#[service]
pub trait Empty {}

#[derive(Clone)]
struct Mem;

impl Store for Mem {
    async fn put(&self, _key: String, _value: S) -> Result<(), Failure> {
        Ok(())
    }
    async fn get(&self, _key: String) -> Result<S, Failure> {
        Err(Failure::Missing)
    }
    async fn all(&self) -> Vec<(String, S)> {
        Vec::new()
    }
}

struct Nothing;
impl Empty for Nothing {}

fn main() {
    let _server = Server::new()
        .add_service(StoreServer::new(Mem))
        .add_service(EmptyServer::new(Nothing));
    let _: fn(rpc_core::Client) -> StoreClient = StoreClient::from_client;
    fn assert_serde<T: Serialize + serde::de::DeserializeOwned>() {}
    assert_serde::<StoreRequest>();
    assert_serde::<StoreResponse>();
    assert_serde::<EmptyRequest>();
    assert_serde::<EmptyResponse>();
}
