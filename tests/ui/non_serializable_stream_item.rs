use rpc_core::{service, Streaming};

pub struct Frame {
    pub pixels: Vec<u8>,
}

#[service]
pub trait Camera {
    async fn record(&self, frames: Streaming<Frame>) -> u64;
}

fn main() {}
