//! Who is at the other end of a connection, as far as its listener can tell.
//!
//! A [`Listener`](crate::Listener) describes each connection it accepts with a [`Peer`]:
//! its address for logs and traces, its IP for per-address limits, and the identity the
//! transport verified (a TLS client certificate). The server hands the peer to its
//! [`Authorize`](crate::Authorize) hook, and handlers read it with
//! [`context::peer`](crate::context::peer).

use std::fmt;
use std::net::IpAddr;

use bytes::Bytes;

/// The other end of a connection: what the listener knows about it.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use rpc_core::{Identity, Peer};
///
/// let peer = Peer::new()
///     .with_addr("10.0.0.7:51234")
///     .with_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))
///     .with_identity(Identity::new(["billing.internal"], []));
/// assert_eq!(peer.to_string(), "10.0.0.7:51234 (billing.internal)");
/// assert!(peer.identity().is_some_and(|id| id.has_name("billing.internal")));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    addr: Option<String>,
    ip: Option<IpAddr>,
    identity: Option<Identity>,
}

impl Peer {
    /// A peer nothing is known about (an in-memory connection, say).
    pub fn new() -> Peer {
        Peer::default()
    }

    pub(crate) const fn unknown() -> Peer {
        Peer {
            addr: None,
            ip: None,
            identity: None,
        }
    }

    /// Sets its address as logs and traces show it (`IP:port`, `unix:/path`).
    pub fn with_addr(mut self, addr: impl Into<String>) -> Peer {
        self.addr = Some(addr.into());
        self
    }

    /// Sets its IP address, which [`Server::max_connections_per_ip`](crate::Server::max_connections_per_ip)
    /// counts connections by.
    pub fn with_ip(mut self, ip: IpAddr) -> Peer {
        self.ip = Some(ip);
        self
    }

    /// Sets the identity the transport verified.
    pub fn with_identity(mut self, identity: Identity) -> Peer {
        self.identity = Some(identity);
        self
    }

    /// Its address, as logs and traces show it.
    pub fn addr(&self) -> Option<&str> {
        self.addr.as_deref()
    }

    /// Its IP address, for a network connection.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The identity the transport verified (e.g. a TLS client certificate); `None` if it
    /// verified none.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether nothing is known about it.
    pub fn is_unknown(&self) -> bool {
        self.addr.is_none() && self.ip.is_none() && self.identity.is_none()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.addr, self.ip) {
            (Some(addr), _) => f.write_str(addr)?,
            (None, Some(ip)) => write!(f, "{ip}")?,
            (None, None) => f.write_str("unknown peer")?,
        }
        if let Some(name) = self.identity.as_ref().and_then(|id| id.names().first()) {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// An identity a transport verified, such as a TLS client certificate that chains to a
/// trusted authority: the names it was issued for, and the certificates themselves for
/// checks of your own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    names: Vec<String>,
    certificates: Vec<Bytes>,
}

impl Identity {
    /// An identity with these names (for a certificate, its DNS and other subject
    /// alternative names) and certificates (DER, the peer's own first).
    pub fn new(
        names: impl IntoIterator<Item = impl Into<String>>,
        certificates: impl IntoIterator<Item = Bytes>,
    ) -> Identity {
        Identity {
            names: names.into_iter().map(Into::into).collect(),
            certificates: certificates.into_iter().collect(),
        }
    }

    /// The names the identity was issued for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether it was issued for `name` (compared without regard to ASCII case, as DNS
    /// names are).
    pub fn has_name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The certificate chain, DER-encoded, the peer's own certificate first.
    pub fn certificates(&self) -> &[Bytes] {
        &self.certificates
    }
}
