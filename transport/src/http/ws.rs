//! The WebSocket endpoint `/v1/ws`: the handshake over HTTP/1.1 (subprotocol, Origin
//! allow-list) and the driver that runs one [`Session`] per socket. `docs/websocket.md` is its
//! reference.
//!
//! Subprotocols: `gavel.v1.proto` carries one protobuf `ClientMessage`/`ServerMessage` per
//! binary message; `gavel.v1.json` one canonical proto3 JSON message per text message.
//!
//! Close codes the node sends: 1000 after an idle timeout, 1001 when the node shuts down,
//! 1008 for a slow stream consumer, 1009 for a message over `ws_message_bytes_max`, 1011
//! on an internal fault; a protocol
//! violation ends the socket as tungstenite decides (1002).
//!
//! The driver is one task reading the socket plus one writer task fed by a bounded queue
//! ([`super::HttpOptions::ws_outbound_messages_max`] messages), which writes whatever is
//! queued when it wakes (up to 256 messages) with one flush: the reader answers each
//! request at once, keeps every durable wait in a set polled beside the socket (bounded by
//! the session's `pending_durable_per_connection_max`), and sends each durable ack when its
//! wait resolves. A full queue makes the reader wait: one slow socket slows only itself; a
//! peer that reads nothing for `idle_timeout_ms` while its queue is full is dropped
//! (`gavel_connections_refused_total{transport="ws",reason="stalled"}`). A peer from which
//! nothing arrives (not even the pong to the node's ping) for `idle_timeout_ms` gets an
//! `ERROR_CODE_IDLE_TIMEOUT` error and close 1000. At shutdown a socket gets
//! `ERROR_CODE_SHUTTING_DOWN`, then the durable acks still pending (within the drain timeout),
//! then close 1001.
//!
//! Streams: the session serves `Subscribe`; the reader loop also waits on the subscriber's
//! wake-up and pacing timer and moves what is due from its outbox into the queue, as far as
//! the queue has room — so a slow socket's updates stay conflated in its outbox, and one
//! that stays over its byte bound is closed (1008) instead of slowing anyone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use gavel_proto::pb;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::routes::{self, Body};
use super::stream::{self, STREAM_IDLE, SlowConsumer, StreamState};
use super::{Peer, Server};
use crate::fanout::Subscriber;
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
/// Bytes of fed messages gathered before a write to the socket (the writer flushes after
/// each batch anyway).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most messages written to a socket per flush.
const WRITE_BATCH_MAX: usize = 256;
/// How long the node waits for the peer's answer to its close frame, in milliseconds.
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
        return routes::method_not_allowed("GET");
    }
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "this route is a WebSocket endpoint (HTTP/1.1 Upgrade: websocket)",
        );
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
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "Sec-WebSocket-Key is missing",
        );
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

fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    metrics::request_error(TRANSPORT, "handshake");
    tracing::debug!(code, "WebSocket handshake refused");
    routes::error(status, code, message)
}

/// Why the reader stopped.
enum End {
    /// The peer closed, or the socket failed: nothing more to send.
    Peer,
    /// The peer read nothing for the stall timeout while the queue was full: drop it.
    Stalled,
    /// The node closes with this frame.
    Close(CloseCode, &'static str),
    /// The subscriber fell too far behind: close with 1008 and count it.
    SlowConsumer,
}

/// Writes what is due in the subscriber's outbox, as far as the socket's queue has room;
/// returns when to look again. A subscriber past its bound is closed.
async fn write_stream(
    outbound: &Outbound,
    subscriber: &Subscriber,
    state: &mut StreamState,
    limits: &crate::Limits,
) -> Result<Instant, End> {
    let room = outbound.queue.capacity();
    let next = state
        .take_due(subscriber, room, limits.ws_message_bytes_max)
        .map_err(|SlowConsumer| End::SlowConsumer)?;
    for message in state.batch.drain(..) {
        outbound.send_message(&message).await?;
    }
    Ok(next)
}

/// The bounded queue to a socket's writer task.
struct Outbound {
    queue: mpsc::Sender<Message>,
    codec: Codec,
    /// Longest wait for room in the queue before the peer counts as stalled.
    stall_timeout: Duration,
}

impl Outbound {
    /// Queues `message`; `Err` ends the socket (the writer is gone, or the peer stalled).
    async fn send(&self, message: Message) -> Result<(), End> {
        match tokio::time::timeout(self.stall_timeout, self.queue.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Peer),
            Err(_) => Err(End::Stalled),
        }
    }

    async fn send_message(&self, message: &pb::ServerMessage) -> Result<(), End> {
        self.send(self.codec.encode(message)).await
    }

    async fn send_error(&self, code: pb::ErrorCode, text: &str) -> Result<(), End> {
        self.send_message(&error_message(0, code, text)).await
    }
}

/// Runs one socket until either side closes it.
async fn run<B: Backend, S>(
    server: &Arc<Server<B>>,
    peer: Peer,
    codec: Codec,
    socket: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
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

    let (mut sink, mut stream) = socket.split();
    let (queue, mut outbound) =
        mpsc::channel::<Message>(server.options.ws_outbound_messages_max.max(1));
    let writer = tokio::spawn(async move {
        // Everything queued by the time the writer wakes goes out in one flush: several
        // updates per TLS record and write call when a burst is due.
        while let Some(message) = outbound.recv().await {
            let mut fed = sink.feed(message).await;
            let mut batched = 1;
            while fed.is_ok() && batched < WRITE_BATCH_MAX {
                match outbound.try_recv() {
                    Ok(message) => {
                        fed = sink.feed(message).await;
                        batched += 1;
                    }
                    Err(_) => break,
                }
            }
            if fed.is_err() || sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let limits = server.gateway.limits();
    let idle_timeout = limits.idle_timeout();
    let outbound = Outbound {
        queue,
        codec,
        stall_timeout: idle_timeout,
    };

    let mut session = Session::new(
        Arc::clone(&server.gateway),
        peer.identity.clone(),
        TRANSPORT,
    );
    let mut stream_state = StreamState::new(TRANSPORT);
    let mut stream_timer = Instant::now() + STREAM_IDLE;
    let mut ping = stream::keepalive(&server.options, idle_timeout);
    let mut heard_at = Instant::now();
    // Bounded by the session: it refuses bids beyond pending_durable_per_connection_max.
    let mut durable = FuturesUnordered::new();
    let mut replies = Vec::new();
    let shutdown = server.gateway.shutdown().clone();

    let step: Result<(), End> = async {
        loop {
            let subscriber = session.subscriber().cloned();
            tokio::select! {
                () = async {
                    match &subscriber {
                        Some(s) => s.woken().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(s) = &subscriber {
                        stream_timer = write_stream(&outbound, s, &mut stream_state, limits).await?;
                    }
                }
                () = tokio::time::sleep_until(stream_timer), if subscriber.is_some() => {
                    if let Some(s) = &subscriber {
                        stream_timer = write_stream(&outbound, s, &mut stream_state, limits).await?;
                    }
                }
                () = shutdown.cancelled() => {
                    outbound
                        .send_error(
                            pb::ErrorCode::ShuttingDown,
                            "the node is shutting down; reconnect later or elsewhere",
                        )
                        .await?;
                    // Acks already on their way are still sent (the log is flushed after
                    // the listeners drain), within the drain timeout.
                    let drain = Duration::from_millis(server.options.drain_timeout_ms);
                    let _ = tokio::time::timeout(drain, async {
                        while let Some(ack) = durable.next().await {
                            outbound.send_message(&ack).await?;
                        }
                        Ok::<(), End>(())
                    })
                    .await;
                    return Err(End::Close(CloseCode::Away, "node shutting down"));
                }
                Some(ack) = durable.next(), if !durable.is_empty() => {
                    outbound.send_message(&ack).await?;
                }
                _ = ping.tick() => {
                    if heard_at.elapsed() >= idle_timeout {
                        outbound
                            .send_error(pb::ErrorCode::IdleTimeout, "nothing received within the idle timeout")
                            .await?;
                        return Err(End::Close(CloseCode::Normal, "idle timeout"));
                    }
                    outbound.send(Message::Ping(Bytes::new())).await?;
                }
                frame = stream.next() => {
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
                                outbound.send_message(&reply).await?;
                            }
                            if let Some(s) = session.subscriber() {
                                stream_state.report_subscriptions(s.subscriptions());
                            }
                        }
                        Err(detail) => outbound.send_message(&session.malformed(detail)).await?,
                    }
                }
            }
        }
    }
    .await;
    let end = step.err().unwrap_or(End::Peer);

    let mut writer = writer;
    match end {
        End::Close(code, reason) => {
            tracing::debug!(remote = %peer.remote, code = u16::from(code), reason, "closing WebSocket");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            if outbound.send(Message::Close(Some(frame))).await.is_ok() {
                // Read until the peer answers the close (or the wait ends), so it sees the
                // frame rather than a reset.
                let _ = tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
            }
        }
        End::Stalled => {
            tracing::debug!(remote = %peer.remote, "WebSocket peer stopped reading; dropped");
            ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "transport" => TRANSPORT, "reason" => "stalled")
                .increment(1);
            writer.abort();
        }
        End::SlowConsumer => {
            tracing::debug!(remote = %peer.remote, "WebSocket subscriber too slow; closing");
            stream::count_slow_consumer(TRANSPORT);
            // The queue may be full: whatever fits goes, the rest is dropped with the socket.
            let error = error_message(
                0,
                pb::ErrorCode::SlowConsumer,
                "the connection fell too far behind on its updates",
            );
            let _ = outbound.queue.try_send(codec.encode(&error));
            let _ = outbound.queue.try_send(Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "slow consumer".into(),
            })));
        }
        End::Peer => {}
    }
    if let Some(subscriber) = session.subscriber() {
        server.gateway.hub().disconnect(subscriber);
    }
    stream_state.report_closed();
    drop(outbound);
    if tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), &mut writer)
        .await
        .is_err()
    {
        // The writer is stuck on a peer that reads nothing: dropping the task drops the
        // socket.
        writer.abort();
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
