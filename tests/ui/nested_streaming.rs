use rpc_core::{service, RpcError, Streaming};

#[service]
pub trait Feeds {
    async fn publish(&self, batches: Vec<Streaming<String>>);
    async fn subscribe(&self, topic: String) -> Result<Streaming<String>, RpcError>;
    async fn maybe(&self, topic: String) -> Option<rpc_core::Streaming<String>>;
    async fn nested(&self) -> Streaming<Streaming<u8>>;
}

fn main() {}
