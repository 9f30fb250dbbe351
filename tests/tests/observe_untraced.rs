//! Trace context in a process with no `tracing` subscriber at all: nothing is added to a
//! plain call, a trace given by the caller is continued, a malformed one is ignored. (Its
//! own test binary: a subscriber installed by another test, even for one thread, would
//! enable the spans.)

mod common;
mod observing;

use std::future::IntoFuture;

use common::{guard, Harness, Kind, KINDS};
use observing::{front_and_back, BackClient, BackImpl, BackServer, Seen, MALFORMED, VALID};
use rpc_core::context::TraceContext;
use rpc_core::Server;

#[tokio::test]
async fn plain_calls_carry_no_trace_context() {
    for kind in KINDS {
        let (front, _f, _b) = front_and_back(kind).await;
        let (front_seen, back_seen) = guard(front.page()).await.unwrap();
        let nothing = Seen {
            trace: None,
            traceparent: None,
            metadata: 0,
        };
        assert_eq!(front_seen, nothing, "{kind:?}");
        assert_eq!(back_seen, nothing, "{kind:?}");
    }
}

#[tokio::test]
async fn a_trace_is_continued_without_a_subscriber() {
    for kind in KINDS {
        let (front, _f, _b) = front_and_back(kind).await;
        let (front_seen, back_seen) = guard(front.page().metadata("traceparent", VALID))
            .await
            .unwrap();
        // The caller's own traceparent arrives as it was sent...
        assert_eq!(front_seen.trace.as_deref(), Some(VALID), "{kind:?}");
        // ...and the call made from the handler carries the same trace, with a new span id.
        let given = TraceContext::parse(VALID).unwrap();
        let sent = TraceContext::parse(back_seen.traceparent.as_deref().unwrap()).unwrap();
        assert_eq!(sent.trace_id(), given.trace_id());
        assert_ne!(sent.span_id(), given.span_id());
        assert_eq!(sent.flags(), given.flags());
        assert_eq!(back_seen.trace, back_seen.traceparent);
        assert_eq!(back_seen.metadata, 1);
    }
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored() {
    for kind in KINDS {
        let mut back =
            Harness::start(kind, Server::new().add_service(BackServer::new(BackImpl))).await;
        let client = BackClient::new(back.connect().await);
        for value in MALFORMED {
            let seen = guard(client.data().metadata("traceparent", value))
                .await
                .unwrap();
            assert_eq!(seen.trace, None, "{kind:?}: {value:?}");
            assert_eq!(seen.traceparent.as_deref(), Some(value));
        }
        // Bytes that are not text at all.
        let seen = guard(client.data().metadata("traceparent", vec![0xff; 55]))
            .await
            .unwrap();
        assert_eq!(seen.trace, None);
    }
}

#[tokio::test]
async fn a_context_given_to_work_outside_handlers_is_continued() {
    let mut back = Harness::start(
        Kind::MemoryPair,
        Server::new().add_service(BackServer::new(BackImpl)),
    )
    .await;
    let client = BackClient::new(back.connect().await);
    let metadata = [("traceparent", VALID)].into_iter().collect();
    let context = rpc_core::context::CallContext::new(None, metadata);
    let seen = guard(rpc_core::context::scope(
        Some(context),
        client.data().into_future(),
    ))
    .await
    .unwrap();
    let sent = TraceContext::parse(seen.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(
        sent.trace_id(),
        TraceContext::parse(VALID).unwrap().trace_id()
    );
}
