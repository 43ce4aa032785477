//! The router of the HTTPS port, the probes (`/healthz`, `/readyz`), `/metrics`, and the
//! response helpers the handlers share.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{Peer, Server, admin, page, sse, ws};
use crate::gateway::Backend;

/// The body of a response built whole before it is sent.
pub(super) type Body = Full<Bytes>;
/// The body of any response: whole, or an SSE event stream.
pub(super) type AnyBody = http_body_util::Either<Body, sse::EventStream>;

/// The Prometheus text exposition format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Routes one request of the HTTPS port.
pub(super) async fn route<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<AnyBody> {
    let whole = match request.uri().path() {
        "/healthz" | "/readyz" | "/metrics" => probes_only(server, &request),
        ws::PATH => ws::upgrade(server, peer, request),
        sse::PATH => return sse::open(server, peer, &request),
        path if path == admin::COLLECTION || path.starts_with(admin::COLLECTION_SLASH) => {
            admin::handle(server, peer, request).await
        }
        path => match page::asset(path) {
            Some(asset) => page::serve(asset, &request),
            None => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
        },
    };
    whole.map(AnyBody::Left)
}

/// Serves the probes and `/metrics`; every other path is 404. The whole plain-HTTP metrics
/// listener.
pub(super) fn probes_only<B: Backend, T>(
    server: &Server<B>,
    request: &Request<T>,
) -> Response<Body> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    match path {
        // The process serves requests: alive; and which build it is.
        "/healthz" => {
            let build = crate::metrics::build();
            let body = format!("ok version={} commit={}\n", build.version, build.commit);
            text(StatusCode::OK, body)
        }
        "/readyz" if server.gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            if server.gateway.shutdown().is_cancelled() {
                "shutting down\n"
            } else {
                "recovering\n"
            },
        ),
        _ => {
            let mut response = text(StatusCode::OK, server.options.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            response
        }
    }
}

/// A plain-text response.
pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response of `value` (a `gavel.v1` message: canonical proto3 JSON).
pub(super) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        // Not reachable with the generated messages (no floats, no maps with non-string
        // keys), but a fault must not take the connection down.
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("could not encode the response: {e}"),
        ),
    }
}

/// A JSON error: `{"code": "...", "message": "..."}`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "message": message });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 405 with the methods the route allows.
pub(super) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this route allows {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
