use rpc_core::service;

#[service]
pub trait Store {
    #[rpc(idempotent = true)]
    async fn get(&self, key: String) -> Option<String>;
}

fn main() {}
