//! The trait is the schema: what each method's argument and result types look like on the
//! wire, computed at run time from their serde implementations.
//!
//! `#[service]` generates `FooClient::schema()`, a [`ServiceSchema`]: every method with its
//! arguments (names, types as written, and each type's structure: struct fields, enum
//! variants, sequences, maps, options, primitives, recursively), its result, whether it
//! streams, whether it is idempotent, and its doc comments. It serves three purposes:
//!
//! - **Compatibility by schema.** A client sends its schema when it connects; the server
//!   compares it with its own, method by method and in the direction each value travels
//!   (the server must read what the client sends, the client what the server may answer).
//!   A method whose types cannot be read on the other side fails with
//!   [`Incompatible`](crate::ErrorKind::Incompatible) before any handler runs, and the
//!   message names the method, the type, and the field or variant that differs. Types that
//!   are the same on the wire are compatible however they are written (`String` and
//!   `std::string::String`, an alias, a newtype around `u64` and `u64`).
//! - **A check for CI** ([`ServiceSchema::check_file`]): the schema of what is deployed is
//!   committed as a JSON file, and a test fails, naming each breaking change, when the
//!   current trait could not talk to a peer built from it, in either role.
//! - **Reflection** ([`reflection`](crate::reflection)): every server answers what it hosts.
//!
//! # What is compatible
//!
//! Values are bincode: struct fields and tuple elements are written one after the other
//! with nothing to say which is which, and an enum's variant is its position. So:
//!
//! - a struct must have the same fields, with the same names, in the same order, on both
//!   sides. A field added or removed changes every byte after it. A field renamed is
//!   treated as a change too: on the wire it cannot be told from two fields swapped (whose
//!   values would be silently exchanged), and the field names are the JSON API
//!   of the HTTP gateway and what reflection shows;
//! - an enum read by one side may have *more* variants than the side that writes it
//!   (variants appended at the end): a server may add a variant to an argument's enum, a
//!   client to a result's enum. A variant the writer has and the reader lacks, or one moved
//!   or renamed, is a change;
//! - integers may widen where they are read (`u32` written, `u64` read), except `u8`/`i8`,
//!   which are one byte rather than a varint; `Vec<u8>` and a byte buffer
//!   (`serde_bytes`, `bytes::Bytes`) are the same; a newtype struct is its content;
//! - adding, removing and reordering *methods* is always safe: calls of the others go on.
//!
//! The discipline that follows: **a change to the types of a method that is deployed is a
//! new method** (`place_order_v2`), served next to the old one until no client calls it.
//!
//! # What cannot be traced
//!
//! A type is traced by deserializing it from a recording deserializer, so its
//! `Deserialize` must not need a self-describing format (`#[serde(untagged)]`, internally
//! tagged enums, `#[serde(flatten)]`, `serde_json::Value`: bincode cannot read those
//! either), must accept the value `1` for every number, `""` for every string and `'a'`
//! for every `char` (a `NonZeroU32` does; a type whose `Deserialize` rejects such values
//! does not), and a recursive enum must reach its recursion through a variant after one
//! that ends it. A method with a type that cannot be traced still works: its schema says
//! why ([`ValueSchema::untraced`]), and it is checked as before, by the fingerprint of its
//! signature as written.

mod compat;
mod file;
pub mod json;
mod render;
mod trace;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use file::SchemaError;
pub use trace::{trace, TraceError};

// No field is left out of the serialized form when empty: schemas also travel as bincode
// (reflection), which reads fields by position.

/// The wire shape of one type: a root and the named types it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The type itself.
    pub root: Type,
    /// The structs and enums reachable from `root`, by name. The name is serde's name of the
    /// type (`Order`); two different types of one name (`Page<User>` and `Page<Order>`) are
    /// told apart with a suffix (`Page#2`).
    #[serde(default)]
    pub types: BTreeMap<String, Container>,
}

/// A type as serde's data model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    /// `()`.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// A string.
    String,
    /// A byte buffer (`serde_bytes`, `bytes::Bytes`).
    Bytes,
    /// `Option<T>`.
    Option(Box<Type>),
    /// A sequence: `Vec<T>`, `HashSet<T>`, ...
    Seq(Box<Type>),
    /// A map: `HashMap<K, V>`, `BTreeMap<K, V>`, ...
    Map(Box<(Type, Type)>),
    /// A tuple or a fixed-size array.
    Tuple(Vec<Type>),
    /// A struct or an enum, by its name in [`Schema::types`].
    Named(String),
}

/// A struct or an enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    /// A struct: unit, newtype, tuple or with named fields.
    Struct(Fields),
    /// An enum: its variants, in order (a variant's position is its index on the wire).
    Enum(Vec<Variant>),
}

/// The fields of a struct or of an enum variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fields {
    /// None: `struct A;`, `A` in `enum E { A }`.
    Unit,
    /// One unnamed field: `struct A(T);`.
    Newtype(Type),
    /// Several unnamed fields: `struct A(T, U);`.
    Tuple(Vec<Type>),
    /// Named fields: `struct A { x: T }`.
    Named(Vec<Field>),
}

/// A named field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field's name, as serde sees it (after `#[serde(rename)]`).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: Type,
}

/// An enum's variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The variant's name, as serde sees it.
    pub name: String,
    /// Its fields.
    pub fields: Fields,
}

/// The schema of a service: its name, docs and methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSchema {
    /// The service's wire name.
    pub name: String,
    /// The trait's doc comment.
    #[serde(default)]
    pub docs: String,
    /// The methods, in the trait's order.
    pub methods: Vec<MethodSchema>,
}

/// One method of a [`ServiceSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSchema {
    /// The method's name.
    pub name: String,
    /// Its doc comment.
    #[serde(default)]
    pub docs: String,
    /// Marked `#[rpc(idempotent)]`.
    #[serde(default)]
    pub idempotent: bool,
    /// The fingerprint of its signature as written (the check for untraced types); in JSON
    /// a string of 16 hex digits, since not every JSON reader keeps 64-bit integers.
    #[serde(with = "hex")]
    pub fingerprint: u64,
    /// Its arguments after `&self`, in order.
    pub args: Vec<ArgSchema>,
    /// Its result.
    pub result: ValueSchema,
}

/// One argument of a [`MethodSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgSchema {
    /// The argument's name.
    pub name: String,
    /// Its type.
    pub value: ValueSchema,
}

/// An argument's or a result's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSchema {
    /// The type as written in the trait (`Order`, `Streaming<u32>`).
    pub written: String,
    /// `Streaming<T>`: the value is a stream and `schema` describes one item `T`.
    #[serde(default)]
    pub streaming: bool,
    /// The wire shape, if the type could be traced.
    #[serde(default)]
    pub schema: Option<Schema>,
    /// Why the type could not be traced, if it could not.
    #[serde(default)]
    pub untraced: Option<String>,
}

impl ValueSchema {
    /// The schema of `T` (the item type, for a stream), written `written` in the trait.
    pub fn of<T: serde::de::DeserializeOwned>(written: &str, streaming: bool) -> ValueSchema {
        ValueSchema::traced(written, streaming, trace::<T>())
    }

    /// A value whose type could not be traced, for the reason given.
    pub fn untraced(written: &str, streaming: bool, why: impl Into<String>) -> ValueSchema {
        ValueSchema::traced(written, streaming, Err(TraceError::new(why.into())))
    }

    fn traced(written: &str, streaming: bool, traced: Result<Schema, TraceError>) -> ValueSchema {
        let (schema, untraced) = match traced {
            Ok(schema) => (Some(schema), None),
            Err(err) => (None, Some(err.to_string())),
        };
        ValueSchema {
            written: written.to_owned(),
            streaming,
            schema,
            untraced,
        }
    }
}

impl ServiceSchema {
    /// What a service without a schema (a hand-written [`Service`](crate::Service)) shows:
    /// its methods' names, fingerprints and flags, and no types.
    pub fn from_descriptor(desc: &crate::ServiceDescriptor) -> ServiceSchema {
        let unknown = |streaming| {
            ValueSchema::untraced("?", streaming, "the service was not made by `#[service]`")
        };
        ServiceSchema {
            name: desc.name.to_owned(),
            docs: String::new(),
            methods: desc
                .methods
                .iter()
                .map(|m| MethodSchema {
                    name: m.name.to_owned(),
                    docs: String::new(),
                    idempotent: m.idempotent,
                    fingerprint: m.fingerprint,
                    args: Vec::new(),
                    result: unknown(m.server_streaming),
                })
                .collect(),
        }
    }

    /// The method called `name`, if the service has one.
    pub fn method(&self, name: &str) -> Option<&MethodSchema> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The schema as pretty-printed JSON, the format of [`check_file`](Self::check_file)'s
    /// files and of the HTTP gateway's listing.
    pub fn to_json(&self) -> String {
        // A tree of strings, numbers and maps with string keys: serializing it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a schema written by [`to_json`](Self::to_json).
    pub fn from_json(json: &str) -> Result<ServiceSchema, SchemaError> {
        serde_json::from_str(json).map_err(|err| SchemaError::Parse(err.to_string()))
    }

    /// Every change that would break a client or a server built from `self` talking to one
    /// built from `current`, in either role (see the [module docs](self) for the rules).
    /// Empty when they can talk. Methods added in `current` are not changes; methods
    /// removed are, since calls of them from peers built from `self` would fail.
    pub fn breaking_changes(&self, current: &ServiceSchema) -> Vec<String> {
        compat::breaking_changes(self, current)
    }

    /// Checks a call of `client`'s method against this (the server's) schema: `Err` with a
    /// message naming the method, the type and the field or variant when one side cannot
    /// read what the other sends.
    pub fn check_call(&self, client: &MethodSchema) -> Result<(), String> {
        match self.method(&client.name) {
            Some(server) => compat::check_call(&self.name, client, server),
            None => Err(format!(
                "the server's `{}` has no method `{}`",
                self.name, client.name
            )),
        }
    }
}

/// A `u64` as 16 hex digits in human-readable formats (JSON), as itself in bincode.
mod hex {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&format_args!("{value:016x}"))
        } else {
            value.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            u64::from_str_radix(&text, 16).map_err(D::Error::custom)
        } else {
            u64::deserialize(d)
        }
    }
}

/// A service's schema with what the runtime derives from it, made once per service by
/// generated code (`FooClient::schema()` keeps it in a static).
#[doc(hidden)]
#[derive(Debug)]
pub struct Compiled {
    schema: ServiceSchema,
    /// The entry of `Hello`'s method table that carries the schema, made once rather than
    /// on every connection: `rpc.schema:` and the JSON.
    hello_entry: String,
}

impl Compiled {
    /// Used by generated code.
    pub fn new(schema: ServiceSchema) -> Compiled {
        let mut bare = schema.clone();
        bare.docs.clear();
        for method in &mut bare.methods {
            method.docs.clear();
        }
        // Strings, numbers, lists and maps with string keys: serializing cannot fail.
        let json = serde_json::to_string(&bare).unwrap_or_default();
        let hello_entry = format!("{}{json}", crate::protocol::SCHEMA_ENTRY);
        Compiled {
            schema,
            hello_entry,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &ServiceSchema {
        &self.schema
    }

    /// The schema as the client's `Hello` carries it: JSON without the docs.
    pub(crate) fn hello_json(&self) -> &str {
        &self.hello_entry[crate::protocol::SCHEMA_ENTRY.len()..]
    }

    /// The name of the `Hello` entry that carries the schema.
    pub(crate) fn hello_entry(&self) -> &str {
        &self.hello_entry
    }
}

#[doc(hidden)]
/// Used by generated code: the docs of an item from its `#[doc]` lines.
pub fn join_docs(lines: &[&str]) -> String {
    let mut docs = String::new();
    for line in lines {
        if !docs.is_empty() {
            docs.push('\n');
        }
        docs.push_str(line.strip_prefix(' ').unwrap_or(line));
    }
    docs.trim().to_owned()
}
