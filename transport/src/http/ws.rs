//! The WebSocket endpoint `/v1/ws`: the handshake over HTTP/1.1 (subprotocol, Origin
//! allow-list) and the driver that runs one [`Session`] per socket. `docs/websocket.md` is its
//! reference.
//!
//! Subprotocols: `gavel.v1.proto` carries one protobuf `ClientMessage`/`ServerMessage` per
//! binary message; `gavel.v1.json` one canonical proto3 JSON message per text message;
//! `gavel.v1.edge` requests as in `gavel.v1.proto`, stream updates as edge frames (one per
//! binary message, `docs/edge-stream.md`), and the node's answers and notices as text
//! messages of canonical JSON.
//!
//! Close codes the node sends: 1000 after an idle timeout, 1001 when the node shuts down,
//! 1008 for a slow stream consumer (queued behind what the paced socket holds; the node
//! waits up to `idle_timeout_ms` for the reader to take it), 1009 for a message over
//! `ws_message_bytes_max`, 1011 on an internal fault; a protocol
//! violation ends the socket as tungstenite decides (1002).
//!
//! The driver is one task per socket that both reads and writes it, moving frames between
//! the socket and the socket's [`StreamCore`] (`crate::stream`, profile `WS`), which owns
//! the [`Session`], the durable waits in request order and the stream updates: answers go
//! into tungstenite's write buffer and are flushed by the same task at once (no writer task,
//! no queue, no wake-up in between), everything due at a wake-up in one flush; each
//! durable ack goes when its wait resolves and there is room for it.
//! At most `WS_WRITE_BUFFER_BYTES` may wait for the peer: past it the task reads no more
//! requests until the peer takes some — one slow socket slows only
//! itself; a peer that takes nothing for `idle_timeout_ms` while bytes wait for it is
//! dropped (`gavel_connections_refused_total{transport="ws",reason="stalled"}`). A peer from
//! which nothing arrives (not even the pong to the node's ping) for `idle_timeout_ms` gets
//! an `ERROR_CODE_IDLE_TIMEOUT` error and close 1000. At shutdown a socket gets
//! `ERROR_CODE_SHUTTING_DOWN`, then the durable acks still pending (within the drain
//! timeout), then close 1001.
//!
//! Streams: the session serves `Subscribe`; the core takes what is due from the
//! subscriber's outbox at its wake-up or timer (a shared price update
//! encoded once per codec for all sockets), one batch of at most `stream_unsent_bytes_max`
//! bytes at a time. A subscribed socket is paced (`super::paced`): the next batch is taken
//! only once the last one was flushed, and a flush completes only once the kernel holds
//! less than `stream_unsent_bytes_max` unsent bytes — so a slow socket's updates stay
//! conflated in its outbox rather than queueing in the kernel, and one that stays over its
//! byte bound is closed (1008) instead of slowing anyone.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, StreamExt};
use gavel_edge_proto::{EdgeEncoder, FRAME_BYTES_LIMIT, frame_len};
use gavel_proto::pb;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use tokio_util::sync::WaitForCancellationFuture;

use super::response::{self, Body};
use super::stream;
use super::{Peer, Server};
use crate::fanout::Outgoing;
use crate::gateway::Backend;
use crate::metrics;
use crate::session::Session;
use crate::stream::{Encoding, End, Event, StreamCore, WS, WS_WRITE_BUFFER_BYTES};

/// The path of the endpoint.
pub const PATH: &str = "/v1/ws";
/// Binary protobuf messages.
pub const SUBPROTOCOL_PROTO: &str = "gavel.v1.proto";
/// Text messages of canonical proto3 JSON.
pub const SUBPROTOCOL_JSON: &str = "gavel.v1.json";
/// Binary protobuf requests; stream updates as edge frames, answers as JSON text.
pub const SUBPROTOCOL_EDGE: &str = "gavel.v1.edge";
/// The metric label of WebSocket connections and requests.
const TRANSPORT: &str = "ws";
/// The WebSocket version the node speaks (RFC 6455).
const WS_VERSION: &str = "13";
/// Read buffer per socket, in bytes (allocated up front and kept for the socket's life;
/// tungstenite's default is 128 KiB). Client messages are small (a bid or a subscribe fits,
/// header included); a larger one grows the buffer to its length, and a burst of pipelined
/// bids takes more reads, each a copy out of the TLS layer's plaintext, not a system call.
/// Resident memory per idle watcher (the fan-out probe, 2,000 idle): 25.0 KiB at 8 KiB,
/// 18.0 KiB at 1 KiB, 17.2 KiB at 256 B.
const READ_BUFFER_BYTES: usize = 256;
/// Messages of room the write loop keeps between two writes: none, so an idle socket holds
/// no write list (with the core's, which it swaps with, 448 B per idle watcher otherwise;
/// a write costs one allocation more).
const OUT_KEPT_MAX: usize = 0;
/// How long the node waits for the peer's answer to its close frame, in milliseconds (a slow
/// consumer's close waits up to `idle_timeout_ms` instead: see [`run`]).
const CLOSE_WAIT_MS: u64 = 1_000;

/// How messages of one socket are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    /// `gavel.v1.proto`: binary messages.
    Proto,
    /// `gavel.v1.json`: text messages.
    Json,
    /// `gavel.v1.edge`: binary requests, binary edge frames, JSON text answers.
    Edge,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Proto => SUBPROTOCOL_PROTO,
            Codec::Json => SUBPROTOCOL_JSON,
            Codec::Edge => SUBPROTOCOL_EDGE,
        }
    }

    /// The first subprotocol the client offers that the node speaks (the client lists them
    /// in its order of preference).
    fn negotiate(headers: &HeaderMap) -> Option<Codec> {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find_map(|offered| match offered {
                SUBPROTOCOL_PROTO => Some(Codec::Proto),
                SUBPROTOCOL_JSON => Some(Codec::Json),
                SUBPROTOCOL_EDGE => Some(Codec::Edge),
                _ => None,
            })
    }

    /// The request in a data message, or why it is not one.
    fn decode(self, message: &Message) -> Result<pb::ClientMessage, String> {
        match (self, message) {
            (Codec::Proto | Codec::Edge, Message::Binary(bytes)) => {
                pb::ClientMessage::decode(bytes.as_ref()).map_err(|e| e.to_string())
            }
            (Codec::Json, Message::Text(text)) => {
                serde_json::from_str(text.as_str()).map_err(|e| e.to_string())
            }
            (Codec::Proto, _) => Err(format!("{SUBPROTOCOL_PROTO} carries binary messages")),
            (Codec::Edge, _) => Err(format!("{SUBPROTOCOL_EDGE} requests are binary messages")),
            (Codec::Json, _) => Err(format!("{SUBPROTOCOL_JSON} carries text messages")),
        }
    }

    /// A message taken from the outbox; a shared price update's encoding is made once for
    /// every socket of the codec.
    fn encode_outgoing(self, message: &Outgoing) -> Message {
        match self {
            Codec::Proto => Message::Binary(message.proto()),
            Codec::Json | Codec::Edge => match Utf8Bytes::try_from(message.json()) {
                Ok(text) => Message::Text(text),
                // serde_json writes UTF-8 only; still no panic.
                Err(_) => self.encode(message.message()),
            },
        }
    }

    fn encode(self, message: &pb::ServerMessage) -> Message {
        match self {
            Codec::Proto => Message::Binary(Bytes::from(message.encode_to_vec())),
            // An edge socket's answers and notices are JSON text: binary is edge frames.
            Codec::Json | Codec::Edge => match serde_json::to_string(message) {
                Ok(text) => Message::text(text),
                // Not reachable with the generated messages (no floats); still no panic.
                Err(e) => Message::text(format!(
                    r#"{{"error":{{"code":"ERROR_CODE_INTERNAL","message":"encoding failed: {e}"}}}}"#
                )),
            },
        }
    }
}

/// Answers the upgrade request: 101 and a task that runs the socket, or a refusal.
pub(super) fn upgrade<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    mut request: Request<Incoming>,
) -> Response<Body> {
    if request.method() != Method::GET {
        return response::method_not_allowed("GET");
    }
    let headers = request.headers();
    let key = match handshake_key(headers) {
        Ok(key) => key,
        Err(refusal) => return *refusal,
    };
    if let Some((status, code, message)) = stream::refusal(server, &request) {
        return refuse(status, code, message);
    }
    let Some(codec) = Codec::negotiate(headers) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "no_subprotocol",
            "offer Sec-WebSocket-Protocol gavel.v1.proto, gavel.v1.json or gavel.v1.edge",
        );
    };
    let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) else {
        // A base64 string is always a valid header value.
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "bad accept key",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    spawn_socket(server, peer, codec, on_upgrade);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(codec.name()),
    );
    response
}

/// The handshake's `Sec-WebSocket-Key`, once the request is an HTTP/1.1 WebSocket upgrade of
/// version 13; else the refusal to answer.
fn handshake_key(headers: &HeaderMap) -> Result<HeaderValue, Box<Response<Body>>> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "this route is a WebSocket endpoint (HTTP/1.1 Upgrade: websocket)",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != WS_VERSION)
    {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "bad_version",
            "the node speaks WebSocket version 13",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(WS_VERSION),
        );
        return Err(Box::new(response));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| {
            Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "not_websocket",
                "Sec-WebSocket-Key is missing",
            ))
        })
}

/// Runs the socket on the server's task set once hyper hands over the upgraded connection,
/// with the edge's buffer and message bounds.
fn spawn_socket<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    codec: Codec,
    on_upgrade: hyper::upgrade::OnUpgrade,
) {
    let server_for_task = Arc::clone(server);
    let peer = peer.clone();
    server.tasks.spawn(async move {
        let server = server_for_task;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let limits = server.gateway.limits();
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            // Messages fed between two flushes gather up to this much before they are
            // written: one TLS record and one write call for a burst of updates.
            .write_buffer_size(WS_WRITE_BUFFER_BYTES)
            .max_write_buffer_size(
                WS_WRITE_BUFFER_BYTES + limits.ws_message_bytes_max.saturating_mul(4),
            )
            .max_message_size(Some(limits.ws_message_bytes_max))
            .max_frame_size(Some(limits.ws_message_bytes_max));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        run(&server, peer, codec, socket).await;
    });
}

fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    metrics::request_error(TRANSPORT, "handshake");
    tracing::debug!(code, "WebSocket handshake refused");
    response::error(status, code, message)
}

/// A socket's core: WebSocket messages in the negotiated codec.
type WsCore<B> = StreamCore<B, WsEncoding>;

/// The negotiated codec, and for `gavel.v1.edge` the socket's edge encoder (one stream
/// per socket: every auction's first update is a keyframe) with the frame being built.
struct WsEncoding {
    codec: Codec,
    edge: Option<Box<EdgeEncoder>>,
    frames: Vec<u8>,
    edge_bytes: ::metrics::Counter,
}

impl WsEncoding {
    fn new(codec: Codec) -> WsEncoding {
        WsEncoding {
            codec,
            edge: (codec == Codec::Edge)
                .then(|| Box::new(EdgeEncoder::new(crate::stream::EDGE_FRAME_BYTES_MAX))),
            frames: Vec::new(),
            edge_bytes: ::metrics::counter!(metrics::STREAM_EDGE_BYTES, "transport" => TRANSPORT),
        }
    }
}

impl Encoding for WsEncoding {
    type Out = Vec<Message>;

    fn reply(&mut self, message: &pb::ServerMessage, out: &mut Vec<Message>) -> usize {
        push(out, self.codec.encode(message))
    }

    fn update(&mut self, message: &Outgoing, out: &mut Vec<Message>) -> usize {
        match &mut self.edge {
            None => push(out, self.codec.encode_outgoing(message)),
            Some(encoder) => {
                encoder.encode(message.message(), &mut self.frames);
                0
            }
        }
    }

    /// Edge: seals the frame and sends each frame written as one binary message.
    fn end_batch(&mut self, out: &mut Vec<Message>) -> usize {
        let Some(encoder) = &mut self.edge else {
            return 0;
        };
        encoder.flush(&mut self.frames);
        self.edge_bytes.increment(self.frames.len() as u64);
        let mut added = 0;
        let mut rest = self.frames.as_slice();
        // Invariant: the encoder writes whole frames, each within the frame limit.
        while let Ok(Some(len)) = frame_len(rest, FRAME_BYTES_LIMIT) {
            let Some((frame, tail)) = rest.split_at_checked(len) else {
                break;
            };
            added += push(out, Message::Binary(Bytes::copy_from_slice(frame)));
            rest = tail;
        }
        self.frames.clear();
        added
    }

    fn keepalive(&mut self, out: &mut Vec<Message>) -> usize {
        push(out, Message::Ping(Bytes::new()))
    }
}

/// Appends `message`; returns its size with the smallest frame header (an empty ping
/// still needs a flush).
fn push(out: &mut Vec<Message>, message: Message) -> usize {
    let len = message.len() + 2;
    out.push(message);
    len
}

/// What happened on the socket itself.
enum Io {
    /// Everything fed was written.
    Flushed,
    /// The peer sent a frame (`None`: the stream ended).
    Read(Option<Result<Message, WsError>>),
    /// Writing failed: the peer is gone.
    WriteFailed,
}

/// Drives the socket: flushes what was fed (if anything) and, while there is room for the
/// answers, reads the peer's next frame. Both wait on the same task, each with its own
/// waker inside tokio-tungstenite.
fn poll_socket<S>(
    socket: &mut WebSocketStream<S>,
    flush: bool,
    read: bool,
    cx: &mut Context<'_>,
) -> Poll<Io>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if flush {
        match socket.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Io::Flushed),
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket flush failed");
                return Poll::Ready(Io::WriteFailed);
            }
            Poll::Pending => {}
        }
    }
    if read {
        return socket.poll_next_unpin(cx).map(Io::Read);
    }
    Poll::Pending
}

/// Feeds what the core hands out into tungstenite's write buffer and writes it as far as
/// the socket takes it now without waiting (the rest goes when the loop sees the socket
/// writable); `Err` ends the socket.
fn write<B: Backend, S>(
    socket: &mut WebSocketStream<S>,
    core: &mut WsCore<B>,
    out: &mut Vec<Message>,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while core.poll_write(Instant::now(), out) {
        for message in out.drain(..) {
            match Pin::new(&mut *socket).start_send(message) {
                Ok(()) => {}
                // More than the write buffer's hard bound waits for a peer that reads nothing.
                Err(WsError::WriteBufferFull(_)) => return Err(End::Stalled),
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket write failed");
                    return Err(End::Peer);
                }
            }
        }
        // A long batch's room is not kept for the socket's life.
        out.shrink_to(OUT_KEPT_MAX);
        match socket.flush().now_or_never() {
            Some(Ok(())) => core.handle_flushed(Instant::now()),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket flush failed");
                return Err(End::Peer);
            }
            None => return Ok(()),
        }
    }
    Ok(())
}

/// Hands what the peer sent to the core; `Err` ends the socket.
fn read_frame<B: Backend>(
    core: &mut WsCore<B>,
    codec: Codec,
    frame: Option<Result<Message, WsError>>,
) -> Result<(), End> {
    let now = Instant::now();
    match frame {
        None | Some(Ok(Message::Close(_))) => Err(End::Peer),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
            core.handle_heard(now);
            Ok(())
        }
        Some(Ok(message)) => {
            core.handle_request(codec.decode(&message), now);
            Ok(())
        }
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
            tracing::debug!(size, max_size, "WebSocket message too large");
            Err(End::TooLarge)
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket read failed");
            Err(End::Peer)
        }
    }
}

/// Moves `sleep` to `at` unless it is there already (a reset touches the timer wheel).
fn set_timer(sleep: Pin<&mut tokio::time::Sleep>, at: Option<Instant>) {
    if let Some(at) = at.map(tokio::time::Instant::from_std)
        && sleep.deadline() != at
    {
        sleep.reset(at);
    }
}

/// Runs one socket until either side closes it: moves frames between the socket and its
/// [`StreamCore`].
async fn run<B: Backend, S>(
    server: &Arc<Server<B>>,
    peer: Peer,
    codec: Codec,
    mut socket: WebSocketStream<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = stream::Open::new(TRANSPORT, &peer);
    let _presence = peer
        .identity
        .as_ref()
        .filter(|i| i.role.may_bid())
        .map(|_| server.gateway.hub().bidder_present());
    tracing::debug!(remote = %peer.remote, identity = ?peer.identity, codec = codec.name(), "WebSocket open");
    let limits = server.gateway.limits();
    let session = Session::new(
        Arc::clone(&server.gateway),
        peer.identity.clone(),
        TRANSPORT,
    );
    let now = Instant::now();
    let every = stream::keepalive(&server.options, limits.idle_timeout());
    let mut core =
        StreamCore::new(session, WsEncoding::new(codec), &WS, now).with_keepalive(every, now);
    let drain = Duration::from_millis(server.options.drain_timeout_ms);
    let shutdown = server.gateway.shutdown().clone();
    // One wait for the whole connection (not a new one per loop turn).
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep(limits.idle_timeout());
    tokio::pin!(timer);
    let mut out = Vec::new();
    let end = loop {
        if let Err(end) = write(&mut socket, &mut core, &mut out) {
            break end;
        }
        if let Some(Event::End(end)) = core.poll_event() {
            break end;
        }
        let timeout = core.poll_timeout();
        set_timer(timer.as_mut(), timeout);
        let (flush, read) = (core.awaits_flush(), core.wants_read());
        let draining = core.is_shutting_down();
        tokio::select! {
            io = poll_fn(|cx| poll_socket(&mut socket, flush, read, cx)) => match io {
                Io::Flushed => core.handle_flushed(Instant::now()),
                Io::WriteFailed => break End::Peer,
                Io::Read(frame) => {
                    if let Err(end) = read_frame(&mut core, codec, frame) {
                        break end;
                    }
                    if core.is_subscribed() {
                        peer.pacing.enable(limits.stream_unsent_bytes_max);
                    }
                }
            },
            () = poll_fn(|cx| core.poll_ready(cx, Instant::now())) => {}
            () = &mut timer, if timeout.is_some() => core.handle_timeout(Instant::now()),
            () = &mut cancelled, if !draining => core.handle_shutdown(Instant::now(), Some(drain)),
        }
    };
    core.close(end);
    // The notice of the end: whatever fits the write buffer goes.
    let _ = write(&mut socket, &mut core, &mut out);
    goodbye(&mut socket, end, &peer, limits.idle_timeout(), cancelled).await;
    tracing::debug!(remote = %peer.remote, "WebSocket closed");
}

/// Ends the socket as `end` says: the node's close frame (then reads until the peer
/// answers it, so the peer sees the frame rather than a reset), the peer's close echoed
/// (tungstenite queued the answer), or nothing for a stalled peer.
async fn goodbye<S>(
    socket: &mut WebSocketStream<S>,
    end: End,
    peer: &Peer,
    idle_timeout: Duration,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (frame, read_answer) = match end.ws_close() {
        Some((code, reason)) => {
            tracing::debug!(remote = %peer.remote, code, reason, "closing WebSocket");
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            (Some(frame), true)
        }
        None if end == End::Stalled => return,
        None => (None, false),
    };
    // A slow consumer's close waits behind what the paced socket holds (at most
    // `stream_unsent_bytes_max` in the kernel and one batch): a reader that comes back
    // within the idle timeout takes those, then the error and the close frame.
    let slow = end == End::SlowConsumer;
    let wait = if slow {
        idle_timeout
    } else {
        Duration::from_millis(CLOSE_WAIT_MS)
    };
    // Boxed: run once, at the end, and kept out of the connection's future (its size is
    // memory held by every idle socket).
    let closing = Box::pin(tokio::time::timeout(wait, async {
        if socket.close(frame).await.is_ok() && read_answer {
            while let Some(Ok(_)) = socket.next().await {}
        }
    }));
    tokio::select! {
        _ = closing => {}
        () = cancelled, if slow => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_first_offered_subprotocol_the_node_speaks() {
        let mut headers = HeaderMap::new();
        assert_eq!(Codec::negotiate(&headers), None);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt, gavel.v1.json, gavel.v1.proto"),
        );
        assert_eq!(Codec::negotiate(&headers), Some(Codec::Json));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("gavel.v2.json"),
        );
        assert_eq!(Codec::negotiate(&headers), None);
    }

    #[test]
    fn a_frame_of_the_wrong_kind_is_malformed() {
        let ping = pb::ClientMessage {
            request_id: 1,
            body: Some(pb::client_message::Body::Ping(pb::Ping::default())),
        };
        let binary = Message::Binary(Bytes::from(ping.encode_to_vec()));
        assert_eq!(Codec::Proto.decode(&binary), Ok(ping.clone()));
        assert!(Codec::Json.decode(&binary).is_err());
        let text = Message::text(serde_json::to_string(&ping).unwrap());
        assert_eq!(Codec::Json.decode(&text), Ok(ping));
        assert!(Codec::Proto.decode(&text).is_err());
        assert!(Codec::Json.decode(&Message::text("{")).is_err());
    }
}
