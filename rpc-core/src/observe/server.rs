//! The server's side of observing a call: its span, trace context and metrics.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::field::Empty;
use tracing::Span;

use super::metrics::MethodMetrics;
use super::{record_trace, MethodTable, Observed, Outcome, TraceContext};
use crate::context::CallContext;
use crate::descriptor::{MethodInfo, ServiceDescriptor};
use crate::error::RpcError;

/// The server side's metric handles of every hosted service, made once per server.
#[derive(Default)]
pub(crate) struct ServerMetrics {
    by_service: HashMap<&'static str, MethodTable>,
}

impl ServerMetrics {
    /// Handles for each of `services`, from the recorder installed now.
    pub(crate) fn new(services: impl IntoIterator<Item = &'static ServiceDescriptor>) -> Self {
        ServerMetrics {
            by_service: services
                .into_iter()
                .map(|desc| (desc.name, MethodTable::server(desc)))
                .collect(),
        }
    }

    /// The handles of the service called `name`, by its own method index.
    pub(crate) fn service(&self, name: &str) -> MethodTable {
        self.by_service.get(name).cloned().unwrap_or_default()
    }
}

/// Observes the calls of one connection.
pub(crate) struct ServerObserver {
    service: &'static str,
    /// The client, if the listener could tell (a span field).
    peer: Option<Arc<str>>,
    /// By the client's method index (as requests name methods); empty without a recorder.
    metrics: Box<[Option<Arc<MethodMetrics>>]>,
}

impl ServerObserver {
    /// An observer for a connection to `desc` whose client's methods map to `routes`.
    pub(crate) fn new(
        desc: &'static ServiceDescriptor,
        table: &MethodTable,
        routes: &[Result<&'static MethodInfo, Arc<str>>],
        peer: Option<Arc<str>>,
    ) -> ServerObserver {
        let metrics = if !table.is_recorded() {
            Box::default()
        } else {
            routes
                .iter()
                .map(|route| {
                    let info = route.as_ref().ok()?;
                    let index = desc.methods.iter().position(|m| std::ptr::eq(m, *info))?;
                    table.get(index).cloned()
                })
                .collect()
        };
        ServerObserver {
            service: desc.name,
            peer,
            metrics,
        }
    }

    /// Starts observing request `id` of the client's method at `method`, which is `info`,
    /// with `request_bytes` of arguments, as its handler is made. If a subscriber wants the
    /// span and the request came without a trace, starts one in the handler's `context`, for
    /// the calls the handler makes.
    #[inline]
    pub(crate) fn start(
        &self,
        method: u32,
        info: &'static MethodInfo,
        id: u64,
        request_bytes: usize,
        context: &mut Option<CallContext>,
    ) -> Observed {
        let metrics = self.metrics(method);
        if metrics.is_none() && !super::info_enabled() {
            return Observed::off();
        }
        self.start_observed(metrics, info, id, request_bytes, context)
    }

    #[inline(never)]
    fn start_observed(
        &self,
        metrics: Option<&Arc<MethodMetrics>>,
        info: &'static MethodInfo,
        id: u64,
        request_bytes: usize,
        context: &mut Option<CallContext>,
    ) -> Observed {
        let span = server_span(self.service, Some(info.name), id);
        if let Some(peer) = &self.peer {
            span.record("peer", &**peer);
        }
        if !span.is_disabled() {
            trace_handler(&span, context);
        }
        Observed::begin(span, metrics, request_bytes)
    }

    /// A request that was answered with `err` before any handler ran.
    pub(crate) fn rejected(
        &self,
        routes: &[Result<&'static MethodInfo, Arc<str>>],
        method: u32,
        id: u64,
        request_bytes: usize,
        err: &RpcError,
    ) {
        let info = routes.get(method as usize).and_then(|r| r.as_ref().ok());
        let span = server_span(self.service, info.map(|info| info.name), id);
        if let Some(peer) = &self.peer {
            span.record("peer", &**peer);
        }
        Observed::begin(span, self.metrics(method), request_bytes)
            .finish(Outcome::Failed(err.kind()), 0);
    }

    #[inline]
    fn metrics(&self, method: u32) -> Option<&Arc<MethodMetrics>> {
        self.metrics.get(method as usize)?.as_ref()
    }
}

fn server_span(service: &'static str, method: Option<&'static str>, id: u64) -> Span {
    tracing::info_span!(
        target: super::TARGET,
        "rpc.server",
        service,
        method,
        request_id = id,
        peer = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_id = Empty,
        outcome = Empty,
        duration_us = Empty,
    )
}

/// Gives the server span an id of its own in the caller's trace (a child of the client's
/// span), or starts a trace when the call came without one, and makes it the handler's
/// context, so the calls the handler makes name the server span as their parent.
#[inline(never)]
fn trace_handler(span: &Span, context: &mut Option<CallContext>) {
    let incoming = context.as_ref().and_then(CallContext::trace);
    let trace = match incoming {
        Some(incoming) => incoming.child(),
        None => TraceContext::root(),
    };
    context
        .get_or_insert_with(CallContext::default)
        .set_trace(trace);
    record_trace(span, &trace, incoming.map(|incoming| incoming.span_id()));
}
