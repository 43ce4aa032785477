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
//! Per stream, one task moving bytes between the stream and its `StreamCore`
//! (`crate::stream`, profile `QUIC`): the core decodes every whole frame, hands each request
//! to the connection's [`Session`], and the task writes every answer available in one write
//! before it reads again (batching). Durable waits queue in request order (`DurableAcks`: a
//! stream's receipts only grow, so the front is always the first to become durable) and
//! their acks are written as they resolve, while reading goes on; the session bounds them
//! per connection (`pending_durable_per_connection_max`). A frame longer than `frame_bytes_max` gets
//! `TOO_LARGE` and the stream is closed after the answers already due (its receiving side
//! stopped with `TOO_LARGE`); an undecodable message gets `MALFORMED` and the stream goes on;
//! a broken length prefix gets `MALFORMED` and the stream is closed (stopped with
//! `MALFORMED`). Nothing a peer sends can panic the node or stall another
//! stream or connection.
//!
//! Streams (`docs/quic.md`): a stream that sends `Subscribe` carries the updates of its
//! subscriptions; the core also takes what is due at its subscriber's wake-up and pacing
//! timer, price updates as QUIC datagrams when the stream asked for them and
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

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(test)]
use gavel_proto::frame;
use gavel_proto::pb::ErrorCode;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::task::TaskTracker;

use crate::clock::sleep_until;
use crate::gateway::{Backend, Gateway};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::metrics;
use crate::session::Session;
use crate::stream::{self, Delimited, End, Event, StreamCore};
use crate::tls::ServerTls;

/// Bytes of price-tick datagrams a connection buffers for sending; beyond it the oldest are
/// dropped (each tick is superseded by the next anyway).
const DATAGRAM_SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes of client datagrams a connection buffers (the node reads none).
const DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 2 * 1024;
/// The transport's metric label.
pub const TRANSPORT: &str = stream::QUIC.transport;
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

/// [`bind`] on a UDP socket bound earlier (a node binds its port before recovery, to
/// advertise it to the other nodes, and serves it once ready; datagrams meanwhile wait in
/// the socket's buffer or are lost, and the clients' handshakes resend them).
pub fn bind_socket(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> Result<quinn::Endpoint, QuicError> {
    let config = server_config(tls, limits)?;
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let runtime = quinn::default_runtime().ok_or_else(|| QuicError::Bind {
        addr,
        source: std::io::Error::other("no async runtime to drive the QUIC endpoint"),
    })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(|source| QuicError::Bind { addr, source })
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

/// Serves one bidirectional stream: moves bytes between it and its [`StreamCore`] — reads
/// into the core, writes what it hands out (one inline write at a time, cut off at its
/// write deadline), sends its price datagrams — until the core ends it.
async fn serve_stream<B: Backend>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    session: Session<B>,
    connection: quinn::Connection,
) {
    let shutdown = session.gateway().shutdown().clone();
    let mut core = StreamCore::new(session, Delimited::default(), &stream::QUIC, Instant::now());
    let mut out = Vec::new();
    let end = 'serve: loop {
        core.set_datagram_max(connection.max_datagram_size().unwrap_or(0));
        while let Some(datagram) = core.poll_datagram() {
            let sent = connection.send_datagram(datagram);
            if let Err(e) = &sent {
                tracing::debug!(error = %e, "QUIC datagram not sent; using the stream");
            }
            core.handle_datagram_sent(sent.is_ok());
        }
        if core.poll_write(Instant::now(), &mut out) {
            let write = send.write_all(&out);
            let written = match core.write_deadline() {
                Some(at) => tokio::time::timeout_at(at.into(), write).await,
                None => Ok(write.await),
            };
            match written {
                Ok(Ok(())) => core.handle_flushed(Instant::now()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "QUIC stream write failed");
                    break 'serve End::Peer;
                }
                Err(_) => core.handle_timeout(Instant::now()),
            }
        }
        while let Some(event) = core.poll_event() {
            match event {
                Event::StopReading(code) => drop(recv.stop(close_code(code))),
                Event::End(end) => break 'serve end,
            }
        }
        let (reading, timeout) = (core.is_reading(), core.poll_timeout());
        tokio::select! {
            biased;
            () = poll_fn(|cx| core.poll_ready(cx, Instant::now())) => {}
            () = shutdown.cancelled(), if reading => core.handle_shutdown(Instant::now(), None),
            () = sleep_until(timeout), if timeout.is_some() => core.handle_timeout(Instant::now()),
            chunk = recv.read_chunk(READ_CHUNK_BYTES, true), if reading => match chunk {
                Ok(Some(chunk)) => core.handle_bytes(&chunk.bytes, Instant::now()),
                // The client finished sending: answer what is due, then finish.
                Ok(None) => core.handle_read_end(),
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC stream read failed");
                    core.handle_read_end();
                }
            },
            // The take after the last flush left bytes to write: write them (after a read
            // that is ready, so a long lap of updates does not starve the requests).
            () = std::future::ready(()), if core.has_output() => {}
        }
    };
    core.close(end);
    if let Some(code) = end.quic_reset() {
        let _ = send.reset(close_code(code));
        let _ = recv.stop(close_code(code));
    } else if send.finish().is_ok() {
        // Until the client has every byte (or the connection ends); closing the connection
        // before that could lose the last answers.
        let _ = send.stopped().await;
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
