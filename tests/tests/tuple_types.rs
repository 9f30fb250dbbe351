//! Services whose argument tuples could be mistaken for other methods' types: the generated
//! server spells each method's types out, so a `where` clause on another method's result
//! (`(bool, u32): DeserializeOwned`) cannot decide how `add`'s arguments decode.

mod common;

use common::guard;
use futures::StreamExt;
use rpc_core::{service, Server, Streaming};

#[service]
pub trait Shapes {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn pair(&self) -> (bool, u32);
    async fn flags(&self, a: bool, b: u32) -> (i64, i64);
    async fn bytes(&self, a: Vec<u8>, b: Vec<u8>) -> (Vec<u8>, u8);
    async fn sum(&self, items: Streaming<(u8, u8)>) -> (u32, u32);
    async fn split(&self, n: u8) -> Streaming<(bool, u32)>;
}

struct Impl;

impl Shapes for Impl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn pair(&self) -> (bool, u32) {
        (true, 7)
    }
    async fn flags(&self, a: bool, b: u32) -> (i64, i64) {
        (i64::from(a), i64::from(b))
    }
    async fn bytes(&self, mut a: Vec<u8>, b: Vec<u8>) -> (Vec<u8>, u8) {
        a.extend(b);
        let len = a.len() as u8;
        (a, len)
    }
    async fn sum(&self, items: Streaming<(u8, u8)>) -> (u32, u32) {
        items
            .fold((0, 0), |(x, y), item| async move {
                match item {
                    Ok((a, b)) => (x + u32::from(a), y + u32::from(b)),
                    Err(_) => (x, y),
                }
            })
            .await
    }
    async fn split(&self, n: u8) -> Streaming<(bool, u32)> {
        Streaming::iter((0..n).map(|i| (i % 2 == 0, u32::from(i))))
    }
}

#[tokio::test]
async fn methods_of_similar_shapes_keep_their_own_types() {
    let (client_end, server_end) = rpc_transport::memory::pair();
    tokio::spawn(
        Server::new()
            .add_service(ShapesServer::new(Impl))
            .serve_connection(server_end),
    );
    let client = ShapesClient::new(client_end);

    assert_eq!(guard(client.add(2, 3)).await, Ok(5));
    assert_eq!(guard(client.pair()).await, Ok((true, 7)));
    assert_eq!(guard(client.flags(true, 9)).await, Ok((1, 9)));
    assert_eq!(
        guard(client.bytes(vec![1, 2], vec![3])).await,
        Ok((vec![1, 2, 3], 3))
    );
    let items = Streaming::iter([(1u8, 2u8), (3, 4)]);
    assert_eq!(guard(client.sum(items)).await, Ok((4, 6)));
    let got: Vec<_> = guard(client.split(3)).await.unwrap().collect().await;
    assert_eq!(got, vec![Ok((true, 0)), Ok((false, 1)), Ok((true, 2))]);
}
