//! The server's side of `Hello`: which service, and how the client's methods map onto it.

use std::collections::HashMap;
use std::sync::Arc;

use super::dispatch::Route;
use super::service::HostedService;
use crate::compress::{self, Codec, Compression};
use crate::descriptor::ServiceDescriptor;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::{self, Message, WireMethod, MAGIC, VERSION};
use crate::schema::{Compiled, ServiceSchema};

/// What an accepted `Hello` gives the connection.
pub(crate) struct Accepted {
    pub(crate) service: Arc<dyn HostedService>,
    pub(crate) routes: Vec<Route>,
    /// The codec picked from the client's offer, if it made one and this server has one of
    /// its codecs.
    pub(crate) codec: Option<Codec>,
}

/// Checks the first frame of a connection and picks the service it asks for, and the
/// compression codec if the client offered some that `compression` has.
pub(crate) fn accept(
    frame: &[u8],
    services: &HashMap<&'static str, Arc<dyn HostedService>>,
    compression: Option<&Compression>,
) -> Result<Accepted, RpcError> {
    let message = Message::decode(frame).map_err(|err| {
        RpcError::protocol(format!(
            "expected a Hello as the first message, but got {}",
            protocol::describe_bad_frame(frame, &err)
        ))
    })?;
    let Message::Hello {
        magic,
        version,
        service,
        methods,
    } = message
    else {
        return Err(RpcError::protocol(format!(
            "the first message on a connection must be Hello, not {}",
            message.name()
        )));
    };
    if magic != MAGIC {
        return Err(RpcError::protocol(format!(
            "the Hello does not start with this protocol's magic bytes {MAGIC:?} (got {magic:?}): \
             the peer speaks another protocol"
        )));
    }
    if version != VERSION {
        return Err(RpcError::new(
            ErrorKind::Incompatible,
            format!(
                "the client speaks protocol version {version}, this server speaks version \
                 {VERSION}; upgrade the older side"
            ),
        ));
    }
    let Some(hosted) = services.get(service) else {
        let mut hosted: Vec<&str> = services.keys().copied().collect();
        hosted.sort_unstable();
        let hosted = if hosted.is_empty() {
            "no services".to_string()
        } else {
            hosted
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(RpcError::new(
            ErrorKind::Incompatible,
            format!(
                "this server does not host the service `{service}`; it hosts {hosted}: check \
                 the address the client connects to"
            ),
        ));
    };
    let desc = hosted.descriptor();
    let ours = desc.compiled_schema();
    let (methods, theirs) = protocol::split_schema_entry(&methods);
    let has_entry = theirs.is_some();
    // The offer comes right before the schema entry (which stays last for servers that
    // predate the offer).
    let (methods, offer) = compress::split_offer(methods);
    let codec = offer.and_then(|offer| compression?.pick(offer));
    // The common case, a client of the same build: the same text, nothing to compare.
    let same_build =
        matches!((ours, theirs), (Some(ours), Some(theirs)) if ours.hello_json() == theirs);
    let theirs: Option<ServiceSchema> = match theirs {
        Some(json) if !same_build => serde_json::from_str(json).ok(),
        _ => None,
    };
    let mut routes: Vec<Route> = methods
        .iter()
        .map(|wanted| route(desc, ours, theirs.as_ref(), same_build, wanted))
        .collect();
    if offer.is_some() {
        // Its index is taken: a request naming it is answered like one of an unknown method.
        routes.push(Err(Arc::from(
            "the client's compression offer is not a method",
        )));
    }
    if has_entry {
        routes.push(Err(Arc::from("the client's schema entry is not a method")));
    }
    Ok(Accepted {
        service: Arc::clone(hosted),
        routes,
        codec,
    })
}

/// Where the client's method `wanted` goes on this service: by schema when both sides have
/// one for it, else by the fingerprint of its signature.
fn route(
    desc: &ServiceDescriptor,
    ours: Option<&Compiled>,
    theirs: Option<&ServiceSchema>,
    same_build: bool,
    wanted: &WireMethod<'_>,
) -> Route {
    let Some(method) = desc.method(wanted.name) else {
        return Err(Arc::from(format!(
            "the server's `{}` has no method `{}` (it has: {}); it runs another version of the \
             trait",
            desc.name,
            wanted.name,
            desc.methods
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if same_build {
        return Ok(method);
    }
    let by_schema = ours
        .zip(theirs)
        .and_then(|(ours, theirs)| Some((ours.schema(), theirs.method(wanted.name)?)));
    match by_schema {
        Some((ours, client)) => match ours.check_call(client) {
            Ok(()) => Ok(method),
            Err(message) => Err(Arc::from(message)),
        },
        None if method.fingerprint == wanted.fingerprint => Ok(method),
        None => Err(Arc::from(format!(
            "the method `{}::{}` has a different signature on the server (fingerprint \
             {:016x} there, {:016x} in the client): client and server were built from \
             different versions of the trait; rebuild the older side",
            desc.name, wanted.name, method.fingerprint, wanted.fingerprint
        ))),
    }
}
