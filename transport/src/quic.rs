//! The QUIC listener for bidders (quinn, ALPN `gavel/1`, mutual TLS): connections,
//! streams, frames, and a graceful drain at shutdown.
//!
//! Wiring (what `gavel serve` does, once the gateway is ready):
//! ```text
//! let endpoint = quic::bind(config.quic_listen, tls.quic_config(), gateway.limits())?;
//! let quic_addr = endpoint.local_addr()?;           // port 0 picks one
//! tasks.push(tokio::spawn(quic::serve_quic(endpoint, gateway.clone(), Some(tls.clone()),
//!                                          drain_timeout)));
//! // shutdown: gateway.shutdown().cancel(); the task ends within drain_timeout + IDLE_WAIT_MS
//! ```
//!
//! Per connection: a pending-handshake permit (`handshakes_pending_max`; beyond it new
//! connection attempts are refused) held until the handshake ends or
//! `handshake_timeout_ms` passes; a connection permit (`connections_max`, shared with the
//! other transports); the identity from the client certificate's `gavel://` URI (none: an
//! anonymous watcher, which the TLS configuration admits only if watchers may connect
//! without a certificate). The client opens bidirectional streams (at most
//! `streams_per_connection_max` at once; no unidirectional ones); each carries
//! length-delimited `ClientMessage`s one way and `ServerMessage`s the other
//! ([`gavel_proto::frame`]).
//!
//! Per stream, one task: it reads what arrived, decodes every whole frame, hands each request
//! to the connection's [`Session`], and writes every answer available in one write before it
//! reads again (batching). Durable waits queue in request order (a stream's receipts only
//! grow, so the front is always the first to become durable) and their acks are written as
//! they resolve, while reading goes on; the session bounds them per connection
//! (`pending_durable_per_connection_max`). A frame longer than `frame_bytes_max` gets
//! `TOO_LARGE` and the stream is closed after the answers already due (its receiving side
//! stopped with `TOO_LARGE`); an undecodable message gets `MALFORMED` and the stream goes on;
//! a broken length prefix gets `MALFORMED` and the stream is closed (stopped with
//! `MALFORMED`). Nothing a peer sends can panic the node or stall another
//! stream or connection.
//!
//! Streams (`docs/quic.md`): a stream that sends `Subscribe` carries the updates of its
//! subscriptions; the stream task also waits on its subscriber's wake-up and pacing timer and
//! writes what is due, price updates as QUIC datagrams when the stream asked for them and
//! they fit. It takes one batch of at most `stream_unsent_bytes_max` bytes at a time, and the
//! next only once quinn took the last (within the peer's flow-control window): what a slow
//! reader has not taken waits, conflated, in the outbox. A subscribed stream whose peer takes nothing for the slow-consumer timeout (or
//! whose outbox stays over its bound) is reset with `SLOW_CONSUMER`.
//!
//! Metrics (labelled `transport="quic"`): `gavel_connections` (open),
//! `gavel_connections_accepted_total`, `gavel_connections_refused_total{reason}`
//! (`connections_max`, `handshakes_pending_max`), `gavel_tls_handshake_failures_total{reason}`
//! (`tls`, `timeout`, `closed`, `identity`: a verified certificate naming no usable
//! `gavel://` identity), `gavel_request_errors_total{reason}` (`malformed`, `too_large`, and
//! the session's), plus the session's bid counters and histograms.
//!
//! Shutdown (the gateway's token): stop accepting connections and requests; every stream
//! writes the durable acks still due, finishes, and waits until the client has the bytes;
//! then each connection is closed with the application code [`ErrorCode::ShuttingDown`]
//! (QUIC application codes are the wire's `ErrorCode` numbers). Whatever is not done by the
//! drain deadline is closed the same way; the endpoint then waits until it is idle.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gavel_proto::frame::{self, FrameDecoder, FrameError};
use gavel_proto::pb;
use gavel_proto::pb::ErrorCode;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::task::TaskTracker;

use crate::clock::now_micros;
use crate::fanout::{self, Outgoing, Subscriber};
use crate::gateway::{Backend, Gateway};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::metrics;
use crate::session::{Session, error_message};
use crate::tls::ServerTls;

/// Bytes of price-tick datagrams a connection buffers for sending; beyond it the oldest are
/// dropped (each tick is superseded by the next anyway).
const DATAGRAM_SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes of client datagrams a connection buffers (the node reads none).
const DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 2 * 1024;
/// The transport's metric label.
pub const TRANSPORT: &str = "quic";
/// A sensible drain deadline at shutdown, in milliseconds.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Bytes read from a stream at once; bounds the answers one read can produce.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest wait for the endpoint to become idle after closing every connection, in
/// milliseconds: [`serve_quic`] returns at most this long after its drain deadline.
pub const IDLE_WAIT_MS: u64 = 2_000;

/// Why the QUIC listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The TLS configuration has no cipher suite QUIC can use (QUIC needs TLS 1.3).
    #[error("the TLS configuration is unusable for QUIC: {0}")]
    Tls(String),
    /// A limit does not fit QUIC's transport parameters.
    #[error("limit {name} does not fit QUIC: {detail}")]
    Limit {
        /// The limit.
        name: &'static str,
        /// Why.
        detail: String,
    },
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
}

/// The QUIC application close code of an [`ErrorCode`].
pub fn close_code(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code as u32)
}

/// The server configuration: the TLS config (TLS 1.3, ALPN `gavel/1`, client certificates
/// verified) with transport parameters from `limits`.
pub fn server_config(
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> Result<quinn::ServerConfig, QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(limits.idle_timeout()).map_err(|e| QuicError::Limit {
            name: "idle_timeout_ms",
            detail: e.to_string(),
        })?;
    transport
        .max_concurrent_bidi_streams(limits.streams_per_connection_max.into())
        .max_concurrent_uni_streams(0_u8.into())
        .max_idle_timeout(Some(idle))
        // Clients keep their connections alive; the node only answers.
        .keep_alive_interval(None)
        // The node sends price ticks as datagrams (bounded send buffer; the oldest are
        // dropped first when it is full). quinn sends datagrams only with datagrams enabled
        // locally, so a small receive buffer is advertised; the node reads none, and what a
        // client sends is dropped, oldest first, beyond it.
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER_BYTES))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER_BYTES);
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    // Attempts beyond the pending-handshake limit are refused by `serve_quic`; this bounds
    // what quinn itself buffers before the application sees them.
    config.max_incoming(limits.handshakes_pending_max.saturating_mul(2).max(1));
    Ok(config)
}

/// Binds the UDP socket and returns the endpoint [`serve_quic`] drives.
pub fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> Result<quinn::Endpoint, QuicError> {
    let config = server_config(tls, limits)?;
    quinn::Endpoint::server(config, addr).map_err(|source| QuicError::Bind { addr, source })
}

/// Serves bidders on `endpoint` until the gateway's shutdown token is cancelled, then drains
/// for at most `drain_timeout` and returns once the endpoint is idle (at most
/// [`IDLE_WAIT_MS`] later). Start it once the gateway is ready (before that every bid is
/// answered `Overloaded`). With `tls`, new
/// connections get the material of each reload (`ServerTls` generation bump); open ones keep
/// theirs.
pub async fn serve_quic<B: Backend>(
    endpoint: quinn::Endpoint,
    gateway: Arc<Gateway<B>>,
    tls: Option<ServerTls>,
    drain_timeout: Duration,
) {
    let shutdown = gateway.shutdown().clone();
    let connections = TaskTracker::new();
    let mut generations = tls.as_ref().map(ServerTls::subscribe);
    tracing::info!(addr = ?endpoint.local_addr().ok(), "QUIC listener serving");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = wait_for_reload(&mut generations) => match (changed, &tls) {
                (true, Some(tls)) => reload(&endpoint, &gateway, tls),
                _ => generations = None,
            },
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => admit(incoming, &gateway, &connections),
                None => break,
            },
        }
    }
    // Stop accepting: new attempts are refused from here on.
    endpoint.set_server_config(None);
    connections.close();
    let open = connections.len();
    tracing::info!(connections = open, "QUIC listener draining");
    if tokio::time::timeout(drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            ?drain_timeout,
            "QUIC drain deadline passed; closing what is left"
        );
    }
    endpoint.close(
        close_code(ErrorCode::ShuttingDown),
        b"the node is shutting down",
    );
    let idle = Duration::from_millis(IDLE_WAIT_MS);
    if tokio::time::timeout(idle, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("QUIC endpoint not idle after closing; leaving it");
    }
    tracing::info!("QUIC listener stopped");
}

/// Resolves `true` on a new TLS generation, `false` if the source is gone; never without
/// updates.
async fn wait_for_reload(generations: &mut Option<watch::Receiver<u64>>) -> bool {
    match generations {
        Some(generations) => generations.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

fn reload<B: Backend>(endpoint: &quinn::Endpoint, gateway: &Gateway<B>, tls: &ServerTls) {
    let generation = *tls.subscribe().borrow();
    match server_config(tls.quic_config(), gateway.limits()) {
        Ok(config) => {
            endpoint.set_server_config(Some(config));
            tracing::info!(generation, "QUIC listener took the reloaded TLS material");
        }
        Err(e) => tracing::error!(
            generation,
            error = %e,
            "reloaded TLS material unusable for QUIC; keeping the previous"
        ),
    }
}

/// Takes a connection attempt within the handshake and connection limits, or refuses it.
fn admit<B: Backend>(
    incoming: quinn::Incoming,
    gateway: &Arc<Gateway<B>>,
    connections: &TaskTracker,
) {
    let Some(handshake) = gateway.try_handshake() else {
        refused("handshakes_pending_max");
        incoming.refuse();
        return;
    };
    let Some(slot) = gateway.try_connection() else {
        refused("connections_max");
        incoming.refuse();
        return;
    };
    connections.spawn(serve_connection(
        incoming,
        Arc::clone(gateway),
        handshake,
        slot,
    ));
}

fn refused(reason: &'static str) {
    tracing::debug!(reason, "QUIC connection refused");
    ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "transport" => TRANSPORT, "reason" => reason)
        .increment(1);
}

fn handshake_failed(reason: &'static str, detail: &dyn std::fmt::Display) {
    tracing::debug!(reason, %detail, "QUIC handshake failed");
    ::metrics::counter!(metrics::TLS_HANDSHAKE_FAILURES, "transport" => TRANSPORT, "reason" => reason)
        .increment(1);
}

async fn serve_connection<B: Backend>(
    incoming: quinn::Incoming,
    gateway: Arc<Gateway<B>>,
    handshake: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let handshaking = async {
        let connecting = incoming.accept()?;
        connecting.await
    };
    let connection =
        match tokio::time::timeout(gateway.limits().handshake_timeout(), handshaking).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                let reason = match e {
                    quinn::ConnectionError::TransportError(_) => "tls",
                    quinn::ConnectionError::TimedOut => "timeout",
                    _ => "closed",
                };
                return handshake_failed(reason, &e);
            }
            Err(_) => return handshake_failed("timeout", &"no handshake in time"),
        };
    drop(handshake);
    let identity = match peer_identity(&connection) {
        Ok(identity) => identity,
        Err(e) => {
            handshake_failed("identity", &e);
            connection.close(close_code(ErrorCode::Forbidden), e.as_bytes());
            return;
        }
    };
    tracing::debug!(%remote, identity = ?identity.as_ref().map(ToString::to_string), "QUIC connection open");
    ::metrics::counter!(metrics::CONNECTIONS_ACCEPTED, "transport" => TRANSPORT).increment(1);
    let open = ::metrics::gauge!(metrics::CONNECTIONS, "transport" => TRANSPORT, "role" => metrics::role_label(identity.as_ref()));
    open.increment(1.0);
    let _presence = identity
        .as_ref()
        .filter(|i| i.role.may_bid())
        .map(|_| gateway.hub().bidder_present());

    let session = Session::new(Arc::clone(&gateway), identity, TRANSPORT);
    let shutdown = gateway.shutdown().clone();
    let streams = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(send, recv, session.clone(), connection.clone()));
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "QUIC connection ended");
                    break;
                }
            },
        }
    }
    streams.close();
    streams.wait().await;
    if shutdown.is_cancelled() {
        connection.close(
            close_code(ErrorCode::ShuttingDown),
            b"the node is shutting down",
        );
    }
    open.decrement(1.0);
}

/// The identity named by the client certificate; `None` without one (an anonymous watcher,
/// admitted only if the TLS configuration allows it).
fn peer_identity(connection: &quinn::Connection) -> Result<Option<Identity>, String> {
    let Some(certs) = connection.peer_identity() else {
        return Ok(None);
    };
    let certs = certs
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the TLS session holds no certificate chain".to_owned())?;
    if certs.is_empty() {
        return Ok(None);
    }
    crate::tls::peer_identity(&certs)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The accepted bids of one stream waiting for their durable acks, in request order.
type DurableQueue = VecDeque<Pin<Box<dyn Future<Output = pb::ServerMessage> + Send>>>;

/// Moves every durable ack ready at the front of `queue` to `out`; `Ready` if there was one.
fn poll_durable(
    queue: &mut DurableQueue,
    cx: &mut Context<'_>,
    out: &mut Vec<pb::ServerMessage>,
) -> Poll<()> {
    let mut any = false;
    while let Some(front) = queue.front_mut() {
        match front.as_mut().poll(cx) {
            Poll::Ready(message) => {
                out.push(message);
                queue.pop_front();
                any = true;
            }
            Poll::Pending => break,
        }
    }
    if any { Poll::Ready(()) } else { Poll::Pending }
}

/// How often a subscribed stream's outbox is looked at while nothing wakes it (slow-consumer
/// detection), in milliseconds.
const STREAM_CHECK_MS: u64 = 50;
/// The stream timer when nothing is pending.
const STREAM_IDLE: Duration = Duration::from_secs(3600);

/// Stream updates a subscribed QUIC stream writes at once.
const STREAM_BATCH_MESSAGES_MAX: usize = 256;

/// A subscribed stream's writer state: the gauges it reported, its delivery metrics and
/// its update batch.
struct Updates {
    subscriptions: usize,
    bytes: usize,
    delivery: fanout::hub::Delivery,
    batch: Vec<Outgoing>,
}

impl Updates {
    fn report(&mut self, subscriptions: usize, bytes: usize) {
        if (subscriptions, bytes) == (self.subscriptions, self.bytes) {
            return;
        }
        ::metrics::gauge!(metrics::STREAM_SUBSCRIPTIONS, "transport" => TRANSPORT)
            .increment(subscriptions as f64 - self.subscriptions as f64);
        ::metrics::gauge!(metrics::STREAM_QUEUE_BYTES, "transport" => TRANSPORT)
            .increment(bytes as f64 - self.bytes as f64);
        self.subscriptions = subscriptions;
        self.bytes = bytes;
    }

    /// Takes what is due from `subscriber`'s outbox: price updates go out as datagrams if
    /// asked for and they fit, everything else into `replies` for the stream. Returns when
    /// to look again.
    fn take(
        &mut self,
        subscriber: &Subscriber,
        connection: &quinn::Connection,
        datagrams: bool,
        batch_bytes_max: usize,
        replies: &mut Vec<pb::ServerMessage>,
    ) -> tokio::time::Instant {
        let now = std::time::Instant::now();
        let (next, bytes) = subscriber.take_due(
            now,
            batch_bytes_max,
            STREAM_BATCH_MESSAGES_MAX,
            &self.delivery,
            &mut self.batch,
        );
        self.report(subscriber.subscriptions(), bytes);
        let sent_at = now_micros();
        self.delivery.record(&self.batch, sent_at);
        let datagram_max = if datagrams {
            connection.max_datagram_size().unwrap_or(0)
        } else {
            0
        };
        for message in self.batch.drain(..) {
            if datagram_max > 0 && message.is_price() {
                // Encoded once per update for every connection it goes to.
                let datagram = message.proto();
                if datagram.len() <= datagram_max {
                    match connection.send_datagram(datagram) {
                        Ok(()) => {
                            ::metrics::counter!(metrics::STREAM_DATAGRAMS, "result" => "sent")
                                .increment(1);
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "QUIC datagram not sent; using the stream")
                        }
                    }
                } else {
                    ::metrics::counter!(metrics::STREAM_DATAGRAMS, "result" => "too_large")
                        .increment(1);
                }
            }
            replies.push(message.into_message());
        }
        let check = tokio::time::Instant::now() + Duration::from_millis(STREAM_CHECK_MS);
        match next {
            Some(due) => tokio::time::Instant::from_std(due).min(check),
            None if bytes > 0 => check,
            None => tokio::time::Instant::now() + STREAM_IDLE,
        }
    }
}

/// Resolves when `subscriber` has something new; never without one.
async fn woken(subscriber: Option<&Arc<Subscriber>>) {
    match subscriber {
        Some(s) => s.woken().await,
        None => std::future::pending().await,
    }
}

async fn serve_stream<B: Backend>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut session: Session<B>,
    connection: quinn::Connection,
) {
    let shutdown = session.gateway().shutdown().clone();
    let limits = session.gateway().limits().clone();
    let mut decoder = FrameDecoder::new(limits.frame_bytes_max);
    let mut durable = DurableQueue::new();
    let mut replies = Vec::new();
    let mut out = Vec::new();
    let mut reading = true;
    let mut updates = Updates {
        subscriptions: 0,
        bytes: 0,
        delivery: fanout::hub::Delivery::new(TRANSPORT),
        batch: Vec::new(),
    };
    let mut stream_timer = tokio::time::Instant::now() + STREAM_IDLE;
    let mut slow = false;
    loop {
        for reply in replies.drain(..) {
            frame::encode(&reply, &mut out);
        }
        if !out.is_empty() {
            // A subscribed stream's peer that takes nothing for the slow-consumer timeout
            // is cut off; an unsubscribed one is bounded by flow control and the idle
            // timeout as before.
            let write = send.write_all(&out);
            let written = match session.subscriber() {
                Some(_) => tokio::time::timeout(limits.slow_consumer_timeout(), write)
                    .await
                    .unwrap_or_else(|_| {
                        slow = true;
                        Ok(())
                    }),
                None => write.await,
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "QUIC stream write failed");
                break;
            }
            out.clear();
        }
        if slow
            || session
                .subscriber()
                .is_some_and(|s| s.is_slow(std::time::Instant::now()))
        {
            tracing::debug!("QUIC subscriber too slow; resetting its stream");
            ::metrics::counter!(metrics::STREAM_SLOW_CONSUMERS, "transport" => TRANSPORT)
                .increment(1);
            let _ = send.reset(close_code(ErrorCode::SlowConsumer));
            let _ = recv.stop(close_code(ErrorCode::SlowConsumer));
            break;
        }
        if !reading && durable.is_empty() {
            break;
        }
        let subscriber = session.subscriber().cloned();
        tokio::select! {
            biased;
            () = poll_fn(|cx| poll_durable(&mut durable, cx, &mut replies)), if !durable.is_empty() => {}
            () = shutdown.cancelled(), if reading => reading = false,
            () = woken(subscriber.as_ref()), if reading => {
                if let Some(s) = &subscriber {
                    stream_timer = updates.take(s, &connection, session.wants_datagrams(), limits.stream_unsent_bytes_max, &mut replies);
                }
            }
            () = tokio::time::sleep_until(stream_timer), if reading && subscriber.is_some() => {
                if let Some(s) = &subscriber {
                    stream_timer = updates.take(s, &connection, session.wants_datagrams(), limits.stream_unsent_bytes_max, &mut replies);
                }
            }
            chunk = recv.read_chunk(READ_CHUNK_BYTES, true), if reading => match chunk {
                Ok(Some(chunk)) => {
                    decoder.push(&chunk.bytes);
                    let fatal = handle_frames(&mut decoder, &mut session, &mut durable, &mut replies).err();
                    if let Some(s) = session.subscriber() {
                        updates.report(s.subscriptions(), updates.bytes);
                    }
                    if let Some(code) = fatal {
                        // Whatever follows a broken or oversized frame is not read.
                        reading = false;
                        let _ = recv.stop(close_code(code));
                    }
                }
                // The client finished sending: answer what is due, then finish.
                Ok(None) => reading = false,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC stream read failed");
                    reading = false;
                }
            },
        }
    }
    if let Some(subscriber) = session.subscriber() {
        session.gateway().hub().disconnect(subscriber);
        updates.report(0, 0);
    }
    if slow {
        return;
    }
    if send.finish().is_ok() {
        // Until the client has every byte (or the connection ends); closing the connection
        // before that could lose the last answers.
        let _ = send.stopped().await;
    }
}

/// Handles every whole frame in `decoder`; `Err(code)` if the stream must stop being read,
/// with `code` as the STOP_SENDING code (`TOO_LARGE` after an oversized frame, `MALFORMED`
/// after a broken length prefix, as docs/quic.md says).
fn handle_frames<B: Backend>(
    decoder: &mut FrameDecoder,
    session: &mut Session<B>,
    durable: &mut DurableQueue,
    replies: &mut Vec<pb::ServerMessage>,
) -> Result<(), ErrorCode> {
    loop {
        match decoder.next_message::<pb::ClientMessage>() {
            Ok(Some(request)) => {
                if let Some(wait) = session.handle(request, replies) {
                    durable.push_back(Box::pin(wait.into_message()));
                }
            }
            Ok(None) => return Ok(()),
            Err(FrameError::Malformed(detail)) => replies.push(session.malformed(detail)),
            Err(FrameError::TooLarge { len, max }) => {
                metrics::request_error(TRANSPORT, "too_large");
                replies.push(error_message(
                    0,
                    ErrorCode::TooLarge,
                    format!("a frame of {len} bytes exceeds the limit of {max} bytes; closing the stream"),
                ));
                return Err(ErrorCode::TooLarge);
            }
            Err(FrameError::BadLength) => {
                replies.push(session.malformed("bad frame length prefix; closing the stream"));
                return Err(ErrorCode::Malformed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_alpn_is_the_framing_s() {
        assert_eq!(crate::tls::ALPN_GAVEL, frame::ALPN);
    }

    #[test]
    fn close_codes_are_the_wire_error_codes() {
        assert_eq!(close_code(ErrorCode::ShuttingDown).into_inner(), 8);
        assert_eq!(close_code(ErrorCode::Forbidden).into_inner(), 5);
    }
}
