use rpc_core::service;

#[service]
pub trait Geometry {
    async fn distance(&self, (x, y): (f64, f64)) -> f64;
    async fn ignore(&self, _: u8);
}

fn main() {}
