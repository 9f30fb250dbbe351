use rpc_core::service;

#[service]
pub trait Store {
    #[rpc(idempotnet)]
    async fn get(&self, key: String) -> Option<String>;
    async fn put(&self, key: String, value: String);
}

fn main() {}
