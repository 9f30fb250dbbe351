use rpc_core::{service, Streaming};

#[service]
pub trait Sync {
    async fn merge(&self, left: Streaming<u64>, right: Streaming<u64>) -> u64;
}

fn main() {}
