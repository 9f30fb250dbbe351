//! The generated client: `FooClient`, one method per trait method returning `rpc_core::Call`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::{fingerprint_lit, method_link, return_span};
use crate::ast::{Method, Service};

/// `FooClient` and its inherent impl, which holds the service's `DESCRIPTOR`.
pub fn client(service: &Service) -> TokenStream {
    let vis = &service.vis;
    let trait_name = &service.ident;
    let client = service.item_ident("Client");
    let wire_name = &service.wire_name;
    let doc = format!(
        " Client of the [`{trait_name}`] service: one method per trait method, each returning an\n \
         [`rpc_core::Call`] that gives `Result<R, RpcError>` when awaited.\n\n \
         Cheap to clone: all clones share one connection, and their calls are multiplexed over it."
    );
    let entries = service.methods.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let name = &method.name;
        let fingerprint = fingerprint_lit(method);
        // Idempotence is a property of the entry, not of the signature: same fingerprint.
        let idempotent = method.rpc.idempotent.then(|| quote!(.idempotent()));
        quote! {
            #(#cfgs)*
            ::rpc_core::MethodInfo::new(#name, #fingerprint) #idempotent
        }
    });
    let methods = service
        .methods
        .iter()
        .map(|method| client_method(service, method));
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client {
            client: ::rpc_core::Client,
        }

        #[allow(clippy::too_many_arguments)]
        impl #client {
            /// The service's wire description: its name and method table (name and
            /// fingerprint of every method, and which are idempotent).
            #vis const DESCRIPTOR: ::rpc_core::ServiceDescriptor = ::rpc_core::ServiceDescriptor::new(
                #wire_name,
                &[#(#entries),*],
            );

            /// Connects a client over `transport`.
            ///
            /// Spawns the connection's I/O task on the current tokio runtime, so call it from
            /// within one.
            #vis fn new<T: ::rpc_core::Transport>(transport: T) -> Self {
                Self {
                    client: ::rpc_core::Client::new(transport, &Self::DESCRIPTOR),
                }
            }

            /// Wraps an existing client handle.
            #vis fn from_client(client: ::rpc_core::Client) -> Self {
                Self { client }
            }

            /// The underlying client handle.
            #vis fn client(&self) -> &::rpc_core::Client {
                &self.client
            }

            /// Starts building a client with options: reconnection, load balancing, retries,
            /// keepalive (see [`rpc_core::ClientBuilder`]).
            #vis fn builder() -> ::rpc_core::ClientBuilder<Self> {
                ::rpc_core::ClientBuilder::new(&Self::DESCRIPTOR, Self::from_client)
            }

            #(#methods)*
        }
    }
}

/// The client method calling `method` on the server.
fn client_method(service: &Service, method: &Method) -> TokenStream {
    let vis = &service.vis;
    let cfgs = method.cfg_attrs();
    let docs: Vec<_> = method.doc_attrs().collect();
    let docs = if docs.is_empty() {
        let doc = format!(" Calls {} on the server.", method_link(service, method));
        quote!(#[doc = #doc])
    } else {
        quote!(#(#docs)*)
    };
    let idempotent = method.rpc.idempotent.then(|| {
        quote! {
            #[doc = ""]
            #[doc = " Idempotent: a reconnecting or balancing client may retry it."]
        }
    });
    let name = &method.ident;
    let params = method.args.iter().map(|arg| {
        let (ident, ty) = (&arg.ident, &arg.ty);
        quote!(#ident: #ty)
    });
    // If a type is not `Serialize`/`DeserializeOwned`, the type assertions report it at the
    // type; the compiler then also fails `call`'s bounds here. Span those uses so that error
    // points into the method too, not at `#[service]`: the arguments at the argument's type
    // when there is one (the compiler blames the whole tuple, never one element), else at
    // the method's name; the decoder at the return type.
    // Byte vectors take serde's bytes path (see `ast::is_byte_vec`).
    let elements: Vec<_> = method
        .args
        .iter()
        .map(|arg| {
            let ident = &arg.ident;
            if crate::ast::is_byte_vec(&arg.ty) {
                quote!(::rpc_core::__private::AsBytes(&#ident))
            } else {
                quote!(#ident)
            }
        })
        .collect();
    let args = match (method.args.as_slice(), elements.as_slice()) {
        ([one], [element]) => quote_spanned!(one.ty.span()=> &(#element,)),
        _ => quote_spanned!(method.ident.span()=> &(#(#elements),*)),
    };
    let output = &method.output;
    let decode = if crate::ast::is_byte_vec(output) {
        quote_spanned!(return_span(method)=> ::rpc_core::__private::decode_byte_vec)
    } else {
        quote_spanned!(return_span(method)=> ::rpc_core::__private::decode_value::<#output>)
    };
    let fingerprint = fingerprint_lit(method);
    quote! {
        #(#cfgs)*
        #docs
        #idempotent
        #vis fn #name(&self #(, #params)*) -> ::rpc_core::Call<#output> {
            self.client.call(
                const { ::rpc_core::__private::method_index(&Self::DESCRIPTOR, #fingerprint) },
                #args,
                #decode,
            )
        }
    }
}
