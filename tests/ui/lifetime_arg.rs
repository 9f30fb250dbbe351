use rpc_core::service;

#[service]
pub trait Greeter {
    async fn greet<'a>(&self, name: &'a str) -> String;
    async fn motto(&self) -> &'static str;
    async fn shout<'a>(&'a self, text: String) -> String;
}

fn main() {}
