//! The generated server: `FooServer<S>`, which implements `rpc_core::Service` for any `S`
//! implementing the trait.

use std::collections::HashSet;

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use super::{checked_types, fingerprint_lit, local, wire_bounds};
use crate::ast::{Method, Service};

/// `FooServer<S>`, its inherent impl and its `Clone`, `Debug` and `rpc_core::Service` impls.
pub fn server(service: &Service) -> TokenStream {
    let vis = &service.vis;
    let trait_name = &service.ident;
    let server = service.item_ident("Server");
    let client = service.item_ident("Client");
    let param = type_param(service);
    // The `Service` impl is hidden from the docs (its where clause and methods are the
    // macro's plumbing), so the docs say it is there.
    let doc = format!(
        " Server side of the [`{trait_name}`] service: wraps an implementation of the trait.\n\n \
         `{server}<{param}>` implements [`rpc_core::Service`] when \
         `{param}: {trait_name} + Send + Sync + 'static`: hand it to \
         [`Server::add_service`](rpc_core::Server::add_service) to serve it.\n\n \
         Cheap to clone: all clones share one implementation (behind an `Arc`)."
    );
    let server_name = server.to_string();
    let service_impl = service_impl(service, &param);
    quote! {
        #[doc = #doc]
        #vis struct #server<#param> {
            inner: ::std::sync::Arc<#param>,
        }

        impl<#param> #server<#param> {
            /// Wraps `service`, the implementation of the trait, to serve it.
            #vis fn new(service: #param) -> Self {
                Self {
                    inner: ::std::sync::Arc::new(service),
                }
            }

            /// The service's wire description: its name and method table.
            #vis const DESCRIPTOR: ::rpc_core::ServiceDescriptor = #client::DESCRIPTOR;
        }

        #[automatically_derived]
        impl<#param> ::core::clone::Clone for #server<#param> {
            fn clone(&self) -> Self {
                Self {
                    inner: ::core::clone::Clone::clone(&self.inner),
                }
            }
        }

        #[automatically_derived]
        impl<#param> ::core::fmt::Debug for #server<#param> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#server_name).finish_non_exhaustive()
            }
        }

        #service_impl
    }
}

/// `impl rpc_core::Service for FooServer<S>`.
fn service_impl(service: &Service, param: &syn::Ident) -> TokenStream {
    let trait_name = &service.ident;
    let server = service.item_ident("Server");
    let client = service.item_ident("Client");
    let request = service.item_ident("Request");
    let response = service.item_ident("Response");
    let (fingerprint, body, input, buf, inner, value, req, resp) = (
        local("fingerprint"),
        local("body"),
        local("input"),
        local("buf"),
        local("inner"),
        local("value"),
        local("request"),
        local("response"),
    );

    // decode_request: the types are inferred from the enum's fields; the only user types
    // named inside `impl<S>` are those of the where clause, and `type_param` picks a name
    // none of them uses.
    // A bad argument or return type is reported once, by the type assertions; here it only
    // makes the impl unusable instead of failing again in `decode_value`/`encode_value`.
    let bounds = wire_bounds(service);

    // decode_request's arm of a method: its arguments decoded with serde.
    let decode_arm = |method: &Method| {
        let cfgs = method.cfg_attrs();
        let fp = fingerprint_lit(method);
        let variant = &method.variant;
        // The body holds the arguments but the stream, whose items arrive as `input`.
        let idents: Vec<_> = method.body_args().map(|arg| &arg.ident).collect();
        let pattern = match idents.as_slice() {
            [one] => quote!((#one,)),
            many => quote!((#(#many),*)),
        };
        // Spelled out, not inferred: with the impl's `where` clauses in scope (`(bool, u32):
        // DeserializeOwned` for another method's result, say), inference would take the
        // tuple's type from such a clause rather than from the request's fields.
        let types: Vec<_> = method
            .body_args()
            .map(|arg| {
                if crate::ast::is_byte_vec(&arg.ty) {
                    quote!(::rpc_core::__private::ByteBuf)
                } else {
                    let ty = &arg.ty;
                    quote!(#ty)
                }
            })
            .collect();
        let tuple = match types.as_slice() {
            [one] => quote!((#one,)),
            many => quote!((#(#many),*)),
        };
        let stream = stream_input(method, &input);
        let fields = method.args.iter().map(|arg| {
            let ident = &arg.ident;
            if arg.stream.is_none() && crate::ast::is_byte_vec(&arg.ty) {
                quote!(#ident: ::rpc_core::__private::ByteBuf::into_inner(#ident))
            } else {
                quote!(#ident)
            }
        });
        quote! {
            #(#cfgs)*
            #fp => {
                let #pattern: #tuple = ::rpc_core::__private::decode_value(#body)?;
                #stream
                ::core::result::Result::Ok(#request::#variant { #(#fields),* })
            }
        }
    };
    let decode_arms = service.methods.iter().map(decode_arm);
    let unknown = quote! {
        ::core::result::Result::Err(::rpc_core::__private::unknown_method(#fingerprint))
    };
    let decode = if service.methods.is_empty() {
        unknown.clone()
    } else {
        quote! {
            match #fingerprint {
                #(#decode_arms)*
                _ => #unknown,
            }
        }
    };

    // call: the method is called through the trait (`<S as Trait>::method`), so neither
    // `Arc`'s own methods nor other traits in scope can shadow it.
    let call_arms = service.methods.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let variant = &method.variant;
        let name = &method.ident;
        let idents: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
        let call = quote! {
            <#param as #trait_name>::#name(&*#inner #(, #idents)*).await
        };
        let result = if method.returns_unit {
            quote!({
                #call;
                #response::#variant(())
            })
        } else {
            quote!(#response::#variant(#call))
        };
        quote! {
            #(#cfgs)*
            #request::#variant { #(#idents),* } => #result,
        }
    });

    // encode_response's arm of a method, which encodes into `into` (a `&mut BytesMut`).
    let encode_arm = |method: &Method, into: &TokenStream| {
        let cfgs = method.cfg_attrs();
        let variant = &method.variant;
        if method.output_stream.is_some() {
            // The connection takes a stream out with `response_stream` and never asks to
            // encode it.
            return quote! {
                #(#cfgs)*
                #response::#variant(_) => ::core::result::Result::Err(
                    ::rpc_core::__private::stream_not_encodable(),
                ),
            };
        }
        let encoded = if crate::ast::is_byte_vec(&method.output) {
            quote!(&::rpc_core::__private::AsBytes(#value))
        } else {
            quote!(#value)
        };
        quote! {
            #(#cfgs)*
            #response::#variant(ref #value) => ::rpc_core::__private::encode_value(#encoded, #into),
        }
    };
    let encode_arms = service
        .methods
        .iter()
        .map(|method| encode_arm(method, &buf.to_token_stream()));

    // response_stream: only a service with a server-streaming method needs more than the
    // trait's default (which gives every response back).
    let stream_arms: Vec<_> = service
        .methods
        .iter()
        .filter_map(|method| {
            let item = method.output_stream.as_ref()?;
            let cfgs = method.cfg_attrs();
            let variant = &method.variant;
            let encode_item = item_encoder(item);
            Some(quote! {
                #(#cfgs)*
                #response::#variant(#value) => ::core::result::Result::Ok(
                    ::rpc_core::__private::stream_into_source(#value, #encode_item),
                ),
            })
        })
        .collect();
    let response_stream = (!stream_arms.is_empty()).then(|| {
        quote! {
            // The catch-all is unreachable when every method streams its result.
            #[allow(unreachable_patterns)]
            fn response_stream(
                &self,
                #resp: #response,
            ) -> ::core::result::Result<::rpc_core::__private::ItemSource, #response> {
                match #resp {
                    #(#stream_arms)*
                    #resp => ::core::result::Result::Err(#resp),
                }
            }
        }
    });

    // decode_request_in / encode_response_owned: only for services with byte buffers, which
    // are read out of the received frame and handed to the transport as they are. They have
    // an arm for every method (those without buffers the same as decode_request's and
    // encode_response's), so that each call is matched to its method once: the server calls
    // only these two.
    let frame = local("frame");
    let reader = local("reader");
    let has_buffer_args = |method: &Method| {
        method
            .body_args()
            .any(|arg| crate::ast::is_byte_buffer(&arg.ty))
    };
    let decode_in_arms: Vec<_> = service
        .methods
        .iter()
        .map(|method| {
            if !has_buffer_args(method) {
                return decode_arm(method);
            }
            let cfgs = method.cfg_attrs();
            let fp = fingerprint_lit(method);
            let variant = &method.variant;
            let reads = method.body_args().map(|arg| {
                let ident = &arg.ident;
                let ty = &arg.ty;
                if crate::ast::is_bytes(ty) {
                    quote!(let #ident = #reader.bytes()?;)
                } else if crate::ast::is_byte_vec(ty) {
                    quote!(let #ident = #reader.byte_vec()?;)
                } else {
                    quote!(let #ident = #reader.value::<#ty>()?;)
                }
            });
            let stream = stream_input(method, &input);
            let fields = method.args.iter().map(|arg| &arg.ident);
            let what = format!("the arguments of `{}`", method.ident);
            quote! {
                #(#cfgs)*
                #fp => {
                    let mut #reader = ::rpc_core::__private::BodyReader::new(#body, #frame, #what);
                    #(#reads)*
                    #reader.finish()?;
                    #stream
                    ::core::result::Result::Ok(#request::#variant { #(#fields),* })
                }
            }
        })
        .collect();
    let decode_request_in = service.methods.iter().any(has_buffer_args).then(|| {
        quote! {
            fn decode_request_in(
                &self,
                #fingerprint: u64,
                #body: &[u8],
                #frame: &::rpc_core::__private::Bytes,
                #input: ::core::option::Option<::rpc_core::__private::RemoteStream>,
            ) -> ::core::result::Result<#request, ::rpc_core::RpcError> {
                match #fingerprint {
                    #(#decode_in_arms)*
                    _ => #unknown,
                }
            }
        }
    });
    let returns_buffer = |method: &Method| {
        method.output_stream.is_none() && crate::ast::is_byte_buffer(&method.output)
    };
    let into_buf = quote!(#buf.buf());
    let encode_owned_arms: Vec<_> = service
        .methods
        .iter()
        .map(|method| {
            if !returns_buffer(method) {
                return encode_arm(method, &into_buf);
            }
            let cfgs = method.cfg_attrs();
            let variant = &method.variant;
            let write = if crate::ast::is_bytes(&method.output) {
                quote!(#buf.bytes(#value))
            } else {
                quote!(#buf.byte_vec(#value))
            };
            quote! {
                #(#cfgs)*
                #response::#variant(#value) => {
                    #write;
                    ::core::result::Result::Ok(())
                }
            }
        })
        .collect();
    let encode_response_owned = service.methods.iter().any(returns_buffer).then(|| {
        quote! {
            fn encode_response_owned(
                &self,
                #resp: #response,
                #buf: &mut ::rpc_core::__private::BodyWriter<'_>,
            ) -> ::core::result::Result<(), ::rpc_core::RpcError> {
                match #resp {
                    #(#encode_owned_arms)*
                }
            }
        }
    });

    // Hidden from the docs: what a user needs of it is in `FooServer`'s own docs.
    quote! {
        #[automatically_derived]
        #[doc(hidden)]
        impl<#param> ::rpc_core::Service for #server<#param>
        where
            #param: #trait_name + ::core::marker::Send + ::core::marker::Sync + 'static,
            #(#bounds,)*
        {
            type Request = #request;
            type Response = #response;

            fn descriptor(&self) -> &'static ::rpc_core::ServiceDescriptor {
                &#client::DESCRIPTOR
            }

            fn decode_request(
                &self,
                #fingerprint: u64,
                #body: &[u8],
                #input: ::core::option::Option<::rpc_core::__private::RemoteStream>,
            ) -> ::core::result::Result<#request, ::rpc_core::RpcError> {
                #decode
            }

            fn call(&self, #req: #request) -> ::rpc_core::__private::BoxFuture<#response> {
                let #inner = ::core::clone::Clone::clone(&self.inner);
                ::std::boxed::Box::pin(async move {
                    match #req {
                        #(#call_arms)*
                    }
                })
            }

            #decode_request_in

            #response_stream

            #encode_response_owned

            fn encode_response(
                &self,
                #resp: &#response,
                #buf: &mut ::rpc_core::__private::BytesMut,
            ) -> ::core::result::Result<(), ::rpc_core::RpcError> {
                match *#resp {
                    #(#encode_arms)*
                }
            }
        }
    }
}

/// `let items = stream_from_remote(..)`: a method's `Streaming<I>` argument, made of the
/// connection's `input`; nothing for a method without one.
fn stream_input(method: &Method, input: &Ident) -> Option<TokenStream> {
    method.stream_arg().map(|arg| {
        let ident = &arg.ident;
        let decode_item = item_decoder(arg.wire_type());
        quote_spanned! {arg.ty.span()=>
            let #ident = ::rpc_core::__private::stream_from_remote(
                ::core::option::Option::ok_or_else(
                    #input,
                    ::rpc_core::__private::missing_stream,
                )?,
                #decode_item,
            );
        }
    })
}

/// The decoder of the items of a `Streaming<I>` argument, `fn(&[u8]) -> Result<I, RpcError>`.
/// `I` is spelled out for the reason given in `decode_request`'s arms.
fn item_decoder(item: &syn::Type) -> TokenStream {
    if crate::ast::is_bytes(item) {
        quote!(::rpc_core::__private::decode_bytes)
    } else if crate::ast::is_byte_vec(item) {
        quote!(::rpc_core::__private::decode_byte_vec)
    } else {
        quote!(::rpc_core::__private::decode_value::<#item>)
    }
}

/// The encoder of the items of a `Streaming<O>` result,
/// `fn(O, &mut BodyWriter) -> Result<(), RpcError>`; `O` is inferred from the response enum's
/// field.
fn item_encoder(item: &syn::Type) -> TokenStream {
    if crate::ast::is_bytes(item) {
        quote!(::rpc_core::__private::encode_bytes_item)
    } else if crate::ast::is_byte_vec(item) {
        quote!(::rpc_core::__private::encode_byte_vec_item)
    } else {
        quote!(::rpc_core::__private::encode_item)
    }
}

/// The name of the implementation's type parameter: `S`, unless the trait or one of its
/// argument or return types names an `S`, which the parameter would shadow.
fn type_param(service: &Service) -> Ident {
    let mut taken = HashSet::new();
    taken.insert(service.ident.to_string());
    for ty in checked_types(service) {
        collect_idents(ty.to_token_stream(), &mut taken);
    }
    ["S", "Svc", "Implementation"]
        .into_iter()
        .map(String::from)
        .chain((0..).map(|n| format!("S{n}")))
        .find(|name| !taken.contains(name))
        .map(|name| Ident::new(&name, Span::call_site()))
        .expect("an endless list of names has a free one")
}

/// Every identifier in `tokens`, as a string.
fn collect_idents(tokens: TokenStream, out: &mut HashSet<String>) {
    for tree in tokens {
        match tree {
            TokenTree::Ident(ident) => {
                out.insert(ident.to_string());
            }
            TokenTree::Group(group) => collect_idents(group.stream(), out),
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
}
