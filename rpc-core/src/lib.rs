//! Trait-first RPC for Rust: write a trait, put [`#[service]`](service) on it, implement it,
//! and call it from another process as if it were a local `async fn`.
//!
//! ```
//! use rpc_core::{service, RpcError, Server};
//!
//! /// A calculator.
//! #[service]
//! pub trait Calculator {
//!     /// Adds two numbers.
//!     async fn add(&self, a: i64, b: i64) -> i64;
//! }
//!
//! struct Calc;
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), RpcError> {
//! let (client_end, server_end) = rpc_transport::memory::pair();
//! tokio::spawn(Server::new().add_service(CalculatorServer::new(Calc)).serve_connection(server_end));
//! let client = CalculatorClient::new(client_end);
//! assert_eq!(client.add(1, 2).await?, 3);
//! # Ok(()) }
//! ```
//!
//! What `#[service]` generates for `trait Foo`: the trait with `Send` futures, `FooRequest`
//! and `FooResponse` (the typed wire messages), `FooClient` (returns a [`Call`] per method)
//! and `FooServer<S>` (a [`Service`] for [`Server::add_service`]).
//!
//! The crate knows nothing about sockets: connections are [`Transport`]s (see the
//! `rpc-transport` crate for TCP, Unix sockets and in-memory channels).
//!
//! # Wire format
//!
//! Every message, and every method's arguments and result inside it (through serde), is
//! bincode 2 in its standard configuration: little-endian, integers as variable-length
//! `varint`s, and no trailing bytes after a value. A program in another
//! language talks to these services by encoding the same way; the configuration is part of
//! the protocol version, not of this crate's API. A length inside a message is held against
//! the message's own size before anything is allocated for it: a decoded string or byte
//! buffer is never larger than the message it came in, and a sequence never reserves room
//! for more elements than the message has bytes.
#![deny(missing_docs)]

// Generated code names `::rpc_core`, also inside this crate (the health service).
extern crate self as rpc_core;

// The client's layers, bottom up: `connection` (one connection), `balance` (pools of them),
// `client` (what users and generated code hold). Each depends only on those below it.
pub mod balance;
mod boxed;
pub mod buffers;
mod client;
// Private: the wire's bincode configuration is described in the crate docs, not exported
// (bincode is pinned and must not be part of the API). Generated code reaches the codec
// through `__private`, the fuzz targets and property tests through `__fuzz::codec`.
mod clock;
mod codec;
pub mod compress;
mod connect;
mod connection;
pub mod context;
mod deadline;
mod descriptor;
mod error;
mod frame;
pub mod governance;
pub mod health;
pub mod json;
mod keepalive;
mod listeners;
pub mod load;
mod lock;
mod log;
#[doc(hidden)]
pub mod memory;
pub mod middleware;
pub mod observe;
mod outgoing;
mod peer;
mod protocol;
pub mod reflection;
pub mod schema;
mod server;
mod streaming;
#[cfg(feature = "tower")]
pub mod tower;
mod transport;
mod varint;
mod waker;

pub use client::{Call, CallFuture, Client, ClientBuilder};
pub use compress::Compression;
pub use connect::Connect;
pub use connection::{DEFAULT_MAX_FRAME_SIZE, MIN_HELLO_LIMIT};
pub use descriptor::{MethodInfo, ServiceDescriptor};
pub use error::{ErrorKind, RpcError};
pub use keepalive::Keepalive;
pub use listeners::{BoxTransport, Listeners};
pub use peer::{Identity, Peer};
pub use server::{Authorize, BoxFuture, CallInfo, ConnectionInfo, Server, ServerStats, Service};
pub use streaming::{
    Streaming, BYTE_WINDOW as STREAM_BYTE_WINDOW, DEFAULT_MAX_BUFFERED_STREAM_BYTES,
    INITIAL_BYTE_WINDOW as STREAM_INITIAL_BYTE_WINDOW, ITEM_OVERHEAD as STREAM_ITEM_OVERHEAD,
    WINDOW as STREAM_WINDOW,
};
pub use transport::{Frame, HttpConnection, IntoParts, Listener, RawIo, Transport, WholeFrames};

// The macro's whole reference: the macro itself has no docs of its own, so that this page
// reads as one text (rustdoc puts a re-export's docs before the item's).
#[doc = include_str!("service_macro.md")]
pub use rpc_macros::service;

/// Hooks for the fuzz targets and property tests of the wire protocol. Not a public API: no
/// stability promise, and only there with the internal feature `__internal-hooks`.
#[cfg(feature = "__internal-hooks")]
#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;

/// Items used by code that `#[service]` generates. Not a public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    pub use crate::boxed::BoxFuture;
    pub use crate::codec::{
        decode_byte_vec, decode_bytes, decode_value, encode_byte_vec_item, encode_bytes_item,
        encode_item, encode_value, AsBytes, BodyReader, BodyWriter, ByteBuf, EncodeArgs, WriteArgs,
    };
    pub use crate::descriptor::method_index;
    pub use crate::streaming::{ItemSource, RemoteStream};
    pub use bytes::Bytes;
    pub use bytes::BytesMut;
    pub use serde;

    use crate::error::{ErrorKind, RpcError};
    use crate::{Call, Client, Streaming};

    /// Starts a call of the method at `method` in the service's table. Nothing is sent
    /// until the returned [`Call`] is awaited.
    #[inline]
    pub fn call<A, R>(
        client: &Client,
        method: u32,
        args: A,
        decode: fn(&bytes::Bytes) -> Result<R, RpcError>,
    ) -> Call<R>
    where
        A: crate::codec::EncodeArgs,
    {
        client.call(method, args, decode)
    }

    /// Starts a call of a method returning `Streaming<O>`.
    pub fn call_streaming<A, O>(
        client: &Client,
        method: u32,
        args: A,
        decode_item: fn(&bytes::Bytes) -> Result<O, RpcError>,
    ) -> Call<Streaming<O>>
    where
        A: crate::codec::EncodeArgs,
        O: 'static,
    {
        client.call_streaming(method, args, decode_item)
    }

    /// Starts a call of a method taking a `Streaming<I>` argument and returning one `R`.
    pub fn call_with_stream<A, I, R>(
        client: &Client,
        method: u32,
        args: A,
        input: Streaming<I>,
        encode_item: fn(I, &mut crate::codec::BodyWriter<'_>) -> Result<(), RpcError>,
        decode: fn(&bytes::Bytes) -> Result<R, RpcError>,
    ) -> Call<R>
    where
        A: crate::codec::EncodeArgs,
        I: 'static,
    {
        client.call_with_stream(method, args, input, encode_item, decode)
    }

    /// Starts a call of a method taking a `Streaming<I>` argument and returning
    /// `Streaming<O>`.
    pub fn call_bidi<A, I, O>(
        client: &Client,
        method: u32,
        args: A,
        input: Streaming<I>,
        encode_item: fn(I, &mut crate::codec::BodyWriter<'_>) -> Result<(), RpcError>,
        decode_item: fn(&bytes::Bytes) -> Result<O, RpcError>,
    ) -> Call<Streaming<O>>
    where
        A: crate::codec::EncodeArgs,
        I: 'static,
        O: 'static,
    {
        client.call_bidi(method, args, input, encode_item, decode_item)
    }

    /// The argument stream a server's handler reads, fed by the connection.
    pub fn stream_from_remote<T>(
        stream: RemoteStream,
        decode: fn(&bytes::Bytes) -> Result<T, RpcError>,
    ) -> Streaming<T> {
        Streaming::from_remote(stream, decode)
    }

    /// What sends the items of a handler's result stream as frames.
    pub fn stream_into_source<T: 'static>(
        stream: Streaming<T>,
        encode: fn(T, &mut crate::codec::BodyWriter<'_>) -> Result<(), RpcError>,
    ) -> ItemSource {
        stream.into_source(encode)
    }

    /// The check `#[service]` generates for each argument, result and stream item type `T`:
    /// `(&&&WireCheck::<T>::NEW).check()`, spanned at the user's type, which fails to compile
    /// with exactly one error, about the first of `Serialize`, `DeserializeOwned`,
    /// `Send + 'static` that `T` lacks.
    ///
    /// Requiring all three in one bound would report every missing trait separately (a
    /// plain struct lacks two). Instead, method resolution picks one of the `check` methods
    /// below by what `T` already implements (each trait is implemented for a different
    /// number of references to `WireCheck<T>`, and the impls' bounds decide which applies),
    /// and the chosen method requires only the next missing trait, through a trait with a
    /// `#[diagnostic::on_unimplemented]` message (which cannot be generated into user code:
    /// the `diagnostic` namespace does not resolve under `#![no_implicit_prelude]`).
    pub struct WireCheck<T>(core::marker::PhantomData<T>);

    impl<T> WireCheck<T> {
        /// The value to call `check` on.
        pub const NEW: Self = WireCheck(core::marker::PhantomData);
    }

    /// Chosen when `T` is not `Serialize`: requires it.
    pub trait CheckSerialize<T> {
        /// Fails to compile unless `T: Serialize`.
        fn check(&self)
        where
            T: WireSerialize,
        {
        }
    }
    impl<T> CheckSerialize<T> for WireCheck<T> {}

    /// Chosen when `T` is `Serialize` but not `DeserializeOwned`: requires it.
    pub trait CheckDeserialize<T> {
        /// Fails to compile unless `T: DeserializeOwned`.
        fn check(&self)
        where
            T: WireDeserialize,
        {
        }
    }
    impl<T: serde::Serialize> CheckDeserialize<T> for &WireCheck<T> {}

    /// Chosen when `T` is `Serialize + DeserializeOwned`: requires `Send + 'static`.
    pub trait CheckSend<T> {
        /// Fails to compile unless `T: Send + 'static`.
        fn check(&self)
        where
            T: WireSend,
        {
        }
    }
    impl<T: serde::Serialize + serde::de::DeserializeOwned> CheckSend<T> for &&WireCheck<T> {}

    /// `Serialize`, with the error message of a type that crosses the wire.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not `Serialize`, so it cannot be an argument, result or stream item of an RPC method",
        label = "not `Serialize`",
        note = "derive serde's traits on it: `#[derive(serde::Serialize, serde::Deserialize)]` (serde's `derive` feature)",
        note = "for a type from another crate, enable its `serde` feature if it has one, or wrap it in a type of your own"
    )]
    pub trait WireSerialize: serde::Serialize {}
    impl<T: serde::Serialize + ?Sized> WireSerialize for T {}

    /// `DeserializeOwned`, with the error message of a type that crosses the wire.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is `Serialize` but not `Deserialize`, so it cannot be an argument, result or stream item of an RPC method",
        label = "not `Deserialize`",
        note = "derive it next to `Serialize`: `#[derive(serde::Serialize, serde::Deserialize)]`"
    )]
    pub trait WireDeserialize: serde::de::DeserializeOwned {}
    impl<T: serde::de::DeserializeOwned> WireDeserialize for T {}

    /// `Send + 'static`, with the error message of a type that crosses the wire.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not `Send`, so it cannot be an argument, result or stream item of an RPC method",
        label = "not `Send`",
        note = "handlers run on a multi-threaded runtime, so what they take and return must be `Send + 'static`: use `Arc` rather than `Rc`, and `Mutex` or atomics rather than `RefCell` or `Cell`"
    )]
    pub trait WireSend: Send + 'static {}
    impl<T: Send + 'static> WireSend for T {}

    /// What the runtime does to a call's arguments on each side, for the codec
    /// micro-benchmark (`cargo bench -p rpc-core`). Generated code never uses it, so it is
    /// only there with the internal feature `__internal-hooks`.
    #[cfg(feature = "__internal-hooks")]
    pub mod bench {
        use bytes::Bytes;

        use crate::error::RpcError;
        use crate::protocol::{FrameBuilder, Message};

        /// The client's side: the arguments encoded into a whole `Request` frame.
        pub fn encode_request<A: serde::Serialize + ?Sized>(
            id: u64,
            method: u32,
            args: &A,
        ) -> Result<Bytes, RpcError> {
            let mut builder = FrameBuilder::new();
            crate::codec::encode_value(args, builder.body_mut())?;
            Ok(builder.finish_request(id, method, None).into_bytes())
        }

        /// The server's side: the frame parsed and its body decoded.
        pub fn decode_request<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, RpcError> {
            match Message::decode(frame) {
                Ok(Message::Request { body, .. }) => crate::codec::decode_value(body),
                _ => Err(RpcError::protocol("not a request frame")),
            }
        }
    }

    /// `(&&SchemaOf::<T>::NEW).value_schema(..)`: `T`'s traced schema when `T` is
    /// `DeserializeOwned`, else an untraced one (the type assertions report such a type, once).
    pub struct SchemaOf<T: ?Sized>(core::marker::PhantomData<T>);

    impl<T: ?Sized> SchemaOf<T> {
        /// The value to call `value_schema` on.
        pub const NEW: Self = SchemaOf(core::marker::PhantomData);
    }

    /// Chosen when `T` is `DeserializeOwned`.
    pub trait TraceSchema {
        /// `T`'s schema.
        fn value_schema(&self, written: &str, streaming: bool) -> crate::schema::ValueSchema;
    }
    impl<T: serde::de::DeserializeOwned> TraceSchema for &SchemaOf<T> {
        fn value_schema(&self, written: &str, streaming: bool) -> crate::schema::ValueSchema {
            crate::schema::ValueSchema::of::<T>(written, streaming)
        }
    }

    /// Chosen when `T` is not `DeserializeOwned`.
    pub trait NoSchema {
        /// An untraced schema.
        fn value_schema(&self, written: &str, streaming: bool) -> crate::schema::ValueSchema {
            crate::schema::ValueSchema::untraced(written, streaming, "it is not `Deserialize`")
        }
    }
    impl<T: ?Sized> NoSchema for SchemaOf<T> {}

    /// A service's schema; used by generated code.
    pub fn service_schema(
        name: &str,
        docs: &[&str],
        methods: Vec<crate::schema::MethodSchema>,
    ) -> crate::schema::Compiled {
        crate::schema::Compiled::new(crate::schema::ServiceSchema {
            name: name.to_owned(),
            docs: crate::schema::join_docs(docs),
            methods,
        })
    }

    /// A method's schema; used by generated code.
    pub fn method_schema(
        name: &str,
        docs: &[&str],
        idempotent: bool,
        fingerprint: u64,
        args: Vec<crate::schema::ArgSchema>,
        result: crate::schema::ValueSchema,
    ) -> crate::schema::MethodSchema {
        crate::schema::MethodSchema {
            name: name.to_owned(),
            docs: crate::schema::join_docs(docs),
            idempotent,
            fingerprint,
            args,
            result,
        }
    }

    /// An argument's schema; used by generated code.
    pub fn arg_schema(name: &str, value: crate::schema::ValueSchema) -> crate::schema::ArgSchema {
        crate::schema::ArgSchema {
            name: name.to_owned(),
            value,
        }
    }

    /// The error for a streaming method's request that came without its stream.
    pub fn missing_stream() -> RpcError {
        RpcError::protocol("a streaming method's request came without its stream")
    }

    /// The error for encoding a streaming result as one response (never done).
    pub fn stream_not_encodable() -> RpcError {
        RpcError::new(
            ErrorKind::Internal,
            "a streaming result is sent as stream items, not as one response",
        )
    }

    /// The error for a fingerprint the generated server does not know.
    pub fn unknown_method(fingerprint: u64) -> RpcError {
        RpcError::new(
            ErrorKind::Incompatible,
            format!("no method with fingerprint {fingerprint:016x} in this service"),
        )
    }
}
