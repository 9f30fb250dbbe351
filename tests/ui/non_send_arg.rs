use rpc_core::service;
use serde::{Deserialize, Serialize};

/// Serializable, but not `Send`: the server may run the handler on another thread.
#[derive(Serialize, Deserialize)]
pub struct NotSend(#[serde(skip)] std::marker::PhantomData<*const u8>);

#[service]
pub trait Sink {
    async fn push(&self, item: NotSend);
}

fn main() {}
