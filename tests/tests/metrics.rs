//! Metrics: calls started and finished by outcome, latency, calls in flight and bytes, per
//! service and method on both sides, over every transport in `common::KINDS`.
//!
//! Each test installs a `DebuggingRecorder` as its thread's recorder; the tests run on
//! current-thread runtimes, so the clients and servers they create (whose metric handles
//! are made as they are created) all use it.

mod common;
mod observing;

use std::future::IntoFuture;

use common::{guard, lab, lab_client, next_event, Event, Kind, LabServer, MathError, KINDS};
use metrics_util::debugging::DebuggingRecorder;
use observing::{Forward, Totals, FORWARDED};
use rpc_core::{ErrorKind, Server};

const SIDES: [&str; 2] = ["rpc_client", "rpc_server"];

#[tokio::test]
async fn calls_errors_latency_and_bytes_are_counted_on_both_sides() {
    for kind in KINDS {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (imp, _events) = lab();
        let (client, _h) = lab_client(kind, Server::new().add_service(LabServer::new(imp))).await;

        for i in 0..3 {
            assert_eq!(guard(client.add(i, 1)).await.unwrap(), i + 1);
        }
        // A service error is a successful call.
        assert_eq!(
            guard(client.div(1, 0)).await.unwrap(),
            Err(MathError::DivideByZero)
        );
        let err = guard(client.panic("boom".into())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let data = vec![7u8; 1000];
        assert_eq!(guard(client.echo(data.clone())).await.unwrap(), data);

        let mut totals = Totals::default();
        totals.add(&snapshotter);
        for side in SIDES {
            let counter = |name: &str, method: &str, outcome: Option<&str>| {
                totals.counter(&format!("{side}_{name}"), method, outcome)
            };
            assert_eq!(
                counter("calls_started_total", "add", None),
                3,
                "{kind:?} {side}"
            );
            assert_eq!(counter("calls_finished_total", "add", Some("ok")), 3);
            assert_eq!(counter("calls_finished_total", "div", Some("ok")), 1);
            assert_eq!(counter("calls_started_total", "panic", None), 1);
            assert_eq!(
                counter("calls_finished_total", "panic", Some("internal error")),
                1
            );
            assert_eq!(counter("calls_finished_total", "panic", Some("ok")), 0);
            assert_eq!(counter("calls_started_total", "reset", None), 0);

            let latencies = totals.samples(&format!("{side}_call_duration_seconds"), "add");
            assert_eq!(latencies.len(), 3, "{kind:?} {side}: {totals:#?}");
            assert!(latencies.iter().all(|&s| (0.0..30.0).contains(&s)));

            for method in ["add", "div", "panic", "echo"] {
                let in_flight = totals.gauge(&format!("{side}_calls_in_flight"), method);
                assert_eq!(in_flight, 0.0, "{kind:?} {side} {method}");
            }
            // The encoded arguments and result: the 1000 bytes and a length prefix.
            let request = counter("request_bytes_total", "echo", None);
            let response = counter("response_bytes_total", "echo", None);
            assert!((1000..1010).contains(&request), "{side}: {request}");
            assert!((1000..1010).contains(&response), "{side}: {response}");
            // A failed call has no result.
            assert_eq!(counter("response_bytes_total", "panic", None), 0);
        }
        // Both sides count the same bytes.
        for name in ["request_bytes_total", "response_bytes_total"] {
            for method in ["add", "div", "echo"] {
                assert_eq!(
                    totals.counter(&format!("rpc_client_{name}"), method, None),
                    totals.counter(&format!("rpc_server_{name}"), method, None),
                    "{kind:?} {name} {method}"
                );
            }
        }
    }
}

#[tokio::test]
async fn shed_and_cancelled_calls_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (imp, mut events) = lab();
    let server = Server::new()
        .max_concurrent_requests(1)
        .add_service(LabServer::new(imp));
    let (client, _h) = lab_client(Kind::MemoryPair, server).await;

    let blocked = tokio::spawn(client.block(1).into_future());
    assert_eq!(next_event(&mut events).await, Event::Started(1));
    let mut totals = Totals::default();
    totals.add(&snapshotter);
    for side in SIDES {
        let gauge = totals.gauge(&format!("{side}_calls_in_flight"), "block");
        assert_eq!(gauge, 1.0, "{side}");
    }

    // Shed: the server refuses it before any handler runs.
    let err = guard(client.add(1, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded);
    // Cancelled: the caller drops it, and the server drops the handler.
    blocked.abort();
    assert_eq!(next_event(&mut events).await, Event::Dropped(1));

    totals.add(&snapshotter);
    for side in SIDES {
        let counter = |name: &str, method: &str, outcome: Option<&str>| {
            totals.counter(&format!("{side}_{name}"), method, outcome)
        };
        assert_eq!(counter("calls_started_total", "add", None), 1, "{side}");
        assert_eq!(
            counter("calls_finished_total", "add", Some("overloaded")),
            1,
            "{side}"
        );
        assert_eq!(counter("calls_started_total", "block", None), 1);
        assert_eq!(
            counter("calls_finished_total", "block", Some("cancelled")),
            1,
            "{side}: {totals:#?}"
        );
        for method in ["add", "block"] {
            let in_flight = totals.gauge(&format!("{side}_calls_in_flight"), method);
            assert_eq!(in_flight, 0.0, "{side} {method}");
        }
    }
}

#[tokio::test]
async fn a_balancing_client_counts_each_call_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (listener, connector) = rpc_transport::memory::listener();
    let (imp, _events) = lab();
    tokio::spawn(
        Server::new()
            .add_service(LabServer::new(imp))
            .serve(listener),
    );
    let client = common::LabClient::builder()
        .wait_for_ready(true)
        .connect(connector);
    for _ in 0..2 {
        assert_eq!(guard(client.add(2, 2)).await.unwrap(), 4);
    }
    let mut totals = Totals::default();
    totals.add(&snapshotter);
    for side in SIDES {
        let started = totals.counter(&format!("{side}_calls_started_total"), "add", None);
        assert_eq!(started, 2, "{side}");
        let samples = totals.samples(&format!("{side}_call_duration_seconds"), "add");
        assert_eq!(samples.len(), 2, "{side}");
    }
}

/// A zero-sized recorder is a recorder too: one that forwards to a static (as a thin handle
/// to a process-wide exporter does) sees the calls' metrics, on both sides.
#[tokio::test]
async fn a_zero_sized_local_recorder_sees_the_calls() {
    assert_eq!(std::mem::size_of::<Forward>(), 0);
    let snapshotter = FORWARDED.snapshotter();
    let _local = metrics::set_default_local_recorder(&Forward);
    let (imp, _events) = lab();
    let server = Server::new().add_service(LabServer::new(imp));
    let (client, _h) = lab_client(Kind::MemoryPair, server).await;
    for i in 0..2 {
        assert_eq!(guard(client.add(i, 1)).await.unwrap(), i + 1);
    }
    let mut totals = Totals::default();
    totals.add(&snapshotter);
    for side in SIDES {
        let started = totals.counter(&format!("{side}_calls_started_total"), "add", None);
        assert_eq!(started, 2, "{side}");
        let finished = totals.counter(&format!("{side}_calls_finished_total"), "add", Some("ok"));
        assert_eq!(finished, 2, "{side}");
    }
}
