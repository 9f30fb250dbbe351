//! Unit tests of validation: every rule, its message and its fix hint.

use super::*;
use crate::attr::ServiceArgs;
use syn::{parse_quote, ItemTrait};

fn errors_of(item: ItemTrait) -> Vec<String> {
    let service = Service::from_syn(item, ServiceArgs::default()).expect("no `#[rpc]` errors");
    match validate(&service) {
        Ok(()) => Vec::new(),
        Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts that `item` fails with exactly one error containing every piece of `expected`.
#[track_caller]
fn assert_error(item: ItemTrait, expected: &[&str]) {
    let errors = errors_of(item);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    for piece in expected {
        assert!(errors[0].contains(piece), "{:?} lacks {piece:?}", errors[0]);
    }
}

#[test]
fn valid_service() {
    let errors = errors_of(parse_quote! {
        /// Docs.
        pub trait Calculator {
            /// Adds.
            async fn add(&self, a: i64, mut b: i64) -> i64;
            async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
            #[cfg(any())]
            async fn gone(&self, v: ::std::vec::Vec<u8>) -> ();
            #[cfg(any())]
            async fn gone(&self);
            async fn reset(&self);
        }
    });
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(errors_of(parse_quote!(
        trait Empty {}
    ))
    .is_empty());
}

#[test]
fn not_async() {
    assert_error(
        parse_quote!(
            trait T {
                fn add(&self, a: i64) -> i64;
            }
        ),
        &["must be `async fn`", "write `async fn add(&self, ...)`"],
    );
}

#[test]
fn receivers() {
    assert_error(
        parse_quote!(
            trait T {
                async fn add(&mut self);
            }
        ),
        &["not `&mut self`", "write `async fn add(&self, ...)`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(self);
            }
        ),
        &["not `self`", "write `async fn add(&self, ...)`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(mut self);
            }
        ),
        &["not `mut self`", "write `async fn add(&self, ...)`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(self: Box<Self>);
            }
        ),
        &["exactly `&self`", "write `async fn add(&self, ...)`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(self: &Self);
            }
        ),
        &["exactly `&self`", "write `async fn add(&self, ...)`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(&'static self);
            }
        ),
        &["without a lifetime", "write `async fn add(&self, ...)`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(a: i64);
            }
        ),
        &[
            "take `&self` as their first argument",
            "write `async fn add(&self, ...)`",
        ],
    );
}

#[test]
fn patterns() {
    assert_error(
        parse_quote!(
            trait T {
                async fn add(&self, (a, b): (i32, i32));
            }
        ),
        &["must be plain identifiers", "write `arg: Type`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(&self, _: i32);
            }
        ),
        &["need a name", "instead of `_`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(&self, ref a: i32);
            }
        ),
        &["plain identifiers", "without `ref`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn add(&self, #[serde(skip)] a: i32);
            }
        ),
        &["attributes on RPC arguments", "remove it"],
    );
}

#[test]
fn borrowed_types() {
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: &str);
            }
        ),
        &["must be owned", "`&str` borrows", "write `String` instead"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: &'a [u8]);
            }
        ),
        &["must be owned", "write `Vec<u8>` instead"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: Vec<&mut std::path::Path>);
            }
        ),
        &["must be owned", "write `PathBuf` instead"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: Cow<'static, str>);
            }
        ),
        &[
            "cannot name a lifetime (`'static`)",
            "use owned types such as `String`",
        ],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self) -> &'static str;
            }
        ),
        &["RPC return types must be owned", "write `String` instead"],
    );
}

#[test]
fn impl_trait_and_self() {
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: impl Serialize);
            }
        ),
        &[
            "`impl Trait` is not allowed in RPC argument types",
            "use a concrete type",
        ],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self) -> Vec<impl Display>;
            }
        ),
        &[
            "`impl Trait` is not allowed in RPC return types",
            "write the concrete type",
        ],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: Vec<Self>);
            }
        ),
        &["`Self` cannot appear", "name the concrete type"],
    );
}

#[test]
fn generic_methods() {
    assert_error(
        parse_quote!(
            trait T {
                async fn f<X>(&self, a: X);
            }
        ),
        &["cannot be generic", "remove the generic parameters"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: u8)
                where
                    u8: Copy;
            }
        ),
        &["cannot be generic", "remove the `where` clause"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f<'a>(&self, a: String);
            }
        ),
        &["not even over lifetimes", "remove the lifetime parameters"],
    );
}

#[test]
fn generic_trait_and_supertraits() {
    assert_error(
        parse_quote!(
            trait T<X> {
                async fn f(&self);
            }
        ),
        &[
            "generic services are not supported yet",
            "remove the type parameters",
        ],
    );
    assert_error(
        parse_quote!(
            trait T where
                u8: Copy,
            {
                async fn f(&self);
            }
        ),
        &[
            "generic services are not supported yet",
            "remove the `where` clause",
        ],
    );
    assert_error(
        parse_quote!(
            trait T: Send + Sync {
                async fn f(&self);
            }
        ),
        &["supertraits are not supported", "remove them"],
    );
}

#[test]
fn other_items_and_bodies() {
    assert_error(
        parse_quote!(
            trait T {
                const X: u8;
            }
        ),
        &[
            "only contain `async fn` methods, not an associated const",
            "move it out",
        ],
    );
    assert_error(
        parse_quote!(
            trait T {
                type X;
            }
        ),
        &["not an associated type", "move it out"],
    );
    assert_error(
        parse_quote!(
            trait T {
                m!();
            }
        ),
        &["not a macro invocation", "move it out"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self) {}
            }
        ),
        &["cannot have a default body", "move the body into your impl"],
    );
}

#[test]
fn qualifiers() {
    assert_error(
        parse_quote!(
            trait T {
                async unsafe fn f(&self);
            }
        ),
        &["cannot be `unsafe`", "remove `unsafe`"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async extern "C" fn f(&self);
            }
        ),
        &["cannot have an ABI", "remove it"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, ...);
            }
        ),
        &["cannot be variadic", "take a `Vec<T>` argument instead"],
    );
    let errors = errors_of(parse_quote!(
        trait T {
            const fn f(&self);
        }
    ));
    assert!(
        errors.iter().any(|e| e.contains("cannot be `const fn`")),
        "{errors:#?}"
    );
}

#[test]
fn names() {
    assert_error(
        parse_quote!(
            trait T {
                async fn get_user(&self);
                async fn getUser(&self);
            }
        ),
        &[
            "`get_user` and `getUser` both become the enum variant `GetUser`",
            "rename one",
        ],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn new(&self);
            }
        ),
        &["cannot be named `new`", "rename it"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn builder(&self);
            }
        ),
        &["cannot be named `builder`", "rename it"],
    );
    assert_error(
        parse_quote!(
            trait T {
                async fn self_(&self);
            }
        ),
        &["variant `Self`", "rename the method"],
    );
}

#[test]
fn all_errors_are_reported() {
    let errors = errors_of(parse_quote! {
        trait T<X>: Send {
            fn a(&mut self, b: &str);
            const C: u8;
        }
    });
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

#[test]
fn streams_in_every_direction() {
    let errors = errors_of(parse_quote! {
        pub trait Files {
            async fn download(&self, name: String) -> Streaming<Vec<u8>>;
            async fn upload(&self, name: String, chunks: Streaming<Vec<u8>>) -> u64;
            async fn chat(&self, room: String, messages: Streaming<String>) -> Streaming<String>;
            async fn only(&self, items: rpc_core::Streaming<u8>) -> ::rpc_core::Streaming<u8>;
            async fn paren(&self, items: (Streaming<u8>));
        }
    });
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn at_most_one_stream_argument() {
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: Streaming<u8>, b: u8, c: rpc_core::Streaming<u16>);
            }
        ),
        &[
            "a method takes at most one `Streaming<T>` argument (`f` already takes `a`)",
            "merge the streams into one of an enum type",
        ],
    );
    let errors = errors_of(parse_quote!(
        trait T {
            async fn f(&self, a: Streaming<u8>, b: Streaming<u8>, c: Streaming<u8>);
        }
    ));
    assert_eq!(errors.len(), 2, "one per extra stream: {errors:#?}");
}

#[test]
fn streams_are_whole_types() {
    let whole = "`Streaming<T>` must be the whole type of an argument or the whole return type";
    let several = "a call carries at most one stream each way; for several, merge them into one `Streaming<E>` of an enum type `E`";
    for (item, hint) in [
        (
            parse_quote!(
                trait T {
                    async fn f(&self, a: Vec<Streaming<u8>>);
                }
            ),
            several,
        ),
        (
            parse_quote!(
                trait T {
                    async fn f(&self, a: (Streaming<u8>, u8));
                }
            ),
            several,
        ),
        (
            parse_quote!(
                trait T {
                    async fn f(&self) -> Vec<Option<(Streaming<u8>,)>>;
                }
            ),
            several,
        ),
        (
            parse_quote!(
                trait T {
                    async fn f(&self) -> Option<Streaming<u8>>;
                }
            ),
            "write `Streaming<u8>`, and send no items where you would have sent `None`",
        ),
        (
            parse_quote!(
                trait T {
                    async fn f(&self) -> Streaming<Streaming<u8>>;
                }
            ),
            "a stream's items cannot be streams: send the inner items in the one stream (`Streaming<u8>`), or batches of them (`Streaming<Vec<u8>>`)",
        ),
        // Typed errors are items of the stream, with the user's own types in the hint.
        (
            parse_quote!(
                trait T {
                    async fn f(&self) -> Result<rpc_core::Streaming<Vec<u8>>, my::Error>;
                }
            ),
            "not part of `Result<rpc_core::Streaming<Vec<u8>>, my::Error>`: for a stream whose items may fail with your error type, write `Streaming<Result<Vec<u8>, my::Error>>`",
        ),
        (
            parse_quote!(
                trait T {
                    async fn f(&self, a: std::result::Result<Streaming<u8>, E>);
                }
            ),
            "write `Streaming<Result<u8, E>>`",
        ),
        // `RpcError` is not `Serialize`: a stream fails with one by an `Err` item.
        (
            parse_quote!(
                trait T {
                    async fn f(&self) -> Result<Streaming<u8>, rpc_core::RpcError>;
                }
            ),
            "a stream already fails with an `RpcError`: write `Streaming<u8>` and end the stream with an `Err` item (e.g. from `Streaming::from_results`); for errors of your own type, `Streaming<Result<u8, E>>`",
        ),
        // A stream as the error is no typed error of a stream.
        (
            parse_quote!(
                trait T {
                    async fn f(&self) -> Result<u8, Streaming<u8>>;
                }
            ),
            several,
        ),
    ] {
        assert_error(item, &[whole, hint]);
    }
    // A nested stream is not counted as a stream argument.
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: Streaming<u8>, b: Option<Streaming<u8>>);
            }
        ),
        &["must be the whole type"],
    );
    // An associated type named `Streaming` is not ours.
    assert!(errors_of(parse_quote!(
        trait T {
            async fn f(&self, a: <X as Y>::Streaming<u8>);
        }
    ))
    .is_empty());
}

#[test]
fn stream_type_arguments() {
    for item in [
        parse_quote!(
            trait T {
                async fn f(&self, a: Streaming);
            }
        ),
        parse_quote!(
            trait T {
                async fn f(&self) -> Streaming;
            }
        ),
        parse_quote!(
            trait T {
                async fn f(&self) -> rpc_core::Streaming<u8, u16>;
            }
        ),
        parse_quote!(
            trait T {
                async fn f(&self) -> Streaming<Item = u8>;
            }
        ),
    ] {
        assert_error(
            item,
            &[
                "`Streaming` takes exactly one type argument, the type of its items",
                "write `Streaming<T>`",
            ],
        );
    }
    let errors = errors_of(parse_quote!(
        trait T {
            async fn f(&self, a: Streaming<u8, u16>);
        }
    ));
    assert!(
        errors[0].contains("not `Streaming<u8, u16>`"),
        "{errors:#?}"
    );
    // A lifetime is reported once, as a lifetime.
    assert_error(
        parse_quote!(
            trait T {
                async fn f(&self, a: Streaming<'static, u8>);
            }
        ),
        &["cannot name a lifetime"],
    );
}
