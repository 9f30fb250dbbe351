//! The server's side of `Hello`: which service, and how the client's methods map onto it.

use std::collections::HashMap;
use std::sync::Arc;

use super::dispatch::Route;
use super::service::HostedService;
use crate::error::{ErrorKind, RpcError};
use crate::protocol::{self, Message, MAGIC, VERSION};

/// Checks the first frame of a connection and picks the service it asks for.
pub(crate) fn accept(
    frame: &[u8],
    services: &HashMap<&'static str, Arc<dyn HostedService>>,
) -> Result<(Arc<dyn HostedService>, Vec<Route>), RpcError> {
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
    let routes = methods
        .iter()
        .map(|wanted| match desc.method(wanted.name) {
            Some(ours) if ours.fingerprint == wanted.fingerprint => Ok(ours),
            Some(ours) => Err(Arc::from(format!(
                "the method `{}::{}` has a different signature on the server (fingerprint \
                 {:016x} there, {:016x} in the client): client and server were built from \
                 different versions of the trait; rebuild the older side",
                desc.name, wanted.name, ours.fingerprint, wanted.fingerprint
            ))),
            None => Err(Arc::from(format!(
                "the server's `{}` has no method `{}` (it has: {}); it runs another version \
                 of the trait",
                desc.name,
                wanted.name,
                desc.methods
                    .iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        })
        .collect();
    Ok((Arc::clone(hosted), routes))
}
