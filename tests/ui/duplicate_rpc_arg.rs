use rpc_core::service;

#[service]
pub trait Store {
    #[rpc(idempotent, idempotent)]
    async fn get(&self, key: String) -> Option<String>;
    #[rpc(idempotent)]
    #[rpc(idempotent)]
    async fn len(&self) -> u64;
}

fn main() {}
