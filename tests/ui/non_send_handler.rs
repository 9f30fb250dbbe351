//! A handler holding a `std::sync::MutexGuard` across an `.await`: its future is not `Send`,
//! which the generated trait requires of every handler.

use std::sync::Mutex;

use rpc_core::service;

#[service]
pub trait Counter {
    async fn bump(&self) -> u64;
}

pub struct Shared {
    count: Mutex<u64>,
}

async fn persist(_value: u64) {}

impl Counter for Shared {
    async fn bump(&self) -> u64 {
        let mut count = self.count.lock().unwrap();
        *count += 1;
        persist(*count).await;
        *count
    }
}

fn main() {}
