//! Methods taking or returning `Streaming<T>`: server streaming, client streaming and both;
//! the stream written as `Streaming<T>` or as a path ending in it; a stream as the only
//! argument; a service whose every method streams its result; items that are `Result`s of
//! the user's error type (typed errors in a stream).

use futures::StreamExt;
use rpc_core::{service, Call, Streaming};
use serde::{Deserialize, Serialize};

#[service]
pub trait Files {
    async fn download(&self, name: String) -> Streaming<Vec<u8>>; // server streaming
    async fn upload(&self, name: String, chunks: Streaming<Vec<u8>>) -> u64; // client streaming
    async fn chat(&self, room: String, messages: Streaming<String>) -> Streaming<String>; // bidi
    async fn stat(&self, name: String) -> Option<u64>; // unary, next to streams
}

pub struct Disk;

impl Files for Disk {
    async fn download(&self, _name: String) -> Streaming<Vec<u8>> {
        Streaming::iter(vec![vec![1, 2, 3], vec![4]])
    }
    async fn upload(&self, _name: String, mut chunks: Streaming<Vec<u8>>) -> u64 {
        let mut total = 0;
        while let Some(Ok(chunk)) = chunks.next().await {
            total += chunk.len() as u64;
        }
        total
    }
    async fn chat(&self, _room: String, messages: Streaming<String>) -> Streaming<String> {
        messages
    }
    async fn stat(&self, _name: String) -> Option<u64> {
        None
    }
}

mod ticker {
    #![no_implicit_prelude]

    /// Every method streams its result, and the stream is written as a path.
    #[::rpc_core::service]
    pub trait Ticker {
        /// Ticks until dropped.
        async fn ticks(&self) -> ::rpc_core::Streaming<u64>;
        /// Echoes every item: the stream is the only argument.
        async fn echo(&self, items: ::rpc_core::Streaming<u32>) -> ::rpc_core::Streaming<u32>;
        /// Compiled out: its types need not even exist.
        #[cfg(any())]
        async fn gone(&self, items: ::rpc_core::Streaming<Missing>) -> ::rpc_core::Streaming<Gone>;
    }
}

/// A stream as the only argument, with a unary result.
#[service]
pub trait Sink {
    async fn count(&self, items: rpc_core::Streaming<String>) -> u64;
}

/// Typed errors in a stream: the items are `Result<T, E>`, which serde handles like any
/// other type.
#[derive(Debug, Serialize, Deserialize)]
pub enum LineError {
    TooLong(usize),
}

#[service]
pub trait Lines {
    async fn read(&self, path: String) -> Streaming<Result<String, LineError>>;
    async fn write(&self, path: String, lines: Streaming<Result<String, LineError>>) -> u64;
    async fn check(
        &self,
        lines: Streaming<std::result::Result<String, LineError>>,
    ) -> Streaming<Result<(), LineError>>;
}

pub struct Text;

impl Lines for Text {
    async fn read(&self, _path: String) -> Streaming<Result<String, LineError>> {
        Streaming::iter(vec![Ok("one".to_owned()), Err(LineError::TooLong(4096))])
    }
    async fn write(&self, _path: String, mut lines: Streaming<Result<String, LineError>>) -> u64 {
        let mut written = 0;
        // The outer `Result` is the stream's own (`RpcError`), the inner one the user's.
        while let Some(Ok(Ok(_line))) = lines.next().await {
            written += 1;
        }
        written
    }
    async fn check(
        &self,
        lines: Streaming<std::result::Result<String, LineError>>,
    ) -> Streaming<Result<(), LineError>> {
        Streaming::new(lines.map(|line| match line {
            Ok(Ok(line)) if line.len() > 80 => Err(LineError::TooLong(line.len())),
            _ => Ok(()),
        }))
    }
}

fn assert_service<S: rpc_core::Service>(_: S) {}

fn main() {
    assert_service(FilesServer::new(Disk));
    let method = |name| FilesClient::DESCRIPTOR.method(name).unwrap();
    let (download, upload, chat, stat) = (
        method("download"),
        method("upload"),
        method("chat"),
        method("stat"),
    );
    assert!(!download.client_streaming && download.server_streaming);
    assert!(upload.client_streaming && !upload.server_streaming);
    assert!(chat.client_streaming && chat.server_streaming);
    assert!(!stat.client_streaming && !stat.server_streaming);

    let _: fn(&FilesClient, String) -> Call<Streaming<Vec<u8>>> = FilesClient::download;
    let _: fn(&FilesClient, String, Streaming<Vec<u8>>) -> Call<u64> = FilesClient::upload;
    let _: fn(&FilesClient, String, Streaming<String>) -> Call<Streaming<String>> =
        FilesClient::chat;
    let _: fn(&ticker::TickerClient) -> Call<Streaming<u64>> = ticker::TickerClient::ticks;
    let _: fn(&ticker::TickerClient, Streaming<u32>) -> Call<Streaming<u32>> =
        ticker::TickerClient::echo;
    let _: fn(&SinkClient, Streaming<String>) -> Call<u64> = SinkClient::count;

    let ticks = ticker::TickerClient::DESCRIPTOR.method("ticks").unwrap();
    assert!(!ticks.client_streaming && ticks.server_streaming);
    let count = SinkClient::DESCRIPTOR.method("count").unwrap();
    assert!(count.client_streaming && !count.server_streaming);

    assert_service(LinesServer::new(Text));
    let _: fn(&LinesClient, String) -> Call<Streaming<Result<String, LineError>>> =
        LinesClient::read;
    let _: fn(&LinesClient, String, Streaming<Result<String, LineError>>) -> Call<u64> =
        LinesClient::write;
    let _: fn(
        &LinesClient,
        Streaming<Result<String, LineError>>,
    ) -> Call<Streaming<Result<(), LineError>>> = LinesClient::check;
}
