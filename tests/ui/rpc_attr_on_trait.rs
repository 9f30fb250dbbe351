use rpc_core::service;

#[service]
#[rpc(idempotent)]
pub trait Store {
    async fn get(&self, key: String) -> Option<String>;
}

fn main() {}
