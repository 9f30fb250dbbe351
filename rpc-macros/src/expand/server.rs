//! The generated server: `FooServer<S>`, which implements `rpc_core::Service` for any `S`
//! implementing the trait.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};

use super::{fingerprint_lit, local};
use crate::ast::Service;

/// `FooServer<S>`, its inherent impl and its `Clone`, `Debug` and `rpc_core::Service` impls.
pub fn server(service: &Service) -> TokenStream {
    let vis = &service.vis;
    let trait_name = &service.ident;
    let server = service.item_ident("Server");
    let client = service.item_ident("Client");
    // The implementation's type parameter; it must not shadow the trait's own name.
    let param = if service.ident == "S" {
        format_ident!("Svc", span = Span::call_site())
    } else {
        format_ident!("S", span = Span::call_site())
    };
    let doc = format!(
        " Server side of the [`{trait_name}`] service: wraps an implementation of the trait and\n \
         implements [`rpc_core::Service`], which `rpc_core::Server::add_service` takes.\n\n \
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
    let (fingerprint, body, buf, inner, value, req, resp) = (
        local("fingerprint"),
        local("body"),
        local("buf"),
        local("inner"),
        local("value"),
        local("request"),
        local("response"),
    );

    // decode_request: the types are inferred from the enum's fields, so no user type is ever
    // named inside `impl<S>`, where a user type called `S` would mean the parameter.
    let decode_arms = service.methods.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let fp = fingerprint_lit(method);
        let variant = &method.variant;
        let idents: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
        let pattern = match idents.as_slice() {
            [one] => quote!((#one,)),
            many => quote!((#(#many),*)),
        };
        quote! {
            #(#cfgs)*
            #fp => {
                let #pattern = ::rpc_core::__private::decode_value(#body)?;
                ::core::result::Result::Ok(#request::#variant { #(#idents),* })
            }
        }
    });
    let unknown = quote! {
        ::core::result::Result::Err(::rpc_core::__private::unknown_method(#fingerprint))
    };
    let decode = if service.methods.is_empty() {
        unknown
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

    let encode_arms = service.methods.iter().map(|method| {
        let cfgs = method.cfg_attrs();
        let variant = &method.variant;
        quote! {
            #(#cfgs)*
            #response::#variant(ref #value) => ::rpc_core::__private::encode_value(#value, #buf),
        }
    });

    quote! {
        #[automatically_derived]
        impl<#param> ::rpc_core::Service for #server<#param>
        where
            #param: #trait_name + ::core::marker::Send + ::core::marker::Sync + 'static,
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
