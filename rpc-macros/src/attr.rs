//! The arguments of the attribute itself: `#[service]` or `#[service(name = "Other")]`.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::Parser;
use syn::{Error, LitStr, Result};

/// Every key `#[service(...)]` accepts, for the "unknown key" error message.
const VALID_KEYS: &str = "`name = \"...\"`";

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

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

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
}
