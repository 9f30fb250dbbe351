//! Calls with JSON: any method of any service, given only its [schema](crate::schema).
//!
//! [`JsonClient`] turns a JSON object of named arguments into the method's request, through
//! the schema, and the response back into JSON, so a program that does not have the crate
//! defining a service can still call it: the `rpc` command-line client, scripts, and the
//! server's HTTP gateway. Values are written as `serde_json` writes the Rust values (see
//! [`schema::json`](crate::schema::json)).
//!
//! ```
//! use rpc_core::json::{JsonClient, JsonReply};
//! use rpc_core::reflection::ReflectionClient;
//! use rpc_core::{service, Server};
//!
//! #[service]
//! pub trait Calculator {
//!     async fn add(&self, a: i64, b: i64) -> i64;
//! }
//!
//! struct Calc;
//!
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (listener, connector) = rpc_transport::memory::listener();
//! tokio::spawn(Server::new().add_service(CalculatorServer::new(Calc)).serve(listener));
//! // What the server says of the service is all the client needs.
//! let reflection = ReflectionClient::new(connector.connect().await?);
//! let schema = reflection.describe("Calculator".into()).await?.expect("hosted");
//! let client = JsonClient::new(connector.connect().await?, schema);
//! let args = serde_json::json!({"a": 1, "b": 2});
//! let reply = client.call("add", args.as_object().unwrap(), &Default::default()).await?;
//! assert!(matches!(reply, JsonReply::Value(v) if v == 3));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::descriptor::{MethodInfo, ServiceDescriptor};
use crate::error::{ErrorKind, RpcError};
use crate::schema::{json as transcode, Container, Fields, MethodSchema, ServiceSchema, Type};
use crate::streaming::Streaming;
use crate::transport::Transport;

/// A client of one service that calls its methods with JSON. Cheap to clone.
#[derive(Clone)]
pub struct JsonClient {
    client: Client,
    schema: Arc<ServiceSchema>,
}

/// What a call gave.
#[derive(Debug)]
pub enum JsonReply {
    /// The method's result (for a method returning `Result<T, E>`, the `T` of an `Ok`).
    Value(Value),
    /// The `E` of a method returning `Result<T, E>` that returned `Err`.
    Error(Value),
    /// The items of a method returning `Streaming<T>`.
    Stream(JsonStream),
}

/// Options of one call: metadata and a timeout.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Metadata sent with the call (`authorization`, `traceparent`, ...).
    pub metadata: Vec<(String, Bytes)>,
    /// The call's deadline, from when it is sent.
    pub timeout: Option<Duration>,
}

/// Why a JSON call failed.
#[derive(Debug)]
pub enum JsonCallError {
    /// The service has no method of that name. Nothing was sent.
    NoSuchMethod(String),
    /// The call cannot be made as asked: arguments that do not fit the method's types.
    /// Nothing was sent.
    BadRequest(String),
    /// The method cannot be called with JSON: it takes a stream, or a type of it could not
    /// be traced. Nothing was sent.
    Unsupported(String),
    /// The call failed: the error the server or the connection gave.
    Rpc(RpcError),
}

impl fmt::Display for JsonCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonCallError::NoSuchMethod(why) => f.write_str(why),
            JsonCallError::BadRequest(why) => write!(f, "bad request: {why}"),
            JsonCallError::Unsupported(why) => write!(f, "unsupported: {why}"),
            JsonCallError::Rpc(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for JsonCallError {}

impl From<RpcError> for JsonCallError {
    fn from(err: RpcError) -> Self {
        JsonCallError::Rpc(err)
    }
}

impl JsonClient {
    /// A client of the service `schema` describes (as [reflection](crate::reflection) gives
    /// it) over `transport`. The service's method table is made from the schema once per
    /// distinct schema and kept for the life of the process.
    pub fn new<T: Transport>(transport: T, schema: ServiceSchema) -> JsonClient {
        let desc = descriptor_for(&schema);
        JsonClient {
            client: Client::new(transport, desc),
            schema: Arc::new(schema),
        }
    }

    /// A client over `client`, whose service `schema` describes: the methods are found by
    /// their position in the schema, which must be the client's method table's order.
    #[cfg(feature = "http")]
    pub(crate) fn over(client: Client, schema: Arc<ServiceSchema>) -> JsonClient {
        JsonClient { client, schema }
    }

    /// The service's schema.
    pub fn schema(&self) -> &ServiceSchema {
        &self.schema
    }

    /// Calls `method` with `args`, a JSON object of its arguments by name (an `Option`
    /// argument may be left out).
    pub async fn call(
        &self,
        method: &str,
        args: &Map<String, Value>,
        options: &CallOptions,
    ) -> Result<JsonReply, JsonCallError> {
        let (index, schema) = self
            .schema
            .methods
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == method)
            .ok_or_else(|| {
                JsonCallError::NoSuchMethod(format!(
                    "the service `{}` has no method `{method}` (it has: {})",
                    self.schema.name,
                    self.schema
                        .methods
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if let Some(arg) = schema.args.iter().find(|a| a.value.streaming) {
            return Err(JsonCallError::Unsupported(format!(
                "`{}::{method}` takes a stream (`{}`), which a JSON call cannot send",
                self.schema.name, arg.name
            )));
        }
        let mut body = BytesMut::new();
        transcode::encode_args(schema, args, &mut body)
            .map_err(|err| JsonCallError::BadRequest(err.to_string()))?;
        let index = index as u32;
        if schema.result.streaming {
            let stream = apply(self.client.call_body_streaming(index, &body), options).await?;
            return Ok(JsonReply::Stream(JsonStream {
                inner: stream,
                schema: Arc::clone(&self.schema),
                method: index as usize,
            }));
        }
        let call = apply(self.client.call_body(index, &body), options);
        let response = call.await?;
        let value = transcode::decode_value(&schema.result, &response).map_err(|err| {
            JsonCallError::Rpc(RpcError::protocol(format!(
                "the result of `{}::{method}` does not read as its schema says: {err}",
                self.schema.name
            )))
        })?;
        Ok(split_result(schema, value))
    }
}

impl fmt::Debug for JsonClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonClient")
            .field("service", &self.schema.name)
            .finish_non_exhaustive()
    }
}

fn apply<R>(mut call: crate::Call<R>, options: &CallOptions) -> crate::Call<R> {
    for (key, value) in &options.metadata {
        call = call.metadata(key.clone(), value.clone());
    }
    if let Some(timeout) = options.timeout {
        call = call.timeout(timeout);
    }
    call
}

/// Whether the method returns `Result<T, E>`: its result is serde's `Result` enum.
fn returns_result(method: &MethodSchema) -> bool {
    let Some(schema) = &method.result.schema else {
        return false;
    };
    let Type::Named(key) = &schema.root else {
        return false;
    };
    key == "Result"
        && matches!(
            schema.types.get(key),
            Some(Container::Enum(variants))
                if variants.len() == 2
                    && variants[0].name == "Ok"
                    && variants[1].name == "Err"
                    && variants.iter().all(|v| matches!(v.fields, Fields::Newtype(_)))
        )
}

/// The reply for a method's decoded result: `Ok`/`Err` taken apart for `Result`.
fn split_result(method: &MethodSchema, value: Value) -> JsonReply {
    if returns_result(method) {
        if let Value::Object(mut map) = value {
            if let Some(ok) = map.remove("Ok") {
                return JsonReply::Value(ok);
            }
            if let Some(err) = map.remove("Err") {
                return JsonReply::Error(err);
            }
            return JsonReply::Value(Value::Object(map));
        }
        return JsonReply::Value(value);
    }
    JsonReply::Value(value)
}

/// The items of a streaming JSON call, each as JSON.
pub struct JsonStream {
    inner: Streaming<Bytes>,
    schema: Arc<ServiceSchema>,
    method: usize,
}

impl Stream for JsonStream {
    type Item = Result<Value, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(item))) => item,
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let method = &self.schema.methods[self.method];
        Poll::Ready(Some(
            transcode::decode_value(&method.result, &item).map_err(|err| {
                RpcError::protocol(format!(
                    "an item of `{}::{}` does not read as its schema says: {err}",
                    self.schema.name, method.name
                ))
            }),
        ))
    }
}

impl fmt::Debug for JsonStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonStream").finish_non_exhaustive()
    }
}

/// The method table of the service `schema` describes, made once per distinct schema: a
/// client's descriptor lives as long as the program.
fn descriptor_for(schema: &ServiceSchema) -> &'static ServiceDescriptor {
    static MADE: OnceLock<Mutex<HashMap<String, &'static ServiceDescriptor>>> = OnceLock::new();
    let key = schema.to_json();
    let mut made = crate::lock::lock(MADE.get_or_init(Default::default));
    if let Some(desc) = made.get(&key) {
        return desc;
    }
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let methods: Vec<MethodInfo> = schema
        .methods
        .iter()
        .map(|m| {
            let mut info = MethodInfo::new(leak(&m.name), m.fingerprint);
            if m.idempotent {
                info = info.idempotent();
            }
            if m.args.iter().any(|a| a.value.streaming) {
                info = info.client_streaming();
            }
            if m.result.streaming {
                info = info.server_streaming();
            }
            info
        })
        .collect();
    let desc: &'static ServiceDescriptor = Box::leak(Box::new(ServiceDescriptor::new(
        leak(&schema.name),
        Box::leak(methods.into_boxed_slice()),
    )));
    made.insert(key, desc);
    desc
}

/// The error's kind as a JSON-friendly word: `deadline_exceeded`, `overloaded`, ...
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::Disconnected => "disconnected",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::Incompatible => "incompatible",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Internal => "internal",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::RateLimited => "rate_limited",
    }
}
