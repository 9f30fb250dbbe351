//! The HTTP gateway: JSON over HTTP/1.1 on the server's own listeners.
//!
//! A connection whose first bytes are an HTTP request is served by hyper. Each call is made
//! on an in-process connection to this same server, one per service the HTTP connection
//! uses, carrying the HTTP client's peer: so it takes exactly the path of a binary call
//! (the `Authorize` hook, deadlines, limits, tracing, metrics, shutdown), and the JSON is
//! turned into the method's request, and its response back into JSON, by the service's
//! schema ([`JsonClient`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::{serve_transport, Shared};
use crate::client::Client;
use crate::error::{ErrorKind, RpcError};
use crate::json::{kind_name, CallOptions, JsonCallError, JsonClient, JsonReply};
use crate::peer::Peer;
use crate::schema::ServiceSchema;
use crate::transport::RawIo;

/// The header giving a call's timeout in milliseconds.
pub(crate) const TIMEOUT_HEADER: &str = "rpc-timeout-ms";

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Serves one HTTP connection until it closes or the server shuts down.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    io: Box<dyn RawIo>,
    buffered: Bytes,
    shutdown: CancellationToken,
    peer: Peer,
) -> io::Result<()> {
    let gateway = Arc::new(Gateway {
        shared,
        peer,
        shutdown: shutdown.clone(),
        clients: Mutex::new(HashMap::new()),
    });
    let service = hyper::service::service_fn(move |request| {
        let gateway = Arc::clone(&gateway);
        async move { Ok::<_, Infallible>(gateway.handle(request).await) }
    });
    let io = hyper_util::rt::TokioIo::new(Rewind { buffered, io });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        biased;
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            // Requests in progress finish; the connection then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    served.map_err(io::Error::other)
}

struct Gateway {
    shared: Arc<Shared>,
    peer: Peer,
    shutdown: CancellationToken,
    /// One in-process connection per service this HTTP connection has called.
    clients: Mutex<HashMap<&'static str, JsonClient>>,
}

impl Gateway {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().trim_start_matches('/').to_owned();
        match (request.method(), path.as_str()) {
            (&Method::GET, "") => self.listing(),
            (&Method::GET, service) => match self.schema(service) {
                Some(schema) => reply_json(
                    StatusCode::OK,
                    &serde_json::to_value(&schema).unwrap_or_default(),
                ),
                None => not_found(format!("this server does not host the service `{service}`")),
            },
            (&Method::POST, target) => match target.rsplit_once('/') {
                Some((service, method)) => self.call(service, method, request).await,
                None => not_found(format!(
                    "`/{target}` names no method: call `POST /<service>/<method>`"
                )),
            },
            _ => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use `GET /` (the services), `GET /<service>` (its schema) or `POST \
                 /<service>/<method>` (a call)"
                    .into(),
            ),
        }
    }

    /// `GET /`: every hosted service's schema.
    fn listing(&self) -> Response<Body> {
        let mut names: Vec<&'static str> = self.shared.services.keys().copied().collect();
        names.sort_unstable();
        let services: Vec<Value> = names
            .iter()
            .filter_map(|name| self.schema(name))
            .map(|schema| serde_json::to_value(&schema).unwrap_or_default())
            .collect();
        reply_json(StatusCode::OK, &json!({ "services": services }))
    }

    fn schema(&self, service: &str) -> Option<ServiceSchema> {
        Some(self.shared.services.get(service)?.descriptor().described())
    }

    async fn call(
        &self,
        service: &str,
        method: &str,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let Some(client) = self.client(service) else {
            return not_found(format!("this server does not host the service `{service}`"));
        };
        let mut options = CallOptions::default();
        for (name, value) in request.headers() {
            if name.as_str() == TIMEOUT_HEADER {
                match value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    Some(ms) => options.timeout = Some(Duration::from_millis(ms)),
                    None => {
                        return bad_request(format!(
                            "the header `{TIMEOUT_HEADER}` must be a whole number of milliseconds"
                        ))
                    }
                }
            } else if !HOP_BY_HOP.contains(&name.as_str()) {
                options.metadata.push((
                    name.as_str().to_owned(),
                    Bytes::copy_from_slice(value.as_bytes()),
                ));
            }
        }
        let limit = self.shared.config.max_frame_size;
        let body = match read_body(request.into_body(), limit).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let args = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(args)) => args,
                Ok(_) => {
                    return bad_request(
                        "the body must be a JSON object of the arguments by name".into(),
                    )
                }
                Err(err) => return bad_request(format!("the body is not JSON: {err}")),
            }
        };
        match client.call(method, &args, &options).await {
            Ok(JsonReply::Value(value)) => reply_json(StatusCode::OK, &value),
            Ok(JsonReply::Error(value)) => reply_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "error": { "kind": "application", "value": value } }),
            ),
            Ok(JsonReply::Stream(stream)) => {
                let lines = stream.map(|item| {
                    let line = match item {
                        Ok(value) => value,
                        Err(err) => error_body(&err),
                    };
                    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                    bytes.push(b'\n');
                    Ok::<_, Infallible>(Frame::data(Bytes::from(bytes)))
                });
                let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(lines)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                response
            }
            Err(JsonCallError::NoSuchMethod(why)) => not_found(why),
            Err(JsonCallError::BadRequest(why)) => bad_request(why),
            Err(JsonCallError::Unsupported(why)) => {
                problem(StatusCode::NOT_IMPLEMENTED, "unsupported", why)
            }
            Err(JsonCallError::Rpc(err)) => {
                let mut response = reply_json(status_of(err.kind()), &error_body(&err));
                if let Some(after) = err.retry_after() {
                    // Whole seconds, rounded up: what `Retry-After` can say.
                    let seconds = after.as_millis().div_ceil(1000).max(1);
                    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                        response
                            .headers_mut()
                            .insert(hyper::header::RETRY_AFTER, value);
                    }
                }
                response
            }
        }
    }

    /// The client of `service` for this HTTP connection, connected on first use.
    fn client(&self, service: &str) -> Option<JsonClient> {
        let hosted = self.shared.services.get(service)?;
        let desc = hosted.descriptor();
        let mut clients = crate::lock::lock(&self.clients);
        if let Some(client) = clients.get(desc.name) {
            return Some(client.clone());
        }
        let schema = desc.described();
        let (client_end, server_end) = crate::memory::pair();
        tokio::spawn(serve_transport(
            Arc::clone(&self.shared),
            server_end,
            self.shutdown.clone(),
            (self.shared.stats.open(), None),
            self.peer.clone(),
        ));
        let client = JsonClient::over(Client::new(client_end, desc), Arc::new(schema));
        clients.insert(desc.name, client.clone());
        Some(client)
    }
}

/// What a body may send beyond the limit that is still read (and dropped) before the
/// answer, so the client, still sending, reads the answer rather than a reset connection.
const DRAIN_LIMIT: usize = 64 << 20;

/// The request body, at most `limit` bytes of it.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    let mut read = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| bad_request(format!("the request body could not be read: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit.saturating_add(DRAIN_LIMIT) {
            break;
        }
        if total <= limit {
            read.extend_from_slice(&data);
        }
    }
    if total > limit {
        return Err(too_large(limit));
    }
    Ok(read.freeze())
}

/// Headers that describe the HTTP exchange rather than the call: not passed on as metadata.
const HOP_BY_HOP: [&str; 12] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
    "content-type",
    "accept",
    "proxy-connection",
];

/// The HTTP status of an error of kind `kind`.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Disconnected | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Incompatible | ErrorKind::Protocol => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_body(err: &RpcError) -> Value {
    let mut error = json!({ "kind": kind_name(err.kind()), "message": err.message() });
    if let Some(after) = err.retry_after() {
        error["retry_after_ms"] = json!(after.as_millis());
    }
    json!({ "error": error })
}

fn reply_json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(BodyExt::boxed_unsync(Full::new(Bytes::from(bytes))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn problem(status: StatusCode, kind: &str, message: String) -> Response<Body> {
    reply_json(
        status,
        &json!({ "error": { "kind": kind, "message": message } }),
    )
}

fn bad_request(message: String) -> Response<Body> {
    problem(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: String) -> Response<Body> {
    problem(StatusCode::NOT_FOUND, "not_found", message)
}

fn too_large(limit: usize) -> Response<Body> {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the request body is larger than this server's limit of {limit} bytes (max_frame_size)"
        ),
    )
}

/// The connection with the bytes the framer already read put back in front.
struct Rewind {
    buffered: Bytes,
    io: Box<dyn RawIo>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.buffered.is_empty() {
            let n = self.buffered.len().min(buf.remaining());
            let head = self.buffered.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
