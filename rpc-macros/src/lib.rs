//! The `#[service]` attribute macro of the rpc framework.
//!
//! Use it through `rpc_core::service`, which re-exports it and documents it: the generated
//! code names only `::rpc_core::…` paths, so a crate using it depends on `rpc-core` (plus
//! `serde` for its own types), never on this crate directly.
//!
//! Inside, the macro parses the trait into a model (`ast`), validates it (`valid`: every
//! unsupported construct is an error at its tokens, saying what to write instead) and
//! generates the code (`expand`); `fingerprint` computes the methods' wire fingerprints.

#![deny(missing_docs)]

mod ast;
mod attr;
mod expand;
mod fingerprint;
mod valid;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::{Error, FnArg, Item, ItemTrait, Pat, Token, TraitItem};

// Documented where it is used from, at its re-export `rpc_core::service`: rustdoc would put
// docs of its own after those, repeating them, on that page.
#[allow(missing_docs)]
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    expand_service(args.into(), input.into()).into()
}

/// The macro on `proc_macro2` tokens, so it can be unit tested.
fn expand_service(args: TokenStream2, input: TokenStream2) -> TokenStream2 {
    match parse_and_validate(args, input.clone()) {
        Ok(service) => expand::service(&service),
        // Keep the item as written next to the errors, so that code using the trait does not
        // drown the real error in "cannot find trait" follow-ups.
        Err(error) => {
            let errors = error.to_compile_error();
            let item = match syn::parse2::<ItemTrait>(input.clone()) {
                Ok(item) => without_rpc_attrs(without_arg_patterns(item)).into_token_stream(),
                Err(_) => input,
            };
            quote!(#errors #item)
        }
    }
}

/// `item` with every argument pattern other than a plain identifier replaced by `_`, so the
/// compiler does not repeat "patterns aren't allowed in functions without bodies" after our
/// own error.
fn without_arg_patterns(mut item: ItemTrait) -> ItemTrait {
    for trait_item in &mut item.items {
        let TraitItem::Fn(method) = trait_item else {
            continue;
        };
        if method.default.is_some() {
            continue;
        }
        for input in &mut method.sig.inputs {
            if let FnArg::Typed(typed) = input {
                let plain = matches!(
                    &*typed.pat,
                    Pat::Ident(p) if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none()
                );
                if !plain {
                    *typed.pat = Pat::Wild(syn::PatWild {
                        attrs: Vec::new(),
                        underscore_token: Token![_](typed.pat.span()),
                    });
                }
            }
        }
    }
    item
}

/// `item` without any `#[rpc(...)]` attribute, which is not a real attribute: the compiler
/// would add "cannot find attribute `rpc`" to our own errors.
fn without_rpc_attrs(mut item: ItemTrait) -> ItemTrait {
    item.attrs.retain(|attr| !attr::is_rpc(attr));
    for trait_item in &mut item.items {
        let attrs = match trait_item {
            TraitItem::Fn(method) => &mut method.attrs,
            TraitItem::Const(constant) => &mut constant.attrs,
            TraitItem::Type(ty) => &mut ty.attrs,
            TraitItem::Macro(mac) => &mut mac.attrs,
            _ => continue,
        };
        attrs.retain(|attr| !attr::is_rpc(attr));
    }
    item
}

/// Parses the attribute arguments and the trait, and validates the result; every problem
/// found is reported, combined into one `syn::Error`.
fn parse_and_validate(args: TokenStream2, input: TokenStream2) -> syn::Result<ast::Service> {
    let args = attr::parse(args);
    let item = parse_trait(input);
    let (args, item) = match (args, item) {
        (Ok(args), Ok(item)) => (args, item),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            return Err(a);
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
    };
    let service = ast::Service::from_syn(item, args)?;
    valid::validate(&service)?;
    Ok(service)
}

/// Parses `input` as a trait, with a clear error when it is another item.
fn parse_trait(input: TokenStream2) -> syn::Result<ItemTrait> {
    match syn::parse2::<Item>(input)? {
        Item::Trait(item) => Ok(item),
        other => {
            let span = item_keyword_span(&other);
            Err(Error::new(
                span,
                "`#[service]` must be put on a trait: write `#[service] pub trait MyService { async fn method(&self, ...) -> T; }`",
            ))
        }
    }
}

/// The span of what names the item's kind (`struct`, `fn`, ...), falling back to the item.
fn item_keyword_span(item: &Item) -> proc_macro2::Span {
    match item {
        Item::Struct(i) => i.struct_token.span,
        Item::Enum(i) => i.enum_token.span,
        Item::Fn(i) => i.sig.fn_token.span,
        Item::Impl(i) => i.impl_token.span,
        Item::Mod(i) => i.mod_token.span,
        Item::Union(i) => i.union_token.span,
        Item::Type(i) => i.type_token.span,
        Item::TraitAlias(i) => i.trait_token.span,
        other => other.to_token_stream().span(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream2, input: TokenStream2) -> String {
        expand_service(args, input).to_string()
    }

    #[test]
    fn not_a_trait() {
        let out = expand(
            quote!(),
            quote!(
                struct Foo;
            ),
        );
        assert!(out.contains("`#[service]` must be put on a trait"), "{out}");
        assert!(out.contains("struct Foo"), "the item is kept: {out}");
    }

    #[test]
    fn arg_and_trait_errors_are_combined() {
        let out = expand(
            quote!(bogus = 1),
            quote!(
                trait T {
                    fn f(&self);
                }
            ),
        );
        assert!(
            out.contains("unknown `#[service]` argument `bogus`"),
            "{out}"
        );
        assert!(!out.contains("must be `async fn`"), "{out}");
        let out = expand(
            quote!(bogus = 1),
            quote!(
                struct S;
            ),
        );
        assert!(
            out.contains("unknown `#[service]` argument `bogus`"),
            "{out}"
        );
        assert!(out.contains("must be put on a trait"), "{out}");
    }

    #[test]
    fn validation_errors_keep_the_trait() {
        let out = expand(
            quote!(),
            quote!(
                pub trait T {
                    fn f(&self);
                }
            ),
        );
        assert!(out.contains("must be `async fn`"), "{out}");
        assert!(out.contains("pub trait T"), "{out}");
        let out = expand(
            quote!(),
            quote!(
                trait T {
                    async fn f(&self, (a, b): (u8, u8), mut c: u8);
                }
            ),
        );
        assert!(out.contains("must be plain identifiers"), "{out}");
        assert!(
            out.contains("fn f (& self , _ : (u8 , u8) , _ : u8)"),
            "{out}"
        );
    }

    #[test]
    fn expansion_shape() {
        let out = expand(
            quote!(name = "Calc"),
            quote! {
                /// Calc docs
                pub trait Calculator {
                    /// Adds.
                    async fn add(&self, a: i64, b: i64) -> i64;
                    #[cfg(feature = "div")]
                    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
                    async fn neg(&self, a: i64) -> i64;
                    async fn reset(&self);
                }
            },
        );
        let out: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        for expected in [
            "pubtraitCalculator{",
            "fnadd(&self,a:i64,b:i64)->impl::core::future::Future<Output=i64>+::core::marker::Send;",
            "fnreset(&self)->impl::core::future::Future<Output=()>+::core::marker::Send;",
            "pubenumCalculatorRequest{",
            "Add{",
            "Reset{}",
            "pubenumCalculatorResponse{",
            "Reset(())",
            "pubstructCalculatorClient{client:::rpc_core::Client,}",
            "::rpc_core::ServiceDescriptor::new(\"Calc\",",
            "::rpc_core::MethodInfo::new(\"add\",0xa6c4_6389_4a40_8591_u64)",
            "#[cfg(feature=\"div\")]::rpc_core::MethodInfo::new(\"div\",0x2940_ce57_f7a7_3b92_u64)",
            "pubfnadd(&self,a:i64,b:i64)->::rpc_core::Call<i64>",
            "&(a,b),::rpc_core::__private::decode_value::<i64>",
            "&(a,),",
            "&(),::rpc_core::__private::decode_value::<()>",
            "pubstructCalculatorServer<S>",
            "impl<S>::rpc_core::ServiceforCalculatorServer<S>",
        ] {
            assert!(out.contains(expected), "missing {expected} in {out}");
        }
        for expected in [
            "let(a,b):(i64,i64)=::rpc_core::__private::decode_value(__rpc_body)?;",
            "let(a,):(i64,)=::rpc_core::__private::decode_value(__rpc_body)?;",
            "let():()=::rpc_core::__private::decode_value(__rpc_body)?;",
            "<SasCalculator>::add(&*__rpc_inner,a,b).await",
            // Each type is checked once; a type of a `#[cfg]` method under its `#[cfg]`.
            "(&&&::rpc_core::__private::WireCheck::<i64>::NEW).check();(&&&::rpc_core::__private::WireCheck::<()>::NEW).check();\
             #[cfg(feature=\"div\")]{(&&&::rpc_core::__private::WireCheck::<Result<i64,MathError>>::NEW).check();}}",
        ] {
            assert!(out.contains(expected), "missing {expected} in {out}");
        }
    }

    #[test]
    fn unfit_types_are_reported_only_by_the_assertions() {
        let out = expand(
            quote!(),
            quote! {
                pub trait Geometry {
                    async fn norm(&self, p: Point) -> f64;
                    async fn scale(&self, p: Point, by: f64) -> Point;
                    #[cfg(feature = "x")]
                    async fn gone(&self, x: Missing) -> f64;
                }
            },
        );
        let out: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        let wire = "::rpc_core::__private::serde::Serialize+::rpc_core::__private::serde::de::DeserializeOwned+::core::marker::Send+'static";
        // The server requires each distinct type once, in its where clause.
        let bounds = format!(
            "S:Geometry+::core::marker::Send+::core::marker::Sync+'static,\
             for<'wire>Point:{wire},for<'wire>f64:{wire},{{"
        );
        assert!(out.contains(&bounds), "missing {bounds} in {out}");
        // So do the serde impls of the enums, and the client's calls.
        let serde = "#[serde(bound(serialize=\"for<'wire>Point:::rpc_core::__private::serde::Serialize,for<'wire>f64:::rpc_core::__private::serde::Serialize\",deserialize=";
        assert!(out.contains(serde), "missing {serde} in {out}");
        let client =
            format!("implGeometryClientwherefor<'wire>Point:{wire},for<'wire>f64:{wire},{{");
        assert!(out.contains(&client), "missing {client} in {out}");
        // A type of a `#[cfg]` method cannot be in a shared where clause: only its own client
        // method, under the same `#[cfg]`, requires it.
        let gone = format!(
            "#[cfg(feature=\"x\")]#[doc=\"Calls[`Geometry::gone`]ontheserver.\"]\
             pubfngone(&self,x:Missing)->::rpc_core::Call<f64>\
             wherefor<'wire>Missing:{wire},for<'wire>f64:{wire},{{"
        );
        assert!(out.contains(&gone), "missing {gone} in {out}");
        assert_eq!(out.matches("for<'wire>Missing").count(), 1, "{out}");
        // The assertions come before everything else that uses the types.
        let assertions = out.find("WireCheck::<Point>").unwrap();
        assert!(
            assertions < out.find("enumGeometryRequest").unwrap(),
            "{out}"
        );
    }

    #[test]
    fn each_type_is_checked_once() {
        let out = compact_expansion(quote! {
            pub trait Geometry {
                async fn norm(&self, p: Point) -> f64;
                async fn scale(&self, p: Point, by: f64) -> Point;
                async fn all(&self) -> Vec<Point>;
                #[cfg(feature = "x")]
                async fn gone(&self, p: Point, x: Missing) -> Missing;
            }
        });
        for (ty, count) in [("Point", 1), ("f64", 1), ("Vec<Point>", 1), ("Missing", 1)] {
            let check = format!("(&&&::rpc_core::__private::WireCheck::<{ty}>::NEW).check();");
            assert_eq!(out.matches(&check).count(), count, "{check} in {out}");
        }
        // The checks pick their method by what the type implements: the traits are in scope.
        assert!(
            out.contains(
                "use::rpc_core::__private::{CheckDeserializeas_,CheckSendas_,CheckSerializeas_,};"
            ),
            "{out}"
        );
    }

    #[test]
    fn generated_docs() {
        let out = compact_expansion(quote! {
            /// Adds.
            pub trait Calculator {
                async fn add(&self, a: i64, b: i64) -> i64;
            }
        });
        assert_contains_all(
            &out,
            &[
                // The trait's docs end with what its `Send` futures mean for implementations.
                "#[doc=r\"Adds.\"]#[doc=\"\"]#[doc=\"#Handlersmustbe`Send`\"]",
                "tokio::sync::Mutex",
                // The server's `Service` impl is hidden; the server's docs say it is there.
                "#[automatically_derived]#[doc(hidden)]impl<S>::rpc_core::ServiceforCalculatorServer<S>",
                "`CalculatorServer<S>`implements[`rpc_core::Service`]when`S:Calculator+Send+Sync+'static`",
                // The client's calls are an impl of their own, which says what its bounds are.
                "#[doc=\"Thecalls,onepermethodof[`Calculator`].",
            ],
        );
        // Nothing internal in the docs.
        for doc in out.split("#[doc=").skip(1) {
            let text = doc.split("\"]").next().unwrap_or_default();
            assert!(!text.contains("__"), "{text}");
        }
    }

    #[test]
    fn server_parameter_does_not_shadow_user_types() {
        let out = expand(
            quote!(),
            quote! {
                pub trait Store {
                    async fn put(&self, value: S) -> Vec<Svc>;
                }
            },
        );
        let out: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            out.contains("pubstructStoreServer<Implementation>"),
            "{out}"
        );
        assert!(out.contains("for<'wire>S:"), "{out}");
    }

    #[test]
    fn idempotent_methods() {
        let out = expand(
            quote!(),
            quote! {
                pub trait Calculator {
                    /// Adds.
                    #[rpc(idempotent)]
                    async fn add(&self, a: i64, b: i64) -> i64;
                    #[rpc(idempotent)]
                    #[cfg(feature = "div")]
                    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
                    async fn reset(&self);
                }
            },
        );
        assert!(
            !out.contains("rpc (idempotent)"),
            "`#[rpc]` is removed: {out}"
        );
        let out: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        for expected in [
            // The same fingerprints as without the attribute (see `expansion_shape`).
            "::rpc_core::MethodInfo::new(\"add\",0xa6c4_6389_4a40_8591_u64).idempotent()",
            "#[cfg(feature=\"div\")]::rpc_core::MethodInfo::new(\"div\",0x2940_ce57_f7a7_3b92_u64).idempotent()",
            "::rpc_core::MethodInfo::new(\"reset\",0x5edb_fc11_8dec_ebaf_u64)]",
            "#[doc=r\"Adds.\"]#[doc=\"\"]#[doc=\"Idempotent:areconnectingorbalancingclientmayretryit.\"]pubfnadd(",
            "pubfnbuilder()->::rpc_core::ClientBuilder<Self>{::rpc_core::ClientBuilder::new(&Self::DESCRIPTOR,Self::from_client)}",
        ] {
            assert!(out.contains(expected), "missing {expected} in {out}");
        }
        let reset_docs = "#[doc=\"Calls[`Calculator::reset`]ontheserver.\"]pubfnreset(";
        assert!(out.contains(reset_docs), "missing {reset_docs} in {out}");
    }

    #[test]
    fn rpc_attr_errors_keep_the_trait_without_rpc_attrs() {
        let out = expand(
            quote!(),
            quote! {
                #[rpc(idempotent)]
                pub trait Store {
                    #[rpc(idempotnet)]
                    async fn get(&self, key: String) -> Option<String>;
                    #[rpc(idempotent)]
                    async fn put(&self, key: String, value: String);
                    #[rpc(idempotent)]
                    const C: u8;
                }
            },
        );
        assert!(
            out.contains("unknown `#[rpc]` argument `idempotnet`; valid keys: `idempotent`"),
            "{out}"
        );
        assert!(out.contains("not on the trait itself"), "{out}");
        assert!(out.contains("pub trait Store"), "{out}");
        assert!(!out.contains("# [rpc"), "`#[rpc]` is removed: {out}");
    }

    /// The expansion of `input` with all whitespace removed.
    fn compact_expansion(input: TokenStream2) -> String {
        let out = expand(quote!(), input);
        assert!(!out.contains("compile_error"), "{out}");
        out.chars().filter(|c| !c.is_whitespace()).collect()
    }

    #[track_caller]
    fn assert_contains_all(out: &str, expected: &[&str]) {
        for expected in expected {
            assert!(out.contains(expected), "missing {expected} in {out}");
        }
    }

    #[test]
    fn server_streaming_methods() {
        let out = compact_expansion(quote! {
            pub trait Files {
                async fn download(&self, name: String) -> Streaming<Vec<u8>>;
                async fn ticks(&self, every: u64, limit: u32) -> rpc_core::Streaming<u64>;
                async fn size(&self, name: String) -> u64;
            }
        });
        assert_contains_all(
            &out,
            &[
                // The trait and the enums keep the stream as written.
                "fndownload(&self,name:String)->impl::core::future::Future<Output=Streaming<Vec<u8>>>+::core::marker::Send;",
                "Download(Streaming<Vec<u8>>)",
                "Ticks(rpc_core::Streaming<u64>)",
                // The item type is what is checked.
                "(&&&::rpc_core::__private::WireCheck::<Vec<u8>>::NEW).check();",
                "(&&&::rpc_core::__private::WireCheck::<u64>::NEW).check();",
                "for<'wire>Vec<u8>:::rpc_core::__private::serde::Serialize+",
                // The descriptor marks the entries.
                "::rpc_core::MethodInfo::new(\"download\",0xcd71_129d_7cf3_9205_u64).server_streaming(),",
                // The client returns a call of a stream.
                "pubfndownload(&self,name:String)->::rpc_core::Call<::rpc_core::Streaming<Vec<u8>>>{::rpc_core::__private::call_streaming(&self.client,",
                "0xcd71_129d_7cf3_9205_u64)},&(name,),::rpc_core::__private::decode_byte_vec)",
                "pubfnticks(&self,every:u64,limit:u32)->::rpc_core::Call<::rpc_core::Streaming<u64>>",
                "},&(every,limit),::rpc_core::__private::decode_value::<u64>)",
                // The server hands the stream to the connection, never encodes it.
                "fnresponse_stream(&self,__rpc_response:FilesResponse,)->::core::result::Result<::rpc_core::__private::ItemSource,FilesResponse>{match__rpc_response{",
                "FilesResponse::Download(__rpc_value)=>::core::result::Result::Ok(::rpc_core::__private::stream_into_source(__rpc_value,::rpc_core::__private::encode_byte_vec_item),),",
                "FilesResponse::Ticks(__rpc_value)=>::core::result::Result::Ok(::rpc_core::__private::stream_into_source(__rpc_value,::rpc_core::__private::encode_item),),",
                "__rpc_response=>::core::result::Result::Err(__rpc_response),}}",
                "FilesResponse::Download(_)=>::core::result::Result::Err(::rpc_core::__private::stream_not_encodable(),),",
                "FilesResponse::Size(ref__rpc_value)=>::rpc_core::__private::encode_value(__rpc_value,__rpc_buf),",
                // Requests are decoded as usual, the stream input ignored.
                "__rpc_input:::core::option::Option<::rpc_core::__private::RemoteStream>,",
                "let(name,):(String,)=::rpc_core::__private::decode_value(__rpc_body)?;::core::result::Result::Ok(FilesRequest::Download{name})",
                "FilesResponse::Download(<SasFiles>::download(&*__rpc_inner,name).await)",
            ],
        );
        for absent in [
            "WireCheck::<Streaming",
            "WireCheck::<rpc_core::Streaming",
            "for<'wire>Streaming",
            "for<'wire>rpc_core::Streaming",
            "client_streaming",
        ] {
            assert!(!out.contains(absent), "{absent} in {out}");
        }
    }

    #[test]
    fn client_streaming_methods() {
        let out = compact_expansion(quote! {
            pub trait Files {
                async fn upload(&self, name: String, chunks: Streaming<Vec<u8>>) -> u64;
                async fn count(&self, mut items: rpc_core::Streaming<String>);
            }
        });
        assert_contains_all(
            &out,
            &[
                "fnupload(&self,name:String,chunks:Streaming<Vec<u8>>)->impl::core::future::Future<Output=u64>",
                                "chunks:Streaming<Vec<u8>>}",
                "items:rpc_core::Streaming<String>}",
                "(&&&::rpc_core::__private::WireCheck::<String>::NEW).check();\
                 (&&&::rpc_core::__private::WireCheck::<Vec<u8>>::NEW).check();\
                 (&&&::rpc_core::__private::WireCheck::<u64>::NEW).check();\
                 (&&&::rpc_core::__private::WireCheck::<()>::NEW).check();}",
                "::rpc_core::MethodInfo::new(\"upload\",0xeb85_ab0a_42ef_4fa9_u64).client_streaming(),",
                // The client takes the stream and leaves it out of the body.
                "pubfnupload(&self,name:String,chunks:::rpc_core::Streaming<Vec<u8>>)->::rpc_core::Call<u64>{::rpc_core::__private::call_with_stream(&self.client,",
                "},&(name,),chunks,::rpc_core::__private::encode_byte_vec_item,::rpc_core::__private::decode_value::<u64>)",
                "pubfncount(&self,items:::rpc_core::Streaming<String>)->::rpc_core::Call<()>{::rpc_core::__private::call_with_stream(&self.client,",
                "},&(),items,::rpc_core::__private::encode_item::<String>,::rpc_core::__private::decode_value::<()>)",
                // The server decodes the body, then takes the stream of items.
                "let(name,):(String,)=::rpc_core::__private::decode_value(__rpc_body)?;\
                 letchunks=::rpc_core::__private::stream_from_remote(::core::option::Option::ok_or_else(__rpc_input,::rpc_core::__private::missing_stream,)?,::rpc_core::__private::decode_byte_vec,);\
                 ::core::result::Result::Ok(FilesRequest::Upload{name,chunks})",
                "let():()=::rpc_core::__private::decode_value(__rpc_body)?;\
                 letitems=::rpc_core::__private::stream_from_remote(::core::option::Option::ok_or_else(__rpc_input,::rpc_core::__private::missing_stream,)?,::rpc_core::__private::decode_value::<String>,);\
                 ::core::result::Result::Ok(FilesRequest::Count{items})",
                // ... and passes it to the method like any argument.
                "FilesResponse::Upload(<SasFiles>::upload(&*__rpc_inner,name,chunks).await)",
                "FilesResponse::Upload(ref__rpc_value)=>::rpc_core::__private::encode_value(__rpc_value,__rpc_buf),",
            ],
        );
        for absent in [
            "WireCheck::<Streaming",
            "for<'wire>Streaming",
            "server_streaming",
            // Nothing to take out of a response: the trait's default does.
            "fnresponse_stream",
            "call_streaming",
        ] {
            assert!(!out.contains(absent), "{absent} in {out}");
        }
    }

    #[test]
    fn bidirectional_methods() {
        let out = compact_expansion(quote! {
            pub trait Chat {
                async fn chat(&self, room: String, messages: Streaming<String>) -> Streaming<String>;
                async fn echo(&self, bytes: Streaming<Vec<u8>>) -> Streaming<Vec<u8>>;
            }
        });
        assert_contains_all(
            &out,
            &[
                "fnchat(&self,room:String,messages:Streaming<String>)->impl::core::future::Future<Output=Streaming<String>>+::core::marker::Send;",
                "::rpc_core::MethodInfo::new(\"chat\",0x5514_6b64_7716_d668_u64).client_streaming().server_streaming(),",
                "pubfnchat(&self,room:String,messages:::rpc_core::Streaming<String>)->::rpc_core::Call<::rpc_core::Streaming<String>>{::rpc_core::__private::call_bidi(&self.client,",
                "},&(room,),messages,::rpc_core::__private::encode_item::<String>,::rpc_core::__private::decode_value::<String>)",
                "},&(),bytes,::rpc_core::__private::encode_byte_vec_item,::rpc_core::__private::decode_byte_vec)",
                "letmessages=::rpc_core::__private::stream_from_remote(::core::option::Option::ok_or_else(__rpc_input,::rpc_core::__private::missing_stream,)?,::rpc_core::__private::decode_value::<String>,);",
                "ChatResponse::Chat(<SasChat>::chat(&*__rpc_inner,room,messages).await)",
                "ChatResponse::Echo(__rpc_value)=>::core::result::Result::Ok(::rpc_core::__private::stream_into_source(__rpc_value,::rpc_core::__private::encode_byte_vec_item),),",
                // Every method streams its result: the catch-all is unreachable, and allowed.
                "#[allow(unreachable_patterns)]fnresponse_stream(",
                "ChatResponse::Chat(_)=>::core::result::Result::Err(::rpc_core::__private::stream_not_encodable(),),",
            ],
        );
    }

    #[test]
    fn streaming_methods_under_cfg() {
        let out = compact_expansion(quote! {
            pub trait Feed {
                #[cfg(feature = "feed")]
                async fn feed(&self, items: Streaming<Missing>) -> Streaming<AlsoMissing>;
                async fn len(&self) -> u64;
            }
        });
        assert_contains_all(
            &out,
            &[
                "#[cfg(feature=\"feed\")]::rpc_core::MethodInfo::new(\"feed\",",
                "#[cfg(feature=\"feed\")]FeedResponse::Feed(__rpc_value)=>::core::result::Result::Ok(",
                "#[cfg(feature=\"feed\")]FeedResponse::Feed(_)=>::core::result::Result::Err(",
                "__rpc_response=>::core::result::Result::Err(__rpc_response),",
            ],
        );
        // Only the client method, under the `#[cfg]`, requires the types.
        assert_eq!(out.matches("for<'wire>Missing").count(), 1, "{out}");
        assert_eq!(out.matches("for<'wire>AlsoMissing").count(), 1, "{out}");
        assert!(
            out.contains("#[cfg(feature=\"feed\")]{(&&&::rpc_core::__private::WireCheck::<Missing>::NEW).check();\
                          (&&&::rpc_core::__private::WireCheck::<AlsoMissing>::NEW).check();}"),
            "{out}"
        );
    }

    #[test]
    fn stream_errors_keep_the_trait() {
        let out = expand(
            quote!(),
            quote! {
                pub trait Files {
                    async fn both(&self, a: Streaming<u8>, b: Streaming<u8>);
                    async fn nested(&self) -> Option<Streaming<u8>>;
                    async fn bare(&self) -> Streaming;
                }
            },
        );
        assert!(
            out.contains("a method takes at most one `Streaming<T>` argument"),
            "{out}"
        );
        assert!(
            out.contains(
                "`Streaming<T>` must be the whole type of an argument or the whole return type"
            ),
            "{out}"
        );
        assert!(
            out.contains("`Streaming` takes exactly one type argument"),
            "{out}"
        );
        assert!(out.contains("pub trait Files"), "{out}");
        assert!(!out.contains("FilesClient"), "{out}");
    }

    #[test]
    fn byte_buffer_methods() {
        let out = compact_expansion(quote! {
            pub trait Blobs {
                async fn put(&self, key: String, data: Bytes) -> u64;
                async fn get(&self, key: String) -> Vec<u8>;
                #[cfg(feature = "len")]
                async fn len(&self, key: String) -> u64;
                async fn watch(&self, key: String) -> Streaming<Bytes>;
            }
        });
        // The server decodes and encodes in one match per call: decode_request_in and
        // encode_response_owned have an arm for every method, buffers or not.
        let decode_in = "fndecode_request_in(&self,__rpc_fingerprint:u64,__rpc_body:&[u8],__rpc_frame:&::rpc_core::__private::Bytes,\
             __rpc_input:::core::option::Option<::rpc_core::__private::RemoteStream>,)\
             ->::core::result::Result<BlobsRequest,::rpc_core::RpcError>{match__rpc_fingerprint{\
             0x6bcc_02cc_fc2a_49cd_u64=>{letmut__rpc_reader=::rpc_core::__private::BodyReader::new(__rpc_body,__rpc_frame,\"theargumentsof`put`\");\
             letkey=__rpc_reader.value::<String>()?;letdata=__rpc_reader.bytes()?;__rpc_reader.finish()?;\
             ::core::result::Result::Ok(BlobsRequest::Put{key,data})}\
             0xc09e_ef08_fb22_fd07_u64=>{let(key,):(String,)=::rpc_core::__private::decode_value(__rpc_body)?;\
             ::core::result::Result::Ok(BlobsRequest::Get{key})}\
             #[cfg(feature=\"len\")]0x5272_5cb1_dbcf_856c_u64=>{let(key,):(String,)=::rpc_core::__private::decode_value(__rpc_body)?;\
             ::core::result::Result::Ok(BlobsRequest::Len{key})}\
             0xf209_0bd6_9d54_3cc0_u64=>{let(key,):(String,)=::rpc_core::__private::decode_value(__rpc_body)?;\
             ::core::result::Result::Ok(BlobsRequest::Watch{key})}\
             _=>::core::result::Result::Err(::rpc_core::__private::unknown_method(__rpc_fingerprint)),}}";
        let encode_owned = "fnencode_response_owned(&self,__rpc_response:BlobsResponse,__rpc_buf:&mut::rpc_core::__private::BodyWriter<'_>,)\
             ->::core::result::Result<(),::rpc_core::RpcError>{match__rpc_response{\
             BlobsResponse::Put(ref__rpc_value)=>::rpc_core::__private::encode_value(__rpc_value,__rpc_buf.buf()),\
             BlobsResponse::Get(__rpc_value)=>{__rpc_buf.byte_vec(__rpc_value);::core::result::Result::Ok(())}\
             #[cfg(feature=\"len\")]BlobsResponse::Len(ref__rpc_value)=>::rpc_core::__private::encode_value(__rpc_value,__rpc_buf.buf()),\
             BlobsResponse::Watch(_)=>::core::result::Result::Err(::rpc_core::__private::stream_not_encodable(),),}}";
        // decode_request and encode_response are unchanged: serde for every method.
        let decode = "0x6bcc_02cc_fc2a_49cd_u64=>{let(key,data):(String,Bytes)=::rpc_core::__private::decode_value(__rpc_body)?;\
             ::core::result::Result::Ok(BlobsRequest::Put{key,data})}";
        let encode = "BlobsResponse::Get(ref__rpc_value)=>::rpc_core::__private::encode_value(&::rpc_core::__private::AsBytes(__rpc_value),__rpc_buf),";
        assert_contains_all(&out, &[decode_in, encode_owned, decode, encode]);
        // No second match: neither falls back on its by-reference counterpart.
        for absent in [
            "::rpc_core::Service::decode_request(",
            "::rpc_core::Service::encode_response(",
        ] {
            assert!(!out.contains(absent), "{absent} in {out}");
        }
        // A service without byte buffers keeps the trait's defaults.
        let out = compact_expansion(quote! {
            pub trait Counter {
                async fn add(&self, n: u64) -> u64;
            }
        });
        for absent in ["fndecode_request_in", "fnencode_response_owned"] {
            assert!(!out.contains(absent), "{absent} in {out}");
        }
    }
}
