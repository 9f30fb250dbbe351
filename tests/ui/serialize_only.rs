//! A type that is `Serialize` but not `Deserialize`, as an argument and as the items of a
//! result stream: one error, at its first use.

use rpc_core::{service, Streaming};
use serde::Serialize;

#[derive(Serialize)]
pub struct Reading {
    pub celsius: f64,
}

#[service]
pub trait Sensor {
    async fn calibrate(&self, reference: Reading) -> f64;
    async fn watch(&self, every_ms: u64) -> Streaming<Reading>;
}

fn main() {}
