//! The benchmark: the workloads of the shared benchmark specification, against a server
//! started in this process, over TCP, Unix sockets and the in-memory transport.
//!
//! ```text
//! cargo run --release -p rpc-examples --bin bench                     # everything, a table
//! cargo run --release -p rpc-examples --bin bench -- --quick --json   # smoke test, JSON lines
//! cargo run --release -p rpc-examples --bin bench -- --transport tcp --workload seq,conc
//! cargo run --release -p rpc-examples --features zstd,lz4 --bin bench -- --transport tcp --workload bulkz
//! cargo run --release -p rpc-examples --features nats --bin bench -- --transport nats,tcp --workload seq,conc,bulk
//! ```
//!
//! Workloads: `seq` (one caller, sequential `add`: calls/s, p50, p99), `conc` (64 tasks
//! sharing one connection: calls/s), `bulk` (sequential 1 MiB `echo` of a `Vec<u8>`: MB/s,
//! and the peak resident memory; then the same with `Bytes`, variant `bytes`), `conns` (TCP only: 5,000 connections that each made one call and then
//! idle: resident memory per connection, client and server ends together), `stream` (one
//! server-streaming call: items/s for 200,000 16-byte items, variant `16B`, and MB/s for
//! 2,048 items of 64 KiB, variant `64KiB`, with the peak resident memory), `bulkz` (`bulk`
//! with a compressible 1 MiB text payload, once uncompressed, variant `text/none`, and once
//! per codec compiled in, `text/zstd` and `text/lz4` (features `zstd`, `lz4`): MB/s of
//! payload, and `wire_bytes`, the bytes both ways counted at the client's transport during
//! the measured calls, with `wire_ratio`, those bytes over the payload's both ways).
//!
//! One more workload is run only when asked for (`--workload hedge`), as it is not part of
//! the specification: `hedge` (TCP only: three servers behind one balancing client, one of
//! them 10 ms slower on one call in ten; one caller, sequential idempotent calls: p50 and
//! p99 without hedging, variant `off`, and hedging at the 95th percentile of recent
//! latencies, variant `p95`, with the hedges sent and won).
//!
//! One more transport is measured only when named (`--transport nats`, with the feature
//! `nats`), as it is not part of the specification either: each connection through a NATS
//! server on loopback (the one at `NATS_URL`, or a `nats-server` it starts), the client and
//! the server each with a NATS connection of their own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Sink, Stream, StreamExt};
use rpc_core::balance::{Endpoint, EndpointState, Hedge};
use rpc_core::compress::{Codec, Compression};
use rpc_core::{service, Server, Streaming, Transport};

/// The benchmark service of the specification.
#[service]
pub trait Bench {
    /// Adds two numbers.
    async fn add(&self, a: u64, b: u64) -> u64;
    /// Returns its argument.
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    /// Returns its argument, a `Bytes` (the `bytes` variant of `bulk`).
    async fn echo_bytes(&self, data: Bytes) -> Bytes;
    /// `count` items of `size` bytes.
    async fn items(&self, count: u32, size: u32) -> Streaming<Vec<u8>>;
}

#[derive(Clone)]
struct BenchImpl;

impl Bench for BenchImpl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
    async fn echo_bytes(&self, data: Bytes) -> Bytes {
        data
    }
    async fn items(&self, count: u32, size: u32) -> Streaming<Vec<u8>> {
        let item = vec![7u8; size as usize];
        Streaming::new(futures::stream::repeat(item).take(count as usize))
    }
}

/// The service of the `hedge` workload.
#[service]
pub trait Tail {
    /// Returns `key`; on a slow server, one call in ten takes 10 ms longer. Only reads:
    /// safe to send twice, so a hedging client may.
    #[rpc(idempotent)]
    async fn get(&self, key: u64) -> u64;
}

#[derive(Clone)]
struct TailImpl {
    slow: bool,
    calls: Arc<AtomicU64>,
}

impl Tail for TailImpl {
    async fn get(&self, key: u64) -> u64 {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        // A fixed pseudo-random tenth of the calls (splitmix64 of the call's number), so
        // the slow calls do not line up with any balancing pattern.
        if self.slow && splitmix64(n) % 10 == 0 {
            tokio::time::sleep(TAIL_EXTRA).await;
        }
        key
    }
}

/// How much longer the slow server's slow calls take.
const TAIL_EXTRA: Duration = Duration::from_millis(10);

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const USAGE: &str =
    "usage: bench [--quick] [--json] [--transport tcp,unix,mem,nats] [--workload seq,conc,bulk,bulkz,conns,stream,hedge]
  --quick      10x fewer calls and 1 s windows: a smoke test, not numbers
  --workload   the default is every workload but `hedge`, which runs only when named
  --transport  the default is tcp,unix,mem; nats (feature `nats`) runs only when named
  --json       one JSON object per result on stdout (the table goes to stderr)
  TOKIO_WORKER_THREADS sets the number of runtime worker threads.";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Tcp,
    Unix,
    Mem,
    Nats,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Seq,
    Conc,
    Bulk,
    BulkText,
    Conns,
    Stream,
    Hedge,
}

const KINDS: [(&str, Kind); 4] = [
    ("tcp", Kind::Tcp),
    ("unix", Kind::Unix),
    ("mem", Kind::Mem),
    ("nats", Kind::Nats),
];
const WORKLOADS: [(&str, Workload); 7] = [
    ("seq", Workload::Seq),
    ("conc", Workload::Conc),
    ("bulk", Workload::Bulk),
    ("bulkz", Workload::BulkText),
    ("conns", Workload::Conns),
    ("stream", Workload::Stream),
    ("hedge", Workload::Hedge),
];

struct Opts {
    json: bool,
    kinds: Vec<Kind>,
    workloads: Vec<Workload>,
    seq_warmup: u64,
    seq_calls: u64,
    conc_tasks: usize,
    conc_warmup: Duration,
    conc_window: Duration,
    bulk_warmup: u64,
    bulk_calls: u64,
    bulk_size: usize,
    conns: usize,
    stream_small: u32,
    stream_chunks: u32,
    hedge_warmup: u64,
    hedge_calls: u64,
}

fn list<T: Copy>(value: &str, names: &[(&str, T)]) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|v| {
            names
                .iter()
                .find(|(n, _)| *n == v)
                .map(|&(_, t)| t)
                .ok_or_else(|| format!("unknown value {v:?}\n{USAGE}"))
        })
        .collect()
}

fn parse_args() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut opts = Opts {
        json: false,
        kinds: (KINDS.map(|(_, k)| k).into_iter())
            .filter(|&k| k != Kind::Nats)
            .collect(),
        workloads: WORKLOADS
            .map(|(_, w)| w)
            .into_iter()
            .filter(|&w| w != Workload::Hedge)
            .collect(),
        seq_warmup: if quick { 200 } else { 2_000 },
        seq_calls: if quick { 2_000 } else { 20_000 },
        conc_tasks: 64,
        conc_warmup: Duration::from_millis(if quick { 100 } else { 500 }),
        conc_window: Duration::from_secs(if quick { 1 } else { 3 }),
        bulk_warmup: if quick { 1 } else { 10 },
        bulk_calls: if quick { 20 } else { 200 },
        bulk_size: 1 << 20,
        conns: if quick { 500 } else { 5_000 },
        stream_small: if quick { 20_000 } else { 200_000 },
        stream_chunks: if quick { 205 } else { 2_048 },
        hedge_warmup: if quick { 100 } else { 500 },
        hedge_calls: if quick { 2_000 } else { 20_000 },
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {}
            "--json" => opts.json = true,
            "--transport" | "--only" => {
                opts.kinds = list(it.next().ok_or(USAGE)?, &KINDS)?;
            }
            "--workload" => opts.workloads = list(it.next().ok_or(USAGE)?, &WORKLOADS)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

/// One result row, printed as a JSON line and a table row.
#[derive(Default)]
struct Row {
    workload: &'static str,
    variant: Option<&'static str>,
    transport: &'static str,
    calls_per_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    mb_per_s: Option<f64>,
    calls: u64,
    secs: f64,
    peak_rss_mib: Option<f64>,
    rss_kib_per_conn: Option<f64>,
    /// Hedges sent, and those that answered first (`hedge` workload).
    hedges: Option<(u64, u64)>,
    /// Bytes counted at the client's transport (both ways, length prefixes included).
    wire_bytes: Option<u64>,
    /// `wire_bytes` over the payload bytes that crossed (both ways).
    wire_ratio: Option<f64>,
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn json_number(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => "null".to_string(),
    }
}

impl Row {
    fn json(&self) -> String {
        let mut out = format!(
            "{{\"system\":\"rpc\",\"workload\":\"{}\",\"transport\":\"{}\",\"calls_per_s\":{},\
             \"p50_us\":{},\"p99_us\":{},\"mb_per_s\":{},\"variant\":{},\"calls\":{},\"secs\":{}",
            self.workload,
            self.transport,
            json_number(self.calls_per_s),
            json_number(self.p50_us),
            json_number(self.p99_us),
            json_number(self.mb_per_s),
            self.variant
                .map_or("null".to_string(), |v| format!("\"{v}\"")),
            self.calls,
            round(self.secs, 4)
        );
        if let Some(peak) = self.peak_rss_mib {
            let _ = write!(out, ",\"peak_rss_mib\":{}", round(peak, 1));
        }
        if let Some(per_conn) = self.rss_kib_per_conn {
            let _ = write!(out, ",\"rss_kib_per_conn\":{}", round(per_conn, 2));
        }
        if let Some((sent, won)) = self.hedges {
            let _ = write!(out, ",\"hedges\":{sent},\"hedges_won\":{won}");
        }
        if let Some(wire) = self.wire_bytes {
            let _ = write!(out, ",\"wire_bytes\":{wire}");
        }
        if let Some(ratio) = self.wire_ratio {
            let _ = write!(out, ",\"wire_ratio\":{}", round(ratio, 4));
        }
        out.push('}');
        out
    }

    fn table(&self) -> String {
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
        let extra = match (
            self.peak_rss_mib,
            self.rss_kib_per_conn,
            self.wire_ratio,
            self.hedges,
        ) {
            (_, _, Some(r), _) => format!(
                "wire {:.1} MB ({:.1}% of payload)",
                self.wire_bytes.unwrap_or(0) as f64 / 1e6,
                r * 100.0
            ),
            (Some(p), _, _, _) => format!("peak RSS {p:.1} MiB"),
            (_, Some(k), _, _) => format!("{k:.2} KiB/conn"),
            (_, _, _, Some((sent, won))) => format!("{sent} hedges, {won} won"),
            _ => String::new(),
        };
        let workload = match self.variant {
            Some(variant) => format!("{}/{variant}", self.workload),
            None => self.workload.to_string(),
        };
        format!(
            "{:<12} {:<5} {:>12} {:>9} {:>9} {:>9}  {}",
            workload,
            self.transport,
            opt(self.calls_per_s.map(|x| x.round())),
            opt(self.p50_us),
            opt(self.p99_us),
            opt(self.mb_per_s),
            extra
        )
    }
}

/// A fresh socket path in the run's temp dir.
fn socket_path(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Starts a fresh server on a transport of `kind` and connects a client to it.
async fn connect(kind: Kind, dir: &Path) -> std::io::Result<BenchClient> {
    Ok(connect_with(kind, dir, None).await?.0)
}

/// [`connect`], both ends compressing with `compression` if given, the client's transport
/// counting the bytes that cross it.
async fn connect_with(
    kind: Kind,
    dir: &Path,
    compression: Option<Compression>,
) -> std::io::Result<(BenchClient, Arc<AtomicU64>)> {
    let server = || {
        Server::new()
            .add_service(BenchServer::new(BenchImpl))
            .compression(compression.clone())
    };
    let counted = Arc::new(AtomicU64::new(0));
    let client = |transport| {
        let transport = Counting {
            inner: transport,
            bytes: Arc::clone(&counted),
        };
        match &compression {
            Some(compression) => BenchClient::from_client(rpc_core::Client::with_compression(
                transport,
                &BenchClient::DESCRIPTOR,
                compression.clone(),
            )),
            None => BenchClient::new(transport),
        }
    };
    let client = match kind {
        Kind::Mem => {
            let (client_end, server_end) = rpc_transport::memory::pair();
            tokio::spawn(server().serve_connection(server_end));
            client(Box::new(client_end) as Box<dyn Transport>)
        }
        Kind::Tcp => {
            let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(server().serve(listener));
            client(Box::new(rpc_transport::tcp::connect(addr).await?))
        }
        Kind::Unix => {
            let path = socket_path(dir);
            let listener = rpc_transport::unix::bind(&path).await?;
            tokio::spawn(server().serve(listener));
            client(Box::new(rpc_transport::unix::connect(&path).await?))
        }
        Kind::Nats => client(nats::connect(server()).await?),
    };
    Ok((client, counted))
}

/// A transport that counts the bytes of the frames it sends and receives, with their
/// 4-byte length prefixes: what crosses the wire (for the in-memory transport, what would).
struct Counting<T> {
    inner: T,
    bytes: Arc<AtomicU64>,
}

impl<T: Transport> Stream for Counting<T> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(frame))) = &item {
            self.bytes
                .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        }
        item
    }
}

impl<T: Transport> Sink<rpc_core::Frame> for Counting<T> {
    type Error = std::io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, frame: rpc_core::Frame) -> std::io::Result<()> {
        self.bytes
            .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        Pin::new(&mut self.inner).start_send(frame)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> Option<f64> {
    let i = ((sorted_ns.len() as f64 * p).ceil() as usize).max(1) - 1;
    sorted_ns.get(i).map(|&ns| round(ns as f64 / 1e3, 2))
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn seq(client: &BenchClient, warmup: u64, calls: u64) -> Result<Row, Failure> {
    for i in 0..warmup {
        client.add(i, 1).await?;
    }
    let mut lat_ns = Vec::with_capacity(calls as usize);
    let start = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        let sum = client.add(i, 1).await?;
        lat_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(sum, i + 1);
    }
    let secs = start.elapsed().as_secs_f64();
    lat_ns.sort_unstable();
    Ok(Row {
        workload: "seq",
        calls_per_s: Some(round(calls as f64 / secs, 1)),
        p50_us: percentile_us(&lat_ns, 0.50),
        p99_us: percentile_us(&lat_ns, 0.99),
        calls,
        secs,
        ..Row::default()
    })
}

async fn conc(client: &BenchClient, o: &Opts) -> Result<Row, Failure> {
    let start = Instant::now() + o.conc_warmup;
    let end = start + o.conc_window;
    let tasks: Vec<_> = (0..o.conc_tasks)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut counted = 0u64;
                let mut i = 0u64;
                loop {
                    client.add(t as u64, i).await?;
                    i += 1;
                    let now = Instant::now();
                    if now >= end {
                        return Ok::<u64, rpc_core::RpcError>(counted);
                    }
                    counted += u64::from(now >= start);
                }
            })
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await??;
    }
    let secs = o.conc_window.as_secs_f64();
    Ok(Row {
        workload: "conc",
        calls_per_s: Some(round(calls as f64 / secs, 1)),
        calls,
        secs,
        ..Row::default()
    })
}

async fn bulk(client: &BenchClient, o: &Opts) -> Result<Row, Failure> {
    let payload: Vec<u8> = (0..o.bulk_size).map(|i| i as u8).collect();
    for _ in 0..o.bulk_warmup {
        client.echo(payload.clone()).await?;
    }
    bulk_of(client, o, payload).await
}

/// `bulk` with `Bytes` for the payload, which travels without copies: the `bytes` variant.
async fn bulk_bytes(client: &BenchClient, o: &Opts) -> Result<Row, Failure> {
    let mut payload = Bytes::from((0..o.bulk_size).map(|i| i as u8).collect::<Vec<u8>>());
    for _ in 0..o.bulk_warmup {
        payload = client.echo_bytes(payload).await?;
    }
    let mut lat_ns = Vec::with_capacity(o.bulk_calls as usize);
    let start = Instant::now();
    for _ in 0..o.bulk_calls {
        let t = Instant::now();
        payload = client.echo_bytes(payload).await?;
        lat_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(payload.len(), o.bulk_size);
    }
    let mut row = bulk_row(o, start.elapsed().as_secs_f64(), lat_ns);
    row.variant = Some("bytes");
    Ok(row)
}

/// A compressible payload: log-like lines of text, a counter in each, so that no two
/// lines are the same (a codec finds repeats within lines and across them, not one run).
fn text_payload(size: usize) -> Vec<u8> {
    let mut text = String::with_capacity(size + 100);
    let mut i = 0u64;
    while text.len() < size {
        let _ = writeln!(
            text,
            "2026-01-01T00:00:{:02}.{:06}Z INFO request id={i} method=echo status=ok bytes={}",
            i % 60,
            (i * 7919) % 1_000_000,
            (i * 31) % 65_536
        );
        i += 1;
    }
    text.truncate(size);
    text.into_bytes()
}

/// `bulk` with a compressible payload, compressed with `codec` (or not): MB/s and the
/// bytes on the wire.
async fn bulk_text(kind: Kind, dir: &Path, o: &Opts, codec: Option<Codec>) -> Result<Row, Failure> {
    let compression = codec
        .map(|codec| Compression::builder().codecs([codec]).build())
        .transpose()?;
    let (client, counted) = connect_with(kind, dir, compression).await?;
    let payload = text_payload(o.bulk_size);
    // The warm-up also settles the handshake, so every measured call is compressed.
    for _ in 0..o.bulk_warmup.max(1) {
        client.echo(payload.clone()).await?;
    }
    let before = counted.load(Ordering::Relaxed);
    let mut row = bulk_of(&client, o, payload).await?;
    let wire = counted.load(Ordering::Relaxed) - before;
    row.workload = "bulk";
    row.variant = Some(match codec {
        None => "text/none",
        Some(Codec::Zstd) => "text/zstd",
        Some(_) => "text/lz4",
    });
    row.wire_bytes = Some(wire);
    row.wire_ratio = Some(wire as f64 / (2.0 * o.bulk_size as f64 * o.bulk_calls as f64));
    Ok(row)
}

/// The measured part of `bulk`: `o.bulk_calls` sequential echoes of `payload`, each call
/// sending the buffer the last one returned (as the peer harness does: no copy of the
/// payload between calls).
async fn bulk_of(client: &BenchClient, o: &Opts, mut payload: Vec<u8>) -> Result<Row, Failure> {
    let mut lat_ns = Vec::with_capacity(o.bulk_calls as usize);
    let len = payload.len();
    let start = Instant::now();
    for _ in 0..o.bulk_calls {
        let t = Instant::now();
        payload = client.echo(payload).await?;
        lat_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(payload.len(), len);
    }
    Ok(bulk_row(o, start.elapsed().as_secs_f64(), lat_ns))
}

/// The row of `o.bulk_calls` echoes that took `secs`, each call's latency in `lat_ns`.
fn bulk_row(o: &Opts, secs: f64, mut lat_ns: Vec<u64>) -> Row {
    lat_ns.sort_unstable();
    let bytes = o.bulk_size as f64 * o.bulk_calls as f64;
    Row {
        workload: "bulk",
        calls_per_s: Some(round(o.bulk_calls as f64 / secs, 1)),
        p50_us: percentile_us(&lat_ns, 0.50),
        p99_us: percentile_us(&lat_ns, 0.99),
        mb_per_s: Some(round(bytes / secs / 1e6, 1)),
        calls: o.bulk_calls,
        secs,
        peak_rss_mib: proc_status_kib("VmHWM").map(|k| k as f64 / 1024.0),
        ..Row::default()
    }
}

/// One server-streaming call of `count` items of `size` bytes: items/s and MB/s.
async fn stream(
    client: &BenchClient,
    variant: &'static str,
    count: u32,
    size: u32,
) -> Result<Row, Failure> {
    let start = Instant::now();
    let mut items = client.items(count, size).await?;
    let mut received = 0u64;
    while let Some(item) = items.next().await {
        assert_eq!(item?.len(), size as usize);
        received += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(received, u64::from(count));
    Ok(Row {
        workload: "stream",
        variant: Some(variant),
        calls_per_s: Some(round(f64::from(count) / secs, 1)),
        mb_per_s: Some(round(f64::from(count) * f64::from(size) / secs / 1e6, 1)),
        calls: u64::from(count),
        secs,
        peak_rss_mib: proc_status_kib("VmHWM").map(|k| k as f64 / 1024.0),
        ..Row::default()
    })
}

/// `n` TCP connections to one server, one call on each, then idle: resident memory per
/// connection, client and server ends together.
async fn conns(n: usize) -> Result<Row, Failure> {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Every connection comes from 127.0.0.1: lift the per-address limit with the total one.
    let server = Server::new()
        .add_service(BenchServer::new(BenchImpl))
        .max_connections(n + 16)
        .max_connections_per_ip(n + 16);
    let stats = server.stats();
    let serving = tokio::spawn(server.serve(listener));
    // Warm the allocator and the runtime up with a first connection.
    let first = BenchClient::new(rpc_transport::tcp::connect(addr).await?);
    first.add(1, 1).await?;
    let before = proc_status_kib("VmRSS").ok_or("cannot read /proc/self/status")?;
    let start = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let transport = rpc_transport::tcp::connect(addr).await.map_err(|e| {
            format!(
                "connection {i} failed: {e} (raise the open-file limit, e.g. `ulimit -n 20000`)"
            )
        })?;
        let client = BenchClient::new(transport);
        client.add(i as u64, 1).await?;
        clients.push(client);
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(stats.open_connections() > n);
    let after = proc_status_kib("VmRSS").ok_or("cannot read /proc/self/status")?;
    let per_conn = after.saturating_sub(before) as f64 / n as f64;
    drop(clients);
    drop(first);
    // Thousands of connections take a while to close on both ends: wait for the server's,
    // so that the next workload does not share the CPUs with their teardown.
    let closed = Instant::now() + Duration::from_secs(30);
    while stats.open_connections() > 0 && Instant::now() < closed {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serving.abort();
    Ok(Row {
        workload: "conns",
        transport: "tcp",
        calls_per_s: Some(round(n as f64 / secs, 1)),
        calls: n as u64,
        secs,
        rss_kib_per_conn: Some(per_conn),
        ..Row::default()
    })
}

/// Three TCP servers of `Tail`, one of them slow one call in ten, behind one balancing
/// client (hedging at the 95th percentile when `hedge`); one caller making sequential calls:
/// p50 and p99.
async fn tail(o: &Opts, hedge: bool) -> Result<Row, Failure> {
    let mut endpoints = Vec::new();
    for (name, slow) in [("a", false), ("b", false), ("slow", true)] {
        let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = TailImpl {
            slow,
            calls: Arc::default(),
        };
        tokio::spawn(
            Server::new()
                .add_service(TailServer::new(service))
                .serve(listener),
        );
        endpoints.push(Endpoint::new(name, rpc_transport::tcp::connector(addr)));
    }
    let mut builder = TailClient::builder();
    if hedge {
        builder = builder.hedge(Hedge::percentile(0.95)?);
    }
    let client = builder.balance(endpoints);
    let connected = Instant::now() + Duration::from_secs(10);
    while !client
        .client()
        .stats()
        .is_some_and(|s| s.endpoints.iter().all(|e| e.state == EndpointState::Ready))
    {
        if Instant::now() > connected {
            return Err("the hedge workload's servers did not become reachable".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Warm-up calls also give the hedging client the latencies its delay comes from.
    for i in 0..o.hedge_warmup {
        client.get(i).await?;
    }
    let before = client.client().stats().ok_or("not a balancing client")?;
    let mut lat_ns = Vec::with_capacity(o.hedge_calls as usize);
    let start = Instant::now();
    for i in 0..o.hedge_calls {
        let t = Instant::now();
        let back = client.get(i).await?;
        lat_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(back, i);
    }
    let secs = start.elapsed().as_secs_f64();
    let after = client.client().stats().ok_or("not a balancing client")?;
    lat_ns.sort_unstable();
    Ok(Row {
        workload: "hedge",
        variant: Some(if hedge { "p95" } else { "off" }),
        transport: "tcp",
        calls_per_s: Some(round(o.hedge_calls as f64 / secs, 1)),
        p50_us: percentile_us(&lat_ns, 0.50),
        p99_us: percentile_us(&lat_ns, 0.99),
        calls: o.hedge_calls,
        secs,
        hedges: Some((
            after.hedges - before.hedges,
            after.hedges_won - before.hedges_won,
        )),
        ..Row::default()
    })
}

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident memory counter, so `bulk` reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn emit(opts: &Opts, row: &Row) {
    if opts.json {
        println!("{}", row.json());
        eprintln!("{}", row.table());
    } else {
        println!("{}", row.table());
    }
}

async fn run(opts: Opts, dir: PathBuf) -> Result<(), Failure> {
    // Kept until the end of the run, when it stops the nats-server it started, if any.
    let _nats = if opts.kinds.contains(&Kind::Nats) {
        Some(nats::start().await?)
    } else {
        None
    };
    let header = format!(
        "{:<12} {:<5} {:>12} {:>9} {:>9} {:>9}",
        "work", "trans", "calls/s", "p50 us", "p99 us", "MB/s"
    );
    if opts.json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    for &workload in &opts.workloads {
        if workload == Workload::Conns {
            if opts.kinds.contains(&Kind::Tcp) {
                let row = conns(opts.conns).await?;
                emit(&opts, &row);
            }
            continue;
        }
        if workload == Workload::Hedge {
            if opts.kinds.contains(&Kind::Tcp) {
                for hedge in [false, true] {
                    let row = tail(&opts, hedge).await?;
                    emit(&opts, &row);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        }
        for &kind in &opts.kinds {
            let name = KINDS
                .iter()
                .find(|(_, k)| *k == kind)
                .map_or("?", |(n, _)| n);
            let client = connect(kind, &dir).await?;
            let rows = match workload {
                Workload::Seq => vec![seq(&client, opts.seq_warmup, opts.seq_calls).await?],
                Workload::Conc => vec![conc(&client, &opts).await?],
                Workload::Bulk => {
                    reset_peak_rss();
                    let plain = bulk(&client, &opts).await?;
                    reset_peak_rss();
                    vec![plain, bulk_bytes(&client, &opts).await?]
                }
                Workload::BulkText => {
                    let mut rows = vec![bulk_text(kind, &dir, &opts, None).await?];
                    for codec in [Codec::Zstd, Codec::Lz4] {
                        if codec.is_available() {
                            rows.push(bulk_text(kind, &dir, &opts, Some(codec)).await?);
                        } else {
                            eprintln!(
                                "bench: bulk/text/{codec} skipped: build with --features {codec}"
                            );
                        }
                    }
                    rows
                }
                Workload::Stream => {
                    let small = stream(&client, "16B", opts.stream_small, 16).await?;
                    reset_peak_rss();
                    let big = stream(&client, "64KiB", opts.stream_chunks, 64 << 10).await?;
                    vec![small, big]
                }
                Workload::Conns | Workload::Hedge => unreachable!(),
            };
            for mut row in rows {
                row.transport = name;
                emit(&opts, &row);
            }
            drop(client);
            // Let the connection wind down before the next measurement.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn main() {
    let opts = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(if e == USAGE { 0 } else { 2 })
    });
    let dir = std::env::temp_dir().join(format!("rpc-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("bench: cannot start the tokio runtime: {e}");
        std::process::exit(1)
    });
    eprintln!(
        "rpc bench: {} tokio worker threads",
        runtime.metrics().num_workers()
    );
    // Callers run on worker threads, as a server's would.
    let result = runtime.block_on(async { tokio::spawn(run(opts, dir.clone())).await });
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("bench: a benchmark task failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Keeps the `Transport` import meaningful for readers: every transport above is one.
#[allow(dead_code)]
fn assert_transports() {
    fn is_transport<T: Transport>() {}
    is_transport::<rpc_transport::tcp::TcpTransport>();
    is_transport::<rpc_transport::unix::UnixTransport>();
    is_transport::<rpc_transport::memory::MemoryTransport>();
}

/// The `nats` transport: a NATS server for the run, and a connection through it.
#[cfg(feature = "nats")]
mod nats {
    use std::sync::OnceLock;

    use rpc_core::{Server, Transport};
    use rpc_examples::nats_process::NatsProcess;
    use rpc_transport::nats::{self, async_nats};

    /// The URL of the run's NATS server.
    static URL: OnceLock<String> = OnceLock::new();

    /// Uses the NATS at `NATS_URL`, or starts one, kept running while the guard lives.
    pub async fn start() -> std::io::Result<Option<NatsProcess>> {
        let (url, own) = match std::env::var("NATS_URL") {
            Ok(url) if !url.trim().is_empty() => (url, None),
            _ => {
                let own = NatsProcess::start("nats-server", std::time::Duration::from_secs(20))
                    .await
                    .map_err(std::io::Error::other)?;
                (own.url(), Some(own))
            }
        };
        let _ = URL.set(url);
        Ok(own)
    }

    /// Serves `server` on a subject of its own, and connects to it.
    pub async fn connect(server: Server) -> std::io::Result<Box<dyn Transport>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let url = URL
            .get()
            .ok_or_else(|| std::io::Error::other("no NATS server started"))?;
        let subject = format!(
            "rpc-bench.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let server_side = async_nats::connect(url.as_str())
            .await
            .map_err(std::io::Error::other)?;
        let listener = nats::bind(&server_side, &subject).await?;
        tokio::spawn(server.serve(listener));
        let client_side = async_nats::connect(url.as_str())
            .await
            .map_err(std::io::Error::other)?;
        Ok(Box::new(nats::connect(&client_side, &subject).await?))
    }
}

/// Without the feature `nats`, asking for it says how to get it.
#[cfg(not(feature = "nats"))]
mod nats {
    use rpc_core::{Server, Transport};

    fn missing() -> std::io::Error {
        std::io::Error::other("the nats transport needs the feature: --features nats")
    }

    pub async fn start() -> std::io::Result<Option<()>> {
        Err(missing())
    }

    pub async fn connect(_server: Server) -> std::io::Result<Box<dyn Transport>> {
        Err(missing())
    }
}
