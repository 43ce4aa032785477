//! Server-sent events: `GET /v1/sse?topic=…&pattern=…&interval_ms=…&resume=…`, the price
//! streams of the WebSocket endpoint for clients that only listen (a browser's
//! `EventSource`, `curl -N`). `docs/sse.md` is its reference.
//!
//! One request is one subscription: the query is turned into the `Subscribe` a WebSocket
//! client would send and handed to the same [`Session`]; the answer decides the status (a
//! refusal is a 400 naming the problem, before any event). Then a task per stream moves what
//! is due from the subscriber's outbox into the response body, several events per chunk,
//! through a queue of one chunk ([`CHUNKS_MAX`]): one event per `ServerMessage`, `data:`
//! its canonical proto3 JSON (as `gavel.v1.json` sends it), `id:` its position. The task
//! takes the next chunk's updates only once the HTTP layer took the last chunk and flushed
//! it into the kernel with the kernel below `stream_unsent_bytes_max` unsent bytes (the
//! socket is paced, `paced`); the HTTP/2 send buffer per stream is bounded the same. A slow
//! reader's updates so wait, conflated, in the outbox, and the next chunk it gets is the
//! latest state.
//!
//! # Event ids and `Last-Event-ID`
//!
//! An event about one auction (snapshot, price update, close, settlement) has the id
//! `<epoch>.<auction>.<seq>`; other events (`subscribed`, errors, `snapshotRequired`) have
//! none, so the client's last id stays the last position it saw. The node keeps nothing per
//! client: a reconnect's `Last-Event-ID` (or `resume` in the query, a position per auction
//! for clients that track them) is a `Subscribe.resume` position. That is enough for a
//! resume without missed or stale state because every stream message carries its auction's
//! whole current state (conflation: a watcher is owed the latest state of each auction,
//! never the ones in between): an auction whose position the client names and that has not
//! moved is not sent again; every other matching auction comes as one snapshot of its
//! current state; an older epoch gets `snapshotRequired` first. What the id cannot say (the
//! positions of auctions other than the last event's) costs one snapshot per such auction
//! at reconnect, never a gap.
//!
//! # Limits and ends
//!
//! Keepalive comments every `ws_ping_interval_ms` (at most half of `idle_timeout_ms`). A
//! subscriber over its outbound bound past the timeout gets an `ERROR_CODE_SLOW_CONSUMER`
//! event (if it fits) and the stream ends (counted in
//! `gavel_stream_slow_consumer_disconnects_total{transport="sse"}`); a peer that takes
//! nothing for `idle_timeout_ms` is dropped (`gavel_connections_refused_total{reason=
//! "stalled"}`); at shutdown an `ERROR_CODE_SHUTTING_DOWN` event ends every stream.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::response::{self, Body};
use super::stream;
use super::{Peer, Server};
use crate::clock::sleep_until;
use crate::fanout::{Outgoing, Pattern};
use crate::gateway::Backend;
use crate::metrics;
use crate::session::Session;
#[cfg(test)]
use crate::session::error_message;
use crate::stream::{Encoding, End, Event, SSE, StreamCore};

/// The path of the endpoint.
pub const PATH: &str = "/v1/sse";
/// The metric label of SSE streams.
const TRANSPORT: &str = "sse";
/// Chunks queued for one response body; a full queue leaves updates conflating in the
/// subscriber's outbox.
pub(super) const CHUNKS_MAX: usize = 1;
/// Positions a query may name in `resume` (the URI's length bounds them too).
pub const RESUME_POSITIONS_MAX: usize = 1024;
/// The reconnection delay the node suggests to `EventSource` clients, in milliseconds.
const RETRY_MS: u64 = 1_000;

/// The body of any response of the HTTPS port: whole, or an SSE event stream.
pub(super) type AnyBody = http_body_util::Either<Body, EventStream>;

/// A stream's response body: the chunks its task queues, until the task drops the sender.
#[derive(Debug)]
pub(super) struct EventStream {
    chunks: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A stream position: `<epoch>.<auction>.<seq>`, the event id and the `resume` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    epoch: u64,
    auction: u64,
    seq: u64,
}

impl Position {
    fn parse(text: &str) -> Option<Position> {
        let mut parts = text.trim().split('.').map(|p| {
            // Digits only: `u64::from_str` would take a leading `+`.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u64>().ok()
        });
        let position = Position {
            epoch: parts.next()??,
            auction: parts.next()??,
            seq: parts.next()??,
        };
        parts.next().is_none().then_some(position)
    }

    /// The position a stream message is at, if it is about one auction's state.
    fn of(message: &pb::ServerMessage) -> Option<Position> {
        let (epoch, auction, seq) = match message.body.as_ref()? {
            Reply::PriceUpdate(u) => (u.epoch, u.auction_id, u.seq),
            Reply::AuctionSnapshot(s) => (s.epoch, s.rules.as_ref()?.auction_id, s.seq),
            Reply::AuctionClosed(c) => (c.epoch, c.auction_id, c.seq),
            Reply::AuctionSettled(s) => (s.epoch, s.auction_id, s.seq),
            _ => return None,
        };
        Some(Position {
            epoch,
            auction,
            seq,
        })
    }

    fn stream_position(self) -> pb::StreamPosition {
        pb::StreamPosition {
            auction_id: self.auction,
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

/// Appends one event for `message` to `out`.
fn encode_event(message: &pb::ServerMessage, out: &mut BytesMut) {
    if let Some(p) = Position::of(message) {
        out.put_slice(format!("id: {}.{}.{}\n", p.epoch, p.auction, p.seq).as_bytes());
    }
    out.put_slice(b"data: ");
    match serde_json::to_vec(message) {
        // Canonical JSON has no raw line breaks (they are escaped inside strings).
        Ok(json) => out.put_slice(&json),
        // Not reachable with the generated messages (no floats); still no panic.
        Err(e) => out.put_slice(
            format!(
                r#"{{"error":{{"code":"ERROR_CODE_INTERNAL","message":"encoding failed: {e}"}}}}"#
            )
            .as_bytes(),
        ),
    }
    out.put_slice(b"\n\n");
}

/// Why a query was refused: the error code (`bad_query`, `bad_topic`) and a message.
#[derive(Debug, PartialEq, Eq)]
struct BadQuery(&'static str, String);

impl BadQuery {
    fn query(message: String) -> BadQuery {
        BadQuery("bad_query", message)
    }
}

/// A parsed query: the `Subscribe` to make.
fn parse_query(query: &str, last_event_id: Option<&str>) -> Result<pb::Subscribe, BadQuery> {
    let mut subscribe = pb::Subscribe::default();
    let mut interval = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)
            .ok_or_else(|| BadQuery::query(format!("bad escape in {pair:?}")))?;
        let value = percent_decode(value)
            .ok_or_else(|| BadQuery::query(format!("bad escape in {pair:?}")))?;
        match key.as_str() {
            "topic" | "pattern" => {
                let parsed = if key == "topic" {
                    Pattern::exact(&value)
                } else {
                    Pattern::parse(&value)
                };
                if let Err(e) = parsed {
                    return Err(BadQuery("bad_topic", format!("{key} {value:?}: {e}")));
                }
                if key == "topic" {
                    subscribe.topics.push(value);
                } else {
                    subscribe.patterns.push(value);
                }
            }
            "interval_ms" => {
                if interval.is_some() {
                    return Err(BadQuery::query("interval_ms is given twice".into()));
                }
                let ms = value.parse::<u32>().map_err(|_| {
                    BadQuery::query(format!(
                        "interval_ms must be a whole number of milliseconds, not {value:?}"
                    ))
                })?;
                interval = Some(ms);
            }
            "resume" => {
                if subscribe.resume.len() >= RESUME_POSITIONS_MAX {
                    return Err(BadQuery::query(format!(
                        "more than {RESUME_POSITIONS_MAX} resume positions"
                    )));
                }
                let position = Position::parse(&value).ok_or_else(|| {
                    BadQuery::query(format!(
                        "resume must be <epoch>.<auction>.<seq>, not {value:?}"
                    ))
                })?;
                subscribe.resume.push(position.stream_position());
            }
            other => {
                return Err(BadQuery::query(format!(
                    "unknown parameter {other:?} (topic, pattern, interval_ms, resume)"
                )));
            }
        }
    }
    if subscribe.topics.is_empty() && subscribe.patterns.is_empty() {
        return Err(BadQuery::query(
            "name at least one topic=… or pattern=… (e.g. pattern=energy.eu.>)".into(),
        ));
    }
    if let Some(id) = last_event_id.filter(|id| !id.trim().is_empty()) {
        let position = Position::parse(id).ok_or_else(|| {
            BadQuery::query(format!(
                "Last-Event-ID must be an id this node sent (<epoch>.<auction>.<seq>), not {id:?}"
            ))
        })?;
        subscribe.resume.push(position.stream_position());
    }
    subscribe.interval_ms = interval.unwrap_or(0);
    Ok(subscribe)
}

/// Decodes `%XX` escapes and `+` (a space, as HTML forms and `URLSearchParams` encode it);
/// `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response<AnyBody> {
    metrics::request_error(TRANSPORT, "bad_request");
    tracing::debug!(code, message, "SSE request refused");
    response::error(status, code, message).map(AnyBody::Left)
}

/// Answers `GET /v1/sse`: 200 and a task feeding the event stream, or a refusal.
pub(super) fn open<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    request: &Request<Incoming>,
) -> Response<AnyBody> {
    if request.method() != Method::GET {
        return response::method_not_allowed("GET").map(AnyBody::Left);
    }
    if let Some((status, code, message)) = stream::refusal(server, request) {
        return refuse(status, code, message);
    }
    let subscribe = match subscribe_request(request) {
        Ok(subscribe) => subscribe,
        Err(refusal) => return *refusal,
    };
    let mut session = Session::new(
        Arc::clone(&server.gateway),
        peer.identity.clone(),
        TRANSPORT,
    );
    let mut replies = Vec::new();
    let request = pb::ClientMessage {
        request_id: 0,
        body: Some(pb::client_message::Body::Subscribe(subscribe)),
    };
    // A subscription never waits for the log.
    let _no_durable_wait = session.handle(request, &mut replies);
    let answer = replies.first().and_then(|r| r.body.as_ref());
    let (Some(Reply::Subscribed(subscribed)), true) = (answer, session.subscriber().is_some())
    else {
        if let Some(subscriber) = session.subscriber() {
            server.gateway.hub().disconnect(subscriber);
        }
        let (code, message) = match answer {
            Some(Reply::Error(e)) if e.code == pb::ErrorCode::LimitExceeded as i32 => {
                ("limit_exceeded", e.message.as_str())
            }
            Some(Reply::Error(e)) => ("bad_topic", e.message.as_str()),
            _ => ("internal", "the subscription was not made"),
        };
        return response::error(StatusCode::BAD_REQUEST, code, message).map(AnyBody::Left);
    };

    let body = spawn_feed(server, peer, session, *subscribed);
    event_stream_response(body)
}

/// The `Subscribe` a request asks for: its query and `Last-Event-ID`; else the refusal.
fn subscribe_request(request: &Request<Incoming>) -> Result<pb::Subscribe, Box<Response<AnyBody>>> {
    let last_event_id = match request.headers().get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err(Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "Last-Event-ID is not text",
            )));
        }
    };
    parse_query(request.uri().query().unwrap_or(""), last_event_id).map_err(
        |BadQuery(code, message)| Box::new(refuse(StatusCode::BAD_REQUEST, code, &message)),
    )
}

/// Queues the stream's first chunk (the reconnection delay and `subscribed`) and starts the
/// task that feeds the rest; returns the body's receiving end.
fn spawn_feed<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    session: Session<B>,
    subscribed: pb::Subscribed,
) -> mpsc::Receiver<Bytes> {
    let (chunks, body) = mpsc::channel(CHUNKS_MAX);
    let now = Instant::now();
    let every = stream::keepalive(&server.options, server.gateway.limits().idle_timeout());
    let mut core =
        StreamCore::new(session, SseEvents::default(), &SSE, now).with_keepalive(every, now);
    core.send(&pb::ServerMessage {
        request_id: 0,
        body: Some(Reply::Subscribed(subscribed)),
    });
    let mut first = BytesMut::new();
    if core.poll_write(now, &mut first) {
        // Invariant: the queue is new and has room for CHUNKS_MAX ≥ 1 chunks.
        let _ = chunks.try_send(first.freeze());
    }
    peer.pacing
        .enable(server.gateway.limits().stream_unsent_bytes_max);
    let server_for_task = Arc::clone(server);
    let peer = peer.clone();
    server
        .tasks
        .spawn(async move { run(&server_for_task, &peer, core, chunks).await });
    body
}

/// 200 with the event stream's headers over the chunks `body` receives.
fn event_stream_response(body: mpsc::Receiver<Bytes>) -> Response<AnyBody> {
    let mut response = Response::new(AnyBody::Right(EventStream { chunks: body }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A stream's core: SSE events.
type SseCore<B> = StreamCore<B, SseEvents>;

/// The events of a stream: one per message ([`encode_event`]), the reconnection delay
/// before the first, a comment as keepalive.
#[derive(Debug, Default)]
struct SseEvents {
    started: bool,
}

impl Encoding for SseEvents {
    type Out = BytesMut;

    fn reply(&mut self, message: &pb::ServerMessage, out: &mut BytesMut) -> usize {
        let before = out.len();
        if !self.started {
            self.started = true;
            out.put_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
        }
        encode_event(message, out);
        out.len() - before
    }

    fn update(&mut self, message: &Outgoing, out: &mut BytesMut) -> usize {
        self.reply(message.message(), out)
    }

    fn keepalive(&mut self, out: &mut BytesMut) -> usize {
        const COMMENT: &[u8] = b": keepalive\n\n";
        out.put_slice(COMMENT);
        COMMENT.len()
    }
}

/// Feeds one stream until it ends: moves chunks from its [`StreamCore`] into the response
/// body, one at a time, the next once the HTTP layer took the last and flushed it.
async fn run<B: Backend>(
    server: &Server<B>,
    peer: &Peer,
    mut core: SseCore<B>,
    chunks: mpsc::Sender<Bytes>,
) {
    let _open = stream::Open::new(TRANSPORT, peer);
    tracing::debug!(remote = %peer.remote, identity = ?peer.identity, "SSE stream open");
    let shutdown = server.gateway.shutdown().clone();
    let pacing = &peer.pacing;
    let mut chunk = BytesMut::new();
    let end = loop {
        if core.poll_write(Instant::now(), &mut chunk) {
            // Cleared before the chunk goes: the flush that follows it sets it again.
            pacing.undrain();
            // Only this task sends, and the core hands out updates only once the last
            // chunk was taken; a notice that does not fit is dropped.
            if chunks.try_send(chunk.split().freeze()).is_err() && chunks.is_closed() {
                break End::Peer;
            }
        }
        if let Some(Event::End(end)) = core.poll_event() {
            break end;
        }
        let (timeout, flushing) = (core.poll_timeout(), core.awaits_flush());
        let draining = core.is_shutting_down();
        tokio::select! {
            () = chunks.closed() => break End::Peer,
            () = shutdown.cancelled(), if !draining => core.handle_shutdown(Instant::now(), None),
            () = poll_fn(|cx| core.poll_ready(cx, Instant::now())) => {}
            () = sleep_until(timeout), if timeout.is_some() => core.handle_timeout(Instant::now()),
            () = async {
                // The queue has room once the HTTP layer took the chunk; then its flush.
                let _room = chunks.reserve().await;
                pacing.drained().await;
            }, if flushing => core.handle_flushed(Instant::now()),
        }
    };
    core.close(end);
    // The notice of the end: whatever fits goes; the stream ends either way.
    if core.poll_write(Instant::now(), &mut chunk) {
        let _ = chunks.try_send(chunk.split().freeze());
    }
    tracing::debug!(remote = %peer.remote, "SSE stream closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly() {
        let p = Position::parse("1.21.5").unwrap();
        assert_eq!(
            p,
            Position {
                epoch: 1,
                auction: 21,
                seq: 5
            }
        );
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "1..3",
            "a.b.c",
            "+1.2.3",
            "1.2.-3",
            "1.2.99999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_query_becomes_a_subscribe() {
        let s = parse_query(
            "pattern=energy.eu.%3E&topic=metals.cu&interval_ms=250&resume=1.7.3",
            Some("1.9.4"),
        )
        .unwrap();
        assert_eq!(s.patterns, ["energy.eu.>"]);
        assert_eq!(s.topics, ["metals.cu"]);
        assert_eq!(s.interval_ms, 250);
        let resumed: Vec<_> = s.resume.iter().map(|p| (p.auction_id, p.seq)).collect();
        assert_eq!(resumed, [(7, 3), (9, 4)]);
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let err = |q: &str, id: Option<&str>| parse_query(q, id).unwrap_err().1;
        assert!(err("", None).contains("at least one"));
        assert!(err("pattern=a&colour=red", None).contains("colour"));
        assert!(err("pattern=a&interval_ms=soon", None).contains("interval_ms"));
        assert!(err("pattern=a&interval_ms=1&interval_ms=2", None).contains("twice"));
        assert!(err("pattern=a&resume=7", None).contains("resume"));
        assert!(err("pattern=%zz", None).contains("escape"));
        assert_eq!(
            parse_query("pattern=a&pattern=b..c", None),
            Err(BadQuery(
                "bad_topic",
                "pattern \"b..c\": empty segment".into()
            ))
        );
        assert!(err("pattern=a", Some("yesterday")).contains("Last-Event-ID"));
    }

    #[test]
    fn a_stream_starts_with_the_reconnection_delay_and_keeps_alive_with_comments() {
        let mut events = SseEvents::default();
        let mut out = BytesMut::new();
        let subscribed = pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::Subscribed(pb::Subscribed { subscriptions: 1 })),
        };
        let first = events.reply(&subscribed, &mut out);
        let second = events.reply(&subscribed, &mut out);
        let keepalive = events.keepalive(&mut out);
        assert_eq!(first + second + keepalive, out.len());
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("retry: 1000\n\ndata: {\"subscribed\""),
            "{text}"
        );
        assert_eq!(text.matches("retry:").count(), 1, "{text}");
        assert!(text.ends_with("\n\n: keepalive\n\n"), "{text}");
    }

    #[test]
    fn events_carry_their_position_as_id() {
        let update = pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::PriceUpdate(pb::PriceUpdate {
                auction_id: 21,
                epoch: 1,
                seq: 5,
                price: Some(150),
                ..Default::default()
            })),
        };
        let mut out = BytesMut::new();
        encode_event(&update, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("id: 1.21.5\ndata: {\"priceUpdate\":"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"), "{text}");
        let mut out = BytesMut::new();
        encode_event(
            &error_message(0, pb::ErrorCode::SlowConsumer, "x"),
            &mut out,
        );
        assert!(out.starts_with(b"data: {\"error\""), "no id: {out:?}");
    }
}
