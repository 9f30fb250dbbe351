//! Code generation: turns a validated [`Service`] into the trait, the request and response
//! enums, the client, the server and the type assertions.
//!
//! Generated code names only fully qualified paths (`::core`, `::std`, `::rpc_core`), so it
//! compiles under `#![no_implicit_prelude]`; user types are emitted exactly as written, with
//! their own spans. Internal locals use `Span::mixed_site()` and a `__rpc_` prefix so that no
//! argument name can clash with them.

mod client;
mod schema;
mod server;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitInt};

use crate::ast::{Method, Service};

/// Everything `#[service]` generates for a validated `service`.
pub fn service(service: &Service) -> TokenStream {
    let trait_def = trait_def(service);
    let request = request_enum(service);
    let response = response_enum(service);
    let client = client::client(service);
    let server = server::server(service);
    let assertions = type_assertions(service);
    // The assertions come first so that, when a type is unfit, their error (at the type) is
    // the first one reported.
    quote! {
        #trait_def
        #assertions
        #request
        #response
        #client
        #server
    }
}

/// The trait as written, with each `async fn` turned into a `fn` returning
/// `impl Future<Output = R> + Send`, so handlers can run on a multi-threaded runtime.
fn trait_def(service: &Service) -> TokenStream {
    let Service {
        attrs,
        vis,
        unsafety,
        auto_token,
        trait_token,
        ident,
        ..
    } = service;
    let methods = service.methods.iter().map(|method| {
        let attrs = &method.attrs;
        let fn_token = &method.sig.fn_token;
        let name = &method.ident;
        let receiver = &method.receiver;
        let args = method.args.iter().map(|arg| {
            let (ident, ty) = (&arg.ident, &arg.ty);
            quote!(#ident: #ty)
        });
        let output = &method.output;
        quote! {
            #(#attrs)*
            #fn_token #name(#receiver #(, #args)*)
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
        }
    });
    let send_docs = handlers_must_be_send_docs();
    quote! {
        #(#attrs)*
        #send_docs
        #vis #unsafety #auto_token #trait_token #ident {
            #(#methods)*
        }
    }
}

/// The section the generated trait's docs end with: implementations' futures must be `Send`,
/// and what to do when the compiler says one is not. (The compiler's error cannot carry a
/// hint of ours: for a future, it replaces any `#[diagnostic::on_unimplemented]` message with
/// its own "future cannot be sent between threads safely", so the docs are where it goes.)
fn handlers_must_be_send_docs() -> TokenStream {
    let lines = [
        "",
        " # Handlers must be `Send`",
        "",
        " `#[service]` declares every method as returning `impl Future<Output = R> + Send`, so that",
        " a server can run calls on a multi-threaded runtime; implementations still write",
        " `async fn`. One that holds a value which is not `Send` across an `.await` (a",
        " `std::sync::MutexGuard`, an `Rc`, a `RefCell` borrow) fails to compile with \"future",
        " cannot be sent between threads safely\", pointing at the method and at the value. Drop",
        " the value before the `.await` (take the guard in a block of its own), use an async",
        " mutex such as `tokio::sync::Mutex` to hold a lock across it, and `Arc` instead of `Rc`.",
    ];
    quote!(#(#[doc = #lines])*)
}

/// `FooRequest`: one struct-like variant per method, holding its arguments.
fn request_enum(service: &Service) -> TokenStream {
    let vis = &service.vis;
    let name = service.item_ident("Request");
    let doc = format!(
        " Requests of the `{}` service, one variant per method (the typed face of the wire format).",
        service.ident
    );
    let variants = service.methods.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let summary = format!(" Arguments of {}.", method_link(service, method));
        let docs = method_docs(method);
        let variant = &method.variant;
        let fields = method.args.iter().map(|arg| {
            let (ident, ty) = (&arg.ident, &arg.ty);
            let doc = format!(
                " Argument `{}` of {}.",
                syn::ext::IdentExt::unraw(ident),
                method_link(service, method)
            );
            quote!(#[doc = #doc] #ident: #ty)
        });
        quote! {
            #(#cfgs)*
            #[doc = #summary]
            #docs
            #variant { #(#fields),* }
        }
    });
    let bound = serde_bound(service);
    quote! {
        #[doc = #doc]
        #[derive(
            ::rpc_core::__private::serde::Serialize,
            ::rpc_core::__private::serde::Deserialize
        )]
        #[serde(crate = "::rpc_core::__private::serde")]
        #bound
        #[allow(
            missing_debug_implementations,
            clippy::enum_variant_names,
            clippy::large_enum_variant
        )]
        #vis enum #name {
            #(#variants,)*
        }
    }
}

/// `FooResponse`: one tuple variant per method, holding its return value.
fn response_enum(service: &Service) -> TokenStream {
    let vis = &service.vis;
    let name = service.item_ident("Response");
    let doc = format!(
        " Responses of the `{}` service, one variant per method holding its return value.",
        service.ident
    );
    let variants = service.methods.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let summary = format!(" Return value of {}.", method_link(service, method));
        let docs = method_docs(method);
        let variant = &method.variant;
        let output = &method.output;
        quote! {
            #(#cfgs)*
            #[doc = #summary]
            #docs
            #variant(#output)
        }
    });
    let bound = serde_bound(service);
    quote! {
        #[doc = #doc]
        #[derive(
            ::rpc_core::__private::serde::Serialize,
            ::rpc_core::__private::serde::Deserialize
        )]
        #[serde(crate = "::rpc_core::__private::serde")]
        #bound
        #[allow(
            missing_debug_implementations,
            clippy::enum_variant_names,
            clippy::large_enum_variant
        )]
        #vis enum #name {
            #(#variants,)*
        }
    }
}

/// Compile-time checks that every argument and return type (of a `Streaming<T>`, the item
/// type) is `Serialize + DeserializeOwned + Send + 'static`, spanned at the user's type so
/// the compiler's error points there. The function is never called.
///
/// This is where a bad type is reported, once: `rpc_core::__private::WireCheck` picks, by
/// what the type implements, a `check` method requiring only the first trait it lacks, with
/// a message saying how to fix it. Each type is checked once, at its first occurrence (as
/// written: `Point` and `Vec<Point>` are two), and the other generated uses of the types
/// carry the same requirement in where clauses (see [`checked_types`]), so they do not
/// report it again.
fn type_assertions(service: &Service) -> TokenStream {
    let (plain, gated): (Vec<&Method>, Vec<&Method>) = service
        .methods
        .iter()
        .partition(|method| method.cfg_attrs().next().is_none());
    let mut seen = std::collections::HashSet::new();
    let checks: Vec<_> = plain
        .iter()
        .flat_map(|method| spanned_wire_types(method))
        .filter(|(ty, _)| seen.insert(quote!(#ty).to_string()))
        .map(|(ty, span)| wire_check(ty, span))
        .collect();
    // A method under `#[cfg]` checks, under its `#[cfg]`, the types no other method checks.
    let gated_checks = gated.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let mut seen = seen.clone();
        let checks = spanned_wire_types(method)
            .filter(|(ty, _)| seen.insert(quote!(#ty).to_string()))
            .map(|(ty, span)| wire_check(ty, span));
        quote! {
            #(#cfgs)*
            {
                #(#checks)*
            }
        }
    });
    let assert_fn = format_ident!("__rpc_assert_types", span = Span::mixed_site());
    quote! {
        const _: () = {
            #[allow(dead_code, unused_imports)]
            fn #assert_fn() {
                use ::rpc_core::__private::{
                    CheckDeserialize as _, CheckSend as _, CheckSerialize as _,
                };
                #(#checks)*
                #(#gated_checks)*
            }
        };
    }
}

/// [`wire_types`] of `method`, each with where an error about it should point.
fn spanned_wire_types(method: &Method) -> impl Iterator<Item = (&syn::Type, Span)> {
    let args = method.args.iter().map(|arg| {
        let ty = arg.wire_type();
        (ty, ty.span())
    });
    let output = method.output_wire_type();
    let span = match &method.output_stream {
        Some(item) => item.span(),
        None => return_span(method),
    };
    args.chain(std::iter::once((output, span)))
}

/// The check that `ty` can cross the wire, spanned at `span`.
fn wire_check(ty: &syn::Type, span: Span) -> TokenStream {
    quote_spanned! {span=>
        (&&&::rpc_core::__private::WireCheck::<#ty>::NEW).check();
    }
}

/// Where errors about the method's return type should point: the type, or the method's
/// name when it returns `()` implicitly.
pub(crate) fn return_span(method: &Method) -> Span {
    match &method.sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => method.ident.span(),
    }
}

/// `Serialize + DeserializeOwned + Send + 'static`: what every argument and return type
/// must be.
fn wire_traits() -> TokenStream {
    quote! {
        ::rpc_core::__private::serde::Serialize
            + ::rpc_core::__private::serde::de::DeserializeOwned
            + ::core::marker::Send
            + 'static
    }
}

/// The lifetime of the binder in the generated where clauses (see [`checked_types`]). It
/// shows in the rendered docs of the generated impls, so it has a plain name; it cannot
/// clash with a user's lifetime, since argument and return types may not name any.
const BINDER: &str = "'wire";

/// The distinct argument and return types of the methods that have no `#[cfg]`; of a
/// `Streaming<T>`, the item type `T` (a `Streaming` itself is always `Serialize` and
/// `Deserialize`, through impls that fail: it travels as stream frames, not in a body).
///
/// The serde impls of the request and response enums, the client's methods and the
/// server's `Service` impl require [`wire_traits`] of these in their where clauses, so that
/// a type lacking them is reported once, by [`type_assertions`] at the user's type, rather
/// than again by every generated use of it (serde's derives, `decode_value`, the client's
/// call, ...). The bounds are written `for<'wire> T: ...`: a bound on a concrete type must
/// not be trivially false in a where clause, but one under a binder is not checked on its
/// own and simply makes the item unusable, which costs nothing since the assertion already
/// fails.
///
/// Methods under `#[cfg]` are left out, because a where predicate cannot carry `#[cfg]`:
/// their types are still checked everywhere they are used, only less quietly (except in
/// their client method, which carries the `#[cfg]` and its own bounds).
pub(crate) fn checked_types(service: &Service) -> Vec<&syn::Type> {
    distinct(
        service
            .methods
            .iter()
            .filter(|method| method.cfg_attrs().next().is_none())
            .flat_map(wire_types),
    )
}

/// The types of `method` that cross the wire: its argument types and its return type, of a
/// `Streaming<T>` the item type `T`.
fn wire_types(method: &Method) -> impl Iterator<Item = &syn::Type> {
    method
        .args
        .iter()
        .map(|arg| arg.wire_type())
        .chain(std::iter::once(method.output_wire_type()))
}

/// `types` without repetitions (as written), in order.
fn distinct<'a>(types: impl Iterator<Item = &'a syn::Type>) -> Vec<&'a syn::Type> {
    let mut seen = std::collections::HashSet::new();
    types
        .filter(|ty| seen.insert(quote!(#ty).to_string()))
        .collect()
}

/// `for<'wire> T: Serialize + DeserializeOwned + Send + 'static` for each of `types`.
fn bounds_of(types: Vec<&syn::Type>) -> Vec<TokenStream> {
    let wire = wire_traits();
    let binder = syn::Lifetime::new(BINDER, Span::call_site());
    types
        .into_iter()
        .map(|ty| quote!(for<#binder> #ty: #wire))
        .collect()
}

/// The wire bounds (see [`checked_types`]) of each of [`checked_types`].
pub(crate) fn wire_bounds(service: &Service) -> Vec<TokenStream> {
    bounds_of(checked_types(service))
}

/// The wire bounds (see [`checked_types`]) of one method's types, for the where clause of
/// its client method when it has a `#[cfg]` (then the service's bounds leave them out).
pub(crate) fn method_wire_bounds(method: &Method) -> Vec<TokenStream> {
    bounds_of(distinct(wire_types(method)))
}

/// `#[serde(bound(...))]` for the request and response enums: their impls require each of
/// [`checked_types`] to be `Serialize`, resp. `DeserializeOwned`.
fn serde_bound(service: &Service) -> TokenStream {
    let types = checked_types(service);
    let bound = |tr: &str| {
        types
            .iter()
            .map(|ty| format!("for<{BINDER}> {}: {tr}", quote!(#ty)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ser = bound("::rpc_core::__private::serde::Serialize");
    let de = bound("::rpc_core::__private::serde::de::DeserializeOwned");
    quote!(#[serde(bound(serialize = #ser, deserialize = #de))])
}

/// The method's doc comments, after an empty line, or nothing if it has none.
fn method_docs(method: &Method) -> TokenStream {
    let docs: Vec<_> = method.doc_attrs().collect();
    if docs.is_empty() {
        TokenStream::new()
    } else {
        quote!(#[doc = ""] #(#docs)*)
    }
}

/// An intra-doc link to the trait method, for generated docs.
fn method_link(service: &Service, method: &Method) -> String {
    format!("[`{}::{}`]", service.ident, method.ident)
}

/// The method's fingerprint as a `u64` literal, e.g. `0xa6c4_6389_4a40_8591_u64`.
fn fingerprint_lit(method: &Method) -> LitInt {
    let hex = format!("{:016x}", method.fingerprint);
    let text = format!(
        "0x{}_{}_{}_{}_u64",
        &hex[0..4],
        &hex[4..8],
        &hex[8..12],
        &hex[12..16]
    );
    LitInt::new(&text, Span::call_site())
}

/// A local variable name no user argument can clash with.
fn local(name: &str) -> Ident {
    format_ident!("__rpc_{}", name, span = Span::mixed_site())
}
