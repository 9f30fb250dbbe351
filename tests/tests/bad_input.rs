//! Bad input from either side: each gives the right `ErrorKind` with a clear message, never
//! a hang or a panic, and the server keeps serving every other connection.

mod common;

use std::future::IntoFuture;
use std::time::Duration;

use bytes::Bytes;
use common::wire::{self, RawPeer, Wire};
use common::{guard, lab, next_event, Event, LabClient, LabServer};
use common::{Harness, Kind};
use rpc_core::{service, ErrorKind, Server};

/// The transports with a listener: every test with a hostile client runs over each.
const LISTENERS: [Kind; 3] = [Kind::MemoryListener, Kind::Tcp, Kind::Unix];

/// A `Lab` server on a listener of `kind`, and a well-behaved client of it.
async fn server_with_good_client(kind: Kind, server: Server) -> (Harness, LabClient) {
    let mut harness = Harness::start(kind, server).await;
    let good = LabClient::new(harness.connect().await);
    assert_eq!(guard(good.add(1, 1)).await.unwrap(), 2);
    (harness, good)
}

async fn raw_peer(harness: &mut Harness) -> RawPeer {
    RawPeer(harness.connect().await)
}

fn lab_server() -> (Server, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (imp, events) = lab();
    (Server::new().add_service(LabServer::new(imp)), events)
}

use common::lab_method as method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_first_frame_gets_a_protocol_goodbye() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, good) = server_with_good_client(kind, server).await;
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0xff; 64][..],
            &[][..],
            &[0, b't', b'R', b'P'][..],
        ] {
            let mut peer = raw_peer(&mut harness).await;
            peer.send_frame(Bytes::copy_from_slice(garbage)).await;
            let (kind, message) = peer.expect_goodbye().await;
            assert_eq!(kind, wire::PROTOCOL, "{message}");
            assert!(message.contains("expected a Hello"), "{message}");
            assert_eq!(guard(good.add(2, 2)).await.unwrap(), 4);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_protocol_is_named_as_such() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, _good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        peer.send_frame(Bytes::from_static(b"GET / HTTP/1.1\r\n"))
            .await;
        let (_, message) = peer.expect_goodbye().await;
        assert!(message.contains("another protocol"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_frame_after_hello_closes_only_that_connection() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        peer.send(&wire::hello(&LabClient::DESCRIPTOR)).await;
        peer.send_frame(Bytes::from_static(&[0x7f, 1, 2, 3])).await;
        let (kind, message) = peer.expect_goodbye().await;
        assert_eq!(kind, wire::PROTOCOL);
        assert!(message.contains("not a protocol message"), "{message}");
        assert_eq!(guard(good.add(3, 3)).await.unwrap(), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_decode_fails_only_that_call() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        peer.send(&wire::hello(&LabClient::DESCRIPTOR)).await;
        // A string that claims 2^60 bytes, in a 9-byte body: must not be allocated.
        let mut lying = vec![0xff];
        lying.extend_from_slice(&(1u64 << 60).to_le_bytes());
        peer.send(&wire::request(1, method("panic"), None, lying))
            .await;
        peer.send(&wire::request(2, method("add"), None, vec![0xff]))
            .await;
        peer.send(&wire::request(
            3,
            method("add"),
            None,
            wire::body(&(20i64, 22i64)),
        ))
        .await;
        for id in 1..=2 {
            let (kind, message) = peer.expect_error(id).await;
            assert_eq!(kind, wire::PROTOCOL, "{message}");
            assert!(message.contains("does not decode"), "{message}");
        }
        assert_eq!(peer.expect_ok::<i64>(3).await, 42);
        assert_eq!(guard(good.add(1, 2)).await.unwrap(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_incompatible() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        let Wire::Hello {
            magic,
            service,
            methods,
            ..
        } = wire::hello(&LabClient::DESCRIPTOR)
        else {
            unreachable!()
        };
        peer.send(&Wire::Hello {
            magic,
            version: 2,
            service,
            methods,
        })
        .await;
        let (kind, message) = peer.expect_goodbye().await;
        assert_eq!(kind, wire::INCOMPATIBLE, "{message}");
        assert!(message.contains("version 2"), "{message}");
        assert_eq!(guard(good.add(1, 2)).await.unwrap(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_without_our_magic_is_another_protocol() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, _good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        peer.send(&Wire::Hello {
            magic: *b"HTTP",
            version: 1,
            service: "Lab".into(),
            methods: vec![],
        })
        .await;
        let (kind, message) = peer.expect_goodbye().await;
        assert_eq!(kind, wire::PROTOCOL);
        assert!(message.contains("another protocol"), "{message}");
    }
}

/// A service the Lab server does not host.
#[service]
pub trait Elsewhere {
    async fn ping(&self) -> u8;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_for_another_service_is_incompatible_and_names_both() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let (mut harness, good) = server_with_good_client(kind, server).await;
        let client = ElsewhereClient::new(harness.connect().await);
        let err = guard(client.ping()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("`Elsewhere`") && text.contains("`Lab`"),
            "{text}"
        );
        // Later calls on that client fail the same way, at once.
        assert_eq!(
            guard(client.ping()).await.unwrap_err().kind(),
            ErrorKind::Incompatible
        );
        assert_eq!(guard(good.add(1, 2)).await.unwrap(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_vanishing_mid_call_gives_disconnected() {
    for kind in LISTENERS {
        let (server, mut events) = lab_server();
        let (harness, good) = server_with_good_client(kind, server).await;
        let call = tokio::spawn(good.block(5).into_future());
        assert_eq!(next_event(&mut events).await, Event::Started(5));
        // Dropping the serve future closes its connections and drops their handlers.
        harness.server.abort();
        assert_eq!(next_event(&mut events).await, Event::Dropped(5));
        let err = guard(call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
        assert!(err.to_string().contains("closed"), "{err}");
        let err = guard(good.add(1, 1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_call_stops_its_handler_only() {
    for kind in LISTENERS {
        let (server, mut events) = lab_server();
        let (mut harness, good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        peer.start_block(1, 11, None).await;
        assert_eq!(next_event(&mut events).await, Event::Started(11));
        drop(peer);
        assert_eq!(next_event(&mut events).await, Event::Dropped(11));
        assert_eq!(guard(good.add(1, 2)).await.unwrap(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_enforces_the_deadline_it_is_sent() {
    for kind in LISTENERS {
        let (server, mut events) = lab_server();
        let (mut harness, _good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        // 20 ms remaining; this peer never cancels.
        peer.start_block(1, 4, Some(20_000)).await;
        assert_eq!(next_event(&mut events).await, Event::Started(4));
        assert_eq!(next_event(&mut events).await, Event::Dropped(4));
        let (kind, message) = peer.expect_error(1).await;
        assert_eq!(kind, wire::DEADLINE_EXCEEDED, "{message}");
        assert!(message.contains("block"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_drops_the_handler() {
    for kind in LISTENERS {
        let (server, mut events) = lab_server();
        let (mut harness, _good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        peer.start_block(8, 8, None).await;
        assert_eq!(next_event(&mut events).await, Event::Started(8));
        peer.send(&Wire::Cancel { id: 8 }).await;
        assert_eq!(next_event(&mut events).await, Event::Dropped(8));
        // No response is sent for a cancelled call; the connection goes on.
        peer.send(&wire::request(
            9,
            method("add"),
            None,
            wire::body(&(1i64, 1i64)),
        ))
        .await;
        assert_eq!(peer.expect_ok::<i64>(9).await, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_hello_timeout() {
    for kind in LISTENERS {
        let (server, _events) = lab_server();
        let server = server.hello_timeout(Duration::from_millis(50));
        let (mut harness, good) = server_with_good_client(kind, server).await;
        let mut peer = raw_peer(&mut harness).await;
        let (kind, message) = peer.expect_goodbye().await;
        assert_eq!(kind, wire::PROTOCOL);
        assert!(message.contains("no Hello"), "{message}");
        assert_eq!(guard(good.add(1, 2)).await.unwrap(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_response_fails_the_client_with_protocol() {
    for kind in common::KINDS {
        let (client_end, server_end) = common::connected_pair(kind).await;
        let client = LabClient::new(client_end);
        let mut fake_server = RawPeer(server_end);
        let call = tokio::spawn(client.add(1, 2).into_future());
        assert!(matches!(fake_server.recv().await, Some(Wire::Hello { .. })));
        assert!(matches!(
            fake_server.recv().await,
            Some(Wire::Request { .. })
        ));
        fake_server
            .send_frame(Bytes::from_static(b"\xff\xfe garbage"))
            .await;
        let err = guard(call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("not a protocol message"), "{err}");
        // The client tells the server why it leaves.
        let (kind, _) = fake_server.expect_goodbye().await;
        assert_eq!(kind, wire::PROTOCOL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_does_not_decode_fails_only_that_call() {
    for kind in common::KINDS {
        let (client_end, server_end) = common::connected_pair(kind).await;
        let client = LabClient::new(client_end);
        let mut fake_server = RawPeer(server_end);
        let call = tokio::spawn(client.add(1, 2).into_future());
        assert!(matches!(fake_server.recv().await, Some(Wire::Hello { .. })));
        fake_server.answer_next(vec![0xff]).await;
        let err = guard(call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("i64"), "{err}");
        // The connection is still up: the next call is sent.
        let next = tokio::spawn(client.add(2, 2).into_future());
        fake_server.answer_next(wire::body(&4i64)).await;
        assert_eq!(guard(next).await.unwrap().unwrap(), 4);
    }
}

/// Two versions of one service: same wire name, methods that changed between them.
mod v1 {
    use rpc_core::service;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct Shape {
        pub side: u32,
    }

    #[service(name = "Shapes")]
    pub trait Shapes {
        async fn area(&self, shape: Shape) -> u64;
        async fn scale(&self, factor: u32) -> u32;
        async fn kept(&self) -> u8;
        async fn removed(&self) -> u8;
    }
}

mod v2 {
    use rpc_core::service;
    use serde::{Deserialize, Serialize};

    /// Same name as in v1, other fields: the fingerprint cannot see that, the schema can.
    #[derive(Serialize, Deserialize)]
    pub struct Shape {
        pub name: String,
        pub side: u32,
    }

    #[service(name = "Shapes")]
    pub trait Shapes {
        async fn added(&self) -> u8;
        async fn kept(&self) -> u8;
        async fn scale(&self, factor: u64) -> u64;
        async fn area(&self, shape: Shape) -> u64;
    }

    pub struct Impl;
    impl Shapes for Impl {
        async fn added(&self) -> u8 {
            1
        }
        async fn kept(&self) -> u8 {
            2
        }
        async fn scale(&self, factor: u64) -> u64 {
            factor
        }
        async fn area(&self, shape: Shape) -> u64 {
            u64::from(shape.side) * u64::from(shape.side)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_methods_fail_only_their_own_calls() {
    for kind in common::KINDS {
        let (client_end, server_end) = common::connected_pair(kind).await;
        tokio::spawn(
            Server::new()
                .add_service(v2::ShapesServer::new(v2::Impl))
                .serve_connection(server_end),
        );
        let client = v1::ShapesClient::new(client_end);

        // Unchanged, and reordered: fine.
        assert_eq!(guard(client.kept()).await.unwrap(), 2);

        // A method the server does not have.
        let err = guard(client.removed()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
        assert!(err.to_string().contains("no method `removed`"), "{err}");

        // A changed signature: the result would not be read.
        let err = guard(client.scale(2)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
        assert!(err.to_string().contains("`Shapes::scale`"), "{err}");
        assert!(
            err.to_string()
                .contains("the server sends `u64` where the client reads `u32`"),
            "{err}"
        );

        // Same signature text, other type definition: the schemas tell, before the call.
        let err = guard(client.area(v1::Shape { side: 3 })).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
        assert!(
            err.to_string()
                .contains("field 1 of `Shape` is `side: u32` for the client and `name: String` for the server"),
            "{err}"
        );

        assert_eq!(guard(client.kept()).await.unwrap(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_vectors_keep_the_plain_serde_encoding() {
    // `Vec<u8>` arguments and results take serde's bytes path; a peer that encodes them as
    // an ordinary sequence (serde's default) must still interoperate.
    let (server, _events) = lab_server();
    let (mut harness, _good) = server_with_good_client(Kind::MemoryListener, server).await;
    let mut peer = raw_peer(&mut harness).await;
    peer.send(&wire::hello(&LabClient::DESCRIPTOR)).await;
    let data: Vec<u8> = (0..=255).collect();
    peer.send(&wire::request(
        1,
        method("echo"),
        None,
        wire::body(&(data.clone(),)),
    ))
    .await;
    assert_eq!(peer.expect_ok::<Vec<u8>>(1).await, data);
}

/// A type whose serde impls panic on some values, as a buggy user type might.
mod touchy {
    use rpc_core::service;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Debug, PartialEq)]
    pub struct Touchy(pub u32);

    impl Serialize for Touchy {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            assert_ne!(self.0, 13, "13 cannot be serialized");
            s.serialize_u32(self.0)
        }
    }

    impl<'de> Deserialize<'de> for Touchy {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Touchy, D::Error> {
            let v = u32::deserialize(d)?;
            assert_ne!(v, 7, "7 cannot be deserialized");
            Ok(Touchy(v))
        }
    }

    #[service]
    pub trait Fragile {
        async fn next(&self, v: Touchy) -> Touchy;
    }

    pub struct Impl;
    impl Fragile for Impl {
        async fn next(&self, v: Touchy) -> Touchy {
            Touchy(v.0 + 1)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_serde_impl_on_the_server_fails_only_its_call() {
    for kind in common::KINDS {
        let server = Server::new().add_service(touchy::FragileServer::new(touchy::Impl));
        let mut harness = Harness::start(kind, server).await;
        let client = touchy::FragileClient::new(harness.connect().await);
        // The server cannot decode the argument.
        let err = guard(client.next(touchy::Touchy(7))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{kind:?}: {err}");
        assert!(err.to_string().contains("panicked"), "{err}");
        // The server cannot encode the result.
        let err = guard(client.next(touchy::Touchy(12))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{kind:?}: {err}");
        assert!(err.to_string().contains("panicked"), "{err}");
        // The connection carries on.
        assert_eq!(
            guard(client.next(touchy::Touchy(1))).await.unwrap(),
            touchy::Touchy(2)
        );
    }
}
