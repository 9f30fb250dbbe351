use rpc_core::service;

#[service]
pub trait Store {
    #[rpc]
    async fn get(&self, key: String) -> Option<String>;
    #[rpc()]
    async fn len(&self) -> u64;
}

fn main() {}
