//! Tracing a type's wire shape: its `Deserialize` is run against a deserializer that
//! records what it is asked for, pass after pass, until every variant of every enum has
//! been seen.
//!
//! serde-reflection does this too, but it explores an enum nested inside another type only
//! when that enum is traced on its own, by name; `#[service]` sees only the types written in
//! the signature, so it needs every nested enum found from the root.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

use super::{Container, Field, Fields, Schema, Type};

/// Passes before giving up; an enum of N variants takes N passes.
const MAX_PASSES: usize = 2048;
/// Nesting of structs and enums before giving up on a recursive type.
const MAX_DEPTH: usize = 64;

/// Why a type could not be traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError(String);

impl TraceError {
    pub(crate) fn new(message: String) -> TraceError {
        TraceError(message)
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        TraceError(format!(
            "its `Deserialize` rejected the value the tracer made ({message}); types that \
             validate their input cannot be traced"
        ))
    }
}

/// The wire shape of `T`.
///
/// ```
/// use rpc_core::schema::{trace, Container, Fields, Type};
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64, lines: Vec<Line> }
/// #[derive(serde::Deserialize)]
/// enum Line { Item(String), Discount { percent: u8 } }
///
/// let schema = trace::<Order>().unwrap();
/// assert_eq!(schema.root, Type::Named("Order".into()));
/// let Container::Enum(variants) = &schema.types["Line"] else { panic!() };
/// assert_eq!(variants[1].name, "Discount");
/// assert!(matches!(&variants[0].fields, Fields::Newtype(Type::String)));
/// ```
pub fn trace<T: DeserializeOwned>() -> Result<Schema, TraceError> {
    let mut state = State::default();
    let mut root = unknown();
    for _ in 0..MAX_PASSES {
        state.stack.clear();
        state.cut = 0;
        let mut seen = unknown();
        T::deserialize(Tracer {
            state: &mut state,
            out: &mut seen,
        })?;
        merge(&mut root, seen);
        if state.complete() && is_known(&root) {
            return Ok(state.finish(root));
        }
    }
    Err(TraceError(format!(
        "it was not complete after {MAX_PASSES} passes of the tracer"
    )))
}

/// The type of a position not seen yet (an empty sequence, a `None`): never a real name.
fn unknown() -> Type {
    Type::Named(String::new())
}

fn is_known(ty: &Type) -> bool {
    match ty {
        Type::Named(name) => !name.is_empty(),
        Type::Option(inner) | Type::Seq(inner) => is_known(inner),
        Type::Map(pair) => is_known(&pair.0) && is_known(&pair.1),
        Type::Tuple(items) => items.iter().all(is_known),
        _ => true,
    }
}

fn fields_known(fields: &Fields) -> bool {
    match fields {
        Fields::Unit => true,
        Fields::Newtype(ty) => is_known(ty),
        Fields::Tuple(items) => items.iter().all(is_known),
        Fields::Named(fields) => fields.iter().all(|f| is_known(&f.ty)),
    }
}

/// Fills what `into` has not seen yet from `from`.
fn merge(into: &mut Type, from: Type) {
    match (into, from) {
        (into @ Type::Named(_), from) if !is_known_name(into) => *into = from,
        (Type::Option(a), Type::Option(b)) | (Type::Seq(a), Type::Seq(b)) => merge(a, *b),
        (Type::Map(a), Type::Map(b)) => {
            let (bk, bv) = *b;
            merge(&mut a.0, bk);
            merge(&mut a.1, bv);
        }
        (Type::Tuple(a), Type::Tuple(b)) => {
            for (a, b) in a.iter_mut().zip(b) {
                merge(a, b);
            }
        }
        _ => {}
    }
}

fn is_known_name(ty: &Type) -> bool {
    !matches!(ty, Type::Named(name) if name.is_empty())
}

fn merge_fields(into: &mut Fields, from: Fields) {
    match (into, from) {
        (Fields::Newtype(a), Fields::Newtype(b)) => merge(a, b),
        (Fields::Tuple(a), Fields::Tuple(b)) => {
            for (a, b) in a.iter_mut().zip(b) {
                merge(a, b);
            }
        }
        (Fields::Named(a), Fields::Named(b)) => {
            for (a, b) in a.iter_mut().zip(b) {
                merge(&mut a.ty, b.ty);
            }
        }
        _ => {}
    }
}

enum Partial {
    Struct(Fields),
    Enum {
        variants: Vec<(&'static str, Option<Fields>)>,
        /// The variant the next visit explores once all have been seen.
        turn: usize,
    },
}

#[derive(Default)]
struct State {
    /// Rust type name to the container's key.
    keys: HashMap<&'static str, String>,
    /// How many types took each serde name.
    names: HashMap<&'static str, usize>,
    containers: BTreeMap<String, Partial>,
    /// Keys of the containers being traced, outermost first.
    stack: Vec<String>,
    /// Above zero inside a container already on the stack: sequences and options are left
    /// empty and enums take a variant that ends, so that recursion stops.
    cut: usize,
}

impl State {
    fn key(&mut self, rust: &'static str, serde_name: &'static str) -> String {
        if let Some(key) = self.keys.get(rust) {
            return key.clone();
        }
        let count = self.names.entry(serde_name).or_default();
        *count += 1;
        let key = if *count == 1 {
            serde_name.to_owned()
        } else {
            format!("{serde_name}#{count}")
        };
        self.keys.insert(rust, key.clone());
        key
    }

    fn enter(&mut self, key: &str) -> Result<bool, TraceError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(TraceError(format!(
                "it nests deeper than {MAX_DEPTH} structs and enums (at `{key}`); a recursive \
                 enum must list a variant that ends the recursion before the ones that recurse"
            )));
        }
        let recursive = self.stack.iter().any(|k| k == key);
        self.stack.push(key.to_owned());
        if recursive {
            self.cut += 1;
        }
        Ok(recursive)
    }

    fn leave(&mut self, recursive: bool) {
        self.stack.pop();
        if recursive {
            self.cut -= 1;
        }
    }

    fn record_struct(&mut self, key: String, fields: Fields) {
        match self.containers.get_mut(&key) {
            Some(Partial::Struct(known)) => merge_fields(known, fields),
            _ => {
                self.containers.insert(key, Partial::Struct(fields));
            }
        }
    }

    /// The variant to take on this visit of enum `key`.
    fn choose_variant(&mut self, key: &str, names: &'static [&'static str]) -> u32 {
        let partial = self
            .containers
            .entry(key.to_owned())
            .or_insert_with(|| Partial::Enum {
                variants: names.iter().map(|name| (*name, None)).collect(),
                turn: 0,
            });
        let Partial::Enum { variants, turn } = partial else {
            return 0;
        };
        if self.cut > 0 {
            // Prefer a variant known to end: no fields, then no named types.
            let ends = |fields: &Fields| match fields {
                Fields::Unit => 2,
                Fields::Newtype(ty) => u8::from(!mentions_named(ty)),
                Fields::Tuple(items) => u8::from(!items.iter().any(mentions_named)),
                Fields::Named(fields) => u8::from(!fields.iter().any(|f| mentions_named(&f.ty))),
            };
            let best = variants
                .iter()
                .enumerate()
                .filter_map(|(i, (_, fields))| fields.as_ref().map(|f| (ends(f), i)))
                .max_by_key(|(score, i)| (*score, std::cmp::Reverse(*i)));
            return match best {
                Some((score, i)) if score > 0 => i as u32,
                _ => 0,
            };
        }
        if let Some(i) = variants.iter().position(|(_, fields)| fields.is_none()) {
            return i as u32;
        }
        *turn = (*turn + 1) % variants.len().max(1);
        *turn as u32
    }

    fn record_variant(&mut self, key: &str, index: u32, fields: Fields) {
        if let Some(Partial::Enum { variants, .. }) = self.containers.get_mut(key) {
            if let Some((_, slot)) = variants.get_mut(index as usize) {
                match slot {
                    Some(known) => merge_fields(known, fields),
                    None => *slot = Some(fields),
                }
            }
        }
    }

    fn complete(&self) -> bool {
        self.containers.values().all(|partial| match partial {
            Partial::Struct(fields) => fields_known(fields),
            Partial::Enum { variants, .. } => variants
                .iter()
                .all(|(_, fields)| fields.as_ref().is_some_and(fields_known)),
        })
    }

    fn finish(self, root: Type) -> Schema {
        let types = self
            .containers
            .into_iter()
            .map(|(key, partial)| {
                let container = match partial {
                    Partial::Struct(fields) => Container::Struct(fields),
                    Partial::Enum { variants, .. } => Container::Enum(
                        variants
                            .into_iter()
                            .map(|(name, fields)| super::Variant {
                                name: name.to_owned(),
                                fields: fields.unwrap_or(Fields::Unit),
                            })
                            .collect(),
                    ),
                };
                (key, container)
            })
            .collect();
        Schema { root, types }
    }
}

fn mentions_named(ty: &Type) -> bool {
    match ty {
        Type::Named(_) => true,
        Type::Option(inner) | Type::Seq(inner) => mentions_named(inner),
        Type::Map(pair) => mentions_named(&pair.0) || mentions_named(&pair.1),
        Type::Tuple(items) => items.iter().any(mentions_named),
        _ => false,
    }
}

/// The recording deserializer: what it is asked to deserialize is written to `out`.
struct Tracer<'a> {
    state: &'a mut State,
    out: &'a mut Type,
}

impl Tracer<'_> {
    fn unsupported<T>(what: &str) -> Result<T, TraceError> {
        Err(TraceError(format!(
            "its `Deserialize` calls `{what}`, which needs a self-describing format (an \
             untagged or internally tagged enum, `#[serde(flatten)]`, a dynamic value): bincode \
             cannot read it either"
        )))
    }
}

macro_rules! primitive {
    ($($method:ident => $ty:ident, $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                *self.out = Type::$ty;
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    primitive! {
        deserialize_bool => Bool, visit_bool(false);
        deserialize_i8 => I8, visit_i8(1);
        deserialize_i16 => I16, visit_i16(1);
        deserialize_i32 => I32, visit_i32(1);
        deserialize_i64 => I64, visit_i64(1);
        deserialize_i128 => I128, visit_i128(1);
        deserialize_u8 => U8, visit_u8(1);
        deserialize_u16 => U16, visit_u16(1);
        deserialize_u32 => U32, visit_u32(1);
        deserialize_u64 => U64, visit_u64(1);
        deserialize_u128 => U128, visit_u128(1);
        deserialize_f32 => F32, visit_f32(1.0);
        deserialize_f64 => F64, visit_f64(1.0);
        deserialize_char => Char, visit_char('a');
        deserialize_str => String, visit_borrowed_str("");
        deserialize_string => String, visit_borrowed_str("");
        deserialize_bytes => Bytes, visit_borrowed_bytes(b"");
        deserialize_byte_buf => Bytes, visit_borrowed_bytes(b"");
        deserialize_unit => Unit, visit_unit();
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Self::unsupported("deserialize_any")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Self::unsupported("deserialize_ignored_any")
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Self::unsupported("deserialize_identifier")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.state.cut > 0 {
            *self.out = Type::Option(Box::new(unknown()));
            return visitor.visit_none();
        }
        let mut inner = unknown();
        let value = visitor.visit_some(Tracer {
            state: self.state,
            out: &mut inner,
        })?;
        *self.out = Type::Option(Box::new(inner));
        Ok(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let (value, mut items) = elements(self.state, usize::from(self.state.cut == 0), visitor);
        *self.out = Type::Seq(Box::new(items.pop().unwrap_or_else(unknown)));
        value
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (value, items) = elements(self.state, len, visitor);
        *self.out = Type::Tuple(items);
        value
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let mut pair = (unknown(), unknown());
        let entries = usize::from(self.state.cut == 0);
        let value = visitor.visit_map(Entries {
            state: self.state,
            out: &mut pair,
            left: entries,
        })?;
        *self.out = Type::Map(Box::new(pair));
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.state.key(std::any::type_name::<V::Value>(), name);
        self.state.record_struct(key.clone(), Fields::Unit);
        *self.out = Type::Named(key);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.state.key(std::any::type_name::<V::Value>(), name);
        let recursive = self.state.enter(&key)?;
        let mut inner = unknown();
        let value = visitor.visit_newtype_struct(Tracer {
            state: self.state,
            out: &mut inner,
        });
        self.state.leave(recursive);
        self.state
            .record_struct(key.clone(), Fields::Newtype(inner));
        *self.out = Type::Named(key);
        value
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.state.key(std::any::type_name::<V::Value>(), name);
        let recursive = self.state.enter(&key)?;
        let (value, items) = elements(self.state, len, visitor);
        self.state.leave(recursive);
        self.state.record_struct(key.clone(), Fields::Tuple(items));
        *self.out = Type::Named(key);
        value
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.state.key(std::any::type_name::<V::Value>(), name);
        let recursive = self.state.enter(&key)?;
        let (value, items) = elements(self.state, fields.len(), visitor);
        self.state.leave(recursive);
        self.state
            .record_struct(key.clone(), Fields::Named(named(fields, items)));
        *self.out = Type::Named(key);
        value
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        if variants.is_empty() {
            return Err(TraceError(format!(
                "the enum `{name}` has no variants, so no value of it can be sent"
            )));
        }
        let key = self.state.key(std::any::type_name::<V::Value>(), name);
        let recursive = self.state.enter(&key)?;
        let index = self.state.choose_variant(&key, variants);
        let mut fields = Fields::Unit;
        let value = visitor.visit_enum(Choice {
            state: self.state,
            index,
            out: &mut fields,
        });
        self.state.leave(recursive);
        if value.is_ok() {
            self.state.record_variant(&key, index, fields);
        }
        *self.out = Type::Named(key);
        value
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Has `visitor` read `len` elements, each traced: the value and the elements' types.
fn elements<'de, V: Visitor<'de>>(
    state: &mut State,
    len: usize,
    visitor: V,
) -> (Result<V::Value, TraceError>, Vec<Type>) {
    let mut items = vec![unknown(); len];
    let value = visitor.visit_seq(Elements {
        state,
        out: &mut items,
        next: 0,
    });
    (value, items)
}

/// Named fields from their names and traced types.
fn named(fields: &[&str], types: Vec<Type>) -> Vec<Field> {
    fields
        .iter()
        .zip(types)
        .map(|(name, ty)| Field {
            name: (*name).to_owned(),
            ty,
        })
        .collect()
}

/// The elements of a sequence, tuple or struct, each traced into its slot of `out`.
struct Elements<'a> {
    state: &'a mut State,
    out: &'a mut [Type],
    next: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        let Some(slot) = self.out.get_mut(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(Tracer {
            state: self.state,
            out: slot,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.out.len() - self.next)
    }
}

/// A map of at most one entry.
struct Entries<'a> {
    state: &'a mut State,
    out: &'a mut (Type, Type),
    left: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Tracer {
            state: self.state,
            out: &mut self.out.0,
        })
        .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        seed.deserialize(Tracer {
            state: self.state,
            out: &mut self.out.1,
        })
    }
}

/// The variant an enum's visit takes, and the fields it turns out to have.
struct Choice<'a> {
    state: &'a mut State,
    index: u32,
    out: &'a mut Fields,
}

impl<'de, 'a> de::EnumAccess<'de> for Choice<'a> {
    type Error = TraceError;
    type Variant = Choice<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Choice<'a>), TraceError> {
        let variant =
            seed.deserialize(de::value::U32Deserializer::<TraceError>::new(self.index))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Choice<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.out = Fields::Unit;
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        let mut inner = unknown();
        let value = seed.deserialize(Tracer {
            state: self.state,
            out: &mut inner,
        })?;
        *self.out = Fields::Newtype(inner);
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (value, items) = elements(self.state, len, visitor);
        *self.out = Fields::Tuple(items);
        value
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (value, items) = elements(self.state, fields.len(), visitor);
        *self.out = Fields::Named(named(fields, items));
        value
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    enum Kind {
        A,
        B(u32),
        C { x: String },
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    enum Outer {
        P,
        Q(Option<Kind>),
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Order {
        id: u64,
        kinds: Vec<Outer>,
        by_name: HashMap<String, Kind>,
        raw: Vec<u8>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>, Box<Tree>),
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct List {
        value: u32,
        next: Option<Box<List>>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Page<T> {
        items: Vec<T>,
    }

    #[test]
    fn nested_enums_are_traced_from_the_root() {
        let schema = trace::<Order>().unwrap();
        let Container::Enum(kind) = &schema.types["Kind"] else {
            panic!("{schema:?}")
        };
        assert_eq!(kind.len(), 3);
        assert_eq!(kind[1].fields, Fields::Newtype(Type::U32));
        let Container::Enum(outer) = &schema.types["Outer"] else {
            panic!()
        };
        assert_eq!(
            outer[1].fields,
            Fields::Newtype(Type::Option(Box::new(Type::Named("Kind".into()))))
        );
        let Container::Struct(Fields::Named(fields)) = &schema.types["Order"] else {
            panic!()
        };
        assert_eq!(fields[3].ty, Type::Seq(Box::new(Type::U8)));
    }

    #[test]
    fn recursive_types_are_traced() {
        let tree = trace::<Result<Tree, List>>().unwrap();
        let Container::Enum(variants) = &tree.types["Tree"] else {
            panic!()
        };
        let node = Type::Named("Tree".into());
        assert_eq!(variants[1].fields, Fields::Tuple(vec![node.clone(), node]));
        let Container::Struct(Fields::Named(fields)) = &tree.types["List"] else {
            panic!()
        };
        assert_eq!(
            fields[1].ty,
            Type::Option(Box::new(Type::Named("List".into())))
        );
        assert!(tree.types.contains_key("Result"));
    }

    #[test]
    fn generic_instances_are_told_apart() {
        let schema = trace::<(Page<u32>, Page<String>)>().unwrap();
        assert_eq!(
            schema.root,
            Type::Tuple(vec![
                Type::Named("Page".into()),
                Type::Named("Page#2".into())
            ])
        );
    }

    #[test]
    fn what_bincode_cannot_read_is_not_traced() {
        #[allow(dead_code)]
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Untagged {
            A(u32),
            B(String),
        }
        let err = trace::<Untagged>().unwrap_err();
        assert!(err.to_string().contains("deserialize_any"), "{err}");
        assert!(trace::<std::num::NonZeroU32>().is_ok());
    }
}
