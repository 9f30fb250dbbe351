use rpc_core::service;

#[service]
pub trait Calculator {
    const PRECISION: u32;
    type Number;
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
