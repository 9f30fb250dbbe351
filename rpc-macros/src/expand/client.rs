//! The generated client: `FooClient`, one method per trait method returning `rpc_core::Call`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::{fingerprint_lit, method_link, method_wire_bounds, return_span, wire_bounds};
use crate::ast::{Arg, Method, Service};

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
        let client_streaming = method
            .stream_arg()
            .is_some()
            .then(|| quote!(.client_streaming()));
        let server_streaming = method
            .output_stream
            .is_some()
            .then(|| quote!(.server_streaming()));
        quote! {
            #(#cfgs)*
            ::rpc_core::MethodInfo::new(#name, #fingerprint)
                #idempotent #client_streaming #server_streaming
        }
    });
    let methods: Vec<_> = service
        .methods
        .iter()
        .map(|method| client_method(service, method))
        .collect();
    // The methods are in an impl of their own, whose where clause requires the argument and
    // result types to cross the wire: a type that cannot is reported once, by the type
    // assertions, not again by the calls here (see `checked_types`).
    let bounds = wire_bounds(service);
    let schema_fns = super::schema::schema_fns(service);
    let calls_doc = format!(
        " The calls, one per method of [`{trait_name}`]. The `where` clause restates what \
         `#[service]` requires of the argument and result types (and is checked where the \
         trait is declared)."
    );
    let calls = (!methods.is_empty()).then(|| {
        quote! {
            #[doc = #calls_doc]
            #[allow(clippy::too_many_arguments)]
            impl #client
            where
                #(#bounds,)*
            {
                #(#methods)*
            }
        }
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client {
            client: ::rpc_core::Client,
        }

        impl #client {
            /// The service's wire description: its name and method table (name and
            /// fingerprint of every method, which are idempotent and which stream).
            #vis const DESCRIPTOR: ::rpc_core::ServiceDescriptor = ::rpc_core::ServiceDescriptor::new(
                #wire_name,
                &[#(#entries),*],
            )
            .with_schema(Self::__rpc_compiled_schema);

            #schema_fns

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
        }

        #calls
    }
}

/// The client method calling `method` on the server.
///
/// The method's `Streaming<I>` argument, if any, is not part of the request body: the
/// client sends its items after the request. A `Streaming<O>` result is the stream of the
/// server's items.
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
        let ident = &arg.ident;
        match &arg.stream {
            Some(item) => quote!(#ident: ::rpc_core::Streaming<#item>),
            None => {
                let ty = &arg.ty;
                quote!(#ident: #ty)
            }
        }
    });
    let args = body_args(method);
    let index = {
        let fingerprint = fingerprint_lit(method);
        quote!(const { ::rpc_core::__private::method_index(&Self::DESCRIPTOR, #fingerprint) })
    };
    let (ret, call) = match (method.stream_arg(), &method.output_stream) {
        (None, None) => {
            let output = &method.output;
            let decode = decoder(output, return_span(method));
            (
                quote!(#output),
                quote!(::rpc_core::__private::call(&self.client, #index, #args, #decode)),
            )
        }
        (None, Some(item)) => {
            let decode_item = decoder(item, item.span());
            (
                quote!(::rpc_core::Streaming<#item>),
                quote!(::rpc_core::__private::call_streaming(&self.client, #index, #args, #decode_item)),
            )
        }
        (Some(stream), None) => {
            let (ident, encode_item) = (&stream.ident, encoder(stream));
            let output = &method.output;
            let decode = decoder(output, return_span(method));
            (
                quote!(#output),
                quote!(::rpc_core::__private::call_with_stream(&self.client, #index, #args, #ident, #encode_item, #decode)),
            )
        }
        (Some(stream), Some(item)) => {
            let (ident, encode_item) = (&stream.ident, encoder(stream));
            let decode_item = decoder(item, item.span());
            (
                quote!(::rpc_core::Streaming<#item>),
                quote!(::rpc_core::__private::call_bidi(&self.client, #index, #args, #ident, #encode_item, #decode_item)),
            )
        }
    };
    // The impl's where clause leaves out the types of a method under `#[cfg]`: its own
    // where clause, under the same `#[cfg]`, has them.
    let bounds = if method.cfg_attrs().next().is_some() {
        method_wire_bounds(method)
    } else {
        Vec::new()
    };
    let where_clause = (!bounds.is_empty()).then(|| quote!(where #(#bounds,)*));
    quote! {
        #(#cfgs)*
        #docs
        #idempotent
        #vis fn #name(&self #(, #params)*) -> ::rpc_core::Call<#ret>
        #where_clause
        {
            #call
        }
    }
}

/// `&(a, b)`: the arguments that travel in the request body, as a tuple (`&()` when there
/// are none, or only a stream).
///
/// The impl's where clause keeps an unfit argument type from failing the call's bounds
/// here (the type assertions report it). Should the tuple itself not be `Serialize` (serde
/// implements it for up to 16 elements), the error points into the method, not at
/// `#[service]`: at the argument's type when there is one (the compiler blames the whole
/// tuple, never one element), else at the method's name.
/// Byte vectors take serde's bytes path (see `ast::is_byte_vec`).
fn body_args(method: &Method) -> TokenStream {
    let args: Vec<_> = method.body_args().collect();
    if args.iter().any(|arg| crate::ast::is_byte_buffer(&arg.ty)) {
        return written_args(method);
    }
    let elements: Vec<_> = args.iter().map(|arg| &arg.ident).collect();
    match (args.as_slice(), elements.as_slice()) {
        ([one], [element]) => quote_spanned!(one.ty.span()=> &(#element,)),
        _ => quote_spanned!(method.ident.span()=> &(#(#elements),*)),
    }
}

/// The arguments of a method with a byte buffer among them, written one by one (bincode
/// encodes a tuple as its elements in order): a `Bytes`, or a large `Vec<u8>`, becomes a
/// part of the request frame of its own instead of being copied into it.
fn written_args(method: &Method) -> TokenStream {
    let writes = method.body_args().map(|arg| {
        let ident = &arg.ident;
        if crate::ast::is_bytes(&arg.ty) {
            quote_spanned!(arg.ty.span()=> __rpc_body.bytes(#ident);)
        } else if crate::ast::is_byte_vec(&arg.ty) {
            quote_spanned!(arg.ty.span()=> __rpc_body.byte_vec(#ident);)
        } else {
            quote_spanned!(arg.ty.span()=> __rpc_body.value(&#ident)?;)
        }
    });
    quote! {
        ::rpc_core::__private::WriteArgs(
            move |__rpc_body: &mut ::rpc_core::__private::BodyWriter<'_>| {
                #(#writes)*
                ::core::result::Result::Ok(())
            },
        )
    }
}

/// The decoder of a result or of the items of a `Streaming<O>` result, of type
/// `fn(&[u8]) -> Result<T, RpcError>`, spanned at `span` (where an unfit type is blamed).
fn decoder(ty: &syn::Type, span: Span) -> TokenStream {
    if crate::ast::is_bytes(ty) {
        quote_spanned!(span=> ::rpc_core::__private::decode_bytes)
    } else if crate::ast::is_byte_vec(ty) {
        quote_spanned!(span=> ::rpc_core::__private::decode_byte_vec)
    } else {
        quote_spanned!(span=> ::rpc_core::__private::decode_value::<#ty>)
    }
}

/// The encoder of the items of the `Streaming<I>` argument `stream`, of type
/// `fn(I, &mut BodyWriter) -> Result<(), RpcError>`, spanned at the item type.
fn encoder(stream: &Arg) -> TokenStream {
    let item = stream.wire_type();
    if crate::ast::is_bytes(item) {
        quote_spanned!(item.span()=> ::rpc_core::__private::encode_bytes_item)
    } else if crate::ast::is_byte_vec(item) {
        quote_spanned!(item.span()=> ::rpc_core::__private::encode_byte_vec_item)
    } else {
        quote_spanned!(item.span()=> ::rpc_core::__private::encode_item::<#item>)
    }
}
