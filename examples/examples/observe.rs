//! Observability: every call's spans logged as they close, and the metrics they recorded.
//!
//! Run it with `cargo run -p rpc-examples --example observe`. Any `tracing` subscriber and
//! any `metrics` recorder will do (an OpenTelemetry layer, a Prometheus exporter); this one
//! uses `tracing-subscriber`'s `fmt` and `metrics-util`'s `DebuggingRecorder`, installed
//! before the server and the client are created.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rpc_core::Server;
use rpc_examples::{GreeterClient, GreeterServer, Greetings};
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_span_events(FmtSpan::CLOSE)
        .with_target(true)
        .init();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::new()
            .add_service(GreeterServer::new(Greetings::default()))
            .serve(listener),
    );
    let client = GreeterClient::new(rpc_transport::tcp::connect(addr).await?);
    for name in ["Ada", "Grace"] {
        client.hello(name.to_string()).await?;
    }
    client.count().await?;
    // The server records its side before it answers; give its log lines a moment.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    println!("\nmetrics:");
    let mut lines: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(0) => return None,
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(g) => g.to_string(),
                DebugValue::Histogram(samples) if samples.is_empty() => return None,
                DebugValue::Histogram(samples) => format!("{} samples", samples.len()),
            };
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            Some(format!(
                "  {}{{{}}} {value}",
                key.key().name(),
                labels.join(",")
            ))
        })
        .collect();
    lines.sort();
    println!("{}", lines.join("\n"));
    Ok(())
}
