//! The calls middleware see: [`ServerCall`] and [`ClientCall`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::MiddlewareCall;
use crate::context::Metadata;
use crate::descriptor::{MethodInfo, ServiceDescriptor};
use crate::peer::Peer;

/// A call as server middleware sees it: before its arguments are decoded.
#[derive(Debug)]
pub struct ServerCall {
    pub(crate) service: &'static str,
    pub(crate) method: &'static MethodInfo,
    pub(crate) peer: Option<Arc<Peer>>,
    pub(crate) metadata: Metadata,
    pub(crate) deadline: Option<Instant>,
    pub(crate) body_len: usize,
}

impl ServerCall {
    /// The wire name of the service.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The method's name, as written in the trait.
    pub fn method(&self) -> &'static str {
        self.method.name
    }

    /// Everything known about the method (whether it is idempotent, streams, ...).
    pub fn method_info(&self) -> &'static MethodInfo {
        self.method
    }

    /// Who makes the call: address, IP and verified identity, as far as the listener knows
    /// (`None` for in-memory connections).
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_deref()
    }

    /// The metadata the caller sent (per-client and per-call pairs).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata, to add pairs the handler reads with
    /// [`context::metadata`](crate::context::metadata).
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(crate::clock::now()))
    }

    /// The size of the encoded arguments, in bytes.
    pub fn body_len(&self) -> usize {
        self.body_len
    }
}

impl MiddlewareCall for ServerCall {
    fn method_info(&self) -> &'static MethodInfo {
        self.method
    }
}

/// A call as client middleware sees it: encoded, not yet sent.
#[derive(Debug)]
pub struct ClientCall {
    pub(crate) service: &'static ServiceDescriptor,
    pub(crate) method: &'static MethodInfo,
    pub(crate) metadata: Metadata,
    pub(crate) deadline: Option<Instant>,
    pub(crate) body: Bytes,
}

impl ClientCall {
    /// The service it calls.
    pub fn service(&self) -> &'static ServiceDescriptor {
        self.service
    }

    /// The method's name, as written in the trait.
    pub fn method(&self) -> &'static str {
        self.method.name
    }

    /// Everything known about the method (whether it is idempotent, streams, ...).
    pub fn method_info(&self) -> &'static MethodInfo {
        self.method
    }

    /// The metadata the call will carry (the per-call pairs; a client's own pairs are
    /// added when it is sent).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata, to add pairs the server sees.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// When the call gives up, if it has a deadline (its own timeout or the one it
    /// inherits from the handler it is made in).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(crate::clock::now()))
    }

    /// The encoded arguments: equal arguments give equal bytes, so they can key a cache.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl MiddlewareCall for ClientCall {
    fn method_info(&self) -> &'static MethodInfo {
        self.method
    }
}
