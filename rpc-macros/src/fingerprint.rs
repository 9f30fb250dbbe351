//! Method fingerprints: how client and server agree that they mean the same method.
//!
//! A fingerprint is the 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`) of the method's signature text
//!
//! ```text
//! {name}({arg types joined by ","})->{return type}
//! ```
//!
//! where `name` is the method's identifier (without any `r#` prefix), each type is its token
//! text (`quote!(#ty).to_string()`) with *all* whitespace removed, and the return type is `()`
//! for a method without `-> T`. Argument names are not part of it, so renaming an argument is
//! not a wire change. For `async fn add(&self, a: i64, b: i64) -> i64` the text is
//! `add(i64,i64)->i64`.
//!
//! The fingerprint guards the signature *as written*: changing `i64` to `u64`, or
//! `Result<T, E>` to `T`, changes it; changing the fields inside a user type `MathError`
//! does not (the type's name is all the macro sees), and neither does spelling the same type
//! two ways (`String` vs `std::string::String`) count as the same signature.

use quote::ToTokens;
use syn::{ReturnType, Type};

/// FNV-1a 64 offset basis.
const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The token text of `ty` with all whitespace removed.
pub fn type_text(ty: &Type) -> String {
    let mut text = ty.to_token_stream().to_string();
    text.retain(|c| !c.is_whitespace());
    text
}

/// The signature text the fingerprint hashes (see the module docs).
pub fn signature_text<'a>(
    name: &str,
    arg_types: impl IntoIterator<Item = &'a Type>,
    output: &ReturnType,
) -> String {
    let args: Vec<String> = arg_types.into_iter().map(type_text).collect();
    let ret = match output {
        ReturnType::Default => "()".to_owned(),
        ReturnType::Type(_, ty) => type_text(ty),
    };
    format!("{name}({})->{ret}", args.join(","))
}

/// The fingerprint of a method (see the module docs).
pub fn fingerprint<'a>(
    name: &str,
    arg_types: impl IntoIterator<Item = &'a Type>,
    output: &ReturnType,
) -> u64 {
    fnv1a64(signature_text(name, arg_types, output).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn signature_text_strips_whitespace_and_names() {
        let a: Type = parse_quote!(i64);
        let r: ReturnType = parse_quote!(-> Result < i64 , MathError >);
        assert_eq!(
            signature_text("div", [&a, &a], &r),
            "div(i64,i64)->Result<i64,MathError>"
        );
        assert_eq!(
            signature_text("reset", [], &ReturnType::Default),
            "reset()->()"
        );
        let unit: ReturnType = parse_quote!(-> ());
        assert_eq!(signature_text("reset", [], &unit), "reset()->()");
    }

    #[test]
    fn fingerprint_known_values() {
        let a: Type = parse_quote!(i64);
        let r: ReturnType = parse_quote!(-> i64);
        assert_eq!(fingerprint("add", [&a, &a], &r), 0xa6c4_6389_4a40_8591);
        assert_eq!(
            fingerprint("reset", [], &ReturnType::Default),
            0x5edb_fc11_8dec_ebaf
        );
        let r: ReturnType = parse_quote!(-> Result<i64, MathError>);
        assert_eq!(fingerprint("div", [&a, &a], &r), 0x2940_ce57_f7a7_3b92);
    }

    #[test]
    fn fingerprint_changes_with_types_not_arg_names() {
        let i: Type = parse_quote!(i64);
        let u: Type = parse_quote!(u64);
        let r: ReturnType = parse_quote!(-> i64);
        assert_ne!(fingerprint("add", [&i], &r), fingerprint("add", [&u], &r));
        assert_ne!(fingerprint("add", [&i], &r), fingerprint("sub", [&i], &r));
    }
}
