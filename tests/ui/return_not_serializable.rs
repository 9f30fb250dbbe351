use rpc_core::service;

pub struct Report {
    pub lines: Vec<String>,
}

#[service]
pub trait Reporter {
    async fn report(&self, day: u32) -> Report;
}

fn main() {}
