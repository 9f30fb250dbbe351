//! Compression: negotiated in the handshake, applied per message above a threshold, and
//! interoperable with peers that have none or predate it.
//!
//! Most tests put a relay between a real client and a real server (in-memory transports)
//! that records every frame, so that what went compressed is seen on the wire; the others
//! play one side by hand with raw frames, as an older peer or a hostile one would. The
//! codecs tested are those compiled in: `cargo test -p rpc-tests --all-features` has both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rpc_core::__fuzz::{self, WireMessage, WireStatus};
use rpc_core::compress::{Codec, Compression};
use rpc_core::memory::MemoryTransport;
use rpc_core::{service, Client, ErrorKind, Server, Streaming};
use rpc_transport::memory::{self, MemoryConnector};

/// Only a hang guard: nothing here waits for time to pass.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[service]
pub trait Store {
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    async fn chunks(&self, sizes: Vec<u32>) -> Streaming<Vec<u8>>;
    async fn upload(&self, items: Streaming<Vec<u8>>) -> Vec<u8>;
}

struct Memory;

impl Store for Memory {
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    async fn chunks(&self, sizes: Vec<u32>) -> Streaming<Vec<u8>> {
        Streaming::iter(sizes.into_iter().map(|n| text(n as usize)))
    }

    async fn upload(&self, mut items: Streaming<Vec<u8>>) -> Vec<u8> {
        // A digest of what came: every item's length, and whether it was the expected text.
        let mut out = Vec::new();
        while let Some(item) = items.next().await {
            match item {
                Ok(item) => {
                    let ok = item == text(item.len());
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.push(u8::from(ok));
                }
                Err(err) => out.extend_from_slice(err.message().as_bytes()),
            }
        }
        out
    }
}

/// Compressible data of `n` bytes.
fn text(n: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

/// The codecs this build has.
fn codecs() -> Vec<Codec> {
    [Codec::Zstd, Codec::Lz4]
        .into_iter()
        .filter(|c| c.is_available())
        .collect()
}

fn only(codec: Codec) -> Compression {
    Compression::builder()
        .codecs([codec])
        .build()
        .expect("a valid configuration")
}

async fn guard<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// Every frame a relay passed on: `true` for the client's, with the message.
type Seen = Arc<Mutex<Vec<(bool, WireMessage)>>>;

/// A server on an in-memory listener.
fn server(compression: Option<Compression>) -> MemoryConnector {
    let (listener, connector) = memory::listener();
    tokio::spawn(
        Server::new()
            .add_service(StoreServer::new(Memory))
            .compression(compression)
            .serve(listener),
    );
    connector
}

/// A connection to the server behind `connector` through a relay that records every frame.
async fn relayed(connector: &MemoryConnector) -> (MemoryTransport, Seen) {
    let upstream = connector.connect().await.expect("connect");
    let (client_end, relay_end) = memory::pair();
    let seen: Seen = Arc::default();
    let (mut to_server, mut from_server) = upstream.split();
    let (mut to_client, mut from_client) = relay_end.split();
    let up = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = from_client.next().await {
            up.lock().unwrap().push((true, decoded(&frame)));
            if to_server.send(frame).await.is_err() {
                break;
            }
        }
        let _ = to_server.close().await;
    });
    let down = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = from_server.next().await {
            down.lock().unwrap().push((false, decoded(&frame)));
            if to_client.send(frame).await.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    });
    (client_end, seen)
}

fn decoded(frame: &[u8]) -> WireMessage {
    __fuzz::decode(frame).unwrap_or_else(|err| panic!("a frame that does not decode: {err}"))
}

/// The names of the messages one side sent.
fn sent_by(seen: &Seen, client: bool) -> Vec<&'static str> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(from_client, _)| *from_client == client)
        .map(|(_, message)| message.name())
        .collect()
}

/// The codec the server's announcement named (0: none).
fn answered(seen: &Seen) -> u32 {
    seen.lock()
        .unwrap()
        .iter()
        .find_map(|(from_client, message)| match message {
            WireMessage::Credit {
                id: __fuzz::CONNECTION_ID,
                items,
            } if !*from_client => Some(*items),
            _ => None,
        })
        .expect("the server's announcement")
}

/// Sizes of stream items: below the threshold, above it, and above the size compressed
/// off the connection's task.
const ITEM_SIZES: [u32; 4] = [100, 10_000, 200_000, 1 << 20];

/// Unary calls, a result stream and an argument stream, all with large compressible data.
async fn exercise(client: &StoreClient) {
    // A first call settles the handshake: the client compresses once the server said so.
    assert_eq!(client.echo(vec![1, 2, 3]).await.unwrap(), vec![1, 2, 3]);
    let big = text(3 << 20);
    assert_eq!(client.echo(big.clone()).await.unwrap(), big);
    let mut stream = client.chunks(ITEM_SIZES.to_vec()).await.unwrap();
    for size in ITEM_SIZES {
        let item = stream.next().await.expect("an item").expect("a good item");
        assert_eq!(item, text(size as usize));
    }
    assert!(stream.next().await.is_none());
    let items = Streaming::iter(ITEM_SIZES.map(|n| text(n as usize)));
    let digest = client.upload(items).await.unwrap();
    let mut expected = Vec::new();
    for size in ITEM_SIZES {
        expected.extend_from_slice(&size.to_le_bytes());
        expected.push(1);
    }
    assert_eq!(digest, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_codec_compresses_large_messages_both_ways_in_memory() {
    for codec in codecs() {
        let connector = server(Some(only(codec)));
        let (end, seen) = relayed(&connector).await;
        let client = StoreClient::from_client(Client::with_compression(
            end,
            &StoreClient::DESCRIPTOR,
            only(codec),
        ));
        guard("the calls", exercise(&client)).await;
        assert_eq!(answered(&seen), u32::from(codec_byte(codec)), "{codec}");
        let client_sent = sent_by(&seen, true);
        let server_sent = sent_by(&seen, false);
        assert!(
            client_sent.contains(&"PackedRequest"),
            "{codec}: {client_sent:?}"
        );
        assert!(
            client_sent.contains(&"PackedStreamItem"),
            "{codec}: {client_sent:?}"
        );
        assert!(
            server_sent.contains(&"PackedResponse"),
            "{codec}: {server_sent:?}"
        );
        assert!(
            server_sent.contains(&"PackedStreamItem"),
            "{codec}: {server_sent:?}"
        );
        // The 100-byte items went as they are (alone, or in a run), the others compressed.
        for side in [&client_sent, &server_sent] {
            let plain = side
                .iter()
                .filter(|n| **n == "StreamItem" || **n == "StreamItems")
                .count();
            let packed = side.iter().filter(|n| **n == "PackedStreamItem").count();
            assert!(plain >= 1 && packed >= 3, "{codec}: {side:?}");
        }
        // And the compressed frames are much smaller than what they carry.
        let wire: usize = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, message)| match message {
                WireMessage::PackedRequest { body, .. }
                | WireMessage::PackedResponse { body, .. }
                | WireMessage::PackedStreamItem { body, .. } => body.len(),
                _ => 0,
            })
            .sum();
        assert!(wire < (3 << 20) / 4, "{codec}: {wire} bytes compressed");
    }
}

/// The byte that names a codec on the wire (docs/protocol.md).
fn codec_byte(codec: Codec) -> u8 {
    match codec {
        Codec::Zstd => 1,
        Codec::Lz4 => 2,
        other => panic!("no wire byte known for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_codec_round_trips_over_tcp() {
    for codec in codecs() {
        let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(
            Server::new()
                .add_service(StoreServer::new(Memory))
                .compression(Some(only(codec)))
                .serve(listener),
        );
        // One client made from a transport, one by the builder (a pool).
        let plain = StoreClient::from_client(Client::with_compression(
            rpc_transport::tcp::connect(addr).await.expect("connect"),
            &StoreClient::DESCRIPTOR,
            only(codec),
        ));
        guard("the plain client", exercise(&plain)).await;
        let built = StoreClient::builder()
            .compression(Some(only(codec)))
            .connect(rpc_transport::tcp::connector(addr));
        guard("the built client", exercise(&built)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_picks_its_own_preference_among_the_offered_codecs() {
    let all = codecs();
    if all.len() < 2 {
        return; // needs both codecs (`--all-features`)
    }
    let server_prefers = Compression::builder()
        .codecs([Codec::Lz4, Codec::Zstd])
        .build()
        .unwrap();
    let client_prefers = Compression::builder()
        .codecs([Codec::Zstd, Codec::Lz4])
        .build()
        .unwrap();
    let connector = server(Some(server_prefers));
    let (end, seen) = relayed(&connector).await;
    let client = StoreClient::from_client(Client::with_compression(
        end,
        &StoreClient::DESCRIPTOR,
        client_prefers,
    ));
    assert_eq!(client.echo(text(5000)).await.unwrap(), text(5000));
    assert_eq!(answered(&seen), u32::from(codec_byte(Codec::Lz4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_stay_uncompressed() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    let compression = Compression::builder()
        .codecs([codec])
        .threshold(4096)
        .build()
        .unwrap();
    let connector = server(Some(compression.clone()));
    let (end, seen) = relayed(&connector).await;
    let client = StoreClient::from_client(Client::with_compression(
        end,
        &StoreClient::DESCRIPTOR,
        compression,
    ));
    for _ in 0..3 {
        assert_eq!(client.echo(text(4000)).await.unwrap(), text(4000));
    }
    let mut stream = client.chunks(vec![10, 4000]).await.unwrap();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    assert_eq!(answered(&seen), u32::from(codec_byte(codec)));
    for side in [true, false] {
        let names = sent_by(&seen, side);
        assert!(
            !names.iter().any(|n| n.starts_with("Packed")),
            "below the threshold: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompressible_data_goes_as_it_is() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    let connector = server(Some(only(codec)));
    let (end, seen) = relayed(&connector).await;
    let client = StoreClient::from_client(Client::with_compression(
        end,
        &StoreClient::DESCRIPTOR,
        only(codec),
    ));
    client.echo(vec![]).await.unwrap();
    // Bytes from a simple generator with a long period: no codec shrinks them.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_eq!(client.echo(noise.clone()).await.unwrap(), noise);
    for side in [true, false] {
        let names = sent_by(&seen, side);
        assert!(!names.iter().any(|n| n.starts_with("Packed")), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_side_without_compression_means_none() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    // A client that offers, a server that has none.
    let connector = server(None);
    let (end, seen) = relayed(&connector).await;
    let client = StoreClient::from_client(Client::with_compression(
        end,
        &StoreClient::DESCRIPTOR,
        only(codec),
    ));
    guard("offering client, plain server", exercise(&client)).await;
    assert_eq!(answered(&seen), 0);
    // A server that has compression, a client that offers none.
    let connector = server(Some(only(codec)));
    let (end, seen2) = relayed(&connector).await;
    let client = StoreClient::new(end);
    guard("plain client, compressing server", exercise(&client)).await;
    assert_eq!(answered(&seen2), 0);
    for seen in [&seen, &seen2] {
        for side in [true, false] {
            let names = sent_by(seen, side);
            assert!(!names.iter().any(|n| n.starts_with("Packed")), "{names:?}");
        }
    }
}

/// The method table of a client that predates compression (and schemas): what a first
/// release client sends, byte for byte.
fn old_hello() -> Bytes {
    WireMessage::Hello {
        magic: *b"tRPC",
        version: 1,
        service: "Store".to_string(),
        methods: StoreClient::DESCRIPTOR
            .methods
            .iter()
            .map(|m| (m.name.to_string(), m.fingerprint))
            .collect(),
    }
    .encode()
}

/// The body of `echo(data)`, or of its result: a byte vector.
fn bytes_body(data: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    __fuzz::codec::encode_value(data, &mut body).unwrap();
    body.to_vec()
}

async fn next(end: &mut MemoryTransport) -> WireMessage {
    let frame = guard("a frame", end.next())
        .await
        .expect("the connection is open")
        .expect("a frame");
    decoded(&frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_previous_version_is_answered_uncompressed() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    let connector = server(Some(only(codec)));
    let mut end = connector.connect().await.unwrap();
    end.send(old_hello()).await.unwrap();
    let big = text(1 << 20);
    let request = WireMessage::Request {
        id: 0,
        method: 0,
        timeout_us: None,
        metadata: vec![],
        body: bytes_body(&big),
    };
    end.send(request.encode()).await.unwrap();
    assert_eq!(
        next(&mut end).await,
        WireMessage::Credit {
            id: __fuzz::CONNECTION_ID,
            items: 0
        },
        "the announcement, answering no offer"
    );
    assert_eq!(
        next(&mut end).await,
        WireMessage::Response {
            id: 0,
            status: WireStatus::Ok,
            body: bytes_body(&big)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_previous_version_gets_plain_requests() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    // The test plays the old server.
    let (client_end, mut end) = memory::pair();
    let client = StoreClient::from_client(Client::with_compression(
        client_end,
        &StoreClient::DESCRIPTOR,
        only(codec),
    ));
    let call = tokio::spawn(async move { client.echo(text(1 << 20)).await });
    let WireMessage::Hello { methods, .. } = next(&mut end).await else {
        panic!("the client's first frame is not a Hello");
    };
    // The offer comes after the methods and before the schema, which stays last, where a
    // server that predates the offer looks for it.
    let n = StoreClient::DESCRIPTOR.methods.len();
    assert_eq!(methods.len(), n + 2, "{methods:?}");
    assert_eq!(methods[n].0, format!("rpc.compression:{codec}"));
    assert!(methods[n + 1].0.starts_with("rpc.schema:"));
    // An old server's announcement: items 0.
    end.send(
        WireMessage::Credit {
            id: __fuzz::CONNECTION_ID,
            items: 0,
        }
        .encode(),
    )
    .await
    .unwrap();
    loop {
        match next(&mut end).await {
            WireMessage::Request { id, body, .. } => {
                assert_eq!(body, bytes_body(&text(1 << 20)));
                let response = WireMessage::Response {
                    id,
                    status: WireStatus::Ok,
                    body,
                };
                end.send(response.encode()).await.unwrap();
                break;
            }
            WireMessage::Credit { .. } => {}
            other => panic!("the client sent {other:?} to a server that has no compression"),
        }
    }
    let answer = guard("the call", call).await.unwrap().unwrap();
    assert_eq!(answer, text(1 << 20));
}

/// A packed body that claims `size` bytes uncompressed, followed by `data`.
fn packed_body(codec: Codec, size: u64, data: &[u8]) -> Vec<u8> {
    let mut body = vec![codec_byte(codec)];
    // The length as a bincode varint: 0xfd then 8 bytes covers any size.
    body.put_u8(0xfd);
    body.put_u64_le(size);
    body.extend_from_slice(data);
    body
}

/// Opens a connection by hand, offering `codec`; returns it after the announcement.
async fn offering(connector: &MemoryConnector, codec: Codec) -> MemoryTransport {
    let mut end = connector.connect().await.unwrap();
    let mut methods: Vec<(String, u64)> = StoreClient::DESCRIPTOR
        .methods
        .iter()
        .map(|m| (m.name.to_string(), m.fingerprint))
        .collect();
    // FNV-1a 64 of `rpc.compression`, as docs/protocol.md says.
    let mut fingerprint = 0xcbf2_9ce4_8422_2325_u64;
    for byte in b"rpc.compression" {
        fingerprint = (fingerprint ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
    }
    methods.push((format!("rpc.compression:{codec}"), fingerprint));
    let hello = WireMessage::Hello {
        magic: *b"tRPC",
        version: 1,
        service: "Store".to_string(),
        methods,
    };
    end.send(hello.encode()).await.unwrap();
    assert_eq!(
        next(&mut end).await,
        WireMessage::Credit {
            id: __fuzz::CONNECTION_ID,
            items: u32::from(codec_byte(codec)),
        }
    );
    end
}

fn expect_protocol_error(message: WireMessage, id: u64, words: &str) {
    match message {
        WireMessage::Response {
            id: got,
            status: WireStatus::Error { kind, message },
            ..
        } => {
            assert_eq!(got, id);
            assert_eq!(__fuzz::error_kind_from_wire(kind), ErrorKind::Protocol);
            assert!(message.contains(words), "{message}");
        }
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_fails_its_call_and_nothing_else() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    let connector = server(Some(only(codec)));
    let mut end = offering(&connector, codec).await;
    let request = |id, body| WireMessage::PackedRequest {
        id,
        method: 0,
        timeout_us: None,
        metadata: vec![],
        body,
    };
    // Claims a terabyte: refused from the claim, nothing decompressed.
    end.send(request(0, packed_body(codec, 1 << 40, b"junk")).encode())
        .await
        .unwrap();
    expect_protocol_error(next(&mut end).await, 0, "more than the frame size limit");
    // Claims 1000 bytes but expands to far more: stopped at the claim.
    let bomb = compress_with(codec, &vec![0; 4 << 20]);
    end.send(request(1, packed_body(codec, 1000, &bomb)).encode())
        .await
        .unwrap();
    expect_protocol_error(next(&mut end).await, 1, "decompress");
    // Claims 1 byte over the server's 8 MiB frame limit, with a frame of a few kB.
    let over = compress_with(codec, &vec![0; 8 << 20]);
    end.send(request(2, packed_body(codec, 8 << 20, &over)).encode())
        .await
        .unwrap();
    expect_protocol_error(next(&mut end).await, 2, "more than the frame size limit");
    // The connection still serves: a plain call, and a good compressed one.
    let plain = WireMessage::Request {
        id: 3,
        method: 0,
        timeout_us: None,
        metadata: vec![],
        body: bytes_body(b"still here"),
    };
    end.send(plain.encode()).await.unwrap();
    assert_eq!(
        next(&mut end).await,
        WireMessage::Response {
            id: 3,
            status: WireStatus::Ok,
            body: bytes_body(b"still here")
        }
    );
    let body = bytes_body(&text(100_000));
    let good = packed_body(codec, body.len() as u64, &compress_with(codec, &body));
    end.send(request(4, good).encode()).await.unwrap();
    match next(&mut end).await {
        WireMessage::PackedResponse { id: 4, .. } => {}
        other => panic!("expected the compressed answer, got {other:?}"),
    }
    // And other clients are served.
    let client = StoreClient::new(connector.connect().await.unwrap());
    assert_eq!(client.echo(text(10)).await.unwrap(), text(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_from_the_server_fails_that_call_only() {
    let Some(&codec) = codecs().first() else {
        return;
    };
    // The test plays a hostile server.
    let (client_end, mut end) = memory::pair();
    let client = StoreClient::from_client(Client::with_compression(
        client_end,
        &StoreClient::DESCRIPTOR,
        only(codec),
    ));
    let calls = tokio::spawn(async move {
        let first = client.echo(vec![1]).await;
        let second = client.echo(vec![2]).await;
        (first, second)
    });
    assert!(matches!(next(&mut end).await, WireMessage::Hello { .. }));
    end.send(
        WireMessage::Credit {
            id: __fuzz::CONNECTION_ID,
            items: u32::from(codec_byte(codec)),
        }
        .encode(),
    )
    .await
    .unwrap();
    let mut answered = 0;
    while answered < 2 {
        match next(&mut end).await {
            WireMessage::Request { id, .. } if answered == 0 => {
                let body = packed_body(codec, 1 << 40, b"junk");
                end.send(WireMessage::PackedResponse { id, body }.encode())
                    .await
                    .unwrap();
                answered += 1;
            }
            WireMessage::Request { id, body, .. } => {
                end.send(
                    WireMessage::Response {
                        id,
                        status: WireStatus::Ok,
                        body,
                    }
                    .encode(),
                )
                .await
                .unwrap();
                answered += 1;
            }
            _ => {}
        }
    }
    let (first, second) = guard("the calls", calls).await.unwrap();
    let err = first.expect_err("the bomb");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("claims"), "{err}");
    assert_eq!(second.unwrap(), vec![2]);
}

/// `data` compressed by `codec`, as the runtime compresses (the codec's own format).
fn compress_with(codec: Codec, data: &[u8]) -> Vec<u8> {
    __fuzz::compress(codec, data).expect("the codec is compiled in")
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let err = Compression::builder().codecs([]).build().unwrap_err();
    assert!(err.to_string().contains("no compression codec"), "{err}");
    if Codec::Zstd.is_available() {
        let err = Compression::builder()
            .codecs([Codec::Zstd])
            .level(99)
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("zstd level 99 is out of range"),
            "{err}"
        );
        // LZ4 has no level: any is accepted without zstd.
        if Codec::Lz4.is_available() {
            assert!(Compression::builder()
                .codecs([Codec::Lz4])
                .level(99)
                .build()
                .is_ok());
        }
    } else {
        let err = Compression::builder()
            .codecs([Codec::Zstd])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("feature `zstd`"), "{err}");
    }
    if let Some(&codec) = codecs().first() {
        let err = Compression::builder()
            .codecs([codec])
            .threshold(0)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("threshold of 0"), "{err}");
        let err = Compression::builder()
            .codecs([codec, codec])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let ok = Compression::builder()
            .codecs([codec])
            .level(1)
            .threshold(1)
            .build()
            .unwrap();
        assert_eq!(
            (ok.codecs(), ok.level(), ok.threshold()),
            (&[codec][..], 1, 1)
        );
    }
}
