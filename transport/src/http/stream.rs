//! What the stream transports of the HTTPS port (WebSocket, SSE) share besides their
//! stream core (`crate::stream`): the connection metrics, the keepalive period, and the
//! Origin allow-list both check.

use std::time::Duration;

use hyper::StatusCode;
use hyper::header::{self, HeaderMap};

use super::{HttpOptions, Peer, Server};
use crate::metrics;

/// A stream connection counted in the connection metrics while it lives: accepted, and
/// open by role.
#[derive(Debug)]
pub(super) struct Open(::metrics::Gauge);

impl Open {
    /// Counts a connection of `transport` from `peer` as accepted and open.
    pub(super) fn new(transport: &'static str, peer: &Peer) -> Open {
        ::metrics::counter!(metrics::CONNECTIONS_ACCEPTED, "transport" => transport).increment(1);
        let gauge = ::metrics::gauge!(metrics::CONNECTIONS, "transport" => transport, "role" => metrics::role_label(peer.identity.as_ref()));
        gauge.increment(1.0);
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The keepalive period of a stream connection (WebSocket pings, SSE comments): every
/// `ws_ping_interval_ms`, and at least twice per idle timeout so a live peer's answer
/// always comes in time.
pub(super) fn keepalive(options: &HttpOptions, idle_timeout: Duration) -> Duration {
    Duration::from_millis(options.ws_ping_interval_ms)
        .min(idle_timeout / 2)
        .max(Duration::from_millis(super::WS_PING_INTERVAL_MS_MIN))
}

/// Why the node refuses to open a stream for `request` (status, code, message), if it
/// does: an Origin it does not allow ([`origin_allowed`]), or a shutdown under way.
pub(super) fn refusal<B: crate::gateway::Backend, T>(
    server: &Server<B>,
    request: &hyper::Request<T>,
) -> Option<(StatusCode, &'static str, &'static str)> {
    if !origin_allowed(
        request.headers(),
        request_host(request),
        &server.options.allowed_origins,
    ) {
        return Some((
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this Origin may not open streams on this node",
        ));
    }
    if server.gateway.shutdown().is_cancelled() {
        return Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is shutting down",
        ));
    }
    None
}

/// Whether a browser page whose request carries these `headers` may open a stream: no
/// `Origin` (not a browser), an Origin in the allow-list (compared without case, a trailing
/// `/` ignored; `*` allows any), or the node's own origin (`https://` + the request's
/// `Host`: the page the node serves itself, whatever name or port it was reached by).
fn origin_allowed(headers: &HeaderMap, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if let Some(own) = origin.strip_prefix("https://")
        && host.is_some_and(|host| host.eq_ignore_ascii_case(own))
    {
        return true;
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The authority a request was sent to: HTTP/2's `:authority` (in the URI), else the
/// HTTP/1.1 `Host` header.
fn request_host<T>(request: &hyper::Request<T>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn origins_are_compared_without_case_or_trailing_slash() {
        let allowed = vec!["https://market.example.com/".to_owned()];
        let with = |origin: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
            headers
        };
        let ok = with("https://MARKET.example.com");
        let bad = with("https://evil.example.com");
        assert!(origin_allowed(&ok, None, &allowed));
        assert!(!origin_allowed(&bad, None, &allowed));
        assert!(!origin_allowed(&ok, None, &[]));
        assert!(origin_allowed(&bad, None, &["*".to_owned()]));
        assert!(
            origin_allowed(&HeaderMap::new(), None, &[]),
            "not a browser"
        );
    }

    #[test]
    fn the_nodes_own_origin_is_allowed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:8443"),
        );
        assert!(origin_allowed(&headers, Some("127.0.0.1:8443"), &[]));
        assert!(!origin_allowed(&headers, Some("127.0.0.1:9443"), &[]));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8443"),
        );
        assert!(
            !origin_allowed(&headers, Some("127.0.0.1:8443"), &[]),
            "the node serves https only"
        );
    }
}
