//! What the stream transports of the HTTPS port (WebSocket, SSE) share when they write a
//! subscriber's outbox: taking what is due with the slow-consumer check, the per-transport
//! gauges each connection reports its share of, the delivered/conflated counters and the
//! delivery latency — and the Origin allow-list both check.

use std::time::Duration;

use hyper::StatusCode;
use hyper::header::{self, HeaderMap};
use tokio::time::Instant;

use super::{HttpOptions, Server};
use crate::clock::now_micros;
use crate::fanout::{Outgoing, Subscriber, hub};
use crate::metrics;

/// How often a subscriber's outbox is looked at while its connection has no room
/// (slow-consumer detection), in milliseconds.
pub(super) const STREAM_CHECK_MS: u64 = 50;
/// The stream timer of a transport that keeps one when nothing is pending.
pub(super) const STREAM_IDLE: Duration = Duration::from_secs(3600);

/// The subscriber fell too far behind: close its connection and count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlowConsumer;

/// One connection's stream side: what it last reported to the per-transport gauges (each
/// connection adds its deltas), its metric handles (looked up once, not per write) and the
/// batch being written.
#[derive(Debug)]
pub(super) struct StreamState {
    subscriptions: usize,
    bytes: usize,
    subscriptions_gauge: ::metrics::Gauge,
    bytes_gauge: ::metrics::Gauge,
    delivery: hub::Delivery,
    /// The messages taken for the current write.
    pub(super) batch: Vec<Outgoing>,
}

impl StreamState {
    /// Nothing reported yet, for a connection of `transport` (a metric label).
    pub(super) fn new(transport: &'static str) -> StreamState {
        StreamState {
            subscriptions: 0,
            bytes: 0,
            subscriptions_gauge: ::metrics::gauge!(metrics::STREAM_SUBSCRIPTIONS, "transport" => transport),
            bytes_gauge: ::metrics::gauge!(metrics::STREAM_QUEUE_BYTES, "transport" => transport),
            delivery: hub::Delivery::new(transport),
            batch: Vec::new(),
        }
    }

    /// Reports the subscriptions the connection holds now.
    pub(super) fn report_subscriptions(&mut self, now: usize) {
        if now != self.subscriptions {
            self.subscriptions_gauge
                .increment(now as f64 - self.subscriptions as f64);
            self.subscriptions = now;
        }
    }

    fn report_bytes(&mut self, now: usize) {
        if now != self.bytes {
            self.bytes_gauge.increment(now as f64 - self.bytes as f64);
            self.bytes = now;
        }
    }

    /// Takes back the connection's share of the gauges (it is closing).
    pub(super) fn report_closed(&mut self) {
        self.report_subscriptions(0);
        self.report_bytes(0);
    }

    /// Moves what is due in `subscriber`'s outbox into [`StreamState::batch`]: at most
    /// `room` messages and about `batch_bytes_max` bytes (at least one message when `room`
    /// is not zero). Counts them as delivered (the caller writes them now) and records
    /// their delivery latency. Returns when to look again (`None`: nothing is pending; a
    /// wake-up will come).
    pub(super) fn take_due(
        &mut self,
        subscriber: &Subscriber,
        room: usize,
        batch_bytes_max: usize,
    ) -> Result<Option<Instant>, SlowConsumer> {
        let now = std::time::Instant::now();
        let check = Instant::from_std(now) + Duration::from_millis(STREAM_CHECK_MS);
        if subscriber.is_slow(now) {
            return Err(SlowConsumer);
        }
        if room == 0 {
            // The gauge shows what waits while the connection cannot take it.
            self.report_bytes(subscriber.pending_bytes());
            return Ok(Some(check));
        }
        let (next, bytes) =
            subscriber.take_due(now, batch_bytes_max, room, &self.delivery, &mut self.batch);
        self.report_bytes(bytes);
        self.delivery.record(&self.batch, now_micros());
        Ok(match next {
            Some(due) => Some(Instant::from_std(due)),
            None if bytes > 0 => Some(check),
            None => None,
        })
    }
}

/// The keepalive timer of a stream connection (WebSocket pings, SSE comments): every
/// `ws_ping_interval_ms`, and at least twice per idle timeout so a live peer's answer
/// always comes in time; the first tick one period from now.
pub(super) fn keepalive(options: &HttpOptions, idle_timeout: Duration) -> tokio::time::Interval {
    let every = Duration::from_millis(options.ws_ping_interval_ms)
        .min(idle_timeout / 2)
        .max(Duration::from_millis(super::WS_PING_INTERVAL_MS_MIN));
    let mut interval = tokio::time::interval_at(Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Counts a connection closed as a slow consumer.
pub(super) fn count_slow_consumer(transport: &'static str) {
    ::metrics::counter!(metrics::STREAM_SLOW_CONSUMERS, "transport" => transport).increment(1);
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
