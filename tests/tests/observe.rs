//! Tracing: a span per call on each side, and the W3C trace context that joins them, over
//! every transport in `common::KINDS`.
//!
//! The capture subscriber is installed per thread, so these tests run on current-thread
//! runtimes, where the servers' tasks run on the test's thread too. What happens with no
//! subscriber at all is in `observe_untraced.rs`: a subscriber installed for one thread
//! enables the spans' callsites for every thread of the process.

mod common;
mod observing;

use std::future::IntoFuture;

use common::{guard, lab, lab_client, Harness, Kind, LabServer, KINDS};
use observing::{front_and_back, BackClient, BackImpl, BackServer, Capture, SpanRecord, MALFORMED};
use rpc_core::context::TraceContext;
use rpc_core::{service, Server};

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn a_call_has_a_client_and_a_server_span_with_one_trace() {
    for kind in KINDS {
        let (capture, _guard) = Capture::install();
        let (imp, _events) = lab();
        let (client, _h) = lab_client(kind, Server::new().add_service(LabServer::new(imp))).await;
        assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);

        let [client_span]: [SpanRecord; 1] = capture
            .wait_closed("rpc.client", 1)
            .await
            .try_into()
            .unwrap();
        let [server_span]: [SpanRecord; 1] = capture
            .wait_closed("rpc.server", 1)
            .await
            .try_into()
            .unwrap();
        for span in [&client_span, &server_span] {
            assert_eq!(span.field("service"), "Lab", "{kind:?}");
            assert_eq!(span.field("method"), "add");
            assert_eq!(span.field("request_id"), "0");
            assert_eq!(span.field("outcome"), "ok");
            assert!(span.field("duration_us").parse::<u64>().is_ok());
            assert!(is_hex(span.field("trace_id"), 32), "{span:?}");
            assert!(is_hex(span.field("span_id"), 16), "{span:?}");
        }
        assert_eq!(client_span.field("trace_id"), server_span.field("trace_id"));
        // The server's parent is the client's span; the client's call had none.
        assert_eq!(server_span.field("parent_id"), client_span.field("span_id"));
        assert_eq!(client_span.get("parent_id"), None);
        // A client given a transport knows no address; the server knows its client's when
        // the listener can tell (TCP: the address, Unix: the socket path).
        assert_eq!(client_span.get("peer"), None);
        match kind {
            Kind::Tcp => assert!(
                server_span.field("peer").starts_with("127.0.0.1:"),
                "{server_span:?}"
            ),
            Kind::Unix => assert!(server_span.field("peer").starts_with("unix:")),
            Kind::MemoryPair | Kind::MemoryListener => {
                assert_eq!(server_span.get("peer"), None)
            }
        }
    }
}

#[tokio::test]
async fn a_failed_call_records_its_error_kind_on_both_sides() {
    let (capture, _guard) = Capture::install();
    let (imp, _events) = lab();
    let (client, _h) = lab_client(
        Kind::MemoryPair,
        Server::new().add_service(LabServer::new(imp)),
    )
    .await;
    let err = guard(client.panic("boom".into())).await.unwrap_err();
    assert_eq!(err.kind(), rpc_core::ErrorKind::Internal);
    let client_span = &capture.wait_closed("rpc.client", 1).await[0];
    let server_span = &capture.wait_closed("rpc.server", 1).await[0];
    assert_eq!(client_span.field("outcome"), "internal error");
    assert_eq!(server_span.field("outcome"), "internal error");
    assert_eq!(server_span.field("method"), "panic");
}

#[tokio::test]
async fn a_call_made_in_a_handler_continues_its_trace() {
    for kind in KINDS {
        let (capture, _guard) = Capture::install();
        let (front, _f, _b) = front_and_back(kind).await;
        let (front_seen, back_seen) = guard(front.page()).await.unwrap();

        let clients = capture.wait_closed("rpc.client", 2).await;
        let servers = capture.wait_closed("rpc.server", 2).await;
        let by_service = |spans: &[SpanRecord], service: &str| {
            spans
                .iter()
                .find(|span| span.field("service") == service)
                .cloned()
                .unwrap_or_else(|| panic!("no {service} span in {spans:#?}"))
        };
        let (a_client, b_client) = (by_service(&clients, "Front"), by_service(&clients, "Back"));
        let (a_server, b_server) = (by_service(&servers, "Front"), by_service(&servers, "Back"));

        let trace_id = a_client.field("trace_id");
        for span in [&a_server, &b_client, &b_server] {
            assert_eq!(span.field("trace_id"), trace_id, "{kind:?}: {span:?}");
        }
        // Every span has an id of its own, and names its caller's as its parent: A's
        // client, A's server, B's client (made by A's handler), B's server.
        let ids: std::collections::HashSet<_> = [&a_client, &a_server, &b_client, &b_server]
            .iter()
            .map(|span| span.field("span_id"))
            .collect();
        assert_eq!(ids.len(), 4, "{kind:?}: span ids repeat: {ids:?}");
        assert_eq!(a_server.field("parent_id"), a_client.field("span_id"));
        assert_eq!(b_client.field("parent_id"), a_server.field("span_id"));
        assert_eq!(b_server.field("parent_id"), b_client.field("span_id"));
        // In the tracing tree, B's client span is inside A's server span (the handler runs
        // in it), and B's server span inside B's client span (one process here).
        assert_eq!(b_client.parent, Some(a_server.index));

        // What the handlers saw agrees with the spans: each its own server span's context.
        let a_trace = TraceContext::parse(front_seen.trace.as_deref().unwrap()).unwrap();
        assert_eq!(format!("{:032x}", a_trace.trace_id()), trace_id);
        assert_eq!(
            format!("{:016x}", a_trace.span_id()),
            a_server.field("span_id")
        );
        let b_trace = TraceContext::parse(back_seen.trace.as_deref().unwrap()).unwrap();
        assert_eq!(b_trace.trace_id(), a_trace.trace_id());
        assert_eq!(
            format!("{:016x}", b_trace.span_id()),
            b_server.field("span_id")
        );
        // B's handler received the traceparent of B's client span.
        let b_sent = TraceContext::parse(back_seen.traceparent.as_deref().unwrap()).unwrap();
        assert_eq!(
            format!("{:016x}", b_sent.span_id()),
            b_client.field("span_id")
        );
    }
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored() {
    // The server starts a trace of its own, naming no parent; the caller's value is sent as
    // it was. (Without a subscriber the handler sees no trace at all: `observe_untraced.rs`.)
    let (capture, _guard) = Capture::install();
    let mut back = Harness::start(
        Kind::MemoryPair,
        Server::new().add_service(BackServer::new(BackImpl)),
    )
    .await;
    let client = BackClient::new(back.connect().await);
    let seen = guard(client.data().metadata("traceparent", MALFORMED[1]))
        .await
        .unwrap();
    assert_eq!(seen.traceparent.as_deref(), Some(MALFORMED[1]));
    let server_span = &capture.wait_closed("rpc.server", 1).await[0];
    let client_span = &capture.wait_closed("rpc.client", 1).await[0];
    assert_eq!(server_span.get("parent_id"), None);
    assert_eq!(
        client_span.get("trace_id"),
        None,
        "the caller's value is kept"
    );
    let started = TraceContext::parse(seen.trace.as_deref().unwrap()).unwrap();
    assert_eq!(
        format!("{:032x}", started.trace_id()),
        server_span.field("trace_id")
    );
    assert_eq!(server_span.field("outcome"), "ok");
}

#[tokio::test]
async fn a_balancing_client_records_one_span_per_call_with_its_endpoint() {
    let (capture, _guard) = Capture::install();
    let (listener, connector) = rpc_transport::memory::listener();
    tokio::spawn(
        Server::new()
            .add_service(BackServer::new(BackImpl))
            .serve(listener),
    );
    let client = BackClient::builder()
        .wait_for_ready(true)
        .connect(connector);
    let seen = guard(client.data()).await.unwrap();
    assert!(seen.trace.is_some());

    let [client_span]: [SpanRecord; 1] = capture
        .wait_closed("rpc.client", 1)
        .await
        .try_into()
        .unwrap();
    let server_span = &capture.wait_closed("rpc.server", 1).await[0];
    assert_eq!(client_span.field("peer"), "default");
    assert_eq!(client_span.field("outcome"), "ok");
    assert_eq!(
        client_span.field("request_id"),
        server_span.field("request_id")
    );
    assert_eq!(client_span.field("trace_id"), server_span.field("trace_id"));
    assert_eq!(server_span.field("parent_id"), client_span.field("span_id"));
    assert!(capture.events().is_empty(), "no attempt failed");
}

#[tokio::test]
async fn a_dropped_call_closes_its_spans_as_cancelled() {
    let (capture, _guard) = Capture::install();
    let (imp, mut events) = lab();
    let (client, _h) = lab_client(
        Kind::MemoryPair,
        Server::new().add_service(LabServer::new(imp)),
    )
    .await;
    let call = tokio::spawn(client.block(7).into_future());
    assert_eq!(
        common::next_event(&mut events).await,
        common::Event::Started(7)
    );
    call.abort();
    assert_eq!(
        common::next_event(&mut events).await,
        common::Event::Dropped(7)
    );
    let client_span = &capture.wait_closed("rpc.client", 1).await[0];
    let server_span = &capture.wait_closed("rpc.server", 1).await[0];
    assert_eq!(client_span.field("outcome"), "cancelled");
    assert_eq!(server_span.field("outcome"), "cancelled");
}

/// A service whose `get` a balancing client may retry, and whose `hold` keeps a call in
/// progress (so a server allowing one call per connection sheds the next).
#[service]
pub trait Flaky {
    async fn hold(&self);
    #[rpc(idempotent)]
    async fn get(&self) -> u32;
}

struct FlakyImpl;
impl Flaky for FlakyImpl {
    async fn hold(&self) {
        std::future::pending::<()>().await
    }
    async fn get(&self) -> u32 {
        7
    }
}

#[tokio::test]
async fn a_balancing_client_records_an_event_per_failed_attempt() {
    let (capture, _guard) = Capture::install();
    let (listener, connector) = rpc_transport::memory::listener();
    tokio::spawn(
        Server::new()
            .max_concurrent_requests(1)
            .add_service(FlakyServer::new(FlakyImpl))
            .serve(listener),
    );
    let client = FlakyClient::builder()
        .wait_for_ready(true)
        .max_attempts(2)
        .balance([rpc_core::balance::Endpoint::new("busy", connector)]);
    let _holding = tokio::spawn(client.hold().into_future());
    while capture.spans().iter().all(|span| span.name != "rpc.server") {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }

    let err = guard(client.get()).await.unwrap_err();
    assert_eq!(err.kind(), rpc_core::ErrorKind::Overloaded);
    let get = capture
        .wait_closed("rpc.client", 1)
        .await
        .into_iter()
        .find(|span| span.get("method") == Some("get"))
        .unwrap();
    assert_eq!(get.field("outcome"), "overloaded");
    assert_eq!(get.field("peer"), "busy");
    let attempts: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|event| event.parent == Some(get.index))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for (i, event) in attempts.iter().enumerate() {
        assert_eq!(event.fields["message"], "rpc attempt failed");
        assert_eq!(event.fields["attempt"], (i + 1).to_string());
        assert_eq!(event.fields["outcome"], "overloaded");
        assert_eq!(event.fields["peer"], "busy");
    }
    assert_ne!(
        attempts[0].fields["request_id"],
        attempts[1].fields["request_id"]
    );
}

/// A server-streaming service: `count(n)` streams `0..n`, `fail(n)` streams `0..n` and then
/// an error.
#[service]
pub trait Ticker {
    async fn count(&self, n: u32) -> rpc_core::Streaming<u32>;
    async fn fail(&self, n: u32) -> rpc_core::Streaming<u32>;
}

struct TickerImpl;
impl Ticker for TickerImpl {
    async fn count(&self, n: u32) -> rpc_core::Streaming<u32> {
        rpc_core::Streaming::iter(0..n)
    }
    async fn fail(&self, n: u32) -> rpc_core::Streaming<u32> {
        let items = (0..n).map(Ok).chain([Err(rpc_core::RpcError::new(
            rpc_core::ErrorKind::Internal,
            "the ticker broke",
        ))]);
        rpc_core::Streaming::from_results(futures::stream::iter(items))
    }
}

async fn ticker(kind: Kind) -> (TickerClient, Harness) {
    let mut harness = Harness::start(
        kind,
        Server::new().add_service(TickerServer::new(TickerImpl)),
    )
    .await;
    let client = TickerClient::new(harness.connect().await);
    (client, harness)
}

/// More items than the stream window (twice what its initial byte window holds, each item
/// being charged more than the per-item overhead; and more than 32 items, for a peer of the
/// previous revision): the server cannot finish sending them before the client reads, so
/// neither side's call can be over before the client has read them.
const MANY: u32 = 2 * (rpc_core::STREAM_INITIAL_BYTE_WINDOW / rpc_core::STREAM_ITEM_OVERHEAD);

#[tokio::test]
async fn a_streamed_call_is_observed_until_its_stream_ends() {
    for kind in KINDS {
        let (capture, _guard) = Capture::install();
        let (client, _h) = ticker(kind).await;
        let mut stream = guard(client.count(MANY)).await.unwrap();
        assert_eq!(guard(stream.next()).await, Some(Ok(0)));
        assert!(
            capture.closed("rpc.client").is_empty() && capture.closed("rpc.server").is_empty(),
            "{kind:?}: a call whose stream is still being read is not over"
        );
        let mut got = 1;
        while let Some(item) = guard(stream.next()).await {
            assert_eq!(item, Ok(got));
            got += 1;
        }
        assert_eq!(got, MANY);
        for name in ["rpc.client", "rpc.server"] {
            let span = &capture.wait_closed(name, 1).await[0];
            assert_eq!(span.field("method"), "count", "{kind:?}");
            assert_eq!(span.field("outcome"), "ok", "{kind:?}: {span:?}");
        }
    }
}

#[tokio::test]
async fn a_stream_that_fails_or_is_dropped_ends_its_calls_outcome() {
    use futures::StreamExt;
    for kind in KINDS {
        let (capture, _guard) = Capture::install();
        let (client, _h) = ticker(kind).await;
        let items: Vec<_> = guard(guard(client.fail(3)).await.unwrap().collect::<Vec<_>>()).await;
        assert_eq!(items.len(), 4);
        for name in ["rpc.client", "rpc.server"] {
            let span = &capture.wait_closed(name, 1).await[0];
            assert_eq!(
                span.field("outcome"),
                "internal error",
                "{kind:?}: {name} {span:?}"
            );
        }

        let mut stream = guard(client.count(MANY)).await.unwrap();
        assert_eq!(guard(stream.next()).await, Some(Ok(0)));
        drop(stream);
        for name in ["rpc.client", "rpc.server"] {
            let spans = capture.wait_closed(name, 2).await;
            assert_eq!(spans[1].field("method"), "count");
            assert_eq!(
                spans[1].field("outcome"),
                "cancelled",
                "{kind:?}: {name} {:?}",
                spans[1]
            );
        }
    }
}
