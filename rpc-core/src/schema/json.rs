//! JSON to wire bytes and back, driven by a [`Schema`] alone: what lets an HTTP gateway or a
//! command-line client call any method of any service without its Rust types.
//!
//! [`encode_args`] makes a request body from a JSON object of named arguments,
//! [`encode_value`] one value (a stream item), and [`decode_value`] turns a response body or
//! a stream item back into JSON. The bytes are exactly those the Rust types would produce
//! and accept: the value is serialized and deserialized through serde and bincode, calling
//! the same serde methods the types' derived implementations call, with the schema standing
//! in for the types.
//!
//! # The JSON form of a value
//!
//! What `serde_json` makes of the Rust value with derived `Serialize`, so a client can send
//! what `serde_json::to_string` of the Rust value gives and gets back what
//! `serde_json::to_value` of the result gives:
//!
//! - `()` and a unit struct: `null`; `bool`: `true`/`false`;
//! - integers: numbers (a fraction or a value out of the type's range is an error). `u128`
//!   and `i128` may also be given as decimal strings, and are *decoded* as decimal strings
//!   when they do not fit a 64-bit integer (`serde_json` cannot represent those as numbers
//!   without its `arbitrary_precision` feature);
//! - floats: numbers (integers are accepted). A NaN or an infinity decodes as `null`, as
//!   `serde_json` writes it, and cannot be sent;
//! - `char`: a string of one character; strings: strings;
//! - byte buffers (`bytes::Bytes`, `serde_bytes`) and `Vec<u8>`: arrays of numbers 0 to 255;
//! - `Option<T>`: `null` or the value (so `Some(None)` cannot be told from `None`); a missing
//!   struct field or argument whose type is an `Option` is `None`;
//! - sequences: arrays; tuples, fixed-size arrays and tuple structs: arrays of exactly their
//!   length; a newtype struct: its content;
//! - maps: objects when the key is a string, `char`, `bool`, number, a newtype around one, or
//!   an enum whose variants all lack fields (the keys are that value as text: `{"7": ..}`
//!   for a `u32` key, as `serde_json` writes them). Other maps decode as an array of
//!   `[key, value]` pairs, and may be sent either way. Entries are written in the order of
//!   the JSON object, which is by key for serde_json's `Map` (unless its `preserve_order`
//!   feature is on), not necessarily the Rust map's: the same map, other bytes;
//! - structs with named fields: objects; every field is required unless its type is an
//!   `Option`, and a key that is not a field is an error naming it;
//! - enums: `"Variant"` for a variant without fields (`{"Variant": null}` is accepted too),
//!   `{"Variant": value}` for a newtype variant, `{"Variant": [..]}` for a tuple variant and
//!   `{"Variant": {..}}` for a struct variant.
//!
//! Errors name where the value went wrong (`order.lines[2].size`) and what was expected
//! against what was found. Values nest at most 128 levels deep (a value inside an option, a
//! newtype, a struct, an enum's variant, a sequence, a map or a tuple is a level below it),
//! on both sides, so that hostile JSON, bytes or schemas cannot overflow the stack.

use std::cell::Cell;
use std::fmt::{self, Display, Write as _};

use bincode::error::{DecodeError, EncodeError};
use bytes::BytesMut;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

use super::render::display_name;
use super::{Container, Field, Fields, MethodSchema, Schema, Type, ValueSchema, Variant};
use crate::codec::{encode_serde, CONFIG};

/// How deep a value may nest, in both directions.
const MAX_DEPTH: usize = 128;

/// The value of an `Option` argument or field left out.
static NULL: Value = Value::Null;

/// Names handed to serde where it wants them. This module's serializer and deserializer are
/// always bincode's, which never reads a struct's, field's or variant's name (only how many
/// fields there are), and serde's `&'static str` could only be made from a schema's names by
/// leaking them. So every name is `""`, in a slice as long as the fields.
static NO_NAMES: [&str; 256] = [""; 256];

/// A value that does not fit the schema, or bytes that do not decode as it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(String);

impl JsonError {
    /// What went wrong, and where.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

/// Appends a method's request body, made from a JSON object of its arguments by name, to
/// `buf`.
///
/// A streaming argument is not part of the body (its items are sent after the call, each
/// with [`encode_value`]), so it must not be given. An argument left out is `None` if its
/// type is an `Option`, and an error otherwise. On error nothing is appended.
///
/// ```
/// use rpc_core::schema::{json, ArgSchema, MethodSchema, ValueSchema};
///
/// let method = MethodSchema {
///     name: "greet".into(),
///     docs: String::new(),
///     idempotent: false,
///     fingerprint: 0,
///     args: vec![
///         ArgSchema { name: "name".into(), value: ValueSchema::of::<String>("String", false) },
///         ArgSchema { name: "times".into(), value: ValueSchema::of::<Option<u32>>("Option<u32>", false) },
///     ],
///     result: ValueSchema::of::<String>("String", false),
/// };
/// let args = serde_json::json!({ "name": "Ada" });
/// let mut body = bytes::BytesMut::new();
/// json::encode_args(&method, args.as_object().unwrap(), &mut body).unwrap();
/// assert_eq!(&body[..], b"\x03Ada\x00");
/// ```
pub fn encode_args(
    method: &MethodSchema,
    args: &Map<String, Value>,
    buf: &mut BytesMut,
) -> Result<(), JsonError> {
    for key in args.keys() {
        match method.args.iter().find(|arg| &arg.name == key) {
            Some(arg) if arg.value.streaming => {
                return Err(JsonError(format!(
                    "the argument `{key}` of `{}` is a stream: its items are sent after the \
                     call, not in the request",
                    method.name
                )))
            }
            Some(_) => {}
            None => {
                let names: Vec<String> = method
                    .args
                    .iter()
                    .filter(|arg| !arg.value.streaming)
                    .map(|arg| format!("`{}`", arg.name))
                    .collect();
                let takes = if names.is_empty() {
                    "it takes no arguments".to_owned()
                } else {
                    format!("its arguments are {}", names.join(", "))
                };
                return Err(JsonError(format!(
                    "`{}` has no argument `{key}`; {takes}",
                    method.name
                )));
            }
        }
    }
    let mut body = Vec::with_capacity(method.args.len());
    for arg in method.args.iter().filter(|arg| !arg.value.streaming) {
        let schema = traced(&arg.value, || {
            format!("the argument `{}` of `{}`", arg.name, method.name)
        })?;
        let value = match args.get(&arg.name) {
            Some(value) => value,
            None if matches!(schema.root, Type::Option(_)) => &NULL,
            None => {
                return Err(JsonError(format!(
                    "missing argument `{}: {}` of `{}`",
                    arg.name, arg.value.written, method.name
                )))
            }
        };
        body.push((arg.name.as_str(), schema, value));
    }
    encode_serde(&Body(&body), buf).map_err(encode_error)
}

/// Appends the encoding of one value (a stream item, a result) given as JSON to `buf`.
/// On error nothing is appended.
pub fn encode_value(
    value: &ValueSchema,
    json: &Value,
    buf: &mut BytesMut,
) -> Result<(), JsonError> {
    let schema = traced(value, || format!("the type `{}`", value.written))?;
    let root = Path::root("");
    let typed = Typed {
        schema,
        ty: &schema.root,
        value: json,
        path: &root,
    };
    encode_serde(&typed, buf).map_err(encode_error)
}

/// Decodes one value (a response body, a stream item) into JSON. The bytes must hold exactly
/// one value.
///
/// Decoding is bounded by the input as the codec bounds message bodies: strings and byte
/// buffers are read borrowed from `bytes`, and no sequence or map reserves more elements
/// than `bytes` has bytes, so a short input claiming a huge length fails without allocating
/// it.
pub fn decode_value(value: &ValueSchema, bytes: &[u8]) -> Result<Value, JsonError> {
    let schema = traced(value, || format!("the type `{}`", value.written))?;
    let ctx = Ctx {
        schema,
        limit: bytes.len(),
        failed_at: Cell::new(None),
    };
    let root = Path::root("");
    let seed = Seed {
        ctx: &ctx,
        ty: &schema.root,
        path: &root,
    };
    match bincode::serde::seed_decode_from_slice(seed, bytes, CONFIG) {
        Ok((json, used)) if used == bytes.len() => Ok(json),
        Ok((_, used)) => Err(JsonError(format!(
            "{} trailing bytes after the value of type `{}`",
            bytes.len() - used,
            value.written
        ))),
        Err(err) => {
            let what = located(&ctx.failed_at.take().unwrap_or_default(), decode_error(err));
            Err(JsonError(format!(
                "{} bytes do not decode as `{}`: {what}",
                bytes.len(),
                value.written
            )))
        }
    }
}

/// The schema of a value, or why there is none; `what` names the value for the message.
fn traced(value: &ValueSchema, what: impl FnOnce() -> String) -> Result<&Schema, JsonError> {
    value.schema.as_ref().ok_or_else(|| {
        JsonError(format!(
            "{} has type `{}`, which could not be traced ({}), so it cannot be converted to \
             or from JSON",
            what(),
            value.written,
            value.untraced.as_deref().unwrap_or("no reason given")
        ))
    })
}

fn encode_error(err: EncodeError) -> JsonError {
    match err {
        // Ours: the message already says where and what.
        EncodeError::OtherString(message) => JsonError(message),
        other => JsonError(format!("the value could not be encoded: {other}")),
    }
}

fn decode_error(err: DecodeError) -> String {
    match err {
        DecodeError::OtherString(message) => message,
        DecodeError::UnexpectedEnd { additional } => {
            format!("the input ends early ({additional} more byte(s) needed)")
        }
        DecodeError::Utf8 { .. } => "a string is not valid UTF-8".to_owned(),
        DecodeError::InvalidCharEncoding(_) => "a char is not a valid character".to_owned(),
        DecodeError::InvalidBooleanValue(byte) => format!("a bool is {byte}, neither 0 nor 1"),
        DecodeError::UnexpectedVariant {
            type_name: "Option<T>",
            found,
            ..
        } => format!("an option's tag is {found}, neither 0 nor 1"),
        DecodeError::InvalidIntegerType { expected, found } => {
            format!("an integer is encoded as {found:?}, wider than its type ({expected:?})")
        }
        DecodeError::OutsideUsizeRange(len) => format!("a length of {len} is too large"),
        other => other.to_string(),
    }
}

/// `message`, said to be at `path` unless that is the top.
fn located(path: &str, message: impl Display) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("at `{path}`: {message}")
    }
}

/// Where a value is, for errors: a linked list up the stack, made into text only on error.
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    step: Step<'a>,
    depth: usize,
}

#[derive(Clone, Copy)]
enum Step<'a> {
    /// The top: an argument's name, or nothing.
    Root(&'a str),
    /// Inside an option or a newtype struct, which JSON does not show.
    Inner,
    /// A struct field, or the variant of an enum.
    Field(&'a str),
    /// An element of an array.
    Index(usize),
    /// A map's entry, by its key.
    Key(&'a str),
}

impl<'a> Path<'a> {
    fn root(name: &'a str) -> Path<'a> {
        Path {
            parent: None,
            step: Step::Root(name),
            depth: 0,
        }
    }

    /// A value nested in this one: a level deeper.
    fn child<'b>(&'b self, step: Step<'b>) -> Path<'b> {
        Path {
            parent: Some(self),
            step,
            depth: self.depth + 1,
        }
    }

    /// The same level, named further: an enum's variant or a map's entry, whose fields or
    /// key and value are the next level.
    fn within<'b>(&'b self, step: Step<'b>) -> Path<'b> {
        Path {
            parent: Some(self),
            step,
            depth: self.depth,
        }
    }

    fn render(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.render(out);
        }
        match self.step {
            Step::Root(name) => out.push_str(name),
            Step::Inner => {}
            Step::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Step::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
            Step::Key(key) => {
                // JSON's quoting: the key as the client wrote it.
                let quoted = serde_json::to_string(key).unwrap_or_default();
                let _ = write!(out, "[{quoted}]");
            }
        }
    }
}

impl Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.render(&mut out);
        f.write_str(&out)
    }
}

fn too_deep() -> String {
    format!("the value nests deeper than {MAX_DEPTH} levels")
}

/// A JSON value as the error messages show what was found.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => {
            const SHOWN: usize = 40;
            match s.char_indices().nth(SHOWN) {
                Some((end, _)) => format!("string {:?}...", &s[..end]),
                None => format!("string {s:?}"),
            }
        }
        Value::Array(items) => format!("an array of {} elements", items.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// What a JSON value of type `ty` looks like, for "expected ..." in errors.
fn expected(schema: &Schema, ty: &Type) -> String {
    match ty {
        Type::Unit => "null (the unit type `()`)".to_owned(),
        Type::Char => "char (a string of one character)".to_owned(),
        Type::String => "a string".to_owned(),
        Type::Bytes => "bytes (an array of numbers 0 to 255)".to_owned(),
        Type::Option(inner) => format!("{} or null", expected(schema, inner)),
        Type::Seq(_) => format!("an array ({ty})"),
        Type::Map(_) => format!("an object or an array of [key, value] pairs ({ty})"),
        Type::Tuple(items) => format!("an array of {} elements ({ty})", items.len()),
        Type::Named(key) => {
            let name = display_name(key);
            match schema.types.get(key) {
                Some(Container::Struct(Fields::Unit)) => format!("null (unit struct `{name}`)"),
                Some(Container::Struct(Fields::Tuple(items))) => {
                    format!("an array of {} elements (struct `{name}`)", items.len())
                }
                Some(Container::Struct(_)) => format!("an object (struct `{name}`)"),
                Some(Container::Enum(_)) => format!(
                    "enum `{name}`: a variant's name, or an object of one variant's name and \
                     its fields"
                ),
                None => format!("`{name}`"),
            }
        }
        _ => ty.to_string(),
    }
}

/// The schema's named type `key`, or an error for a schema that refers to a type it lacks.
fn container<'a>(schema: &'a Schema, key: &str) -> Result<&'a Container, String> {
    schema
        .types
        .get(key)
        .ok_or_else(|| format!("the schema refers to a type `{key}` it does not describe"))
}

/// What a map key of type `ty` is written as when it is a JSON object's key: the scalar under
/// any newtype structs, or an enum whose variants all lack fields (serde_json writes those
/// keys as text and rejects the others). `None` for keys that are written as pairs.
fn key_base<'a>(schema: &'a Schema, mut ty: &'a Type) -> Option<&'a Type> {
    // Bounded: a hostile schema could make a newtype its own content.
    for _ in 0..MAX_DEPTH {
        match ty {
            Type::Bool
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::I128
            | Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::U128
            | Type::F32
            | Type::F64
            | Type::Char
            | Type::String => return Some(ty),
            Type::Named(key) => match schema.types.get(key)? {
                Container::Struct(Fields::Newtype(inner)) => ty = inner,
                Container::Enum(variants)
                    if !variants.is_empty()
                        && variants.iter().all(|v| v.fields == Fields::Unit) =>
                {
                    return Some(ty)
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    None
}

/// A JSON object's key as the JSON value of a key of type `base` (see [`key_base`]), which
/// is then checked and encoded as any value of the key's type.
fn key_from_text(base: &Type, key: &str) -> Result<Value, String> {
    match base {
        Type::Bool => match key {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!(
                "the key {key:?} is not a bool (\"true\" or \"false\")"
            )),
        },
        // Checked as the value: strings are what these take.
        Type::I128 | Type::U128 | Type::Char | Type::String | Type::Named(_) => {
            Ok(Value::String(key.to_owned()))
        }
        Type::F32 | Type::F64 => key
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("the key {key:?} is not a finite number ({base})")),
        _ => key
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| key.parse::<u64>().map(Value::from))
            .map_err(|_| format!("the key {key:?} is not an integer ({base})")),
    }
}

/// A decoded key as a JSON object's key, written as serde_json writes map keys.
fn key_to_text(base: &Type, key: Value) -> Result<String, String> {
    match key {
        Value::String(text) => Ok(text),
        Value::Bool(b) => Ok(b.to_string()),
        // serde_json writes an `f32` key with the shortest digits that read back as that
        // `f32`, not as the `f64` it was widened to here (`0.1`, not `0.10000000149011612`).
        Value::Number(n) if matches!(base, Type::F32) => {
            serde_json::to_string(&(n.as_f64().unwrap_or_default() as f32))
                .map_err(|err| err.to_string())
        }
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => {
            Err("a map key is a float that is not finite, which JSON cannot write".into())
        }
        other => Err(format!("a map key decoded as {}", describe(&other))),
    }
}

// ---------------------------------------------------------------------------------------
// JSON to bytes.

/// The request body: the tuple of the arguments, in order.
struct Body<'a>(&'a [(&'a str, &'a Schema, &'a Value)]);

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = s.serialize_tuple(self.0.len())?;
        for (name, schema, value) in self.0 {
            let path = Path::root(name);
            tuple.serialize_element(&Typed {
                schema,
                ty: &schema.root,
                value,
                path: &path,
            })?;
        }
        tuple.end()
    }
}

/// A JSON value serialized as a value of type `ty` would be by its derived `Serialize`:
/// the same serde calls in the same order. Only for bincode: every name is `""` (see
/// [`NO_NAMES`]).
///
/// Each kind of type has a function of its own, and errors are made as `String`s outside
/// the generic code: a debug build gives every local of a function its own stack slot, so
/// one function with every case would take kilobytes of stack per level of nesting.
struct Typed<'a> {
    schema: &'a Schema,
    ty: &'a Type,
    value: &'a Value,
    path: &'a Path<'a>,
}

/// A struct or an enum's variant, named in errors about its fields.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Struct(&'a str),
    Variant { name: &'a str, of: &'a str },
}

impl Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Struct(key) => write!(f, "struct `{}`", display_name(key)),
            Owner::Variant { name, of } => {
                write!(f, "the variant `{name}` of enum `{}`", display_name(of))
            }
        }
    }
}

fn fail<E: ser::Error>(message: String) -> E {
    E::custom(message)
}

impl<'a> Typed<'a> {
    fn located(&self, message: impl Display) -> String {
        located(&self.path.to_string(), message)
    }

    fn mismatch(&self, expected: impl Display) -> String {
        self.located(format_args!(
            "expected {expected}, found {}",
            describe(self.value)
        ))
    }

    fn mismatch_type(&self) -> String {
        self.mismatch(expected(self.schema, self.ty))
    }

    fn out_of_range(&self) -> String {
        self.located(format_args!(
            "expected {}, found {} (out of range)",
            self.ty,
            describe(self.value)
        ))
    }

    /// The value `value` of type `ty`, at `path` under this one.
    fn at<'b>(&'b self, ty: &'b Type, value: &'b Value, path: &'b Path<'b>) -> Typed<'b> {
        Typed {
            schema: self.schema,
            ty,
            value,
            path,
        }
    }

    fn array(&self) -> Result<&'a [Value], String> {
        match self.value {
            Value::Array(items) => Ok(items),
            _ => Err(self.mismatch_type()),
        }
    }

    /// An array of exactly `len` elements.
    fn exactly(&self, len: usize, what: impl Display) -> Result<&'a [Value], String> {
        match self.value {
            Value::Array(items) if items.len() == len => Ok(items),
            _ => Err(self.mismatch(what)),
        }
    }

    fn integer<T: TryFrom<i128>>(&self) -> Result<T, String> {
        let n: i128 = match self.value {
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(n), _) => n.into(),
                (_, Some(n)) => n.into(),
                _ => return Err(self.mismatch(self.ty)),
            },
            Value::String(text) if matches!(self.ty, Type::I128) => text
                .parse()
                .map_err(|_| self.mismatch("i128 (a number or a decimal string)"))?,
            _ => return Err(self.mismatch(self.ty)),
        };
        T::try_from(n).map_err(|_| self.out_of_range())
    }

    fn u128(&self) -> Result<u128, String> {
        match self.value {
            Value::Number(n) => match n.as_u64() {
                Some(n) => Ok(n.into()),
                None if n.as_i64().is_some() => Err(self.out_of_range()),
                None => Err(self.mismatch(self.ty)),
            },
            Value::String(text) => text
                .parse()
                .map_err(|_| self.mismatch("u128 (a number or a decimal string)")),
            _ => Err(self.mismatch(self.ty)),
        }
    }

    fn float(&self) -> Result<f64, String> {
        match self.value {
            Value::Number(n) => n.as_f64().ok_or_else(|| self.mismatch(self.ty)),
            _ => Err(self.mismatch(self.ty)),
        }
    }

    fn char(&self) -> Result<char, String> {
        if let Value::String(text) = self.value {
            let mut chars = text.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                return Ok(c);
            }
        }
        Err(self.mismatch_type())
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        let items = self.array()?;
        let mut bytes = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item.as_u64().and_then(|b| u8::try_from(b).ok()) {
                Some(byte) => bytes.push(byte),
                None => {
                    let path = self.path.child(Step::Index(index));
                    return Err(self
                        .at(&Type::U8, item, &path)
                        .mismatch("a byte (0 to 255)"));
                }
            }
        }
        Ok(bytes)
    }

    /// The object of a struct's or struct variant's fields, checked for keys that are not
    /// fields.
    fn object(&self, fields: &[Field], owner: Owner<'_>) -> Result<&'a Map<String, Value>, String> {
        let Value::Object(object) = self.value else {
            return Err(self.mismatch(format_args!("an object ({owner})")));
        };
        let unknown: Vec<String> = object
            .keys()
            .filter(|key| !fields.iter().any(|f| &f.name == *key))
            .map(|key| format!("`{key}`"))
            .collect();
        if unknown.is_empty() {
            return Ok(object);
        }
        let known: Vec<String> = fields.iter().map(|f| format!("`{}`", f.name)).collect();
        let known = if known.is_empty() {
            "it has no fields".to_owned()
        } else {
            format!("its fields are {}", known.join(", "))
        };
        Err(self.located(format_args!(
            "unknown field{} {} in {owner}; {known}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
        )))
    }

    /// A field's value in `object`: `null` for an `Option` left out.
    fn field(
        &self,
        object: &'a Map<String, Value>,
        field: &Field,
        owner: Owner<'_>,
    ) -> Result<&'a Value, String> {
        match object.get(&field.name) {
            Some(value) => Ok(value),
            None if matches!(field.ty, Type::Option(_)) => Ok(&NULL),
            None => Err(self.located(format_args!(
                "missing field `{}: {}` of {owner}",
                field.name, field.ty
            ))),
        }
    }

    /// The variant a JSON enum value names, its index, and its content (`null` for a variant
    /// without fields).
    fn choose(
        &self,
        key: &str,
        variants: &'a [Variant],
    ) -> Result<(u32, &'a Variant, &'a Value), String> {
        let (chosen, content) = match self.value {
            Value::String(chosen) => (chosen, None),
            Value::Object(object) if object.len() == 1 => match object.iter().next() {
                Some((chosen, content)) => (chosen, Some(content)),
                None => return Err(self.mismatch_type()),
            },
            _ => return Err(self.mismatch_type()),
        };
        let Some((index, variant)) = variants.iter().enumerate().find(|(_, v)| &v.name == chosen)
        else {
            let known: Vec<String> = variants.iter().map(|v| format!("`{}`", v.name)).collect();
            return Err(self.located(format_args!(
                "unknown variant `{chosen}` of enum `{}`; its variants are {}",
                display_name(key),
                known.join(", ")
            )));
        };
        let index =
            u32::try_from(index).map_err(|_| self.located("an enum has too many variants"))?;
        let owner = Owner::Variant {
            name: chosen,
            of: key,
        };
        match (&variant.fields, content) {
            (Fields::Unit, None | Some(Value::Null)) => Ok((index, variant, &NULL)),
            (Fields::Unit, Some(content)) => {
                let path = self.path.within(Step::Field(chosen));
                Err(self.at(self.ty, content, &path).mismatch(format_args!(
                    "null: {owner} has no fields (write it as \"{chosen}\")"
                )))
            }
            (fields, None) => Err(self.located(format_args!(
                "{owner} has {}: write it as {{\"{chosen}\": ...}}",
                super::render::shape(fields)
            ))),
            (_, Some(content)) => Ok((index, variant, content)),
        }
    }

    fn scalar<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.ty {
            Type::Unit => match self.value {
                Value::Null => s.serialize_unit(),
                _ => Err(fail(self.mismatch_type())),
            },
            Type::Bool => match self.value {
                Value::Bool(b) => s.serialize_bool(*b),
                _ => Err(fail(self.mismatch(self.ty))),
            },
            Type::I8 => s.serialize_i8(self.integer().map_err(fail)?),
            Type::I16 => s.serialize_i16(self.integer().map_err(fail)?),
            Type::I32 => s.serialize_i32(self.integer().map_err(fail)?),
            Type::I64 => s.serialize_i64(self.integer().map_err(fail)?),
            Type::I128 => s.serialize_i128(self.integer().map_err(fail)?),
            Type::U8 => s.serialize_u8(self.integer().map_err(fail)?),
            Type::U16 => s.serialize_u16(self.integer().map_err(fail)?),
            Type::U32 => s.serialize_u32(self.integer().map_err(fail)?),
            Type::U64 => s.serialize_u64(self.integer().map_err(fail)?),
            Type::U128 => s.serialize_u128(self.u128().map_err(fail)?),
            // As serde_json reads an `f32`: the nearest one, however many digits were given.
            Type::F32 => s.serialize_f32(self.float().map_err(fail)? as f32),
            Type::F64 => s.serialize_f64(self.float().map_err(fail)?),
            Type::Char => s.serialize_char(self.char().map_err(fail)?),
            Type::String => match self.value {
                Value::String(text) => s.serialize_str(text),
                _ => Err(fail(self.mismatch_type())),
            },
            Type::Bytes => s.serialize_bytes(&self.bytes().map_err(fail)?),
            _ => Err(fail(
                self.located(format_args!("`{}` is not a primitive", self.ty)),
            )),
        }
    }

    fn option<S: Serializer>(&self, inner: &Type, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Null => s.serialize_none(),
            value => {
                let path = self.path.child(Step::Inner);
                s.serialize_some(&self.at(inner, value, &path))
            }
        }
    }

    fn seq<S: Serializer>(&self, inner: &Type, s: S) -> Result<S::Ok, S::Error> {
        let items = self.array().map_err(fail)?;
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for (index, item) in items.iter().enumerate() {
            let path = self.path.child(Step::Index(index));
            seq.serialize_element(&self.at(inner, item, &path))?;
        }
        seq.end()
    }

    fn tuple<S: Serializer>(&self, items: &[Type], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let values = self
            .exactly(items.len(), expected(self.schema, self.ty))
            .map_err(fail)?;
        let mut tuple = s.serialize_tuple(items.len())?;
        for (index, (ty, value)) in items.iter().zip(values).enumerate() {
            let path = self.path.child(Step::Index(index));
            tuple.serialize_element(&self.at(ty, value, &path))?;
        }
        tuple.end()
    }

    fn map<S: Serializer>(&self, key_ty: &Type, value_ty: &Type, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Object(object) => {
                let base = key_base(self.schema, key_ty).ok_or_else(|| {
                    fail::<S::Error>(self.located(format_args!(
                        "the keys of {} are not written as text: give the map as an array \
                         of [key, value] pairs",
                        self.ty
                    )))
                })?;
                let mut map = s.serialize_map(Some(object.len()))?;
                for (text, value) in object {
                    let path = self.path.child(Step::Key(text));
                    let key = key_from_text(base, text)
                        .map_err(|message| fail::<S::Error>(located(&path.to_string(), message)))?;
                    map.serialize_entry(
                        &self.at(key_ty, &key, &path),
                        &self.at(value_ty, value, &path),
                    )?;
                }
                map.end()
            }
            Value::Array(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (index, entry) in entries.iter().enumerate() {
                    // The pair is not a level of its own: its key and value are one below
                    // the map, as an object's are.
                    let path = self.path.within(Step::Index(index));
                    let pair = self
                        .at(self.ty, entry, &path)
                        .exactly(2, "a [key, value] pair")
                        .map_err(fail)?;
                    let (key, value) = (&pair[0], &pair[1]);
                    let (key_path, value_path) =
                        (path.child(Step::Index(0)), path.child(Step::Index(1)));
                    map.serialize_entry(
                        &self.at(key_ty, key, &key_path),
                        &self.at(value_ty, value, &value_path),
                    )?;
                }
                map.end()
            }
            _ => Err(fail(self.mismatch_type())),
        }
    }

    fn named<S: Serializer>(&self, key: &str, s: S) -> Result<S::Ok, S::Error> {
        let found = container(self.schema, key)
            .map_err(|message| fail::<S::Error>(self.located(message)))?;
        match found {
            Container::Struct(Fields::Unit) => match self.value {
                Value::Null => s.serialize_unit_struct(""),
                _ => Err(fail(self.mismatch_type())),
            },
            Container::Struct(Fields::Newtype(inner)) => {
                let path = self.path.child(Step::Inner);
                s.serialize_newtype_struct("", &self.at(inner, self.value, &path))
            }
            Container::Struct(Fields::Tuple(items)) => self.tuple_struct(items, s),
            Container::Struct(Fields::Named(fields)) => self.fields(key, fields, s),
            Container::Enum(variants) => self.variant(key, variants, s),
        }
    }

    fn tuple_struct<S: Serializer>(&self, items: &[Type], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTupleStruct;
        let values = self
            .exactly(items.len(), expected(self.schema, self.ty))
            .map_err(fail)?;
        let mut tuple = s.serialize_tuple_struct("", items.len())?;
        for (index, (ty, value)) in items.iter().zip(values).enumerate() {
            let path = self.path.child(Step::Index(index));
            tuple.serialize_field(&self.at(ty, value, &path))?;
        }
        tuple.end()
    }

    fn fields<S: Serializer>(&self, key: &str, fields: &[Field], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let owner = Owner::Struct(key);
        let object = self.object(fields, owner).map_err(fail)?;
        let mut out = s.serialize_struct("", fields.len())?;
        for field in fields {
            let value = self.field(object, field, owner).map_err(fail)?;
            let path = self.path.child(Step::Field(&field.name));
            out.serialize_field("", &self.at(&field.ty, value, &path))?;
        }
        out.end()
    }

    fn variant<S: Serializer>(
        &self,
        key: &str,
        variants: &[Variant],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let (index, variant, content) = self.choose(key, variants).map_err(fail)?;
        match &variant.fields {
            Fields::Unit => s.serialize_unit_variant("", index, ""),
            Fields::Newtype(ty) => {
                let path = self.path.child(Step::Field(&variant.name));
                s.serialize_newtype_variant("", index, "", &self.at(ty, content, &path))
            }
            Fields::Tuple(items) => self.tuple_variant(key, index, variant, items, content, s),
            Fields::Named(fields) => self.struct_variant(key, index, variant, fields, content, s),
        }
    }

    fn tuple_variant<S: Serializer>(
        &self,
        key: &str,
        index: u32,
        variant: &Variant,
        items: &[Type],
        content: &Value,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTupleVariant;
        let path = self.path.within(Step::Field(&variant.name));
        let owner = Owner::Variant {
            name: &variant.name,
            of: key,
        };
        let values = self
            .at(self.ty, content, &path)
            .exactly(
                items.len(),
                format_args!(
                    "an array of {} elements (the fields of {owner})",
                    items.len()
                ),
            )
            .map_err(fail)?;
        let mut out = s.serialize_tuple_variant("", index, "", items.len())?;
        for (i, (ty, value)) in items.iter().zip(values).enumerate() {
            let item_path = path.child(Step::Index(i));
            out.serialize_field(&self.at(ty, value, &item_path))?;
        }
        out.end()
    }

    fn struct_variant<S: Serializer>(
        &self,
        key: &str,
        index: u32,
        variant: &Variant,
        fields: &[Field],
        content: &Value,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let path = self.path.within(Step::Field(&variant.name));
        let owner = Owner::Variant {
            name: &variant.name,
            of: key,
        };
        let inner = self.at(self.ty, content, &path);
        let object = inner.object(fields, owner).map_err(fail)?;
        let mut out = s.serialize_struct_variant("", index, "", fields.len())?;
        for field in fields {
            let value = inner.field(object, field, owner).map_err(fail)?;
            let field_path = path.child(Step::Field(&field.name));
            out.serialize_field("", &self.at(&field.ty, value, &field_path))?;
        }
        out.end()
    }
}

impl Serialize for Typed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.path.depth > MAX_DEPTH {
            return Err(fail(self.located(too_deep())));
        }
        match self.ty {
            Type::Option(inner) => self.option(inner, s),
            Type::Seq(inner) => self.seq(inner, s),
            Type::Map(pair) => self.map(&pair.0, &pair.1, s),
            Type::Tuple(items) => self.tuple(items, s),
            Type::Named(key) => self.named(key, s),
            _ => self.scalar(s),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bytes to JSON.

/// What every level of a decode shares.
struct Ctx<'a> {
    schema: &'a Schema,
    /// The input's length: no sequence reserves more elements than this.
    limit: usize,
    /// The path of the innermost value that failed, which is the first to record it.
    failed_at: Cell<Option<String>>,
}

impl Ctx<'_> {
    fn capacity(&self, hint: Option<usize>) -> usize {
        hint.unwrap_or(0).min(self.limit)
    }
}

/// Deserializes a value of type `ty` into JSON, calling what its derived `Deserialize`
/// would call (except that strings and byte buffers are borrowed, see [`decode_value`]).
#[derive(Clone, Copy)]
struct Seed<'a> {
    ctx: &'a Ctx<'a>,
    ty: &'a Type,
    path: &'a Path<'a>,
}

impl<'a> Seed<'a> {
    fn at<'b>(&'b self, ty: &'b Type, path: &'b Path<'b>) -> Seed<'b> {
        Seed {
            ctx: self.ctx,
            ty,
            path,
        }
    }

    fn read<'de, D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.path.depth > MAX_DEPTH {
            return Err(de::Error::custom(too_deep()));
        }
        match self.ty {
            Type::Option(inner) => self.option(inner, d),
            Type::Seq(item) => d.deserialize_seq(SeqVisitor { seed: self, item }),
            Type::Map(pair) => d.deserialize_map(MapVisitor {
                seed: self,
                key: &pair.0,
                value: &pair.1,
            }),
            Type::Tuple(items) => d.deserialize_tuple(
                items.len(),
                TupleVisitor {
                    seed: self,
                    items,
                    path: self.path,
                },
            ),
            Type::Named(key) => self.named(key, d),
            _ => self.scalar(d),
        }
    }

    fn scalar<'de, D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.ty {
            Type::Unit => d.deserialize_unit(Scalar),
            Type::Bool => d.deserialize_bool(Scalar),
            Type::I8 => d.deserialize_i8(Scalar),
            Type::I16 => d.deserialize_i16(Scalar),
            Type::I32 => d.deserialize_i32(Scalar),
            Type::I64 => d.deserialize_i64(Scalar),
            Type::I128 => d.deserialize_i128(Scalar),
            Type::U8 => d.deserialize_u8(Scalar),
            Type::U16 => d.deserialize_u16(Scalar),
            Type::U32 => d.deserialize_u32(Scalar),
            Type::U64 => d.deserialize_u64(Scalar),
            Type::U128 => d.deserialize_u128(Scalar),
            Type::F32 => d.deserialize_f32(Scalar),
            Type::F64 => d.deserialize_f64(Scalar),
            Type::Char => d.deserialize_char(Scalar),
            // `str` and `bytes`, not `string` and `byte_buf`: borrowed from the input, whose
            // length they are checked against before anything is allocated.
            Type::String => d.deserialize_str(Scalar),
            Type::Bytes => d.deserialize_bytes(Scalar),
            other => Err(de::Error::custom(format_args!(
                "`{other}` is not a primitive"
            ))),
        }
    }

    fn option<'de, D: Deserializer<'de>>(self, inner: &Type, d: D) -> Result<Value, D::Error> {
        let path = self.path.child(Step::Inner);
        d.deserialize_option(OptionVisitor(self.at(inner, &path)))
    }

    fn named<'de, D: Deserializer<'de>>(self, key: &str, d: D) -> Result<Value, D::Error> {
        match container(self.ctx.schema, key).map_err(de::Error::custom)? {
            Container::Struct(Fields::Unit) => d.deserialize_unit_struct("", Scalar),
            Container::Struct(Fields::Newtype(inner)) => {
                let path = self.path.child(Step::Inner);
                d.deserialize_newtype_struct("", NewtypeVisitor(self.at(inner, &path)))
            }
            Container::Struct(Fields::Tuple(items)) => d.deserialize_tuple_struct(
                "",
                items.len(),
                TupleVisitor {
                    seed: self,
                    items,
                    path: self.path,
                },
            ),
            Container::Struct(Fields::Named(fields)) => {
                let visitor = StructVisitor {
                    seed: self,
                    fields,
                    path: self.path,
                };
                match NO_NAMES.get(..fields.len()) {
                    Some(names) => d.deserialize_struct("", names, visitor),
                    // bincode reads a struct as the tuple of its fields.
                    None => d.deserialize_tuple(fields.len(), visitor),
                }
            }
            Container::Enum(variants) => {
                if variants.is_empty() {
                    return Err(de::Error::custom(format_args!(
                        "the enum `{}` has no variants, so it has no values",
                        display_name(key)
                    )));
                }
                // bincode reads neither the variants' names nor how many there are.
                let names = &NO_NAMES[..variants.len().min(NO_NAMES.len())];
                let visitor = EnumVisitor {
                    seed: self,
                    name: display_name(key),
                    variants,
                };
                d.deserialize_enum("", names, visitor)
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let result = self.read(d);
        if result.is_err() {
            let earlier = self.ctx.failed_at.take();
            self.ctx
                .failed_at
                .set(earlier.or_else(|| Some(self.path.to_string())));
        }
        result
    }
}

/// Primitives, strings and bytes: JSON as serde_json makes it from the Rust value.
struct Scalar;

impl<'de> Visitor<'de> for Scalar {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a primitive value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    /// A number when it fits 64 bits, else a decimal string: serde_json has no number for it.
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(match (u64::try_from(v), i64::try_from(v)) {
            (Ok(v), _) => Value::from(v),
            (_, Ok(v)) => Value::from(v),
            _ => Value::String(v.to_string()),
        })
    }

    /// A number when it fits 64 bits, else a decimal string: serde_json has no number for it.
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(match u64::try_from(v) {
            Ok(v) => Value::from(v),
            Err(_) => Value::String(v.to_string()),
        })
    }

    /// Widened as serde_json widens it; NaN and infinities are `null`, as serde_json has them.
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Value, E> {
        Ok(Value::String(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(v.iter().map(|&b| Value::from(b)).collect()))
    }
}

struct OptionVisitor<'a>(Seed<'a>);

impl<'de> Visitor<'de> for OptionVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Option<{}>", self.0.ty)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.0.deserialize(d)
    }
}

struct NewtypeVisitor<'a>(Seed<'a>);

impl<'de> Visitor<'de> for NewtypeVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a newtype struct of {}", self.0.ty)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.0.deserialize(d)
    }
}

struct SeqVisitor<'a> {
    seed: Seed<'a>,
    item: &'a Type,
}

impl<'de> Visitor<'de> for SeqVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of {}", self.item)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(self.seed.ctx.capacity(seq.size_hint()));
        loop {
            let path = self.seed.path.child(Step::Index(items.len()));
            match seq.next_element_seed(self.seed.at(self.item, &path))? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }
}

/// A tuple, or a tuple struct's or tuple variant's fields: exactly `items`.
struct TupleVisitor<'a> {
    seed: Seed<'a>,
    items: &'a [Type],
    /// Where the elements are (a tuple variant's are under its name).
    path: &'a Path<'a>,
}

impl<'de> Visitor<'de> for TupleVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a tuple of {} elements", self.items.len())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(self.items.len().min(self.seed.ctx.limit));
        for (index, ty) in self.items.iter().enumerate() {
            let path = self.path.child(Step::Index(index));
            match seq.next_element_seed(self.seed.at(ty, &path))? {
                Some(value) => values.push(value),
                None => return Err(de::Error::invalid_length(index, &self)),
            }
        }
        Ok(Value::Array(values))
    }
}

/// A struct's or struct variant's fields, as an object.
struct StructVisitor<'a> {
    seed: Seed<'a>,
    fields: &'a [Field],
    path: &'a Path<'a>,
}

impl<'de> Visitor<'de> for StructVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a struct of {} fields", self.fields.len())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        for (index, field) in self.fields.iter().enumerate() {
            let path = self.path.child(Step::Field(&field.name));
            match seq.next_element_seed(self.seed.at(&field.ty, &path))? {
                Some(value) => object.insert(field.name.clone(), value),
                None => return Err(de::Error::invalid_length(index, &self)),
            };
        }
        Ok(Value::Object(object))
    }
}

struct MapVisitor<'a> {
    seed: Seed<'a>,
    key: &'a Type,
    value: &'a Type,
}

impl<'de> Visitor<'de> for MapVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map of {} to {}", self.key, self.value)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let seed = self.seed;
        match key_base(seed.ctx.schema, self.key) {
            Some(base) => {
                let mut object = Map::new();
                for index in 0.. {
                    let key_path = seed.path.child(Step::Index(index));
                    let Some(key) = map.next_key_seed(seed.at(self.key, &key_path))? else {
                        break;
                    };
                    let key = key_to_text(base, key).map_err(|message| {
                        seed.ctx.failed_at.set(Some(key_path.to_string()));
                        de::Error::custom(message)
                    })?;
                    let path = seed.path.child(Step::Key(&key));
                    let value = map.next_value_seed(seed.at(self.value, &path))?;
                    object.insert(key, value);
                }
                Ok(Value::Object(object))
            }
            None => {
                let mut pairs = Vec::with_capacity(seed.ctx.capacity(map.size_hint()));
                loop {
                    // The pair is not a level of its own: its key and value are one below
                    // the map, as an object's are.
                    let path = seed.path.within(Step::Index(pairs.len()));
                    let (key_path, value_path) =
                        (path.child(Step::Index(0)), path.child(Step::Index(1)));
                    let Some(key) = map.next_key_seed(seed.at(self.key, &key_path))? else {
                        return Ok(Value::Array(pairs));
                    };
                    let value = map.next_value_seed(seed.at(self.value, &value_path))?;
                    pairs.push(Value::Array(vec![key, value]));
                }
            }
        }
    }
}

struct EnumVisitor<'a> {
    seed: Seed<'a>,
    name: &'a str,
    variants: &'a [Variant],
}

impl<'de> Visitor<'de> for EnumVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "enum `{}`", self.name)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use de::VariantAccess;
        let (index, access) = data.variant_seed(VariantIndex {
            name: self.name,
            count: self.variants.len(),
        })?;
        let variant = &self.variants[index];
        let path = self.seed.path.within(Step::Field(&variant.name));
        let content = match &variant.fields {
            Fields::Unit => {
                access.unit_variant()?;
                return Ok(Value::String(variant.name.clone()));
            }
            Fields::Newtype(ty) => {
                let path = self.seed.path.child(Step::Field(&variant.name));
                access.newtype_variant_seed(self.seed.at(ty, &path))?
            }
            Fields::Tuple(items) => access.tuple_variant(
                items.len(),
                TupleVisitor {
                    seed: self.seed,
                    items,
                    path: &path,
                },
            )?,
            Fields::Named(fields) => {
                let visitor = StructVisitor {
                    seed: self.seed,
                    fields,
                    path: &path,
                };
                match NO_NAMES.get(..fields.len()) {
                    Some(names) => access.struct_variant(names, visitor)?,
                    // bincode reads a struct variant as the tuple of its fields.
                    None => access.tuple_variant(fields.len(), visitor)?,
                }
            }
        };
        let mut object = Map::new();
        object.insert(variant.name.clone(), content);
        Ok(Value::Object(object))
    }
}

/// An enum's variant index, as derived code reads it: an identifier.
struct VariantIndex<'a> {
    name: &'a str,
    count: usize,
}

impl<'de> DeserializeSeed<'de> for VariantIndex<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for VariantIndex<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a variant index below {} (enum `{}`)",
            self.count, self.name
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        match usize::try_from(v) {
            Ok(index) if index < self.count => Ok(index),
            _ => Err(E::custom(format_args!(
                "variant index {v} is out of range for enum `{}` of {} variants",
                self.name, self.count
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;
    use crate::schema::ArgSchema;

    /// A byte buffer through serde's bytes path, as `bytes::Bytes` and `serde_bytes` are
    /// (rpc-core's `bytes` has no serde feature).
    #[derive(Debug, Clone, PartialEq)]
    struct Blob(Vec<u8>);

    impl Serialize for Blob {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Blob {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
            crate::codec::ByteBuf::deserialize(d).map(|b| Blob(b.into_inner()))
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Marker;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pair(u8, String);

    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    struct Id(u64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Rect(u32, u32),
        Poly {
            points: Vec<(i32, i32)>,
            closed: bool,
        },
        Nested(Option<Box<Shape>>),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>, Box<Tree>),
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    enum Color {
        Red,
        Green,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Line {
        size: u32,
        color: Color,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        note: Option<String>,
        lines: Vec<Line>,
        by_name: HashMap<String, u32>,
        by_id: HashMap<u32, String>,
        sorted: BTreeMap<i16, Vec<bool>>,
        by_color: BTreeMap<Color, Id>,
        raw: Vec<u8>,
        blob: Blob,
        initial: char,
        big: u128,
        wide: i128,
        delta: i64,
        small: i8,
        ratio: f64,
        narrow: f32,
        nothing: (),
        marker: Marker,
        pair: Pair,
        id2: Id,
        shapes: Vec<Shape>,
        tree: Tree,
        tuple: (u8, String, Option<i32>),
        array: [u16; 3],
    }

    fn order() -> Order {
        Order {
            id: 1 << 40,
            note: Some("fragile \"glass\"".into()),
            lines: vec![
                Line {
                    size: 3,
                    color: Color::Green,
                },
                Line {
                    size: 300_000,
                    color: Color::Red,
                },
            ],
            by_name: HashMap::from([("a".into(), 1)]),
            by_id: HashMap::from([(7, "seven".into())]),
            sorted: BTreeMap::from([(-5, vec![true, false]), (3, vec![])]),
            by_color: BTreeMap::from([(Color::Green, Id(2))]),
            raw: vec![0, 1, 255],
            blob: Blob(vec![9, 8, 7]),
            initial: 'é',
            big: u128::from(u64::MAX),
            wide: i128::from(i64::MIN),
            delta: -42,
            small: -128,
            ratio: -0.25,
            narrow: 0.1,
            nothing: (),
            marker: Marker,
            pair: Pair(5, "five".into()),
            id2: Id(0),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(2.5),
                Shape::Rect(3, 4),
                Shape::Poly {
                    points: vec![(0, 0), (-1, 2)],
                    closed: true,
                },
                Shape::Nested(Some(Box::new(Shape::Nested(None)))),
            ],
            tree: Tree::Node(
                Box::new(Tree::Leaf),
                Box::new(Tree::Node(Box::new(Tree::Leaf), Box::new(Tree::Leaf))),
            ),
            tuple: (1, "x".into(), None),
            array: [1, 2, 65535],
        }
    }

    fn schema_of<T: DeserializeOwned>() -> ValueSchema {
        ValueSchema::of::<T>(std::any::type_name::<T>(), false)
    }

    fn wire<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, CONFIG).unwrap()
    }

    fn encode(schema: &ValueSchema, json: &Value) -> Result<Vec<u8>, JsonError> {
        let mut buf = BytesMut::new();
        encode_value(schema, json, &mut buf)?;
        Ok(buf.to_vec())
    }

    /// JSON as serde_json writes the value encodes to the value's bytes, and those bytes
    /// decode to that JSON.
    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
        let schema = schema_of::<T>();
        let json = serde_json::to_value(value).unwrap();
        let bytes = wire(value);
        assert_eq!(encode(&schema, &json).unwrap(), bytes, "{json}");
        assert_eq!(decode_value(&schema, &bytes).unwrap(), json);
    }

    fn encode_err<T: DeserializeOwned>(json: Value) -> String {
        encode(&schema_of::<T>(), &json).unwrap_err().to_string()
    }

    fn decode_err<T: DeserializeOwned>(bytes: &[u8]) -> String {
        decode_value(&schema_of::<T>(), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_kind_of_type_round_trips() {
        round_trip(&order());
        round_trip(&());
        round_trip(&Marker);
        round_trip(&Some(Id(3)));
        round_trip(&Option::<u8>::None);
        round_trip(&vec![Shape::Empty, Shape::Rect(1, 2)]);
        round_trip(&(
            u8::MAX,
            i16::MIN,
            u32::MAX,
            i32::MIN,
            u64::MAX,
            i64::MIN,
            'z',
        ));
        round_trip(&(f32::MAX, f64::MIN_POSITIVE, -0.0f64, 1e300f64));
        round_trip(&Blob((0..=255).collect()));
        round_trip(&String::new());
        round_trip(&HashMap::from([(Color::Red, vec![Color::Green])]));
        round_trip(&BTreeMap::from([('a', 1u8), ('b', 2)]));
        round_trip(&BTreeMap::from([(true, ()), (false, ())]));
        round_trip(&HashMap::from([(Id(9), Pair(1, "p".into()))]));
        round_trip(&BTreeMap::from([(-3i128, 1u8)]));
        round_trip(&BTreeMap::from([(u128::MAX, 1u8)]));
    }

    #[test]
    fn maps_with_many_entries_decode_to_the_same_value() {
        // A JSON object's entries come in key order, not the map's: the bytes may differ,
        // what the server reads may not.
        let value: HashMap<u32, BTreeMap<String, i8>> = (0..50)
            .map(|i| (i * 7, BTreeMap::from([(format!("k{i}"), -1)])))
            .collect();
        let schema = schema_of::<HashMap<u32, BTreeMap<String, i8>>>();
        let json = serde_json::to_value(&value).unwrap();
        let bytes = encode(&schema, &json).unwrap();
        let back: HashMap<u32, BTreeMap<String, i8>> = crate::codec::decode_serde(&bytes).unwrap();
        assert_eq!(back, value);
        assert_eq!(decode_value(&schema, &wire(&value)).unwrap(), json);

        let value = BTreeMap::from([(Color::Green, Id(2)), (Color::Red, Id(1))]);
        let schema = schema_of::<BTreeMap<Color, Id>>();
        let json = serde_json::to_value(&value).unwrap();
        let bytes = encode(&schema, &json).unwrap();
        let back: BTreeMap<Color, Id> = crate::codec::decode_serde(&bytes).unwrap();
        assert_eq!(back, value);
        assert_eq!(decode_value(&schema, &wire(&value)).unwrap(), json);
    }

    #[test]
    fn wide_integers_beyond_64_bits_are_decimal_strings() {
        let value = (u128::MAX, i128::MIN, 5u128);
        let schema = schema_of::<(u128, i128, u128)>();
        let json = json!([u128::MAX.to_string(), i128::MIN.to_string(), 5]);
        assert_eq!(decode_value(&schema, &wire(&value)).unwrap(), json);
        assert_eq!(encode(&schema, &json).unwrap(), wire(&value));
        // Strings are accepted for small values too.
        assert_eq!(
            encode(&schema, &json!(["1", "-1", "5"])).unwrap(),
            wire(&(1u128, -1i128, 5u128))
        );
    }

    #[test]
    fn maps_with_keys_json_cannot_write_are_pairs() {
        let value = BTreeMap::from([((1u8, 2u8), "a".to_string()), ((3, 4), "b".into())]);
        let schema = schema_of::<BTreeMap<(u8, u8), String>>();
        let json = json!([[[1, 2], "a"], [[3, 4], "b"]]);
        assert_eq!(decode_value(&schema, &wire(&value)).unwrap(), json);
        assert_eq!(encode(&schema, &json).unwrap(), wire(&value));
        // Pairs are accepted for any map.
        assert_eq!(
            encode(&schema_of::<BTreeMap<u32, u8>>(), &json!([[1, 2], [3, 4]])).unwrap(),
            wire(&BTreeMap::from([(1u32, 2u8), (3, 4)]))
        );
        let err = encode(&schema, &json!({"a": "b"})).unwrap_err().to_string();
        assert!(err.contains("array of [key, value] pairs"), "{err}");
    }

    #[test]
    fn float_keys_are_written_as_serde_json_writes_them() {
        struct Floats(Vec<(f32, u8)>);
        impl Serialize for Floats {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let value = Floats(vec![(0.1, 1), (-2.0, 2), (1e20, 3)]);
        let schema = ValueSchema {
            written: "Map<f32, u8>".into(),
            streaming: false,
            schema: Some(Schema {
                root: Type::Map(Box::new((Type::F32, Type::U8))),
                types: BTreeMap::new(),
            }),
            untraced: None,
        };
        let json = serde_json::to_value(&value).unwrap();
        assert_eq!(decode_value(&schema, &wire(&value)).unwrap(), json);
        // In the JSON object's order, which is the keys' as text.
        let mut back: Vec<(f32, u8)> =
            crate::codec::decode_serde(&encode(&schema, &json).unwrap()).unwrap();
        back.sort_by_key(|(key, _)| key.to_bits());
        let mut expected = value.0;
        expected.sort_by_key(|(key, _)| key.to_bits());
        assert_eq!(back, expected);
    }

    #[test]
    fn lenient_forms_serde_json_also_reads() {
        let schema = schema_of::<Shape>();
        assert_eq!(
            encode(&schema, &json!({"Empty": null})).unwrap(),
            wire(&Shape::Empty)
        );
        // An integer for a float; a missing `Option` field is `None`.
        assert_eq!(
            encode(&schema, &json!({"Circle": 2})).unwrap(),
            wire(&Shape::Circle(2.0))
        );
        let mut value = order();
        value.note = None;
        let mut json = serde_json::to_value(&value).unwrap();
        json.as_object_mut().unwrap().remove("note");
        assert_eq!(encode(&schema_of::<Order>(), &json).unwrap(), wire(&value));
    }

    fn method() -> MethodSchema {
        let arg = |name: &str, value: ValueSchema| ArgSchema {
            name: name.into(),
            value,
        };
        MethodSchema {
            name: "place".into(),
            docs: String::new(),
            idempotent: false,
            fingerprint: 1,
            args: vec![
                arg("id", ValueSchema::of::<u32>("u32", false)),
                arg("items", ValueSchema::of::<Line>("Streaming<Line>", true)),
                arg(
                    "note",
                    ValueSchema::of::<Option<String>>("Option<String>", false),
                ),
                arg("order", ValueSchema::of::<Order>("Order", false)),
            ],
            result: ValueSchema::of::<Id>("Id", false),
        }
    }

    fn args(json: Value) -> Map<String, Value> {
        json.as_object().unwrap().clone()
    }

    fn encode_args_vec(method: &MethodSchema, json: Value) -> Result<Vec<u8>, JsonError> {
        let mut buf = BytesMut::new();
        encode_args(method, &args(json), &mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn arguments_are_the_tuple_of_the_non_stream_ones() {
        let method = method();
        let order = order();
        let order_json = serde_json::to_value(&order).unwrap();
        let body = encode_args_vec(&method, json!({"id": 7, "note": "n", "order": order_json}));
        assert_eq!(body.unwrap(), wire(&(7u32, Some("n"), &order)));
        // The `Option` may be left out.
        let body = encode_args_vec(&method, json!({"id": 7, "order": order_json}));
        assert_eq!(body.unwrap(), wire(&(7u32, None::<String>, &order)));

        let one = MethodSchema {
            args: vec![method.args[0].clone()],
            ..method.clone()
        };
        assert_eq!(
            encode_args_vec(&one, json!({"id": 300})).unwrap(),
            wire(&300u32)
        );
        let none = MethodSchema {
            args: vec![],
            ..method.clone()
        };
        assert_eq!(encode_args_vec(&none, json!({})).unwrap(), Vec::<u8>::new());
        let err = encode_args_vec(&none, json!({"x": 1}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes no arguments"), "{err}");
    }

    #[test]
    fn argument_errors_name_the_argument() {
        let method = method();
        let order_json = serde_json::to_value(order()).unwrap();
        let err = encode_args_vec(&method, json!({"order": order_json})).unwrap_err();
        assert_eq!(err.message(), "missing argument `id: u32` of `place`");
        let err = encode_args_vec(&method, json!({"id": 1, "order": order_json, "colour": 1}))
            .unwrap_err();
        assert_eq!(
            err.message(),
            "`place` has no argument `colour`; its arguments are `id`, `note`, `order`"
        );
        let err = encode_args_vec(&method, json!({"id": 1, "order": order_json, "items": []}))
            .unwrap_err();
        assert!(err.message().contains("is a stream"), "{err}");
        let mut bad = order_json.clone();
        bad["lines"][1]["size"] = json!("x");
        let err = encode_args_vec(&method, json!({"id": 1, "order": bad})).unwrap_err();
        assert_eq!(
            err.message(),
            "at `order.lines[1].size`: expected u32, found string \"x\""
        );

        let mut untraced = method.clone();
        untraced.args[2].value = ValueSchema::untraced("Weird", false, "it is untagged");
        let err = encode_args_vec(&untraced, json!({"id": 1, "order": order_json})).unwrap_err();
        assert!(
            err.message().contains("`note`") && err.message().contains("it is untagged"),
            "{err}"
        );
        let err = decode_value(&untraced.args[2].value, &[]).unwrap_err();
        assert!(err.message().contains("could not be traced"), "{err}");
    }

    #[test]
    fn values_that_do_not_fit_say_where_and_why() {
        let mut json = serde_json::to_value(order()).unwrap();
        json["shapes"][3]["Poly"]["points"][1][0] = json!(1.5);
        assert_eq!(
            encode_err::<Order>(json),
            "at `shapes[3].Poly.points[1][0]`: expected i32, found number 1.5"
        );

        let mut json = serde_json::to_value(order()).unwrap();
        json.as_object_mut().unwrap().remove("lines");
        assert_eq!(
            encode_err::<Order>(json),
            "missing field `lines: Vec<Line>` of struct `Order`"
        );

        let mut json = serde_json::to_value(order()).unwrap();
        json["lines"][0]["colour"] = json!("Red");
        assert_eq!(
            encode_err::<Order>(json),
            "at `lines[0]`: unknown field `colour` in struct `Line`; its fields are `size`, \
             `color`"
        );

        assert_eq!(
            encode_err::<Shape>(json!({"Triangle": [1, 2, 3]})),
            "unknown variant `Triangle` of enum `Shape`; its variants are `Empty`, `Circle`, \
             `Rect`, `Poly`, `Nested`"
        );
        assert_eq!(
            encode_err::<Shape>(json!("Circle")),
            "the variant `Circle` of enum `Shape` has one unnamed field: write it as \
             {\"Circle\": ...}"
        );
        assert_eq!(
            encode_err::<Shape>(json!({"Rect": [1]})),
            "at `Rect`: expected an array of 2 elements (the fields of the variant `Rect` of \
             enum `Shape`), found an array of 1 elements"
        );
        assert_eq!(
            encode_err::<(u8, String)>(json!([1, "a", 3])),
            "expected an array of 2 elements ((u8, String)), found an array of 3 elements"
        );
        assert_eq!(
            encode_err::<Pair>(json!([1])),
            "expected an array of 2 elements (struct `Pair`), found an array of 1 elements"
        );
        assert_eq!(
            encode_err::<Vec<u8>>(json!([1, 256])),
            "at `[1]`: expected u8, found number 256 (out of range)"
        );
        assert_eq!(
            encode_err::<i64>(json!(u64::MAX)),
            "expected i64, found number 18446744073709551615 (out of range)"
        );
        assert_eq!(
            encode_err::<u128>(json!(-1)),
            "expected u128, found number -1 (out of range)"
        );
        assert_eq!(
            encode_err::<Blob>(json!([1, -1])),
            "at `[1]`: expected a byte (0 to 255), found number -1"
        );
        assert_eq!(
            encode_err::<char>(json!("ab")),
            "expected char (a string of one character), found string \"ab\""
        );
        assert_eq!(
            encode_err::<HashMap<u16, u8>>(json!({"70000": 1})),
            "at `[\"70000\"]`: expected u16, found number 70000 (out of range)"
        );
        assert_eq!(
            encode_err::<HashMap<u16, u8>>(json!({"x": 1})),
            "at `[\"x\"]`: the key \"x\" is not an integer (u16)"
        );
        assert_eq!(
            encode_err::<Marker>(json!({})),
            "expected null (unit struct `Marker`), found an object"
        );
    }

    #[test]
    fn bytes_that_do_not_fit_are_errors() {
        let bytes = wire(&order());
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_err::<Order>(&long),
            format!(
                "1 trailing bytes after the value of type `{}`",
                std::any::type_name::<Order>()
            )
        );
        let err = decode_err::<Order>(&bytes[..bytes.len() - 1]);
        assert!(err.contains("at `array[2]`: the input ends early"), "{err}");
        // Variant 9 of `Color`.
        let err = decode_err::<Line>(&[3, 9]);
        assert!(
            err.contains(
                "at `color`: variant index 9 is out of range for enum `Color` of 2 \
                          variants"
            ),
            "{err}"
        );
        let err = decode_err::<Option<u8>>(&[2, 0]);
        assert!(err.contains("tag is 2"), "{err}");
        let err = decode_err::<String>(&[2, 0xff, 0xfe]);
        assert!(err.contains("not valid UTF-8"), "{err}");
        let err = decode_err::<u8>(&[]);
        assert!(err.contains("ends early"), "{err}");
    }

    #[test]
    fn a_huge_claimed_length_fails_without_allocating_it() {
        // A varint u64 of 2^60 in 9 bytes: the length of whatever comes first.
        let mut body = vec![0xFD];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        for err in [
            decode_err::<String>(&body),
            decode_err::<Vec<u8>>(&body),
            decode_err::<Blob>(&body),
            decode_err::<Vec<String>>(&body),
            decode_err::<Vec<Vec<u64>>>(&body),
            decode_err::<HashMap<String, u8>>(&body),
            decode_err::<BTreeMap<(u8, u8), u8>>(&body),
        ] {
            assert!(err.contains("ends early"), "{err}");
        }
    }

    fn deep_tree(depth: usize) -> Tree {
        let mut tree = Tree::Leaf;
        for _ in 0..depth {
            tree = Tree::Node(Box::new(tree), Box::new(Tree::Leaf));
        }
        tree
    }

    fn deep_json(depth: usize) -> Value {
        // Not `json!`, which would copy the whole value at every level.
        let leaf = || Value::String("Leaf".into());
        let mut json = leaf();
        for _ in 0..depth {
            let node = Value::Array(vec![json, leaf()]);
            json = Value::Object(Map::from_iter([("Node".to_owned(), node)]));
        }
        json
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        let schema = schema_of::<Tree>();
        // Within the limit, it works: a level per node.
        let tree = deep_tree(MAX_DEPTH);
        assert_eq!(
            decode_value(&schema, &wire(&tree)).unwrap(),
            serde_json::to_value(&tree).unwrap()
        );
        assert_eq!(encode(&schema, &deep_json(MAX_DEPTH)).unwrap(), wire(&tree));

        // Beyond it, an error rather than a deeper stack, however deep the input.
        for depth in [MAX_DEPTH + 1, 100_000] {
            let json = deep_json(depth);
            let err = encode(&schema, &json).unwrap_err();
            assert!(err.message().contains("nests deeper than 128"), "{err}");
            drop_flat(json);
            // Variant 1 (`Node`) over and over.
            let err = decode_value(&schema, &vec![1; depth + 1]).unwrap_err();
            assert!(err.message().contains("nests deeper than 128"), "{err}");
        }
    }

    /// Drops a `Value` without recursing: serde_json's own drop would overflow the stack on
    /// the deep ones built here (JSON parsed by serde_json is at most 128 deep).
    fn drop_flat(value: Value) {
        let mut stack = vec![value];
        while let Some(value) = stack.pop() {
            match value {
                Value::Array(items) => stack.extend(items),
                Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }

    #[test]
    fn a_schema_that_refers_to_itself_without_end_is_bounded() {
        // `struct A(A)` cannot be written in Rust, but a schema from a peer can say it.
        let schema = ValueSchema {
            written: "A".into(),
            streaming: false,
            schema: Some(Schema {
                root: Type::Named("A".into()),
                types: BTreeMap::from([(
                    "A".to_string(),
                    Container::Struct(Fields::Newtype(Type::Named("A".into()))),
                )]),
            }),
            untraced: None,
        };
        let err = encode(&schema, &json!(5)).unwrap_err();
        assert!(err.message().contains("nests deeper"), "{err}");
        let err = decode_value(&schema, &[5]).unwrap_err();
        assert!(err.message().contains("nests deeper"), "{err}");
        let map = ValueSchema {
            schema: Some(Schema {
                root: Type::Map(Box::new((Type::Named("A".into()), Type::U8))),
                ..schema.schema.clone().unwrap()
            }),
            ..schema.clone()
        };
        // Its keys are not text, so an object is refused rather than looped over.
        assert!(encode(&map, &json!({"5": 1})).is_err());
        let missing = ValueSchema {
            schema: Some(Schema {
                root: Type::Named("B".into()),
                types: BTreeMap::new(),
            }),
            ..schema
        };
        let err = encode(&missing, &json!(null)).unwrap_err();
        assert!(err.message().contains("does not describe"), "{err}");
        assert!(decode_value(&missing, &[0]).is_err());
    }
}
