//! Types as people read them, for error messages.

use std::fmt;

use super::{Fields, Type};

/// The name a key stands for: `Page#2` is a second type called `Page`.
pub(crate) fn display_name(key: &str) -> &str {
    key.split_once('#').map_or(key, |(name, _)| name)
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Unit => f.write_str("()"),
            Type::Bool => f.write_str("bool"),
            Type::I8 => f.write_str("i8"),
            Type::I16 => f.write_str("i16"),
            Type::I32 => f.write_str("i32"),
            Type::I64 => f.write_str("i64"),
            Type::I128 => f.write_str("i128"),
            Type::U8 => f.write_str("u8"),
            Type::U16 => f.write_str("u16"),
            Type::U32 => f.write_str("u32"),
            Type::U64 => f.write_str("u64"),
            Type::U128 => f.write_str("u128"),
            Type::F32 => f.write_str("f32"),
            Type::F64 => f.write_str("f64"),
            Type::Char => f.write_str("char"),
            Type::String => f.write_str("String"),
            Type::Bytes => f.write_str("bytes"),
            Type::Option(inner) => write!(f, "Option<{inner}>"),
            Type::Seq(inner) => write!(f, "Vec<{inner}>"),
            Type::Map(pair) => write!(f, "Map<{}, {}>", pair.0, pair.1),
            Type::Tuple(items) => match items.split_first() {
                Some((first, rest)) if items.len() > 2 && rest.iter().all(|t| t == first) => {
                    write!(f, "[{first}; {}]", items.len())
                }
                _ => {
                    f.write_str("(")?;
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{item}")?;
                    }
                    if items.len() == 1 {
                        f.write_str(",")?;
                    }
                    f.write_str(")")
                }
            },
            Type::Named(key) => f.write_str(display_name(key)),
        }
    }
}

/// What kind of fields these are, for "a struct with named fields" and the like.
pub(crate) fn shape(fields: &Fields) -> &'static str {
    match fields {
        Fields::Unit => "no fields",
        Fields::Newtype(_) => "one unnamed field",
        Fields::Tuple(_) => "unnamed fields",
        Fields::Named(_) => "named fields",
    }
}
