//! `Bytes` and `Vec<u8>` arguments and results: they arrive whole over every transport, and
//! large buffers travel as parts of their own (sent from the caller's buffer, received as
//! slices of the frame they came in), which these tests observe through the public API.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{guard, Harness, KINDS};
use futures::{Sink, Stream};
use rpc_core::{service, Frame, Server, Streaming};

#[service]
trait Blobs {
    async fn echo(&self, data: Bytes) -> Bytes;
    async fn echo_vec(&self, data: Vec<u8>) -> Vec<u8>;
    /// Where `b` starts relative to the end of `a`, when both are large.
    async fn adjacent(&self, a: Bytes, key: String, b: Bytes) -> Option<usize>;
    async fn mixed(
        &self,
        head: u32,
        data: Bytes,
        tail: Vec<u8>,
        name: String,
    ) -> (u32, usize, usize, String);
    async fn pieces(&self, count: u32, size: u32) -> Streaming<Bytes>;
    async fn total(&self, items: Streaming<Bytes>) -> u64;
}

#[derive(Clone)]
struct BlobsImpl;

impl Blobs for BlobsImpl {
    async fn echo(&self, data: Bytes) -> Bytes {
        data
    }
    async fn echo_vec(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
    async fn adjacent(&self, a: Bytes, key: String, b: Bytes) -> Option<usize> {
        let end = a.as_ptr() as usize + a.len();
        (b.as_ptr() as usize).checked_sub(end + key.len())
    }
    async fn mixed(
        &self,
        head: u32,
        data: Bytes,
        tail: Vec<u8>,
        name: String,
    ) -> (u32, usize, usize, String) {
        (head, data.len(), tail.len(), name)
    }
    async fn pieces(&self, count: u32, size: u32) -> Streaming<Bytes> {
        let item = Bytes::from(vec![3u8; size as usize]);
        Streaming::iter((0..count).map(move |_| item.clone()))
    }
    async fn total(&self, mut items: Streaming<Bytes>) -> u64 {
        let mut total = 0;
        while let Some(Ok(item)) = items.next().await {
            total += item.len() as u64;
        }
        total
    }
}

fn payload(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

const SIZES: [usize; 7] = [0, 1, 100, 4095, 4096, 100_000, 3 << 20];

async fn client_of(kind: common::Kind) -> (BlobsClient, Harness) {
    let mut harness =
        Harness::start(kind, Server::new().add_service(BlobsServer::new(BlobsImpl))).await;
    let client = BlobsClient::new(harness.connect().await);
    (client, harness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_buffers_of_every_size_arrive_whole() {
    for kind in KINDS {
        let (client, _harness) = client_of(kind).await;
        for len in SIZES {
            let data = payload(len);
            assert_eq!(
                guard(client.echo(data.clone())).await.unwrap(),
                data,
                "{kind:?} {len}"
            );
            assert_eq!(
                guard(client.echo_vec(data.to_vec())).await.unwrap(),
                data,
                "{kind:?} {len}"
            );
            let (head, data_len, tail_len, name) =
                guard(client.mixed(7, data.clone(), vec![1; len / 2], "n".repeat(len % 300)))
                    .await
                    .unwrap();
            assert_eq!((head, data_len, tail_len), (7, len, len / 2), "{kind:?}");
            assert_eq!(name.len(), len % 300);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_buffer_streams_arrive_whole() {
    for kind in KINDS {
        let (client, _harness) = client_of(kind).await;
        for size in [0u32, 16, 5000, 200_000] {
            let mut items = guard(client.pieces(20, size)).await.unwrap();
            let mut count = 0;
            while let Some(item) = guard(items.next()).await {
                let item = item.unwrap();
                assert_eq!(item.len(), size as usize, "{kind:?}");
                assert!(item.iter().all(|&b| b == 3));
                count += 1;
            }
            assert_eq!(count, 20, "{kind:?}");
            let sent = Streaming::iter((0..20).map(move |_| payload(size as usize)));
            let total = guard(client.total(sent)).await.unwrap();
            assert_eq!(total, 20 * u64::from(size), "{kind:?}");
        }
    }
}

/// Large buffers are reused from call to call (`rpc_core::buffers`), but never one that
/// something still refers to: `Bytes` results the caller holds keep their contents while
/// later calls, some of them at once, move other large payloads through the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_buffers_never_touch_what_a_caller_still_holds() {
    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(seed + 7) >> 3) as u8 ^ seed as u8)
            .collect()
    }
    const LEN: usize = 300_000;
    for kind in KINDS {
        let (client, _harness) = client_of(kind).await;
        let mut held = Vec::new();
        for round in 0..6 {
            let bytes = guard(client.echo(Bytes::from(pattern(round, LEN))))
                .await
                .unwrap();
            held.push((round, bytes));
            let calls = (0..4).map(|i| {
                let seed = 100 + round * 10 + i;
                let client = client.clone();
                async move { (seed, client.echo_vec(pattern(seed, LEN + i)).await) }
            });
            for (seed, result) in guard(futures::future::join_all(calls)).await {
                let back = result.unwrap();
                assert!(
                    back == pattern(seed, back.len()),
                    "{kind:?}: call {seed} came back changed"
                );
            }
        }
        for (round, bytes) in &held {
            assert!(
                bytes[..] == pattern(*round, LEN)[..],
                "{kind:?}: the result of round {round} changed while the caller held it"
            );
        }
    }
}

/// Two large `Bytes` arguments of one request reach the handler as slices of the one buffer
/// the request frame was read into, where they lie as they were sent (the second right after
/// the first, the string and the second's length): neither was copied out of the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_buffers_are_slices_of_the_frame() {
    for kind in KINDS {
        let (client, _harness) = client_of(kind).await;
        let (a, b) = (payload(50_000), payload(60_000));
        let gap = guard(client.adjacent(a, "key".to_string(), b))
            .await
            .unwrap();
        // Between them: the string's length (1 byte), then `b`'s length (a varint of
        // 60,000: 3 bytes).
        assert_eq!(gap, Some(1 + 3), "{kind:?}");
    }
}

/// A transport that records the addresses of the parts of the frames it sends.
struct Recording<T> {
    inner: T,
    parts: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl<T: rpc_core::Transport> Stream for Recording<T> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<T: rpc_core::Transport> Sink<Frame> for Recording<T> {
    type Error = std::io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> std::io::Result<()> {
        let parts = frame.parts().map(|p| (p.as_ptr() as usize, p.len()));
        self.parts.lock().unwrap().extend(parts);
        Pin::new(&mut self.inner).start_send(frame)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A large `Bytes` argument, a large `Vec<u8>` argument and a large stream item are handed
/// to the transport as parts of their own: the caller's buffers, not copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_buffers_are_parts_of_the_frame() {
    for kind in KINDS {
        let mut harness =
            Harness::start(kind, Server::new().add_service(BlobsServer::new(BlobsImpl))).await;
        let parts = Arc::new(Mutex::new(Vec::new()));
        let client = BlobsClient::new(Recording {
            inner: harness.connect().await,
            parts: Arc::clone(&parts),
        });
        let sent = |buf: (usize, usize)| parts.lock().unwrap().contains(&buf);

        let data = payload(100_000);
        let at = (data.as_ptr() as usize, data.len());
        assert_eq!(guard(client.echo(data)).await.unwrap().len(), 100_000);
        assert!(sent(at), "{kind:?}: the Bytes argument was copied");

        let data = vec![9u8; 100_000];
        let at = (data.as_ptr() as usize, data.len());
        assert_eq!(guard(client.echo_vec(data)).await.unwrap().len(), 100_000);
        assert!(sent(at), "{kind:?}: the Vec<u8> argument was copied");

        let item = payload(70_000);
        let at = (item.as_ptr() as usize, item.len());
        let items = Streaming::iter([item]);
        assert_eq!(guard(client.total(items)).await.unwrap(), 70_000);
        assert!(sent(at), "{kind:?}: the stream item was copied");

        // A small buffer is copied into the frame (cheaper than a part of its own).
        let small = payload(100);
        let at = (small.as_ptr() as usize, small.len());
        guard(client.echo(small)).await.unwrap();
        assert!(!sent(at), "{kind:?}");
    }
}

/// A request body whose byte buffer claims more bytes than the frame holds fails that call
/// with `Protocol`; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_buffer_length_fails_the_call_only() {
    use common::wire::{self, RawPeer};
    for kind in KINDS {
        let mut harness =
            Harness::start(kind, Server::new().add_service(BlobsServer::new(BlobsImpl))).await;
        let mut peer = RawPeer(harness.connect().await);
        peer.send(&wire::hello(&BlobsClient::DESCRIPTOR)).await;
        let echo = BlobsClient::DESCRIPTOR
            .methods
            .iter()
            .position(|m| m.name == "echo")
            .unwrap() as u32;
        // A length of 200 (one byte), then 3 bytes.
        peer.send(&wire::request(1, echo, None, vec![200, 1, 2, 3]))
            .await;
        let (code, message) = peer.expect_error(1).await;
        assert_eq!(code, 5, "{kind:?}: {message}"); // Protocol
        assert!(message.contains("longer than the message"), "{message}");
        let fine = Bytes::from_static(b"fine");
        peer.send(&wire::request(2, echo, None, wire::body(&(fine.clone(),))))
            .await;
        let back: Bytes = peer.expect_ok(2).await;
        assert_eq!(back, fine, "{kind:?}");
    }
}
