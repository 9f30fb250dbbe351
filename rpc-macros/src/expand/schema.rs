//! The service's schema: `FooClient::schema()`, traced at run time from the types' serde
//! implementations, with the names, docs and types as written that only the macro sees.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::{Attribute, Expr, Lit, Meta};

use super::fingerprint_lit;
use crate::ast::{Method, Service};

/// The functions of `FooClient` that make and keep the schema.
pub fn schema_fns(service: &Service) -> TokenStream {
    let vis = &service.vis;
    let name = &service.wire_name;
    let docs = doc_lines(&service.attrs);
    let methods = service.methods.iter().map(method_schema);
    quote! {
        /// The service's schema: every method with its arguments, result, flags and docs,
        /// and the wire shape of each type, traced from its serde implementation on first
        /// use (see [`rpc_core::schema`]).
        #vis fn schema() -> &'static ::rpc_core::schema::ServiceSchema {
            Self::__rpc_compiled_schema().schema()
        }

        #[doc(hidden)]
        #vis fn __rpc_compiled_schema() -> &'static ::rpc_core::schema::Compiled {
            static SCHEMA: ::std::sync::OnceLock<::rpc_core::schema::Compiled> =
                ::std::sync::OnceLock::new();
            SCHEMA.get_or_init(|| {
                #[allow(unused_imports)]
                use ::rpc_core::__private::{NoSchema as _, TraceSchema as _};
                let mut methods = ::std::vec::Vec::new();
                #(#methods)*
                ::rpc_core::__private::service_schema(#name, &[#(#docs),*], methods)
            })
        }
    }
}

/// The statement pushing `method`'s schema, under the method's `#[cfg]`s.
fn method_schema(method: &Method) -> TokenStream {
    let cfgs = method.cfg_attrs();
    let name = &method.name;
    let docs = doc_lines(&method.attrs);
    let idempotent = method.rpc.idempotent;
    let fingerprint = fingerprint_lit(method);
    let args = method.args.iter().map(|arg| {
        let arg_name = arg.ident.to_string();
        let arg_name = arg_name.strip_prefix("r#").unwrap_or(&arg_name).to_owned();
        let value = value_schema(&arg.ty, arg.stream.as_ref());
        quote!(::rpc_core::__private::arg_schema(#arg_name, #value))
    });
    let result = value_schema(&method.output, method.output_stream.as_ref());
    quote! {
        #(#cfgs)*
        methods.push(::rpc_core::__private::method_schema(
            #name,
            &[#(#docs),*],
            #idempotent,
            #fingerprint,
            ::std::vec![#(#args),*],
            #result,
        ));
    }
}

/// The schema of a value of type `ty`, whose wire type is `stream` when it is a stream.
fn value_schema(ty: &syn::Type, stream: Option<&syn::Type>) -> TokenStream {
    let written = written(ty);
    let streaming = stream.is_some();
    let wire = stream.unwrap_or(ty);
    // Autoref specialisation: a type that is not `DeserializeOwned` gets an untraced schema
    // instead of a second compile error (the type assertions report it once).
    quote! {
        (&&::rpc_core::__private::SchemaOf::<#wire>::NEW).value_schema(#written, #streaming)
    }
}

/// A type as written, spaced as people write it: `Result<Vec<u8>, MyError>`.
pub fn written(ty: &syn::Type) -> String {
    let mut out = String::new();
    let text = ty.to_token_stream().to_string();
    for token in text.split(' ') {
        let glue = matches!(token, "<" | ">" | "," | "::" | ")" | "]" | ";" | ">>")
            || out.ends_with(['<', '(', '[', '&'])
            || out.ends_with("::");
        if !out.is_empty() && !glue {
            out.push(' ');
        }
        out.push_str(token);
    }
    out
}

/// The text of the `#[doc = "..."]` attributes among `attrs`.
fn doc_lines(attrs: &[Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(lit) => match &lit.lit {
                    Lit::Str(s) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::written;

    #[test]
    fn types_are_written_as_people_write_them() {
        let cases = [
            (
                "Result < Vec < u8 > , MyError >",
                "Result<Vec<u8>, MyError>",
            ),
            ("std :: string :: String", "std::string::String"),
            ("(u32 , String)", "(u32, String)"),
            ("[u8 ; 32]", "[u8; 32]"),
            (
                "Streaming < Result < u32 , E > >",
                "Streaming<Result<u32, E>>",
            ),
            ("HashMap<String, Vec<Order>>", "HashMap<String, Vec<Order>>"),
        ];
        for (input, expected) in cases {
            let ty: syn::Type = syn::parse_str(input).unwrap();
            assert_eq!(written(&ty), expected, "{input}");
        }
    }
}
