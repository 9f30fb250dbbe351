//! Typed application errors and per-call timeouts.
//!
//! The service's own errors (`MathError`) travel inside the method's return type; the
//! framework's errors (`RpcError`: timeout, disconnect, ...) wrap the whole call.
//!
//! Run it with `cargo run -p rpc-examples --bin calculator`.

use std::time::Duration;

use rpc_core::{service, ErrorKind, Server};
use serde::{Deserialize, Serialize};

/// What can go wrong in the calculator itself.
#[derive(Debug, Serialize, Deserialize)]
pub enum MathError {
    /// Division by zero.
    DivideByZero,
    /// The result does not fit in an `i64`.
    Overflow,
}

/// A calculator.
#[service]
pub trait Calculator {
    /// `a + b`, or `Overflow`.
    async fn add(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// `a / b`, or `DivideByZero`.
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// Takes `millis` milliseconds to answer.
    async fn slow_square(&self, x: i64, millis: u64) -> i64;
}

struct Calc;

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> Result<i64, MathError> {
        a.checked_add(b).ok_or(MathError::Overflow)
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            Err(MathError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }
    async fn slow_square(&self, x: i64, millis: u64) -> i64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        x * x
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::new()
            .add_service(CalculatorServer::new(Calc))
            .serve(listener),
    );
    let calc = CalculatorClient::new(rpc_transport::tcp::connect(addr).await?);

    // `?` handles the framework's error; the service's result is an ordinary `Result`.
    match calc.div(7, 2).await? {
        Ok(q) => println!("7 / 2 = {q}"),
        Err(e) => println!("7 / 2 failed: {e:?}"),
    }
    match calc.div(7, 0).await? {
        Ok(q) => println!("7 / 0 = {q}"),
        Err(e) => println!("7 / 0 failed: {e:?}"),
    }
    match calc.add(i64::MAX, 1).await? {
        Ok(sum) => println!("MAX + 1 = {sum}"),
        Err(e) => println!("MAX + 1 failed: {e:?}"),
    }

    // A deadline: this call takes 20 ms, well within its 1 s.
    let sq = calc
        .slow_square(12, 20)
        .timeout(Duration::from_secs(1))
        .await?;
    println!("12² = {sq} (within its deadline)");

    // This one would take 2 s: after 50 ms the call fails, and the server stops the handler.
    match calc
        .slow_square(12, 2_000)
        .timeout(Duration::from_millis(50))
        .await
    {
        Ok(sq) => println!("12² = {sq}?!"),
        Err(err) if err.kind() == ErrorKind::DeadlineExceeded => println!("timed out: {err}"),
        Err(err) => return Err(err.into()),
    }
    Ok(())
}
