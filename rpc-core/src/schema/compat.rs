//! Whether one side can read what the other writes, by schema.

use std::collections::HashSet;

use super::render::{display_name, shape};
use super::{Container, Field, Fields, MethodSchema, Schema, ServiceSchema, Type, ValueSchema};

/// The advice every incompatibility ends with.
const ADVICE: &str = "client and server were built from different versions of the trait; a \
                      change to the types of a deployed method needs a new method";

/// Checks a call of `client`'s method against `server`'s method of the same name.
pub(crate) fn check_call(
    service: &str,
    client: &MethodSchema,
    server: &MethodSchema,
) -> Result<(), String> {
    let method = format!("{service}::{}", server.name);
    let values = client
        .args
        .iter()
        .map(|a| &a.value)
        .chain(server.args.iter().map(|a| &a.value))
        .chain([&client.result, &server.result]);
    if let Some(untraced) = values.clone().find(|v| v.schema.is_none()) {
        // Not every type could be traced: the signature as written decides, as before.
        if client.fingerprint == server.fingerprint {
            return Ok(());
        }
        return Err(format!(
            "the method `{method}` has a different signature on the server (fingerprint \
             {:016x} there, {:016x} in the client), and its types cannot be compared because \
             `{}` could not be traced ({}); {ADVICE}",
            server.fingerprint,
            client.fingerprint,
            untraced.written,
            untraced.untraced.as_deref().unwrap_or("no schema"),
        ));
    }
    if client.args.len() != server.args.len() {
        return Err(format!(
            "the method `{method}` takes {} argument(s) on the server and {} in the client; \
             {ADVICE}",
            server.args.len(),
            client.args.len()
        ));
    }
    for (ours, theirs) in server.args.iter().zip(&client.args) {
        let what = format!(
            "argument `{}: {}` of `{method}`",
            ours.name, ours.value.written
        );
        compare_values(&what, &theirs.value, &ours.value, Sides::CLIENT_TO_SERVER)?;
    }
    let what = format!("the result `{}` of `{method}`", server.result.written);
    compare_values(
        &what,
        &server.result,
        &client.result,
        Sides::SERVER_TO_CLIENT,
    )
}

fn compare_values(
    what: &str,
    writer: &ValueSchema,
    reader: &ValueSchema,
    sides: Sides,
) -> Result<(), String> {
    if writer.streaming != reader.streaming {
        let stream = |v: &ValueSchema| if v.streaming { "a stream" } else { "one value" };
        return Err(format!(
            "{what} differs: it is {} for {} and {} for {}; {ADVICE}",
            stream(writer),
            sides.writer,
            stream(reader),
            sides.reader
        ));
    }
    let (Some(w), Some(r)) = (&writer.schema, &reader.schema) else {
        return Ok(());
    };
    Reading {
        writer: w,
        reader: r,
        sides,
        seen: HashSet::new(),
    }
    .check(&w.root, &r.root)
    .map_err(|diff| format!("{what} differs: {diff}; {ADVICE}"))
}

/// Who writes and who reads, for messages.
#[derive(Clone, Copy)]
struct Sides {
    writer: &'static str,
    reader: &'static str,
}

impl Sides {
    const CLIENT_TO_SERVER: Sides = Sides {
        writer: "the client",
        reader: "the server",
    };
    const SERVER_TO_CLIENT: Sides = Sides {
        writer: "the server",
        reader: "the client",
    };
}

/// A type with the wrappers bincode does not see taken off.
enum View<'a> {
    Plain(&'a Type),
    Struct(&'a str, &'a [Field]),
    Enum(&'a str, &'a [super::Variant]),
}

fn view<'a>(schema: &'a Schema, mut ty: &'a Type) -> View<'a> {
    // A newtype's bytes are its content's; bounded in case a schema loops on itself.
    for _ in 0..64 {
        let Type::Named(key) = ty else {
            return View::Plain(ty);
        };
        match schema.types.get(key) {
            Some(Container::Struct(Fields::Newtype(inner))) => ty = inner,
            Some(Container::Struct(Fields::Named(fields))) => return View::Struct(key, fields),
            Some(Container::Enum(variants)) => return View::Enum(key, variants),
            _ => return View::Plain(ty),
        }
    }
    View::Plain(ty)
}

/// The unnamed shape of a plain type: unit and tuple structs are `()` and tuples on the
/// wire, and a byte buffer is a sequence of bytes.
fn plain<'a>(schema: &'a Schema, ty: &'a Type) -> Plain<'a> {
    match ty {
        Type::Named(key) => match schema.types.get(key) {
            Some(Container::Struct(Fields::Unit)) => Plain::Tuple(&[]),
            Some(Container::Struct(Fields::Tuple(items))) => Plain::Tuple(items),
            _ => Plain::Other(ty),
        },
        Type::Unit => Plain::Tuple(&[]),
        Type::Tuple(items) => Plain::Tuple(items),
        Type::Bytes => Plain::Seq(&Type::U8),
        Type::Seq(inner) => Plain::Seq(inner),
        other => Plain::Other(other),
    }
}

enum Plain<'a> {
    Tuple(&'a [Type]),
    Seq(&'a Type),
    Other(&'a Type),
}

/// Whether `reader` reads what `writer` writes.
struct Reading<'a> {
    writer: &'a Schema,
    reader: &'a Schema,
    sides: Sides,
    /// Pairs of named types being compared: met again, they are assumed to match (the
    /// first comparison decides).
    seen: HashSet<(&'a str, &'a str)>,
}

impl<'a> Reading<'a> {
    fn check(&mut self, w: &'a Type, r: &'a Type) -> Result<(), String> {
        match (view(self.writer, w), view(self.reader, r)) {
            (View::Struct(wk, wf), View::Struct(rk, rf)) => {
                if self.seen.insert((wk, rk)) {
                    self.fields(display_name(rk), wf, rf)
                } else {
                    Ok(())
                }
            }
            (View::Enum(wk, wv), View::Enum(rk, rv)) => {
                if self.seen.insert((wk, rk)) {
                    self.variants(display_name(rk), wv, rv)
                } else {
                    Ok(())
                }
            }
            (View::Plain(w), View::Plain(r)) => self.plain(w, r),
            _ => Err(self.mismatch(w, r)),
        }
    }

    fn mismatch(&self, w: &Type, r: &Type) -> String {
        let kind = |schema: &Schema, ty: &Type| match view(schema, ty) {
            View::Struct(..) => " (a struct with named fields)",
            View::Enum(..) => " (an enum)",
            View::Plain(_) => "",
        };
        format!(
            "{} sends `{w}`{} where {} reads `{r}`{}",
            self.sides.writer,
            kind(self.writer, w),
            self.sides.reader,
            kind(self.reader, r)
        )
    }

    fn plain(&mut self, w: &'a Type, r: &'a Type) -> Result<(), String> {
        match (plain(self.writer, w), plain(self.reader, r)) {
            (Plain::Tuple(a), Plain::Tuple(b)) if a.len() == b.len() => {
                a.iter().zip(b).try_for_each(|(a, b)| self.check(a, b))
            }
            (Plain::Seq(a), Plain::Seq(b)) => self.check(a, b),
            (Plain::Other(a), Plain::Other(b)) => match (a, b) {
                (Type::Option(a), Type::Option(b)) => self.check(a, b),
                (Type::Map(a), Type::Map(b)) => {
                    self.check(&a.0, &b.0)?;
                    self.check(&a.1, &b.1)
                }
                (a, b) if a == b || widens(a, b) => Ok(()),
                _ => Err(self.mismatch(w, r)),
            },
            _ => Err(self.mismatch(w, r)),
        }
    }

    fn fields(&mut self, name: &str, w: &'a [Field], r: &'a [Field]) -> Result<(), String> {
        let Sides { writer, reader } = self.sides;
        for (i, (wf, rf)) in w.iter().zip(r).enumerate() {
            if wf.name != rf.name {
                return Err(format!(
                    "field {} of `{name}` is `{}: {}` for {writer} and `{}: {}` for {reader} \
                     (fields are read by position, so a field renamed or moved changes what is \
                     read)",
                    i + 1,
                    wf.name,
                    wf.ty,
                    rf.name,
                    rf.ty
                ));
            }
            self.check(&wf.ty, &rf.ty)
                .map_err(|diff| format!("{diff}, in field `{}` of `{name}`", wf.name))?;
        }
        if let Some(extra) = w.get(r.len()) {
            return Err(format!(
                "{writer} sends field `{}: {}` that {reader}'s `{name}` lacks",
                extra.name, extra.ty
            ));
        }
        if let Some(extra) = r.get(w.len()) {
            return Err(format!(
                "{reader}'s `{name}` reads field `{}: {}` that {writer}'s `{name}` lacks",
                extra.name, extra.ty
            ));
        }
        Ok(())
    }

    fn variants(
        &mut self,
        name: &str,
        w: &'a [super::Variant],
        r: &'a [super::Variant],
    ) -> Result<(), String> {
        let Sides { writer, reader } = self.sides;
        for (i, wv) in w.iter().enumerate() {
            let Some(rv) = r.get(i) else {
                return Err(format!(
                    "{writer} may send variant `{}` of `{name}` that {reader}'s `{name}` lacks",
                    wv.name
                ));
            };
            if wv.name != rv.name {
                return Err(format!(
                    "variant {i} of `{name}` is `{}` for {writer} and `{}` for {reader} \
                     (variants are read by position, so a variant renamed, inserted or moved \
                     changes what is read)",
                    wv.name, rv.name
                ));
            }
            let at = format!("{name}::{}", wv.name);
            match (&wv.fields, &rv.fields) {
                (Fields::Named(a), Fields::Named(b)) => self.fields(&at, a, b)?,
                (Fields::Unit, Fields::Unit) => {}
                (Fields::Newtype(a), Fields::Newtype(b)) => self
                    .check(a, b)
                    .map_err(|diff| format!("{diff}, in variant `{at}`"))?,
                (Fields::Tuple(a), Fields::Tuple(b)) if a.len() == b.len() => {
                    for (a, b) in a.iter().zip(b) {
                        self.check(a, b)
                            .map_err(|diff| format!("{diff}, in variant `{at}`"))?;
                    }
                }
                (a, b) => {
                    return Err(format!(
                        "variant `{at}` has {} for {writer} and {} for {reader}",
                        describe(a),
                        describe(b)
                    ))
                }
            }
        }
        Ok(())
    }
}

fn describe(fields: &Fields) -> String {
    match fields {
        Fields::Tuple(items) => format!("{} unnamed fields", items.len()),
        other => shape(other).to_owned(),
    }
}

/// Whether an integer written as `w` reads as `r`: varints widen, single bytes do not.
fn widens(w: &Type, r: &Type) -> bool {
    const UNSIGNED: [Type; 4] = [Type::U16, Type::U32, Type::U64, Type::U128];
    const SIGNED: [Type; 4] = [Type::I16, Type::I32, Type::I64, Type::I128];
    [UNSIGNED, SIGNED].iter().any(|class| {
        match (
            class.iter().position(|t| t == w),
            class.iter().position(|t| t == r),
        ) {
            (Some(a), Some(b)) => a <= b,
            _ => false,
        }
    })
}

/// What breaks between peers built from `old` and from `current`, in either role.
pub(crate) fn breaking_changes(old: &ServiceSchema, current: &ServiceSchema) -> Vec<String> {
    let mut changes = Vec::new();
    if old.name != current.name {
        changes.push(format!(
            "the service is called `{}` now and `{}` in the recorded schema: peers of one \
             cannot reach the other",
            current.name, old.name
        ));
        return changes;
    }
    for was in &old.methods {
        let Some(now) = current.method(&was.name) else {
            changes.push(format!(
                "the method `{}::{}` was removed: a client built from the recorded schema that \
                 calls it gets `Incompatible`",
                old.name, was.name
            ));
            continue;
        };
        if let Err(err) = check_call(&old.name, was, now) {
            changes.push(format!("a recorded client calling a current server: {err}"));
        }
        if let Err(err) = check_call(&old.name, now, was) {
            changes.push(format!("a current client calling a recorded server: {err}"));
        }
    }
    changes
}
