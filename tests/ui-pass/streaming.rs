//! Methods taking or returning `Streaming<T>`: server streaming, client streaming and both;
//! the stream written as `Streaming<T>` or as a path ending in it; a stream as the only
//! argument; a service whose every method streams its result.

use futures::StreamExt;
use rpc_core::{service, Call, Streaming};

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
}
