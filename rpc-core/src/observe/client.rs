//! The client's side of observing a call: its span, trace context and metrics.

use std::sync::Arc;

use tracing::field::Empty;
use tracing::Span;

use super::metrics::MethodMetrics;
use super::trace::TRACEPARENT;
use super::{record_trace, MethodTable, Observed, TraceContext};
use crate::context::{self, Metadata};
use crate::descriptor::ServiceDescriptor;
use crate::error::RpcError;

/// One client call being observed; see [`ClientCall::start`].
pub(crate) type ClientCall = Observed;

impl ClientCall {
    /// Starts observing a call of `desc`'s method at `method` as it is sent, with request
    /// `id` if it is known yet (a balancing client learns it per attempt) and `request_bytes`
    /// of encoded arguments. Adds the call's `traceparent` to `metadata` if it is traced: a
    /// subscriber wants its span, or it is made within a trace.
    #[inline]
    pub(crate) fn start(
        table: &MethodTable,
        desc: &'static ServiceDescriptor,
        method: u32,
        id: Option<u64>,
        request_bytes: usize,
        metadata: &mut Metadata,
    ) -> ClientCall {
        let metrics = table.get(method as usize);
        let parent = context::trace();
        if metrics.is_none() && parent.is_none() && !super::info_enabled() {
            return Observed::off();
        }
        start(metrics, desc, method, id, request_bytes, parent, metadata)
    }
}

#[inline(never)]
fn start(
    metrics: Option<&Arc<MethodMetrics>>,
    desc: &'static ServiceDescriptor,
    method: u32,
    id: Option<u64>,
    request_bytes: usize,
    parent: Option<TraceContext>,
    metadata: &mut Metadata,
) -> ClientCall {
    let span = client_span(desc, method, id);
    if !span.is_disabled() || parent.is_some() {
        trace_call(&span, parent, metadata);
    }
    Observed::begin(span, metrics, request_bytes)
}

fn client_span(desc: &'static ServiceDescriptor, method: u32, id: Option<u64>) -> Span {
    tracing::info_span!(
        target: super::TARGET,
        "rpc.client",
        service = desc.name,
        method = desc.methods.get(method as usize).map_or("?", |m| m.name),
        request_id = id,
        peer = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_id = Empty,
        outcome = Empty,
        duration_us = Empty,
    )
}

/// Gives the call its trace context: the one its caller put in `metadata` already, or one
/// continuing `parent` (the trace of the handler it is made from), or a new trace.
#[inline(never)]
fn trace_call(span: &Span, parent: Option<TraceContext>, metadata: &mut Metadata) {
    let given = metadata
        .get(TRACEPARENT)
        .map(|v| TraceContext::parse_bytes(v));
    let trace = match given {
        // Set by the caller (from another tracing system, say): sent as it is.
        Some(Some(trace)) => trace,
        Some(None) => return,
        None => {
            let trace = parent.map_or_else(TraceContext::root, |parent| parent.child());
            metadata.insert(TRACEPARENT, trace.to_string());
            trace
        }
    };
    if !span.is_disabled() {
        record_trace(span, &trace, parent.map(|parent| parent.span_id()));
    }
}

/// Records an attempt of a balancing client's call on its span: the request id and the
/// endpoint, and an event if it failed.
pub(crate) fn attempt(
    span: &Span,
    attempt: u32,
    id: u64,
    peer: &str,
    result: Result<(), &RpcError>,
) {
    if span.is_disabled() {
        return;
    }
    span.record("request_id", id);
    span.record("peer", peer);
    if let Err(err) = result {
        tracing::info!(
            target: super::TARGET,
            parent: span,
            attempt,
            request_id = id,
            peer,
            outcome = err.kind().as_str(),
            error = err.message(),
            "rpc attempt failed"
        );
    }
}
