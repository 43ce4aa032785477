//! The browser page at `/`: a live list of auctions with their price, leader, time left,
//! watchers and a price chart, fed by the WebSocket JSON stream (`gavel.v1.json`, pattern
//! `>`; on reconnect it subscribes again with `resume` positions). Plain HTML, CSS and
//! JavaScript compiled into the binary (`include_str!`): no build step, no CDN.
//!
//! Headers: a Content-Security-Policy that allows only the node's own scripts, styles and
//! connections (no inline script or style, no framing, no forms), `nosniff`, no referrer,
//! `no-cache` (the assets change with the binary).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::response::{self, Body};

/// One file of the page.
#[derive(Clone, Copy, Debug)]
pub(super) struct Asset {
    content_type: &'static str,
    body: &'static str,
}

/// The page's files: path, content type, contents.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("page/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_str!("page/style.css"),
    ),
    (
        "/assets/icon.svg",
        "image/svg+xml",
        include_str!("page/icon.svg"),
    ),
];

/// What the page may load and connect to: only the node itself ('self' covers `wss://` of
/// the same host in CSP 3). Scripts and styles are files, so no `unsafe-inline`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, if it is one of the page's.
pub(super) fn asset(path: &str) -> Option<Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS
        .iter()
        .find(|(at, _, _)| *at == path)
        .map(|&(_, content_type, body)| Asset { content_type, body })
}

/// Serves `asset` (`GET` or `HEAD`).
pub(super) fn serve<T>(asset: Asset, request: &Request<T>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return response::method_not_allowed("GET, HEAD");
    }
    // hyper writes no body for HEAD, and keeps the GET's Content-Length.
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
