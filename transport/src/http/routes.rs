//! The router of the HTTPS port, the probes (`/healthz`, `/readyz`) and `/metrics`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::response::{Body, error, method_not_allowed, text};
use super::sse::AnyBody;
use super::{Peer, Server, admin, page, sse, ws};
use crate::gateway::Backend;

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
        path if path == admin::COLLECTION
            || path == admin::CLUSTER
            || path.starts_with(admin::COLLECTION_SLASH) =>
        {
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
        "/readyz" if server.gateway.is_ready() => {
            let detail =
                (server.gateway.backend()).map_or_else(String::new, |b| b.readiness_detail());
            text(StatusCode::OK, format!("ready\n{detail}"))
        }
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
