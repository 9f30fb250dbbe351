//! An independent encoding of the wire protocol as docs/protocol.md describes it, for tests that
//! play a hostile or hand-written peer. Written from the spec, not from rpc-core's code.
#![allow(dead_code)]

use bincode::{Decode, Encode};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rpc_core::ServiceDescriptor;

pub const MAGIC: [u8; 4] = *b"tRPC";

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Status {
    Ok,
    Error { kind: u8, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Wire {
    Hello {
        magic: [u8; 4],
        version: u32,
        service: String,
        methods: Vec<(String, u64)>,
    },
    Request {
        id: u64,
        method: u32,
        timeout_us: Option<u64>,
        metadata: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    Response {
        id: u64,
        status: Status,
        body: Vec<u8>,
    },
    Cancel {
        id: u64,
    },
    Goodbye {
        kind: u8,
        message: String,
    },
    StreamItem {
        id: u64,
        body: Vec<u8>,
    },
    StreamEnd {
        id: u64,
        status: Status,
    },
    Credit {
        id: u64,
        items: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    PackedRequest {
        id: u64,
        method: u32,
        timeout_us: Option<u64>,
        metadata: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    PackedResponse {
        id: u64,
        body: Vec<u8>,
    },
    PackedStreamItem {
        id: u64,
        body: Vec<u8>,
    },
    /// A run of items: each a varint length, then that many bytes (see [`run`]).
    StreamItems {
        id: u64,
        items: Vec<u8>,
    },
    /// The server's load report: calls in flight, utilization in ten-thousandths.
    Load {
        in_flight: u32,
        utilization: u32,
    },
}

/// The client's announcement flags (docs/protocol.md, "Connection window" and "Load
/// reports").
pub const BYTE_CREDIT: u32 = 1 << 8;
pub const ITEM_RUNS: u32 = 1 << 9;
pub const LOAD_REPORTS: u32 = 1 << 10;

/// The run of `bodies`, as `StreamItems` carries it.
pub fn run(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut run = Vec::new();
    for body in bodies {
        run.extend_from_slice(&self::body(&(body.len() as u64)));
        run.extend_from_slice(body);
    }
    run
}

/// The bodies of the run `items`.
pub fn run_items(mut items: &[u8]) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    while !items.is_empty() {
        let (len, used) = bincode::decode_from_slice::<u64, _>(items, config()).expect("a length");
        let end = used + len as usize;
        bodies.push(items[used..end].to_vec());
        items = &items[end..];
    }
    bodies
}

/// Wire codes of `ErrorKind`s.
pub const PROTOCOL: u8 = 5;
pub const INCOMPATIBLE: u8 = 4;
pub const DEADLINE_EXCEEDED: u8 = 1;

pub fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode(message: &Wire) -> Bytes {
    Bytes::from(bincode::encode_to_vec(message, config()).unwrap())
}

pub fn body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).unwrap()
}

pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> T {
    bincode::serde::decode_from_slice(body, config()).unwrap().0
}

pub fn hello(desc: &ServiceDescriptor) -> Wire {
    Wire::Hello {
        magic: MAGIC,
        version: 1,
        service: desc.name.to_string(),
        methods: desc
            .methods
            .iter()
            .map(|m| (m.name.to_string(), m.fingerprint))
            .collect(),
    }
}

/// The `Hello` of a client that sends its schema (every client `#[service]` generates): the
/// method table, then one more entry, `rpc.schema:` and the schema as JSON without docs,
/// whose fingerprint is FNV-1a 64 of `rpc.schema`.
pub fn hello_with_schema(desc: &ServiceDescriptor) -> Wire {
    let Wire::Hello {
        magic,
        version,
        service,
        mut methods,
    } = hello(desc)
    else {
        unreachable!()
    };
    let mut schema = desc
        .schema()
        .expect("a generated service has a schema")
        .clone();
    schema.docs.clear();
    for method in &mut schema.methods {
        method.docs.clear();
    }
    let json = serde_json::to_string(&schema).expect("a schema is JSON");
    methods.push((format!("rpc.schema:{json}"), fnv1a(b"rpc.schema")));
    Wire::Hello {
        magic,
        version,
        service,
        methods,
    }
}

/// FNV-1a 64.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn request(id: u64, method: u32, timeout_us: Option<u64>, body: Vec<u8>) -> Wire {
    Wire::Request {
        id,
        method,
        timeout_us,
        metadata: vec![],
        body,
    }
}

/// What each side sends first (after `Hello`, on the client): "I grant stream credit as my
/// consumers drain", a `Credit` for the id no call uses.
pub const CONNECTION_WINDOW_ANNOUNCEMENT: Wire = Wire::Credit {
    id: u64::MAX,
    items: 0,
};

/// A peer that speaks raw frames.
pub struct RawPeer(pub super::AnyTransport);

impl RawPeer {
    pub async fn send_frame(&mut self, frame: Bytes) {
        self.0.send(frame.into()).await.expect("send");
    }

    pub async fn send(&mut self, message: &Wire) {
        self.send_frame(encode(message)).await;
    }

    /// The next message, or `None` once the other side closed the connection. The peer's
    /// announcements (`Credit` for the connection's id, see docs/protocol.md) are skipped:
    /// no test using this waits for them.
    pub async fn recv(&mut self) -> Option<Wire> {
        loop {
            let message = self.recv_any().await?;
            // Whatever flags it carries (a client's offer of byte credit, a server's answer).
            if !matches!(message, Wire::Credit { id: u64::MAX, .. }) {
                return Some(message);
            }
        }
    }

    /// The next message, announcements included.
    pub async fn recv_any(&mut self) -> Option<Wire> {
        let frame = super::guard(self.0.next()).await?.expect("recv");
        let (message, used) = bincode::decode_from_slice::<Wire, _>(&frame, config())
            .unwrap_or_else(|e| panic!("undecodable frame {frame:?}: {e}"));
        assert_eq!(used, frame.len(), "trailing bytes in {frame:?}");
        Some(message)
    }

    /// Expects a successful response to `id` and decodes its body.
    pub async fn expect_ok<T: serde::de::DeserializeOwned>(&mut self, id: u64) -> T {
        match self.recv().await {
            Some(Wire::Response {
                id: got,
                status: Status::Ok,
                body,
            }) if got == id => decode_body(&body),
            other => panic!("expected a successful response to {id}, got {other:?}"),
        }
    }

    /// Expects an error response to `id`; returns its kind and text.
    pub async fn expect_error(&mut self, id: u64) -> (u8, String) {
        match self.recv().await {
            Some(Wire::Response {
                id: got,
                status: Status::Error { kind, message },
                ..
            }) if got == id => (kind, message),
            other => panic!("expected an error response to {id}, got {other:?}"),
        }
    }

    /// Receives the next request and answers it with a successful `body`.
    pub async fn answer_next(&mut self, body: Vec<u8>) {
        let Some(Wire::Request { id, .. }) = self.recv().await else {
            panic!("expected a request")
        };
        self.send(&Wire::Response {
            id,
            status: Status::Ok,
            body,
        })
        .await;
    }

    /// Says `Hello` for `Lab` and starts `block(tag)` as request `id`.
    pub async fn start_block(&mut self, id: u64, tag: u64, timeout_us: Option<u64>) {
        self.send(&hello(&super::LabClient::DESCRIPTOR)).await;
        self.send(&request(
            id,
            super::lab_method("block"),
            timeout_us,
            body(&(tag,)),
        ))
        .await;
    }

    /// Expects a `Goodbye` and then the end of the connection; returns its kind and text.
    pub async fn expect_goodbye(&mut self) -> (u8, String) {
        match self.recv().await {
            Some(Wire::Goodbye { kind, message }) => {
                assert_eq!(
                    self.recv().await,
                    None,
                    "the connection stays open after Goodbye"
                );
                (kind, message)
            }
            other => panic!("expected Goodbye, got {other:?}"),
        }
    }
}
