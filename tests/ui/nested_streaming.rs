use rpc_core::{service, RpcError, Streaming};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub enum FeedError {
    NoSuchTopic,
}

#[service]
pub trait Feeds {
    async fn publish(&self, batches: Vec<Streaming<String>>);
    async fn subscribe(&self, topic: String) -> Result<Streaming<String>, RpcError>;
    async fn follow(&self, topic: String) -> Result<Streaming<String>, FeedError>;
    async fn maybe(&self, topic: String) -> Option<rpc_core::Streaming<String>>;
    async fn nested(&self) -> Streaming<Streaming<u8>>;
}

fn main() {}
