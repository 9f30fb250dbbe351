//! Compatibility by schema: two builds of one service (the modules `v1` and `v2`) talking in
//! both directions, over every transport. A call whose types one side cannot read fails with
//! `Incompatible` before any handler runs, naming the method, the type and the field or
//! variant, only in the direction where it breaks; the connection carries on.

mod common;

use std::collections::HashMap;

use common::{guard, Harness, KINDS};
use rpc_core::{ErrorKind, RpcError, Server};

/// The build that is deployed.
mod v1 {
    use std::collections::HashMap;

    use rpc_core::service;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Order {
        pub id: u64,
        pub qty: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub enum Size {
        Small,
        Large,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Line {
        pub size: Size,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub enum Status {
        Open,
        Closed,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Point {
        pub x: i32,
        pub y: i32,
    }

    /// A shop.
    #[service(name = "Shop")]
    pub trait Shop {
        async fn place(&self, order: Order) -> u64;
        async fn pick(&self, size: Size) -> u32;
        async fn status(&self, id: u64) -> Status;
        async fn optional(&self, lines: Option<Vec<Line>>) -> u32;
        async fn by_name(&self, lines: HashMap<String, Line>) -> u32;
        async fn lines(&self) -> Vec<Line>;
        async fn point(&self, point: Point) -> i32;
        async fn same(&self, name: String, id: u64) -> String;
        async fn widen(&self, n: u32) -> u32;
        async fn ping(&self) -> u32;
    }

    pub struct Impl;

    impl Shop for Impl {
        async fn place(&self, order: Order) -> u64 {
            order.id
        }
        async fn pick(&self, _: Size) -> u32 {
            1
        }
        async fn status(&self, _: u64) -> Status {
            Status::Closed
        }
        async fn optional(&self, lines: Option<Vec<Line>>) -> u32 {
            lines.map_or(0, |l| l.len() as u32)
        }
        async fn by_name(&self, lines: HashMap<String, Line>) -> u32 {
            lines.len() as u32
        }
        async fn lines(&self) -> Vec<Line> {
            vec![Line { size: Size::Large }]
        }
        async fn point(&self, point: Point) -> i32 {
            point.x + point.y
        }
        async fn same(&self, name: String, id: u64) -> String {
            format!("{name}{id}")
        }
        async fn widen(&self, n: u32) -> u32 {
            n
        }
        async fn ping(&self) -> u32 {
            1
        }
    }
}

/// The next build: the same service with its types changed.
mod v2 {
    use std::collections::HashMap;

    use rpc_core::service;
    use serde::{Deserialize, Serialize};

    /// Gained a field.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Order {
        pub id: u64,
        pub qty: u32,
        pub note: String,
    }

    /// Gained a variant.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub enum Size {
        Small,
        Large,
        Huge,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Line {
        pub size: Size,
    }

    /// Gained a variant.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub enum Status {
        Open,
        Closed,
        Archived,
    }

    /// `y` renamed `z`: the same bytes.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Point {
        pub x: i32,
        pub z: i32,
    }

    /// The same wire type as `u64`.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub struct Id(pub u64);

    pub type Text = std::string::String;

    #[service(name = "Shop")]
    pub trait Shop {
        async fn ping(&self) -> u32;
        async fn place(&self, order: Order) -> u64;
        async fn pick(&self, size: Size) -> u32;
        async fn status(&self, id: u64) -> Status;
        async fn optional(&self, lines: Option<Vec<Line>>) -> u32;
        async fn by_name(&self, lines: HashMap<String, Line>) -> u32;
        async fn lines(&self) -> Vec<Line>;
        async fn point(&self, point: Point) -> i32;
        async fn same(&self, name: std::string::String, id: Id) -> Text;
        async fn widen(&self, n: u64) -> u16;
        /// New in v2.
        async fn added(&self) -> u32;
    }

    pub struct Impl;

    impl Shop for Impl {
        async fn ping(&self) -> u32 {
            2
        }
        async fn place(&self, order: Order) -> u64 {
            order.id
        }
        async fn pick(&self, _: Size) -> u32 {
            2
        }
        async fn status(&self, _: u64) -> Status {
            Status::Closed
        }
        async fn optional(&self, lines: Option<Vec<Line>>) -> u32 {
            lines.map_or(0, |l| l.len() as u32)
        }
        async fn by_name(&self, lines: HashMap<String, Line>) -> u32 {
            lines.len() as u32
        }
        async fn lines(&self) -> Vec<Line> {
            vec![Line { size: Size::Large }]
        }
        async fn point(&self, point: Point) -> i32 {
            point.x + point.z
        }
        async fn same(&self, name: String, id: Id) -> Text {
            format!("{name}{}", id.0)
        }
        async fn widen(&self, n: u64) -> u16 {
            n as u16
        }
        async fn added(&self) -> u32 {
            3
        }
    }
}

fn v1_server() -> Server {
    Server::new().add_service(v1::ShopServer::new(v1::Impl))
}

fn v2_server() -> Server {
    Server::new().add_service(v2::ShopServer::new(v2::Impl))
}

/// Asserts `result` is `Incompatible` with a message containing every one of `parts`.
#[track_caller]
fn assert_incompatible<T: std::fmt::Debug>(result: Result<T, RpcError>, parts: &[&str]) {
    let err = result.expect_err("the call should have been refused");
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    let text = err.to_string();
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_client_and_an_older_server() {
    for kind in KINDS {
        let mut harness = Harness::start(kind, v1_server()).await;
        let client = v2::ShopClient::new(harness.connect().await);
        let order = v2::Order {
            id: 7,
            qty: 1,
            note: "gift".into(),
        };
        assert_incompatible(
            guard(client.place(order)).await,
            &[
                "argument `order: Order` of `Shop::place` differs",
                "the client sends field `note: String` that the server's `Order` lacks",
                "new method",
            ],
        );
        // The connection carries on.
        assert_eq!(guard(client.ping()).await.unwrap(), 1);
        assert_incompatible(
            guard(client.pick(v2::Size::Small)).await,
            &[
                "argument `size: Size` of `Shop::pick`",
                "the client may send variant `Huge` of `Size` that the server's `Size` lacks",
            ],
        );
        // The server may add variants to a result: the client reads them all.
        assert_eq!(guard(client.status(1)).await.unwrap(), v2::Status::Closed);
        let line = v2::Line {
            size: v2::Size::Small,
        };
        assert_incompatible(
            guard(client.optional(Some(vec![line.clone()]))).await,
            &["`Shop::optional`", "variant `Huge` of `Size`"],
        );
        assert_incompatible(
            guard(client.by_name(HashMap::from([("a".into(), line)]))).await,
            &["`Shop::by_name`", "variant `Huge` of `Size`"],
        );
        assert_eq!(guard(client.lines()).await.unwrap().len(), 1);
        assert_incompatible(
            guard(client.point(v2::Point { x: 1, z: 2 })).await,
            &["field 2 of `Point` is `z: i32` for the client and `y: i32` for the server"],
        );
        assert_eq!(
            guard(client.same("a".into(), v2::Id(1))).await.unwrap(),
            "a1"
        );
        assert_incompatible(
            guard(client.widen(1)).await,
            &["the client sends `u64` where the server reads `u32`"],
        );
        assert_incompatible(
            guard(client.added()).await,
            &["the server's `Shop` has no method `added`"],
        );
        assert_eq!(guard(client.ping()).await.unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_client_and_a_newer_server() {
    for kind in KINDS {
        let mut harness = Harness::start(kind, v2_server()).await;
        let client = v1::ShopClient::new(harness.connect().await);
        assert_incompatible(
            guard(client.place(v1::Order { id: 7, qty: 1 })).await,
            &[
                "argument `order: Order` of `Shop::place` differs",
                "the server's `Order` reads field `note: String` that the client's `Order` lacks",
            ],
        );
        assert_eq!(guard(client.ping()).await.unwrap(), 2);
        // The server reads every variant the client may send.
        assert_eq!(guard(client.pick(v1::Size::Large)).await.unwrap(), 2);
        assert_incompatible(
            guard(client.status(1)).await,
            &[
                "the result `Status` of `Shop::status` differs",
                "the server may send variant `Archived` of `Status` that the client's `Status` lacks",
            ],
        );
        let line = v1::Line {
            size: v1::Size::Small,
        };
        assert_eq!(
            guard(client.optional(Some(vec![line.clone()])))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            guard(client.by_name(HashMap::from([("a".into(), line)])))
                .await
                .unwrap(),
            1
        );
        assert_incompatible(
            guard(client.lines()).await,
            &[
                "the result `Vec<Line>` of `Shop::lines`",
                "variant `Huge` of `Size`",
            ],
        );
        assert_incompatible(
            guard(client.point(v1::Point { x: 1, y: 2 })).await,
            &["field 2 of `Point`"],
        );
        assert_eq!(guard(client.same("b".into(), 2)).await.unwrap(), "b2");
        // u32 widens to u64 on the way in, u16 to u32 on the way out.
        assert_eq!(guard(client.widen(300)).await.unwrap(), 300);
        assert_eq!(guard(client.ping()).await.unwrap(), 2);
    }
}

/// A client of today's protocol, which sends no schema: methods are matched by the
/// fingerprint of their signature, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_schema_is_matched_by_fingerprint() {
    const BARE: rpc_core::ServiceDescriptor = rpc_core::ServiceDescriptor::new(
        v1::ShopClient::DESCRIPTOR.name,
        v1::ShopClient::DESCRIPTOR.methods,
    );
    for kind in KINDS {
        let mut harness = Harness::start(kind, v2_server()).await;
        let client =
            v1::ShopClient::from_client(rpc_core::Client::new(harness.connect().await, &BARE));
        assert_eq!(guard(client.ping()).await.unwrap(), 2);
        assert_eq!(guard(client.status(1)).await.unwrap(), v1::Status::Closed);
        // Written differently: without schemas, the fingerprints differ.
        assert_incompatible(
            guard(client.same("b".into(), 2)).await,
            &["different signature", "rebuild the older side"],
        );
    }
}

#[test]
fn the_schema_describes_the_trait() {
    let schema = v2::ShopClient::schema();
    assert_eq!(schema.name, "Shop");
    let same = schema.method("same").unwrap();
    assert_eq!(same.args[0].name, "name");
    assert_eq!(same.args[0].value.written, "std::string::String");
    assert_eq!(same.args[1].value.written, "Id");
    assert_eq!(same.result.written, "Text");
    assert_eq!(schema.method("added").unwrap().docs, "New in v2.");
    assert_eq!(v1::ShopClient::schema().docs, "A shop.");
    let json = schema.to_json();
    assert_eq!(
        rpc_core::schema::ServiceSchema::from_json(&json).unwrap(),
        *schema
    );
}

#[test]
fn breaking_changes_are_named_in_both_roles() {
    let recorded = v1::ShopClient::schema();
    let current = v2::ShopClient::schema();
    let changes = recorded.breaking_changes(current);
    let text = changes.join("\n");
    for part in [
        "a recorded client calling a current server: argument `order: Order` of `Shop::place`",
        "a current client calling a recorded server: argument `order: Order` of `Shop::place`",
        "a current client calling a recorded server: argument `size: Size` of `Shop::pick`",
        "a recorded client calling a current server: the result `Status` of `Shop::status`",
    ] {
        assert!(text.contains(part), "{part:?} is not in:\n{text}");
    }
    assert!(!text.contains("`Shop::same`"), "{text}");
    assert!(!text.contains("`Shop::ping`"), "{text}");
    // Added methods break nothing; removed ones do.
    assert!(!text.contains("added"), "{text}");
    let removed = current.breaking_changes(recorded).join("\n");
    assert!(
        removed.contains("the method `Shop::added` was removed"),
        "{removed}"
    );
    assert!(recorded.breaking_changes(recorded).is_empty());
}

#[test]
fn check_file_records_then_checks() {
    let dir = std::env::temp_dir().join(format!("rpc-schema-{}", std::process::id()));
    let path = dir.join("shop.json");
    let _ = std::fs::remove_file(&path);
    // First run: recorded.
    v1::ShopClient::schema().check_file(&path).unwrap();
    assert!(path.exists());
    v1::ShopClient::schema().check_file(&path).unwrap();
    let err = v2::ShopClient::schema().check_file(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("breaking change(s) against the schema recorded in"),
        "{text}"
    );
    assert!(text.contains("`Shop::place`"), "{text}");
    assert!(text.contains("RPC_SCHEMA_UPDATE=1"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_on_every_transport() {
    use rpc_core::reflection::ReflectionClient;
    for kind in KINDS {
        let mut harness = Harness::start(kind, v2_server()).await;
        let reflection = ReflectionClient::new(harness.connect().await);
        assert_eq!(
            guard(reflection.services()).await.unwrap(),
            ["Shop", "rpc.Health", "rpc.Reflection"]
        );
        let shop = guard(reflection.describe("Shop".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shop, *v2::ShopClient::schema());
        assert_eq!(
            guard(reflection.describe("Nope".into())).await.unwrap(),
            None
        );
        let own = guard(reflection.describe("rpc.Reflection".into()))
            .await
            .unwrap()
            .unwrap();
        let describe = own.method("describe").unwrap();
        assert!(describe.idempotent);
        assert!(
            describe.result.schema.is_some(),
            "{:?}",
            describe.result.untraced
        );
    }
}

/// A server set to frames smaller than a client's `Hello` (which carries the schema) still
/// reads that `Hello`: the first frame may be up to `MIN_HELLO_LIMIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_small_frames_reads_a_large_hello() {
    let hello_json = v2::ShopClient::schema().to_json();
    assert!(
        hello_json.len() > 1024,
        "the schema is {} bytes",
        hello_json.len()
    );
    for kind in KINDS {
        let server = Server::new()
            .max_frame_size(1024)
            .add_service(v2::ShopServer::new(v2::Impl));
        let mut harness = Harness::start(kind, server).await;
        let client = v2::ShopClient::new(harness.connect().await);
        assert_eq!(guard(client.ping()).await.unwrap(), 2);
        // Later frames are held to the limit.
        let big = v2::Order {
            id: 1,
            qty: 1,
            note: "x".repeat(2000),
        };
        let err = guard(client.place(big)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    }
}
