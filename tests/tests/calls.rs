//! Calls through the public API: results, errors, concurrency, deadlines, cancellation.
//! Every test runs over every transport in `common::KINDS`.

mod common;

use std::future::IntoFuture;
use std::time::Duration;

use common::{guard, lab, lab_client, next_event, Event, MathError, KINDS};
use futures::future::join_all;
use rpc_core::{ErrorKind, Server};

fn lab_server() -> (
    Server,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    std::sync::Arc<tokio::sync::Notify>,
) {
    let (imp, events) = lab();
    let release = imp.release.clone();
    (
        Server::new().add_service(common::LabServer::new(imp)),
        events,
        release,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_typed_errors_arrive() {
    for kind in KINDS {
        let (server, _events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server).await;
        assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3, "{kind:?}");
        assert_eq!(guard(client.div(7, 2)).await.unwrap(), Ok(3));
        assert_eq!(
            guard(client.div(7, 0)).await.unwrap(),
            Err(MathError::DivideByZero)
        );
        guard(client.reset()).await.unwrap();
        let data: Vec<u8> = (0..=255).cycle().take(100_000).collect();
        assert_eq!(guard(client.echo(data.clone())).await.unwrap(), data);
        assert_eq!(guard(client.echo(vec![])).await.unwrap(), Vec::<u8>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_calls_are_matched_to_their_callers() {
    for kind in KINDS {
        let (server, _events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server).await;
        // 2,000 calls in flight at once on one connection, from one task...
        let calls = (0..2_000i64).map(|i| client.add(i, 1_000_000));
        let results = guard(join_all(calls.map(IntoFuture::into_future))).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), i as i64 + 1_000_000, "{kind:?}");
        }
        // ...and from many tasks sharing clones of the client.
        let tasks: Vec<_> = (0..50i64)
            .map(|t| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0..40i64 {
                        assert_eq!(client.add(t * 1000, i).await.unwrap(), t * 1000 + i);
                    }
                })
            })
            .collect();
        for t in tasks {
            guard(t).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_call_is_not_held_up_by_a_slow_one() {
    for kind in KINDS {
        let (server, mut events, release) = lab_server();
        let (client, _h) = lab_client(kind, server).await;
        let slow = tokio::spawn(client.block(1).into_future());
        assert_eq!(next_event(&mut events).await, Event::Started(1));
        // The slow call is still running: these complete anyway.
        for i in 0..100 {
            assert_eq!(guard(client.add(i, i)).await.unwrap(), 2 * i);
        }
        assert!(!slow.is_finished());
        release.notify_one();
        assert_eq!(guard(slow).await.unwrap().unwrap(), 1, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exceeded_deadline_fails_the_call_and_stops_the_handler() {
    for kind in KINDS {
        let (server, mut events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server).await;
        let err = guard(client.block(7).timeout(Duration::from_millis(20)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{kind:?}: {err}");
        assert!(err.to_string().contains("deadline"), "{err}");
        assert_eq!(next_event(&mut events).await, Event::Started(7));
        // The server stops the handler: its future is dropped.
        assert_eq!(next_event(&mut events).await, Event::Dropped(7));
        // The connection is fine afterwards.
        assert_eq!(guard(client.add(2, 2)).await.unwrap(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_cancels_it_on_the_server() {
    for kind in KINDS {
        let (server, mut events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server).await;
        let call = tokio::spawn(client.block(9).into_future());
        assert_eq!(next_event(&mut events).await, Event::Started(9));
        call.abort();
        assert_eq!(next_event(&mut events).await, Event::Dropped(9), "{kind:?}");
        assert_eq!(guard(client.add(1, 1)).await.unwrap(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_only_its_call() {
    for kind in KINDS {
        let (server, _events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server).await;
        let other = client.clone();
        let err = guard(client.panic("boom".into())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{kind:?}");
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(err.to_string().contains("panic"), "{err}");
        assert_eq!(guard(other.add(40, 2)).await.unwrap(), 42);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once() {
    for kind in KINDS {
        let (server, mut events, release) = lab_server();
        let (client, _h) = lab_client(kind, server.max_concurrent_requests(2)).await;
        let first = tokio::spawn(client.block(1).into_future());
        let second = tokio::spawn(client.block(2).into_future());
        let mut started = vec![next_event(&mut events).await, next_event(&mut events).await];
        started.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(started, vec![Event::Started(1), Event::Started(2)]);
        let err = guard(client.add(1, 1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{kind:?}");
        assert!(err.to_string().contains("max_concurrent_requests"), "{err}");
        release.notify_waiters();
        assert_eq!(guard(first).await.unwrap().unwrap(), 1);
        assert_eq!(guard(second).await.unwrap().unwrap(), 2);
        assert_eq!(guard(client.add(1, 1)).await.unwrap(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_frame_limit_fails_only_that_call() {
    for kind in KINDS {
        let (server, _events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server.max_frame_size(64 << 10)).await;
        let err = guard(client.zeros(100_000)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{kind:?}");
        assert!(err.to_string().contains("limit"), "{err}");
        assert_eq!(guard(client.zeros(1000)).await.unwrap().len(), 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_frame_limit_is_refused_with_protocol() {
    for kind in KINDS {
        let (server, _events, _release) = lab_server();
        let (client, _h) = lab_client(kind, server.max_frame_size(64 << 10)).await;
        let err = guard(client.echo(vec![1; 100_000])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{kind:?}: {err}");
        assert!(err.to_string().contains("limit"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_closes_over_a_large_request_the_next_call_goes_on_a_new_connection() {
    // The server's goodbye says `Protocol`; a call started right after it may still find
    // the closed connection, which refuses it unsent: it must go on a new connection, not
    // fail with that connection's error. (Whichever comes first, the call must succeed.)
    for _ in 0..20 {
        let (server, _events, _release) = lab_server();
        let (listener, connector) = rpc_transport::memory::listener();
        let serving = tokio::spawn(server.max_frame_size(64 << 10).serve(listener));
        let client = common::LabClient::builder()
            .wait_for_ready(true)
            .connect(connector);
        let err = guard(client.echo(vec![1; 100_000])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert_eq!(guard(client.echo(vec![2; 10])).await.unwrap(), vec![2; 10]);
        serving.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_client_limit_is_not_sent() {
    let (server, _events, _release) = lab_server();
    let (client, _h) = lab_client(common::Kind::MemoryPair, server).await;
    let err = guard(client.echo(vec![1; 9 << 20])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("frame size limit"), "{err}");
    // Nothing was sent: the connection still works.
    assert_eq!(guard(client.add(1, 2)).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_calls_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let (server, _events, _release) = lab_server();
    let (client, _h) = lab_client(common::Kind::MemoryPair, server).await;
    assert_send_sync(&client);
    let call = client.add(1, 2);
    assert_send(&call);
    let fut = call.into_future();
    assert_send(&fut);
    assert_eq!(guard(fut).await.unwrap(), 3);
}
