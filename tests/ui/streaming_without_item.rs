use rpc_core::{service, Streaming};

#[service]
pub trait Logs {
    async fn tail(&self, name: String) -> Streaming;
    async fn push(&self, lines: Streaming<String, u64>);
}

fn main() {}
