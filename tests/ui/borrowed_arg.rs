use rpc_core::service;

#[service]
pub trait Greeter {
    async fn greet(&self, name: &str) -> String;
    async fn checksum(&self, data: &[u8]) -> u32;
}

fn main() {}
