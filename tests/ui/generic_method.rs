use rpc_core::service;

#[service]
pub trait Echo {
    async fn echo<T>(&self, value: T) -> T;
}

fn main() {}
