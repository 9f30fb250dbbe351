//! Arbitrary byte streams fed to a real server over the TCP framer never panic it: the
//! connection ends, with or without a `Goodbye`, and the server keeps serving.

mod common;

use common::{lab, LabClient, LabServer};
use proptest::prelude::*;
use rpc_core::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A valid `Hello` for `Lab`, with its length prefix: lets the arbitrary bytes behind it
/// reach the request decoder and not just the handshake.
fn hello_prefix() -> Vec<u8> {
    let body = common::wire::encode(&common::wire::hello(&LabClient::DESCRIPTOR));
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn feed(bytes: Vec<u8>) {
    runtime().block_on(async {
        let (imp, _events) = lab();
        let (mut peer, server_end) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(
            Server::new()
                .add_service(LabServer::new(imp))
                .max_frame_size(4096)
                .serve_connection(rpc_transport::framing::framed(server_end)),
        );
        peer.write_all(&bytes).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = peer.read_to_end(&mut sink).await;
        // A panic in the server would surface here as a JoinError.
        let served = serving.await;
        assert!(served.is_ok(), "the server panicked: {served:?}");
    });
}

/// Frames with valid length prefixes and arbitrary contents.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..8).prop_map(
        |frames| {
            let mut out = Vec::new();
            for f in frames {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
                out.extend_from_slice(&f);
            }
            out
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        feed(bytes);
    }

    #[test]
    fn arbitrary_frames_after_a_valid_hello(frames in frames()) {
        let mut bytes = hello_prefix();
        bytes.extend_from_slice(&frames);
        feed(bytes);
    }

    #[test]
    fn requests_with_arbitrary_fields(
        requests in proptest::collection::vec(
            (any::<u64>(), 0u32..10, proptest::option::of(0u64..10_000), proptest::collection::vec(any::<u8>(), 0..40)),
            0..8,
        ),
    ) {
        let mut bytes = hello_prefix();
        for (id, method, timeout_us, body) in requests {
            let frame = common::wire::encode(&common::wire::request(id, method, timeout_us, body));
            bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&frame);
        }
        feed(bytes);
    }
}
