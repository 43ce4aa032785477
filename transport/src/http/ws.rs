//! The WebSocket endpoint `/v1/ws`: the handshake over HTTP/1.1 (subprotocol, Origin
//! allow-list) and the driver that runs one [`Session`] per socket. `docs/websocket.md` is its
//! reference.
//!
//! Subprotocols: `gavel.v1.proto` carries one protobuf `ClientMessage`/`ServerMessage` per
//! binary message; `gavel.v1.json` one canonical proto3 JSON message per text message.
//!
//! Close codes the node sends: 1000 after an idle timeout, 1001 when the node shuts down,
//! 1008 for a slow stream consumer (queued behind what the paced socket holds; the node
//! waits up to `idle_timeout_ms` for the reader to take it), 1009 for a message over
//! `ws_message_bytes_max`, 1011 on an internal fault; a protocol
//! violation ends the socket as tungstenite decides (1002).
//!
//! The driver is one task per socket that both reads and writes it: answers go into
//! tungstenite's write buffer and are flushed by the same task at once (no writer task, no
//! queue, no wake-up in between), everything due at a wake-up in one flush. The task keeps
//! every durable wait in a set polled beside the socket (bounded by the session's
//! `pending_durable_per_connection_max`) and sends each durable ack when its wait resolves.
//! At most [`WRITE_BUFFER_BYTES`] may wait for the peer: past it the task reads no more
//! requests until the peer takes some — one slow socket slows only
//! itself; a peer that takes nothing for `idle_timeout_ms` while bytes wait for it is
//! dropped (`gavel_connections_refused_total{transport="ws",reason="stalled"}`). A peer from
//! which nothing arrives (not even the pong to the node's ping) for `idle_timeout_ms` gets
//! an `ERROR_CODE_IDLE_TIMEOUT` error and close 1000. At shutdown a socket gets
//! `ERROR_CODE_SHUTTING_DOWN`, then the durable acks still pending (within the drain
//! timeout), then close 1001.
//!
//! Streams: the session serves `Subscribe`; the loop also waits on the subscriber's
//! wake-up and pacing timer and writes what is due from its outbox (a shared price update
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
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, SinkExt, StreamExt};
use gavel_proto::pb;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::response::{self, Body};
use super::stream::{self, STREAM_CHECK_MS, STREAM_IDLE, SlowConsumer, StreamState};
use super::{Peer, Server};
use crate::fanout::{Outgoing, Subscriber};
use crate::gateway::Backend;
use crate::metrics;
use crate::session::{Session, error_message};

/// The path of the endpoint.
pub const PATH: &str = "/v1/ws";
/// Binary protobuf messages.
pub const SUBPROTOCOL_PROTO: &str = "gavel.v1.proto";
/// Text messages of canonical proto3 JSON.
pub const SUBPROTOCOL_JSON: &str = "gavel.v1.json";
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
/// Bytes of fed messages that may wait for the peer (written but not flushed); past it
/// the socket's task reads no requests until the peer takes some. (Stream updates are taken
/// only once everything fed was flushed.)
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most messages written to a socket per flush.
const WRITE_BATCH_MAX: usize = 256;
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
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Proto => SUBPROTOCOL_PROTO,
            Codec::Json => SUBPROTOCOL_JSON,
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
                _ => None,
            })
    }

    /// The request in a data message, or why it is not one.
    fn decode(self, message: &Message) -> Result<pb::ClientMessage, String> {
        match (self, message) {
            (Codec::Proto, Message::Binary(bytes)) => {
                pb::ClientMessage::decode(bytes.as_ref()).map_err(|e| e.to_string())
            }
            (Codec::Json, Message::Text(text)) => {
                serde_json::from_str(text.as_str()).map_err(|e| e.to_string())
            }
            (Codec::Proto, _) => Err(format!("{SUBPROTOCOL_PROTO} carries binary messages")),
            (Codec::Json, _) => Err(format!("{SUBPROTOCOL_JSON} carries text messages")),
        }
    }

    /// A message taken from the outbox; a shared price update's encoding is made once for
    /// every socket of the codec.
    fn encode_outgoing(self, message: &Outgoing) -> Message {
        match self {
            Codec::Proto => Message::Binary(message.proto()),
            Codec::Json => match Utf8Bytes::try_from(message.json()) {
                Ok(text) => Message::Text(text),
                // serde_json writes UTF-8 only; still no panic.
                Err(_) => self.encode(message.message()),
            },
        }
    }

    fn encode(self, message: &pb::ServerMessage) -> Message {
        match self {
            Codec::Proto => Message::Binary(Bytes::from(message.encode_to_vec())),
            Codec::Json => match serde_json::to_string(message) {
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
            "offer Sec-WebSocket-Protocol gavel.v1.proto or gavel.v1.json",
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
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_write_buffer_size(
                WRITE_BUFFER_BYTES + limits.ws_message_bytes_max.saturating_mul(4),
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

/// Why the connection loop stopped.
enum End {
    /// The peer closed, or the socket failed: nothing more to send but the close echo.
    Peer,
    /// The peer took nothing for the idle timeout while the node had bytes for it: drop it.
    Stalled,
    /// The node closes with this frame.
    Close(CloseCode, &'static str),
    /// The subscriber fell too far behind: close with 1008 and count it.
    SlowConsumer,
}

/// The write side of a socket as its own task drives it: messages are fed into
/// tungstenite's write buffer and flushed by the connection task itself — no writer task,
/// no queue, no wake-up between deciding to send and sending. Bytes fed but not yet
/// flushed are bounded by [`WRITE_BUFFER_BYTES`]: past it the task takes no more from the
/// outbox (which conflates meanwhile) and reads no more requests (whose answers would have
/// nowhere to go) until the peer takes some.
struct Outbound {
    codec: Codec,
    /// Bytes fed since the last completed flush.
    unflushed: usize,
    /// Since when bytes have waited for the peer (a flush has not completed).
    waiting_since: Option<Instant>,
}

impl Outbound {
    /// Whether there is room for more messages before the next completed flush.
    fn has_room(&self) -> bool {
        self.unflushed < WRITE_BUFFER_BYTES
    }

    /// Whether the next stream batch may be taken: everything fed before was flushed — for
    /// a paced socket, handed to the kernel with the kernel below its unsent bound — so the
    /// batch is the latest state at the moment the reader can take it.
    fn has_stream_room(&self) -> bool {
        self.unflushed == 0
    }

    /// Whether the peer has taken nothing for `timeout` while bytes waited for it.
    fn stalled(&self, timeout: Duration) -> bool {
        self.waiting_since
            .is_some_and(|since| since.elapsed() >= timeout)
    }

    /// Feeds `message` into the socket's write buffer (no I/O wait); `Err` ends the socket.
    fn feed<S>(&mut self, socket: &mut WebSocketStream<S>, message: Message) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The payload and the smallest frame header (an empty ping still needs a flush).
        self.unflushed += message.len() + 2;
        self.waiting_since.get_or_insert_with(Instant::now);
        match Pin::new(socket).start_send(message) {
            Ok(()) => Ok(()),
            // More than the write buffer's hard bound waits for a peer that reads nothing.
            Err(WsError::WriteBufferFull(_)) => Err(End::Stalled),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket write failed");
                Err(End::Peer)
            }
        }
    }

    fn feed_message<S>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        message: &pb::ServerMessage,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let message = self.codec.encode(message);
        self.feed(socket, message)
    }

    fn feed_error<S>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        code: pb::ErrorCode,
        text: &str,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.feed_message(socket, &error_message(0, code, text))
    }

    /// Writes what was fed, as far as the socket takes it now without waiting; the rest
    /// goes when the connection loop sees the socket writable.
    fn flush_now<S>(&mut self, socket: &mut WebSocketStream<S>) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.unflushed == 0 {
            return Ok(());
        }
        match socket.flush().now_or_never() {
            Some(Ok(())) => {
                self.flushed();
                Ok(())
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket flush failed");
                Err(End::Peer)
            }
            None => Ok(()),
        }
    }

    fn flushed(&mut self) {
        self.unflushed = 0;
        self.waiting_since = None;
    }
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

/// Writes what is due in the subscriber's outbox, as far as the socket has room; returns
/// when to look again (`None`: when woken). A subscriber past its bound is closed.
fn write_stream<S>(
    socket: &mut WebSocketStream<S>,
    outbound: &mut Outbound,
    subscriber: &Subscriber,
    state: &mut StreamState,
    limits: &crate::Limits,
) -> Result<Option<Instant>, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let room = if outbound.has_stream_room() {
        WRITE_BATCH_MAX
    } else {
        0
    };
    let next = state
        .take_due(subscriber, room, limits.stream_unsent_bytes_max)
        .map_err(|SlowConsumer| End::SlowConsumer)?;
    if !state.batch.is_empty() {
        for message in state.batch.drain(..) {
            let message = outbound.codec.encode_outgoing(&message);
            outbound.feed(socket, message)?;
        }
        outbound.flush_now(socket)?;
    }
    Ok(next)
}

/// Moves `sleep` to `at` unless it is there already (a reset touches the timer wheel).
fn set_timer(sleep: Pin<&mut tokio::time::Sleep>, at: Option<Instant>) {
    if let Some(at) = at
        && sleep.deadline() != at
    {
        sleep.reset(at);
    }
}

/// Runs one socket until either side closes it.
async fn run<B: Backend, S>(
    server: &Arc<Server<B>>,
    peer: Peer,
    codec: Codec,
    mut socket: WebSocketStream<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ::metrics::counter!(metrics::CONNECTIONS_ACCEPTED, "transport" => TRANSPORT).increment(1);
    let gauge = ::metrics::gauge!(metrics::CONNECTIONS, "transport" => TRANSPORT, "role" => metrics::role_label(peer.identity.as_ref()));
    gauge.increment(1.0);
    let _presence = peer
        .identity
        .as_ref()
        .filter(|i| i.role.may_bid())
        .map(|_| server.gateway.hub().bidder_present());
    tracing::debug!(remote = %peer.remote, identity = ?peer.identity, codec = codec.name(), "WebSocket open");

    let limits = server.gateway.limits();
    let idle_timeout = limits.idle_timeout();
    let mut outbound = Outbound {
        codec,
        unflushed: 0,
        waiting_since: None,
    };
    let mut session = Session::new(
        Arc::clone(&server.gateway),
        peer.identity.clone(),
        TRANSPORT,
    );
    let mut stream_state = StreamState::new(TRANSPORT);
    // The stream timer (pacing, slow-consumer checks), armed while `stream_due` is set.
    let mut stream_due: Option<Instant> = None;
    let stream_timer = tokio::time::sleep(STREAM_IDLE);
    tokio::pin!(stream_timer);
    let mut ping = stream::keepalive(&server.options, idle_timeout);
    let mut heard_at = Instant::now();
    // Bounded by the session: it refuses bids beyond pending_durable_per_connection_max.
    let mut durable = FuturesUnordered::new();
    let mut replies = Vec::new();
    let shutdown = server.gateway.shutdown().clone();
    // One wait for the whole connection (not a new one per loop turn).
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);

    let step: Result<(), End> = async {
        loop {
            let subscriber = session.subscriber().cloned();
            let room = outbound.has_room();
            let flush = outbound.unflushed > 0;
            if !outbound.has_stream_room() && subscriber.is_some() && stream_due.is_none() {
                // Updates wait while the socket has not taken the last batch: check the
                // outbox for a slow consumer on the timer.
                stream_due = Some(Instant::now() + Duration::from_millis(STREAM_CHECK_MS));
            }
            set_timer(stream_timer.as_mut(), stream_due);
            tokio::select! {
                io = poll_fn(|cx| poll_socket(&mut socket, flush, room, cx)) => {
                    let frame = match io {
                        Io::Flushed => {
                            outbound.flushed();
                            // What the outbox gathered while the socket was full.
                            if let Some(s) = &subscriber {
                                stream_due = write_stream(&mut socket, &mut outbound, s, &mut stream_state, limits)?;
                            }
                            continue;
                        }
                        Io::WriteFailed => return Err(End::Peer),
                        Io::Read(frame) => frame,
                    };
                    heard_at = Instant::now();
                    let message = match frame {
                        None | Some(Ok(Message::Close(_))) => return Err(End::Peer),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(message)) => message,
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            tracing::debug!(size, max_size, "WebSocket message too large");
                            metrics::request_error(TRANSPORT, "too_large");
                            return Err(End::Close(CloseCode::Size, "message too large"));
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "WebSocket read failed");
                            return Err(End::Peer);
                        }
                    };
                    match codec.decode(&message) {
                        Ok(request) => {
                            if let Some(wait) = session.handle(request, &mut replies) {
                                durable.push(wait.into_message());
                            }
                            for reply in replies.drain(..) {
                                outbound.feed_message(&mut socket, &reply)?;
                            }
                            // A bid has one answer: room for more (a subscribe's) is not
                            // kept for the socket's life (a `ServerMessage` is ~300 bytes).
                            replies.shrink_to(1);
                            if let Some(s) = session.subscriber() {
                                stream_state.report_subscriptions(s.subscriptions());
                                peer.pacing.enable(limits.stream_unsent_bytes_max);
                            }
                        }
                        Err(detail) => outbound.feed_message(&mut socket, &session.malformed(detail))?,
                    }
                    outbound.flush_now(&mut socket)?;
                }
                () = async {
                    match &subscriber {
                        Some(s) => s.woken().await,
                        None => std::future::pending().await,
                    }
                }, if room => {
                    if let Some(s) = &subscriber {
                        stream_due = write_stream(&mut socket, &mut outbound, s, &mut stream_state, limits)?;
                    }
                }
                () = &mut stream_timer, if stream_due.is_some() => {
                    stream_due = None;
                    if let Some(s) = &subscriber {
                        stream_due = write_stream(&mut socket, &mut outbound, s, &mut stream_state, limits)?;
                    }
                }
                () = &mut cancelled => {
                    outbound.feed_error(
                        &mut socket,
                        pb::ErrorCode::ShuttingDown,
                        "the node is shutting down; reconnect later or elsewhere",
                    )?;
                    outbound.flush_now(&mut socket)?;
                    // Acks already on their way are still sent (the log is flushed after
                    // the listeners drain), within the drain timeout.
                    let drain = Duration::from_millis(server.options.drain_timeout_ms);
                    // Boxed: run once, and kept out of the connection's future (its size is
                    // memory every idle socket holds).
                    let _ = Box::pin(tokio::time::timeout(drain, async {
                        while let Some(ack) = durable.next().await {
                            outbound.feed_message(&mut socket, &ack)?;
                            socket.flush().await.map_err(|_| End::Peer)?;
                        }
                        Ok::<(), End>(())
                    }))
                    .await;
                    return Err(End::Close(CloseCode::Away, "node shutting down"));
                }
                Some(ack) = durable.next(), if room && !durable.is_empty() => {
                    outbound.feed_message(&mut socket, &ack)?;
                    outbound.flush_now(&mut socket)?;
                }
                _ = ping.tick() => {
                    if outbound.stalled(idle_timeout) {
                        return Err(End::Stalled);
                    }
                    if heard_at.elapsed() >= idle_timeout {
                        outbound.feed_error(
                            &mut socket,
                            pb::ErrorCode::IdleTimeout,
                            "nothing received within the idle timeout",
                        )?;
                        return Err(End::Close(CloseCode::Normal, "idle timeout"));
                    }
                    if room {
                        outbound.feed(&mut socket, Message::Ping(Bytes::new()))?;
                        outbound.flush_now(&mut socket)?;
                    }
                }
            }
        }
    }
    .await;
    let end = step.err().unwrap_or(End::Peer);

    if let Some(subscriber) = session.subscriber() {
        server.gateway.hub().disconnect(subscriber);
    }
    stream_state.report_closed();
    // The close to send (`Some(None)`: echo the peer's), and whether to read until the peer
    // answers it, so it sees the frame rather than a reset.
    let slow = matches!(end, End::SlowConsumer);
    let (close, read_answer) = match end {
        End::Close(code, reason) => {
            tracing::debug!(remote = %peer.remote, code = u16::from(code), reason, "closing WebSocket");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            (Some(Some(frame)), true)
        }
        End::Stalled => {
            tracing::debug!(remote = %peer.remote, "WebSocket peer stopped reading; dropped");
            ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "transport" => TRANSPORT, "reason" => "stalled")
                .increment(1);
            (None, false)
        }
        End::SlowConsumer => {
            tracing::debug!(remote = %peer.remote, "WebSocket subscriber too slow; closing");
            stream::count_slow_consumer(TRANSPORT);
            // The write buffer may be full: whatever fits goes, the rest is dropped with
            // the socket.
            let _ = outbound.feed_error(
                &mut socket,
                pb::ErrorCode::SlowConsumer,
                "the connection fell too far behind on its updates",
            );
            let frame = CloseFrame {
                code: CloseCode::Policy,
                reason: "slow consumer".into(),
            };
            (Some(Some(frame)), true)
        }
        // Echo the peer's close (tungstenite queued the answer).
        End::Peer => (Some(None), false),
    };
    if let Some(frame) = close {
        // A slow consumer's close waits behind what the paced socket holds (at most
        // `stream_unsent_bytes_max` in the kernel and one batch): a reader that comes back
        // within the idle timeout takes those, then the error and the close frame.
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
            () = &mut cancelled, if slow => {}
        }
    }
    gauge.decrement(1.0);
    tracing::debug!(remote = %peer.remote, "WebSocket closed");
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
