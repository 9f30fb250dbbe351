use rpc_core::service;

#[service]
pub struct Calculator;

fn main() {}
