//! Validation of the model: every unsupported construct becomes a `syn::Error` spanned at the
//! offending tokens, whose message says what to write instead.
//!
//! `Streaming<T>` (recognised by its last path segment, see `ast::stream_item`) is allowed
//! only as the whole type of at most one argument and as the whole return type, with exactly
//! one type argument.
//!
//! Whether argument and return types are `Serialize + DeserializeOwned + Send + 'static` is
//! not checked here: `expand` emits assertions that let the compiler check it, at the user's
//! type span.

use std::collections::HashMap;

use quote::ToTokens;
use syn::visit::{self, Visit};
use syn::{Error, Pat, Result, TraitItem, Type};

use crate::ast::{self, Arg, Method, Service};

/// Names of the generated client's own inherent methods, which RPC methods cannot take.
const RESERVED_METHOD_NAMES: &[&str] = &["new", "from_client", "client", "builder"];

/// Collects errors, to report all of them at once.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(Error::new_spanned(tokens, message));
    }

    fn finish(self) -> Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks everything the macro requires of a `#[service]` trait; all problems are reported
/// together.
pub fn validate(service: &Service) -> Result<()> {
    let mut errors = Errors::default();
    check_trait(service, &mut errors);
    for method in &service.methods {
        check_method(method, &mut errors);
    }
    check_collisions(service, &mut errors);
    errors.finish()
}

fn check_trait(service: &Service, errors: &mut Errors) {
    let generics = &service.generics;
    if !generics.params.is_empty() {
        errors.spanned(
            generics,
            "generic services are not supported yet: remove the type parameters and use concrete types (one service per type)",
        );
    }
    if let Some(where_clause) = &generics.where_clause {
        errors.spanned(
            where_clause,
            "generic services are not supported yet: remove the `where` clause from the trait",
        );
    }
    if let Some(colon) = &service.colon_token {
        let supertraits = &service.supertraits;
        errors.spanned(
            quote::quote!(#colon #supertraits),
            "supertraits are not supported on a `#[service]` trait yet: remove them and put the bounds on your implementing type instead",
        );
    }
    for item in &service.other_items {
        let what = match item {
            TraitItem::Const(_) => "an associated const",
            TraitItem::Type(_) => "an associated type",
            TraitItem::Macro(_) => "a macro invocation",
            _ => "this item",
        };
        errors.spanned(
            item,
            format!(
                "a `#[service]` trait may only contain `async fn` methods, not {what}: move it out of the trait"
            ),
        );
    }
}

fn check_method(method: &Method, errors: &mut Errors) {
    let sig = &method.sig;
    let name = &method.name;
    if let Some(constness) = &sig.constness {
        errors.spanned(
            constness,
            "RPC methods cannot be `const fn`: remove `const` and write `async fn`",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(
            unsafety,
            "RPC methods cannot be `unsafe`: remove `unsafe` (the client must be able to call them safely)",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(
            abi,
            "RPC methods cannot have an ABI (`extern`): remove it and write a plain `async fn`",
        );
    }
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format!("RPC methods must be `async fn`: write `async fn {name}(&self, ...)`"),
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(
            variadic,
            "RPC methods cannot be variadic: take a `Vec<T>` argument instead",
        );
    }
    if !sig.generics.params.is_empty() {
        let only_lifetimes = sig
            .generics
            .params
            .iter()
            .all(|param| matches!(param, syn::GenericParam::Lifetime(_)));
        let message = if only_lifetimes {
            "RPC methods cannot be generic, not even over lifetimes: arguments and results are owned values that cross the network; remove the lifetime parameters and use owned types (`String`, not `&'a str`)"
        } else {
            "RPC methods cannot be generic: remove the generic parameters and use concrete types"
        };
        errors.spanned(&sig.generics, message);
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.spanned(
            where_clause,
            "RPC methods cannot be generic: remove the `where` clause",
        );
    }
    if let Some(body) = &method.default {
        errors.spanned(
            body,
            "RPC methods cannot have a default body: move the body into your impl and end the trait method with `;`",
        );
    }
    if RESERVED_METHOD_NAMES.contains(&name.as_str()) {
        errors.spanned(
            &method.ident,
            format!(
                "an RPC method cannot be named `{name}`: the generated client has its own `{name}` method; rename it (e.g. `{name}_item`)"
            ),
        );
    }
    if method.variant == "Self" {
        errors.spanned(
            &method.ident,
            format!("the RPC method `{name}` would become the enum variant `Self`, which is reserved: rename the method"),
        );
    }
    check_receiver(method, errors);
    for arg in &method.args {
        check_arg(arg, errors);
    }
    check_stream_count(method, errors);
    if let syn::ReturnType::Type(_, ty) = &sig.output {
        check_type(ty, Position::Return, errors);
    }
}

/// A method takes at most one `Streaming<T>` argument: a call carries one stream of items
/// in each direction.
fn check_stream_count(method: &Method, errors: &mut Errors) {
    let mut streams = method
        .args
        .iter()
        .filter(|arg| ast::whole_streaming_path(&arg.ty).is_some());
    let Some(first) = streams.next() else {
        return;
    };
    for extra in streams {
        errors.spanned(
            &extra.ty,
            format!(
                "a method takes at most one `Streaming<T>` argument (`{}` already takes `{}`); merge the streams into one of an enum type: `Streaming<E>` with one variant of `E` per stream",
                method.name,
                syn::ext::IdentExt::unraw(&first.ident),
            ),
        );
    }
}

/// `Streaming` takes exactly one type argument, the type of its items.
fn check_stream_arguments(path: &syn::Path, errors: &mut Errors) {
    let Some(segment) = path.segments.last() else {
        return;
    };
    let fits = match &segment.arguments {
        syn::PathArguments::AngleBracketed(args) => {
            let mut types = 0;
            let mut others = 0;
            for arg in &args.args {
                match arg {
                    syn::GenericArgument::Type(_) => types += 1,
                    // A lifetime is reported on its own, as everywhere in RPC types.
                    syn::GenericArgument::Lifetime(_) => {}
                    _ => others += 1,
                }
            }
            types == 1 && others == 0
        }
        _ => false,
    };
    if !fits {
        let written = compact(segment);
        errors.spanned(
            segment,
            format!(
                "`Streaming` takes exactly one type argument, the type of its items, not `{written}`: write `Streaming<T>`, e.g. `Streaming<Vec<u8>>`"
            ),
        );
    }
}

fn check_receiver(method: &Method, errors: &mut Errors) {
    let name = &method.name;
    let hint = format!("write `async fn {name}(&self, ...)`");
    let Some(receiver) = &method.receiver else {
        errors.spanned(
            &method.sig.ident,
            format!(
                "RPC methods take `&self` as their first argument (the server calls them on a shared instance): {hint}"
            ),
        );
        return;
    };
    let written = receiver.to_token_stream().to_string();
    match (&receiver.reference, &receiver.colon_token) {
        (Some((_, None)), None) if receiver.mutability.is_some() => errors.spanned(
            receiver,
            format!(
                "RPC methods take `&self`, not `&mut self`: the server shares one instance across concurrent calls; keep mutable state behind a `Mutex` or atomics and {hint}"
            ),
        ),
        (Some((_, None)), None) => {}
        (Some((_, Some(lifetime))), None) => errors.spanned(
            lifetime,
            format!("RPC methods take plain `&self`, without a lifetime: {hint}"),
        ),
        (None, None) => errors.spanned(
            receiver,
            format!(
                "RPC methods take `&self`, not `{written}`: the server calls them on a shared instance; {hint}"
            ),
        ),
        (_, Some(_)) => errors.spanned(
            receiver,
            format!("RPC methods take exactly `&self`, not `{written}`: {hint}"),
        ),
    }
}

fn check_arg(arg: &Arg, errors: &mut Errors) {
    for attr in &arg.attrs {
        errors.spanned(
            attr,
            "attributes on RPC arguments are not supported: remove it",
        );
    }
    match &arg.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {}
        Pat::Ident(pat) if pat.by_ref.is_some() => errors.spanned(
            &arg.pat,
            format!(
                "RPC arguments are plain identifiers (they become fields of the request enum): write `{}: ...` without `ref`",
                pat.ident
            ),
        ),
        Pat::Wild(_) => errors.spanned(
            &arg.pat,
            "RPC arguments need a name (it becomes a field of the request enum): write e.g. `value: ...` instead of `_`",
        ),
        _ => errors.spanned(
            &arg.pat,
            "RPC arguments must be plain identifiers (they become fields of the request enum): write `arg: Type` and destructure it in your impl",
        ),
    }
    check_type(&arg.ty, Position::Arg, errors);
}

/// Where a type appears, for the wording of errors.
#[derive(Clone, Copy)]
enum Position {
    Arg,
    Return,
}

impl Position {
    fn types(self) -> &'static str {
        match self {
            Position::Arg => "argument types",
            Position::Return => "return types",
        }
    }
}

/// Rejects borrowed types, explicit lifetimes, `impl Trait` and `Self` anywhere in `ty`, and
/// `Streaming` anywhere but as the whole of `ty` (where it must have one type argument).
fn check_type(ty: &Type, position: Position, errors: &mut Errors) {
    let whole = ast::whole_streaming_path(ty);
    if let Some(path) = whole {
        check_stream_arguments(path, errors);
    }
    let mut checker = TypeChecker {
        position,
        ty,
        whole,
        outer: Vec::new(),
        errors: Vec::new(),
    };
    checker.visit_type(ty);
    for error in checker.errors {
        errors.push(error);
    }
}

struct TypeChecker<'ast> {
    position: Position,
    /// The whole type being checked, for error messages.
    ty: &'ast Type,
    /// The `Streaming` path that is the whole type, the one place `Streaming` may be.
    whole: Option<&'ast syn::Path>,
    /// The paths the visitor is inside of, innermost last (`Result` in `Result<Streaming<T>, E>`
    /// when at `Streaming<T>`).
    outer: Vec<&'ast syn::Path>,
    errors: Vec<Error>,
}

impl TypeChecker<'_> {
    /// The error for `Streaming` as part of the type rather than the whole of it, with what
    /// to write instead for the usual cases.
    fn nested_stream(&self, stream: &syn::Path) -> String {
        let written = compact(self.ty);
        let item = single_type_argument(stream).map_or_else(|| "T".to_owned(), compact);
        let parent = self
            .outer
            .last()
            .filter(|parent| type_arguments(parent).any(|arg| is_path(arg, stream)));
        let hint = match parent {
            Some(parent) => {
                let name = last_ident(parent);
                let args: Vec<_> = type_arguments(parent).collect();
                match (name.as_deref(), args.as_slice()) {
                    (Some("Result"), [ok, error]) if is_path(ok, stream) => {
                        let error_name = match ast::peel(error) {
                            Type::Path(path) => last_ident(&path.path),
                            _ => None,
                        };
                        if error_name.as_deref() == Some("RpcError") {
                            format!(
                                "a stream already fails with an `RpcError`: write `Streaming<{item}>` and end the stream with an `Err` item (e.g. from `Streaming::from_results`); for errors of your own type, `Streaming<Result<{item}, E>>`"
                            )
                        } else {
                            let error = compact(error);
                            format!(
                                "for a stream whose items may fail with your error type, write `Streaming<Result<{item}, {error}>>`"
                            )
                        }
                    }
                    (Some("Option"), _) => format!(
                        "write `Streaming<{item}>`, and send no items where you would have sent `None`"
                    ),
                    (Some("Streaming"), _) => format!(
                        "a stream's items cannot be streams: send the inner items in the one stream (`Streaming<{item}>`), or batches of them (`Streaming<Vec<{item}>>`)"
                    ),
                    _ => several_streams_hint(),
                }
            }
            None => several_streams_hint(),
        };
        format!(
            "`Streaming<T>` must be the whole type of an argument or the whole return type, not part of `{written}`: {hint}"
        )
    }
}

/// What to do instead of a collection or tuple of streams.
fn several_streams_hint() -> String {
    "a call carries at most one stream each way; for several, merge them into one `Streaming<E>` of an enum type `E`".to_owned()
}

/// The type arguments of the last segment of `path` (`Vec<T>`: `T`).
fn type_arguments(path: &syn::Path) -> impl Iterator<Item = &Type> {
    path.segments.last().into_iter().flat_map(|segment| {
        let args = match &segment.arguments {
            syn::PathArguments::AngleBracketed(args) => Some(args.args.iter()),
            _ => None,
        };
        args.into_iter().flatten().filter_map(|arg| match arg {
            syn::GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
    })
}

/// The only type argument of the last segment of `path`, if it has exactly one.
fn single_type_argument(path: &syn::Path) -> Option<&Type> {
    let mut args = type_arguments(path);
    match (args.next(), args.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// The last segment's identifier of `path`, as a string.
fn last_ident(path: &syn::Path) -> Option<String> {
    path.segments
        .last()
        .map(|segment| segment.ident.to_string())
}

/// Whether `ty` is (in parentheses or not) the type path `path`, the very same tokens.
fn is_path(ty: &Type, path: &syn::Path) -> bool {
    matches!(ast::peel(ty), Type::Path(type_path) if std::ptr::eq(&type_path.path, path))
}

impl<'ast> Visit<'ast> for TypeChecker<'ast> {
    fn visit_type_path(&mut self, type_path: &'ast syn::TypePath) {
        let is_whole = self
            .whole
            .is_some_and(|whole| std::ptr::eq(whole, &type_path.path));
        if type_path.qself.is_none() && ast::is_streaming_path(&type_path.path) && !is_whole {
            let message = self.nested_stream(&type_path.path);
            self.errors.push(Error::new_spanned(type_path, message));
        }
        self.outer.push(&type_path.path);
        visit::visit_type_path(self, type_path);
        self.outer.pop();
    }

    fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
        let suggestion = owned_suggestion(&reference.elem);
        let written = compact(reference);
        self.errors.push(Error::new_spanned(
            reference,
            format!(
                "RPC {} must be owned (the value crosses the network): `{written}` borrows; write `{suggestion}` instead",
                self.position.types()
            ),
        ));
    }

    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        self.errors.push(Error::new(
            lifetime.span(),
            format!(
                "RPC {} must be owned and cannot name a lifetime (`{lifetime}`): use owned types such as `String`, `Vec<T>` or `Box<T>`",
                self.position.types()
            ),
        ));
    }

    fn visit_type_impl_trait(&mut self, impl_trait: &'ast syn::TypeImplTrait) {
        let hint = match self.position {
            Position::Arg => "use a concrete type",
            Position::Return => {
                "write the concrete type (the generated trait already returns a future of it)"
            }
        };
        self.errors.push(Error::new_spanned(
            impl_trait,
            format!(
                "`impl Trait` is not allowed in RPC {}: {hint}",
                self.position.types()
            ),
        ));
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.first().is_some_and(|s| s.ident == "Self")
        {
            self.errors.push(Error::new_spanned(
                path,
                format!(
                    "`Self` cannot appear in RPC {} (the generated request and response enums live outside the trait): name the concrete type",
                    self.position.types()
                ),
            ));
            return;
        }
        visit::visit_path(self, path);
    }
}

/// What to write instead of `&elem`.
fn owned_suggestion(elem: &Type) -> String {
    match elem {
        Type::Path(path) if path.qself.is_none() => {
            match path
                .path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .as_deref()
            {
                Some("str") => "String".to_owned(),
                Some("Path") => "PathBuf".to_owned(),
                Some("OsStr") => "OsString".to_owned(),
                Some("CStr") => "CString".to_owned(),
                _ => compact(elem),
            }
        }
        Type::Slice(slice) => format!("Vec<{}>", compact(&slice.elem)),
        Type::Reference(inner) => owned_suggestion(&inner.elem),
        Type::TraitObject(_) => format!("Box<{}>", compact(elem)),
        _ => compact(elem),
    }
}

/// Token text of `tokens` in a compact, readable form for error messages.
fn compact(tokens: impl ToTokens) -> String {
    tokens
        .to_token_stream()
        .to_string()
        .replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
        .replace(" :: ", "::")
        .replace(":: ", "::")
}

/// Two methods must not map to one enum variant, nor (practically impossible) one fingerprint.
///
/// Methods with `#[cfg]` attributes are skipped: two of them may legitimately share a name
/// under mutually exclusive configurations, and if both are enabled the compiler reports the
/// duplicate itself.
fn check_collisions(service: &Service, errors: &mut Errors) {
    let mut variants: HashMap<String, &Method> = HashMap::new();
    let mut fingerprints: HashMap<u64, &Method> = HashMap::new();
    for method in &service.methods {
        if method.cfg_attrs().next().is_some() {
            continue;
        }
        match variants.get(&method.variant.to_string()) {
            Some(first) => errors.spanned(
                &method.ident,
                format!(
                    "the RPC methods `{}` and `{}` both become the enum variant `{}`: rename one of them",
                    first.name, method.name, method.variant
                ),
            ),
            None => {
                variants.insert(method.variant.to_string(), method);
            }
        }
        match fingerprints.get(&method.fingerprint) {
            Some(first) if first.variant != method.variant => errors.spanned(
                &method.ident,
                format!(
                    "the RPC methods `{}` and `{}` have the same fingerprint {:#018x} (a hash collision): rename one of them",
                    first.name, method.name, method.fingerprint
                ),
            ),
            Some(_) => {}
            None => {
                fingerprints.insert(method.fingerprint, method);
            }
        }
    }
}

#[cfg(test)]
mod tests;
