use rpc_core::service;

#[service]
pub trait Users {
    async fn get_user(&self, id: u64) -> String;
    #[allow(non_snake_case)]
    async fn getUser(&self, id: u64) -> String;
}

fn main() {}
