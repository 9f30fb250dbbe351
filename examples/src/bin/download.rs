//! A large download by server streaming, in constant memory on both sides.
//!
//! Run it with `cargo run --release -p rpc-examples --bin download` (add a size in MiB to
//! change the default of 512).
//!
//! The server reads a "file" (generated here, chunk by chunk) and returns it as a
//! `Streaming<Vec<u8>>`; the client checks each chunk as it arrives. Credit-based flow
//! control means the server produces a chunk only when the client has room for it, so
//! neither side ever holds more than a window of chunks (`rpc_core::STREAM_BYTE_WINDOW`,
//! 4 MiB counting 64 bytes more per chunk; `rpc_core::STREAM_WINDOW` chunks with a peer of
//! the previous protocol revision) however large the file: the peak memory printed at the
//! end stays the same for 100 MiB or 10 GiB.

use std::time::Instant;

use futures::StreamExt;
use rpc_core::{service, Server, Streaming};

/// Size of each chunk the server sends.
const CHUNK: usize = 64 << 10;

#[service]
pub trait Files {
    /// The file's bytes, chunk by chunk.
    async fn download(&self, name: String, size: u64) -> Streaming<Vec<u8>>;
}

struct Disk;

impl Files for Disk {
    async fn download(&self, name: String, size: u64) -> Streaming<Vec<u8>> {
        println!("server: sending {name} ({} MiB)", size >> 20);
        let chunks = size.div_ceil(CHUNK as u64);
        // A chunk is made only when the stream is polled for it, i.e. when the client has
        // granted credit: this is where a real server would read the next piece of a file.
        Streaming::new(futures::stream::iter(0..chunks).map(move |i| {
            let len = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
            vec![(i % 251) as u8; len]
        }))
    }
}

/// The process's peak resident memory, in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("not a size in MiB: {arg}"))?,
        None => 512,
    };
    let size = mib << 20;

    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::new()
            .add_service(FilesServer::new(Disk))
            .serve(listener),
    );

    let client = FilesClient::new(rpc_transport::tcp::connect(addr).await?);
    let started = Instant::now();
    let mut chunks = client.download("big.iso".into(), size).await?;
    let (mut received, mut index) = (0u64, 0u64);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if chunk.first() != Some(&((index % 251) as u8)) {
            return Err(format!("chunk {index} is corrupt").into());
        }
        received += chunk.len() as u64;
        index += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    if received != size {
        return Err(format!("received {received} bytes of {size}").into());
    }
    println!(
        "client: received {} MiB in {index} chunks in {secs:.2} s ({:.0} MB/s)",
        received >> 20,
        received as f64 / secs / 1e6
    );
    if let Some(peak) = peak_rss_mib() {
        println!("peak memory of the whole process (client and server): {peak:.1} MiB");
    }
    Ok(())
}
