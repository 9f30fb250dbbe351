use rpc_core::service;

#[service(nmae = "Calc")]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
