//! The user's view of the framework as its public contract states it (the generated items'
//! names, the `RpcError` kinds, the transport entry points): if this stops compiling or
//! behaving, code outside this repository written against that contract breaks.
#![allow(unused_imports)]

use rpc_core::{service, ErrorKind, RpcError, Server};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
pub enum MathError {
    DivideByZero,
}

/// Doc comments on the trait and its methods carry over to the generated client.
#[service]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    async fn reset(&self);
}

#[derive(Clone)]
struct Calc;
impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            Err(MathError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }
    async fn reset(&self) {}
}

#[tokio::test]
async fn the_quick_start_runs_as_written() -> Result<(), Box<dyn std::error::Error>> {
    // server
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::new()
            .add_service(CalculatorServer::new(Calc))
            .serve(listener),
    );

    // client
    let client = CalculatorClient::new(rpc_transport::tcp::connect(addr).await?);
    let sum: i64 = client.add(1, 2).await?; // Result<i64, RpcError>
    let q = client.div(7, 0).timeout(Duration::from_millis(50)).await?; // Result<Result<i64, MathError>, RpcError>
    assert_eq!(sum, 3);
    assert!(matches!(q, Err(MathError::DivideByZero)));
    client.reset().await?;

    // unit test: same code, no sockets
    let (client_end, server_end) = rpc_transport::memory::pair();
    tokio::spawn(
        Server::new()
            .add_service(CalculatorServer::new(Calc))
            .serve_connection(server_end),
    );
    let client = CalculatorClient::new(client_end);
    assert_eq!(client.add(2, 2).await?, 4);
    Ok(())
}

#[test]
fn the_generated_items_have_the_contracted_shapes() {
    fn clone_send_sync<T: Clone + Send + Sync>() {}
    fn service<T: rpc_core::Service>() {}
    fn wire<T: Serialize + for<'de> Deserialize<'de>>() {}
    fn copy_eq_debug<T: Copy + Eq + std::fmt::Debug>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    clone_send_sync::<CalculatorClient>();
    service::<CalculatorServer<Calc>>();
    wire::<CalculatorRequest>();
    wire::<CalculatorResponse>();
    copy_eq_debug::<ErrorKind>();
    error::<RpcError>();
    let _ = CalculatorRequest::Add { a: 1, b: 2 };
    let _ = CalculatorRequest::Reset {};
    let _ = CalculatorResponse::Add(3);
    let _ = CalculatorResponse::Reset(());
    assert_eq!(CalculatorClient::DESCRIPTOR.name, "Calculator");
    let _: fn() -> ErrorKind = || RpcError::new(ErrorKind::Internal, "x").kind();
}

#[tokio::test]
async fn the_serve_futures_are_send_and_static() {
    fn spawnable<F: std::future::Future + Send + 'static>(_: &F) {}
    let (listener, _connector) = rpc_transport::memory::listener();
    let serve = Server::new()
        .add_service(CalculatorServer::new(Calc))
        .serve(listener);
    spawnable(&serve);
    let (_client_end, server_end) = rpc_transport::memory::pair();
    let one = Server::new()
        .add_service(CalculatorServer::new(Calc))
        .serve_connection(server_end);
    spawnable(&one);
    let (listener, _connector) = rpc_transport::memory::listener();
    let graceful = Server::new()
        .add_service(CalculatorServer::new(Calc))
        .serve_with_shutdown(listener, async {});
    spawnable(&graceful);
}
