//! The macro's attributes: the arguments of `#[service]` or `#[service(name = "Other")]`
//! itself, and `#[rpc(...)]` on the trait's methods (`#[rpc(idempotent)]`).
//!
//! `#[rpc]` is not a real attribute: `#[service]` reads it and removes it from the trait it
//! emits, so it is only meaningful on a method of a `#[service]` trait.

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::Parser;
use syn::{Attribute, Error, LitStr, Meta, Result, Token};

/// Every key `#[service(...)]` accepts, for the "unknown key" error message.
const VALID_KEYS: &str = "`name = \"...\"`";

/// Every key `#[rpc(...)]` accepts, for the "unknown key" error message.
const VALID_METHOD_KEYS: &str = "`idempotent`";

/// The parsed `#[service(...)]` arguments.
#[derive(Debug, Default)]
pub struct ServiceArgs {
    /// `name = "..."`: the wire name of the service, overriding the trait's name.
    pub name: Option<LitStr>,
}

/// Parses the tokens between the parentheses of `#[service(...)]` (empty for `#[service]`).
pub fn parse(args: TokenStream) -> Result<ServiceArgs> {
    let mut parsed = ServiceArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if parsed.name.is_some() {
                return Err(meta.error("duplicate `name` argument: give the service one wire name"));
            }
            let name: LitStr = meta.value()?.parse()?;
            if name.value().is_empty() {
                return Err(Error::new(
                    name.span(),
                    "the service's wire name cannot be empty: write e.g. `#[service(name = \"Calculator\")]`",
                ));
            }
            parsed.name = Some(name);
            Ok(())
        } else {
            let key = meta.path.to_token_stream().to_string().replace(' ', "");
            Err(meta.error(format!(
                "unknown `#[service]` argument `{key}`; valid keys: {VALID_KEYS}"
            )))
        }
    });
    parser.parse2(args)?;
    Ok(parsed)
}

/// The parsed `#[rpc(...)]` arguments of one method.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MethodArgs {
    /// `idempotent`: running the method twice does no harm, so a client may retry it.
    pub idempotent: bool,
}

/// Whether `attr` is an `#[rpc(...)]` attribute (of any shape).
pub fn is_rpc(attr: &Attribute) -> bool {
    attr.path().is_ident("rpc")
}

/// Removes the `#[rpc(...)]` attributes from a method's `attrs` and parses them, all
/// together: `#[rpc(a)] #[rpc(b)]` means `#[rpc(a, b)]`. Every malformed one is reported.
pub fn take_method_args(attrs: &mut Vec<Attribute>) -> Result<MethodArgs> {
    let (rpc, others): (Vec<_>, Vec<_>) = std::mem::take(attrs).into_iter().partition(is_rpc);
    *attrs = others;
    let mut parsed = MethodArgs::default();
    let mut errors: Option<Error> = None;
    for attr in &rpc {
        if let Err(error) = parse_method_attr(attr, &mut parsed) {
            match &mut errors {
                Some(all) => all.combine(error),
                None => errors = Some(error),
            }
        }
    }
    errors.map_or(Ok(parsed), Err)
}

/// Parses one `#[rpc(...)]` into `parsed`.
fn parse_method_attr(attr: &Attribute, parsed: &mut MethodArgs) -> Result<()> {
    let list = match &attr.meta {
        Meta::List(list) if !list.tokens.is_empty() => list,
        Meta::List(_) | Meta::Path(_) => {
            return Err(Error::new_spanned(
                attr,
                format!(
                    "`#[rpc]` needs an argument: write `#[rpc(idempotent)]`; valid keys: {VALID_METHOD_KEYS}"
                ),
            ))
        }
        Meta::NameValue(_) => {
            return Err(Error::new_spanned(
                attr,
                format!(
                    "`#[rpc]` takes its arguments in parentheses: write `#[rpc(idempotent)]`; valid keys: {VALID_METHOD_KEYS}"
                ),
            ))
        }
    };
    list.parse_nested_meta(|meta| {
        if meta.path.is_ident("idempotent") {
            if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                // Take in the value, so that the error spans `idempotent = true` whole.
                while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                    meta.input.parse::<TokenTree>()?;
                }
                return Err(meta.error(
                    "`idempotent` takes no value: write `#[rpc(idempotent)]`, or leave it out for a method that must not be retried",
                ));
            }
            if parsed.idempotent {
                return Err(meta.error(
                    "duplicate `idempotent` argument: write it once per method",
                ));
            }
            parsed.idempotent = true;
            Ok(())
        } else {
            let key = meta.path.to_token_stream().to_string().replace(' ', "");
            Err(meta.error(format!(
                "unknown `#[rpc]` argument `{key}`; valid keys: {VALID_METHOD_KEYS}"
            )))
        }
    })
}

/// Rejects `#[rpc(...)]` on the trait itself: it describes one method.
pub fn reject_on_trait(attrs: &[Attribute]) -> Result<()> {
    let mut errors: Option<Error> = None;
    for attr in attrs.iter().filter(|attr| is_rpc(attr)) {
        let error = Error::new_spanned(
            attr,
            "`#[rpc(...)]` goes on a method of the trait, not on the trait itself: move it onto the `async fn` it describes",
        );
        match &mut errors {
            Some(all) => all.combine(error),
            None => errors = Some(error),
        }
    }
    errors.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    #[test]
    fn empty_args() {
        assert!(parse(quote!()).unwrap().name.is_none());
    }

    #[test]
    fn name_arg() {
        let args = parse(quote!(name = "Other")).unwrap();
        assert_eq!(args.name.unwrap().value(), "Other");
    }

    #[test]
    fn unknown_key_lists_valid_keys() {
        let err = parse(quote!(nmae = "Other")).unwrap_err().to_string();
        assert!(
            err.contains("unknown `#[service]` argument `nmae`"),
            "{err}"
        );
        assert!(err.contains("valid keys: `name"), "{err}");
    }

    #[test]
    fn duplicate_and_empty_name() {
        let err = parse(quote!(name = "A", name = "B"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate `name`"), "{err}");
        let err = parse(quote!(name = "")).unwrap_err().to_string();
        assert!(err.contains("cannot be empty"), "{err}");
    }

    #[test]
    fn name_must_be_a_string() {
        assert!(parse(quote!(name = 5)).is_err());
        assert!(parse(quote!(name)).is_err());
    }

    fn method_args(attrs: Vec<Attribute>) -> Result<MethodArgs> {
        let mut attrs = attrs;
        take_method_args(&mut attrs)
    }

    fn method_error(attrs: Vec<Attribute>) -> String {
        method_args(attrs).unwrap_err().to_string()
    }

    #[test]
    fn rpc_attrs_are_taken_out() {
        let mut attrs: Vec<Attribute> = vec![
            parse_quote!(#[doc = " Reads."]),
            parse_quote!(#[rpc(idempotent)]),
            parse_quote!(#[cfg(feature = "x")]),
        ];
        let args = take_method_args(&mut attrs).unwrap();
        assert!(args.idempotent);
        assert_eq!(attrs.len(), 2);
        assert!(!attrs.iter().any(is_rpc));
        let mut attrs: Vec<Attribute> = vec![parse_quote!(#[doc = " Writes."])];
        assert_eq!(take_method_args(&mut attrs).unwrap(), MethodArgs::default());
        assert_eq!(attrs.len(), 1);
    }

    #[test]
    fn rpc_idempotent_forms() {
        assert!(
            method_args(vec![parse_quote!(#[rpc(idempotent)])])
                .unwrap()
                .idempotent
        );
        assert!(
            method_args(vec![parse_quote!(#[rpc(idempotent,)])])
                .unwrap()
                .idempotent
        );
        // `rpc::x` or `my::rpc` are other attributes, not ours.
        let mut attrs: Vec<Attribute> = vec![parse_quote!(#[my::rpc(idempotent)])];
        assert!(!take_method_args(&mut attrs).unwrap().idempotent);
        assert_eq!(attrs.len(), 1);
    }

    #[test]
    fn rpc_unknown_key_lists_valid_keys() {
        let err = method_error(vec![parse_quote!(#[rpc(idempotnet)])]);
        assert_eq!(
            err,
            "unknown `#[rpc]` argument `idempotnet`; valid keys: `idempotent`"
        );
        let err = method_error(vec![parse_quote!(#[rpc(idempotent, retries = 3)])]);
        assert!(err.contains("unknown `#[rpc]` argument `retries`"), "{err}");
    }

    #[test]
    fn rpc_duplicate_idempotent() {
        for attrs in [
            vec![parse_quote!(#[rpc(idempotent, idempotent)])],
            vec![
                parse_quote!(#[rpc(idempotent)]),
                parse_quote!(#[rpc(idempotent)]),
            ],
        ] {
            let err = method_error(attrs);
            assert!(err.contains("duplicate `idempotent` argument"), "{err}");
            assert!(err.contains("write it once"), "{err}");
        }
    }

    #[test]
    fn rpc_without_arguments() {
        for attr in [parse_quote!(#[rpc]), parse_quote!(#[rpc()])] {
            let err = method_error(vec![attr]);
            assert!(err.contains("`#[rpc]` needs an argument"), "{err}");
            assert!(err.contains("write `#[rpc(idempotent)]`"), "{err}");
        }
        let err = method_error(vec![parse_quote!(#[rpc = "idempotent"])]);
        assert!(err.contains("in parentheses"), "{err}");
        assert!(err.contains("write `#[rpc(idempotent)]`"), "{err}");
    }

    #[test]
    fn rpc_idempotent_takes_no_value() {
        for attr in [
            parse_quote!(#[rpc(idempotent = true)]),
            parse_quote!(#[rpc(idempotent(true))]),
            parse_quote!(#[rpc(idempotent = yes, idempotent)]),
        ] {
            let err = method_error(vec![attr]);
            assert!(err.contains("`idempotent` takes no value"), "{err}");
            assert!(err.contains("write `#[rpc(idempotent)]`"), "{err}");
        }
    }

    #[test]
    fn every_bad_rpc_attr_is_reported() {
        let errors =
            method_args(vec![parse_quote!(#[rpc]), parse_quote!(#[rpc(bogus)])]).unwrap_err();
        assert_eq!(errors.into_iter().count(), 2);
    }

    #[test]
    fn rpc_on_the_trait() {
        assert!(reject_on_trait(&[parse_quote!(#[doc = " Docs."])]).is_ok());
        let err = reject_on_trait(&[parse_quote!(#[rpc(idempotent)])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("goes on a method of the trait"), "{err}");
        assert!(err.contains("move it onto the `async fn`"), "{err}");
    }
}
