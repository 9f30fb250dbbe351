//! The parsed model of a `#[service]` trait: plain data, built without judging it.
//!
//! [`Service::from_syn`] fails only on a malformed `#[rpc(...)]` attribute (a parse error,
//! like a bad `#[service(...)]` argument). Otherwise it records everything the trait says,
//! including what the macro does not support (generics, receivers other than `&self`,
//! patterns, ...), so that `valid.rs` can point at each problem with its own span. `expand`
//! only ever sees a model that passed validation.

use proc_macro2::Span;
use quote::format_ident;
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{
    Attribute, Block, Error, FnArg, Generics, Ident, ItemTrait, Pat, Receiver, Result, ReturnType,
    Signature, Token, TraitItem, Type, TypeParamBound, Visibility,
};

use crate::attr::{self, MethodArgs, ServiceArgs};
use crate::fingerprint;

/// A `#[service]` trait.
pub struct Service {
    /// Outer attributes of the trait (doc comments and anything else), kept as written.
    pub attrs: Vec<Attribute>,
    /// The trait's visibility; every generated item gets it too.
    pub vis: Visibility,
    /// `unsafe trait`, kept as written.
    pub unsafety: Option<Token![unsafe]>,
    /// `auto trait`, kept as written (and rejected by the compiler).
    pub auto_token: Option<Token![auto]>,
    /// The `trait` keyword, for its span.
    pub trait_token: Token![trait],
    /// The trait's name.
    pub ident: Ident,
    /// The trait's generics and where clause (validation rejects any).
    pub generics: Generics,
    /// `:` before supertraits, if any (validation rejects it).
    pub colon_token: Option<Token![:]>,
    /// Supertraits (validation rejects any).
    pub supertraits: Punctuated<TypeParamBound, Token![+]>,
    /// The name on the wire: the trait's name, or `#[service(name = "...")]`.
    pub wire_name: String,
    /// The methods, in declaration order.
    pub methods: Vec<Method>,
    /// Trait items that are not methods (validation rejects any).
    pub other_items: Vec<TraitItem>,
}

/// One method of a service.
pub struct Method {
    /// Outer attributes (doc comments, `#[cfg]`, others), kept as written on the trait,
    /// except `#[rpc(...)]`, which is parsed into `rpc` and not emitted again.
    pub attrs: Vec<Attribute>,
    /// The method's `#[rpc(...)]` arguments (`idempotent`).
    pub rpc: MethodArgs,
    /// The signature as written, for validation and spans.
    pub sig: Signature,
    /// A default body, if the trait gives one (validation rejects it).
    pub default: Option<Block>,
    /// The method's name.
    pub ident: Ident,
    /// The method's name on the wire (no `r#`).
    pub name: String,
    /// The receiver (`&self`, `self`, ...), `None` if the method has none.
    pub receiver: Option<Receiver>,
    /// The arguments after the receiver.
    pub args: Vec<Arg>,
    /// The return type; `()` when the method has no `-> T`.
    pub output: Type,
    /// The item type `O` when the return type is `Streaming<O>` (server streaming).
    pub output_stream: Option<Type>,
    /// Whether the return type is syntactically `()` (written or implied).
    pub returns_unit: bool,
    /// The request/response enum variant: the method's name in UpperCamelCase.
    pub variant: Ident,
    /// The method's fingerprint (see `fingerprint.rs`).
    pub fingerprint: u64,
}

/// One argument of a method (other than the receiver).
pub struct Arg {
    /// Attributes on the argument (validation rejects any).
    pub attrs: Vec<Attribute>,
    /// The pattern as written, for validation.
    pub pat: Pat,
    /// The argument's name: the identifier of the pattern, or a placeholder when the
    /// pattern is not a plain identifier (validation rejects those).
    pub ident: Ident,
    /// The argument's type, as written.
    pub ty: Type,
    /// The item type `I` when the argument's type is `Streaming<I>` (client streaming).
    pub stream: Option<Type>,
}

impl Service {
    /// Builds the model of `item` with the attribute's arguments `args`.
    ///
    /// Fails, with every error found, if an `#[rpc(...)]` attribute is malformed or is on
    /// the trait rather than on a method.
    pub fn from_syn(item: ItemTrait, args: ServiceArgs) -> Result<Self> {
        let wire_name = match &args.name {
            Some(name) => name.value(),
            None => item.ident.unraw().to_string(),
        };
        let mut errors: Option<Error> = None;
        let mut push = |error: Error| match &mut errors {
            Some(all) => all.combine(error),
            None => errors = Some(error),
        };
        if let Err(error) = attr::reject_on_trait(&item.attrs) {
            push(error);
        }
        let mut methods = Vec::new();
        let mut other_items = Vec::new();
        for trait_item in item.items {
            match trait_item {
                TraitItem::Fn(mut f) => {
                    let rpc = attr::take_method_args(&mut f.attrs).unwrap_or_else(|error| {
                        push(error);
                        MethodArgs::default()
                    });
                    methods.push(Method::from_syn(f.attrs, rpc, f.sig, f.default));
                }
                other => other_items.push(other),
            }
        }
        if let Some(errors) = errors {
            return Err(errors);
        }
        Ok(Service {
            attrs: item.attrs,
            vis: item.vis,
            unsafety: item.unsafety,
            auto_token: item.auto_token,
            trait_token: item.trait_token,
            ident: item.ident,
            generics: item.generics,
            colon_token: item.colon_token,
            supertraits: item.supertraits,
            wire_name,
            methods,
            other_items,
        })
    }

    /// The name of a generated item: the trait's name followed by `suffix`, with the trait's
    /// span so errors and IDE navigation lead to the trait.
    pub fn item_ident(&self, suffix: &str) -> Ident {
        format_ident!("{}{}", self.ident.unraw(), suffix, span = self.ident.span())
    }
}

impl Method {
    fn from_syn(
        attrs: Vec<Attribute>,
        rpc: MethodArgs,
        sig: Signature,
        default: Option<Block>,
    ) -> Self {
        let mut receiver = None;
        let mut args = Vec::new();
        for (index, input) in sig.inputs.iter().enumerate() {
            match input {
                FnArg::Receiver(r) => receiver = Some(r.clone()),
                FnArg::Typed(typed) => {
                    let ident = match &*typed.pat {
                        Pat::Ident(pat) => pat.ident.clone(),
                        _ => format_ident!("__rpc_arg{}", index, span = Span::mixed_site()),
                    };
                    args.push(Arg {
                        attrs: typed.attrs.clone(),
                        pat: (*typed.pat).clone(),
                        ident,
                        ty: (*typed.ty).clone(),
                        stream: stream_item(&typed.ty).cloned(),
                    });
                }
            }
        }
        let (output, returns_unit) = match &sig.output {
            ReturnType::Default => (syn::parse_quote!(()), true),
            ReturnType::Type(_, ty) => {
                let unit = matches!(&**ty, Type::Tuple(t) if t.elems.is_empty());
                ((**ty).clone(), unit)
            }
        };
        let output_stream = stream_item(&output).cloned();
        let name = sig.ident.unraw().to_string();
        let fingerprint =
            fingerprint::fingerprint(&name, args.iter().map(|arg| &arg.ty), &sig.output);
        let variant = Ident::new(&upper_camel_case(&name), sig.ident.span());
        Method {
            attrs,
            rpc,
            ident: sig.ident.clone(),
            name,
            receiver,
            args,
            output,
            output_stream,
            returns_unit,
            variant,
            fingerprint,
            sig,
            default,
        }
    }

    /// The method's `#[cfg(...)]` attributes: they go on everything generated for it.
    pub fn cfg_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|attr| attr.path().is_ident("cfg"))
    }

    /// The method's doc comments (`///` and `#[doc = ...]`).
    pub fn doc_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|attr| attr.path().is_ident("doc"))
    }

    /// The `Streaming<I>` argument, if the method takes one (validation allows at most one).
    pub fn stream_arg(&self) -> Option<&Arg> {
        self.args.iter().find(|arg| arg.stream.is_some())
    }

    /// The arguments that travel in the request body: all but the `Streaming<I>` one.
    pub fn body_args(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|arg| arg.stream.is_none())
    }

    /// The type that crosses the wire as the method's result: the item type `O` of a
    /// `Streaming<O>` return type, else the return type itself.
    pub fn output_wire_type(&self) -> &Type {
        self.output_stream.as_ref().unwrap_or(&self.output)
    }
}

impl Arg {
    /// The type that crosses the wire for this argument: the item type `I` of a
    /// `Streaming<I>`, else the argument's type itself.
    pub fn wire_type(&self) -> &Type {
        self.stream.as_ref().unwrap_or(&self.ty)
    }
}

/// `get_user` -> `GetUser`, `getUser` -> `GetUser`, `add` -> `Add`.
pub fn upper_camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for part in name.split('_') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// Whether `ty` is written as `bytes::Bytes`: `Bytes`, `bytes::Bytes` or `::bytes::Bytes`.
///
/// Those travel without copies: sent as a part of the frame of its own, received as a slice
/// of the buffer the frame arrived in. The encoding is bincode's bytes either way (a length,
/// then the bytes), the same as `Vec<u8>`'s; a type alias of `Bytes` works, just with copies.
pub fn is_bytes(ty: &Type) -> bool {
    let Type::Path(path) = ty else {
        return false;
    };
    if path.qself.is_some() {
        return false;
    }
    let segments: Vec<_> = path.path.segments.iter().collect();
    let names: Vec<String> = segments.iter().map(|s| s.ident.to_string()).collect();
    let plain = segments.iter().all(|s| s.arguments.is_none());
    plain
        && match names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["Bytes"] => path.path.leading_colon.is_none(),
            ["bytes", "Bytes"] => true,
            _ => false,
        }
}

/// Whether `ty` is a byte buffer that `#[service]` writes and reads without serde: `Bytes`
/// or `Vec<u8>`.
pub fn is_byte_buffer(ty: &Type) -> bool {
    is_bytes(ty) || is_byte_vec(ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn camel_case() {
        assert_eq!(upper_camel_case("add"), "Add");
        assert_eq!(upper_camel_case("get_user"), "GetUser");
        assert_eq!(upper_camel_case("getUser"), "GetUser");
        assert_eq!(upper_camel_case("__get__user_2"), "GetUser2");
    }

    #[test]
    fn model_of_calculator() {
        let item: ItemTrait = parse_quote! {
            /// Calc docs
            pub trait Calculator {
                /// Adds.
                async fn add(&self, a: i64, mut b: i64) -> i64;
                #[cfg(feature = "x")]
                async fn get_user(&self, r#type: String) -> Result<u8, E>;
                async fn reset(&self);
            }
        };
        let service = Service::from_syn(item, ServiceArgs::default()).unwrap();
        assert_eq!(service.wire_name, "Calculator");
        assert_eq!(service.methods.len(), 3);
        let add = &service.methods[0];
        assert_eq!(add.name, "add");
        assert_eq!(add.variant, "Add");
        assert_eq!(add.args.len(), 2);
        assert_eq!(add.args[1].ident, "b");
        assert_eq!(add.doc_attrs().count(), 1);
        assert_eq!(add.fingerprint, 0xa6c4_6389_4a40_8591);
        let get = &service.methods[1];
        assert_eq!(get.variant, "GetUser");
        assert_eq!(get.cfg_attrs().count(), 1);
        assert!(!get.returns_unit);
        let reset = &service.methods[2];
        assert!(reset.returns_unit);
        assert!(reset.receiver.is_some());
        assert_eq!(reset.fingerprint, 0x5edb_fc11_8dec_ebaf);
    }

    #[test]
    fn wire_name_from_args() {
        let item: ItemTrait = parse_quote!(
            trait r#Calc {}
        );
        let service = Service::from_syn(item.clone(), ServiceArgs::default()).unwrap();
        assert_eq!(service.wire_name, "Calc");
        let args = ServiceArgs {
            name: Some(parse_quote!("Other")),
        };
        assert_eq!(Service::from_syn(item, args).unwrap().wire_name, "Other");
    }

    #[test]
    fn rpc_attrs_are_parsed_and_removed() {
        let item: ItemTrait = parse_quote! {
            pub trait Store {
                /// Reads.
                #[rpc(idempotent)]
                async fn get(&self, key: String) -> Option<String>;
                async fn put(&self, key: String, value: String);
            }
        };
        let service = Service::from_syn(item, ServiceArgs::default()).unwrap();
        let (get, put) = (&service.methods[0], &service.methods[1]);
        assert!(get.rpc.idempotent);
        assert!(!put.rpc.idempotent);
        assert_eq!(get.attrs.len(), 1, "only the doc comment is kept");
        assert_eq!(get.doc_attrs().count(), 1);
        // Idempotence is not on the wire: the fingerprint is that of the bare signature.
        let bare: ItemTrait = parse_quote! {
            pub trait Store {
                async fn get(&self, key: String) -> Option<String>;
            }
        };
        let bare = Service::from_syn(bare, ServiceArgs::default()).unwrap();
        assert_eq!(get.fingerprint, bare.methods[0].fingerprint);
    }

    #[test]
    fn rpc_attr_errors_are_all_reported() {
        let item: ItemTrait = parse_quote! {
            #[rpc(idempotent)]
            pub trait Store {
                #[rpc(idempotnet)]
                async fn get(&self, key: String) -> Option<String>;
                #[rpc]
                async fn put(&self, key: String, value: String);
                #[rpc(idempotent)]
                async fn len(&self) -> u64;
            }
        };
        let Err(errors) = Service::from_syn(item, ServiceArgs::default()) else {
            panic!("malformed `#[rpc]` attributes must fail");
        };
        let errors: Vec<String> = errors.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].contains("not on the trait itself"), "{errors:#?}");
        assert!(
            errors[1].contains("unknown `#[rpc]` argument"),
            "{errors:#?}"
        );
        assert!(errors[2].contains("needs an argument"), "{errors:#?}");
    }
}

/// `ty` without parentheses or invisible groups around it: `(T)` is the type `T`.
pub fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Paren(paren) => peel(&paren.elem),
        Type::Group(group) => peel(&group.elem),
        other => other,
    }
}

/// Whether `path` names `Streaming` (`Streaming`, `rpc_core::Streaming`, ...), whatever its
/// generic arguments: the macro recognises `rpc_core::Streaming` by its last segment, as
/// written, since it cannot resolve names.
pub fn is_streaming_path(path: &syn::Path) -> bool {
    path.segments
        .last()
        .is_some_and(|segment| segment.ident == "Streaming")
}

/// The `Streaming` path that is the whole of `ty`, if any (with any arguments).
pub fn whole_streaming_path(ty: &Type) -> Option<&syn::Path> {
    match peel(ty) {
        Type::Path(path) if path.qself.is_none() && is_streaming_path(&path.path) => {
            Some(&path.path)
        }
        _ => None,
    }
}

/// The item type `T` when `ty` is, as a whole, `Streaming<T>` with exactly one type
/// argument; validation rejects every other use of `Streaming`.
pub fn stream_item(ty: &Type) -> Option<&Type> {
    let path = whole_streaming_path(ty)?;
    let syn::PathArguments::AngleBracketed(args) = &path.segments.last()?.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [syn::GenericArgument::Type(item)] => Some(item),
        _ => None,
    }
}

/// Whether `ty` is written as a byte vector: `Vec<u8>`, `std::vec::Vec<u8>`,
/// `alloc::vec::Vec<u8>` (with or without a leading `::`).
///
/// Those go over the wire through serde's bytes path (one length and a block copy) instead
/// of element by element; the encoding is the same bincode bytes either way, so this is
/// only a matter of speed, and a type alias of `Vec<u8>` still works, just slower.
pub fn is_byte_vec(ty: &Type) -> bool {
    let Type::Path(path) = ty else {
        return false;
    };
    if path.qself.is_some() {
        return false;
    }
    let segments: Vec<_> = path.path.segments.iter().collect();
    let Some((last, prefix)) = segments.split_last() else {
        return false;
    };
    let prefix: Vec<String> = prefix.iter().map(|s| s.ident.to_string()).collect();
    let prefix_ok = match prefix.as_slice() {
        [] => path.path.leading_colon.is_none(),
        [krate, module] => (krate == "std" || krate == "alloc") && module == "vec",
        _ => false,
    };
    if !prefix_ok || last.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    matches!(
        args.args.iter().collect::<Vec<_>>().as_slice(),
        [syn::GenericArgument::Type(Type::Path(inner))]
            if inner.qself.is_none() && inner.path.is_ident("u8")
    )
}

#[cfg(test)]
mod wire_type_tests {
    use super::{is_byte_vec, is_bytes, stream_item};
    use quote::ToTokens;

    #[test]
    fn recognises_streams_by_their_last_segment() {
        for (written, item) in [
            ("Streaming<Vec<u8>>", "Vec < u8 >"),
            ("rpc_core::Streaming<String>", "String"),
            ("::rpc_core::Streaming<u8>", "u8"),
            ("(Streaming<u8>)", "u8"),
            ("Streaming<Streaming<u8>>", "Streaming < u8 >"),
        ] {
            let ty = syn::parse_str(written).unwrap();
            let found = stream_item(&ty).map(|t| t.to_token_stream().to_string());
            assert_eq!(found.as_deref(), Some(item), "{written}");
        }
        for no in [
            "Streaming",
            "Streaming<>",
            "Streaming<u8, u16>",
            "Streaming<'a>",
            "Streaming<3>",
            "Vec<Streaming<u8>>",
            "Option<Streaming<u8>>",
            "Streaming::Item<u8>",
            "<X as Y>::Streaming<u8>",
            "Stream<u8>",
        ] {
            assert!(stream_item(&syn::parse_str(no).unwrap()).is_none(), "{no}");
        }
    }

    #[test]
    fn recognises_byte_vectors_as_written() {
        for yes in ["Bytes", "bytes::Bytes", "::bytes::Bytes"] {
            assert!(is_bytes(&syn::parse_str(yes).unwrap()), "{yes}");
        }
        for no in [
            "::Bytes",
            "my::Bytes",
            "Bytes<u8>",
            "BytesMut",
            "Vec<Bytes>",
        ] {
            assert!(!is_bytes(&syn::parse_str(no).unwrap()), "{no}");
        }
        for yes in ["Vec<u8>", "std::vec::Vec<u8>", "::alloc::vec::Vec<u8>"] {
            assert!(is_byte_vec(&syn::parse_str(yes).unwrap()), "{yes}");
        }
        for no in [
            "Vec<u16>",
            "Vec<Vec<u8>>",
            "Option<Vec<u8>>",
            "my::Vec<u8>",
            "Bytes",
            "[u8; 4]",
        ] {
            assert!(!is_byte_vec(&syn::parse_str(no).unwrap()), "{no}");
        }
    }
}
