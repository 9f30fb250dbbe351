use rpc_core::service;

#[service]
pub trait Printer {
    async fn print(&self, text: impl ToString);
}

fn main() {}
