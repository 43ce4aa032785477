//! The HTTPS port: one TLS listener serving HTTP/1.1 and HTTP/2 (hyper-util's auto server)
//! with the admin API, `/metrics`, `/healthz`, `/readyz`, the WebSocket endpoint `/v1/ws`,
//! server-sent events at `/v1/sse` and the browser page at `/`; and an optional plain-HTTP
//! listener for Prometheus scrapers.
//!
//! Map of the module:
//! - this file: [`HttpOptions`], [`MetricsRenderer`], the accept loops ([`serve_https`],
//!   [`serve_tls`], [`serve_metrics`]) and one connection's life (limits, TLS handshake,
//!   identity, graceful shutdown);
//! - `routes`: the router, the probes and `/metrics`;
//! - `response`: the responses every handler builds (text, JSON, JSON errors, 405);
//! - `admin`: `POST/GET /v1/auctions[...]`, JSON in and out, [`AdminError`];
//! - `ws`: the WebSocket handshake (subprotocol, Origin allow-list) and the driver that runs
//!   a [`crate::session::Session`] over it;
//! - `sse`: `GET /v1/sse`, the price streams as server-sent events (query → `Subscribe`,
//!   `Last-Event-ID` resume, one task per stream feeding the response body);
//! - `stream`: what `ws` and `sse` share besides their stream core (`crate::stream`):
//!   connection metrics, the keepalive period, Origin/shutdown admission;
//! - `paced`: the accepted TCP socket, which a stream connection paces (at most
//!   `stream_unsent_bytes_max` unsent bytes in the kernel; a flush completes only below it);
//! - `page`: the browser page at `/` and its assets, compiled into the binary.
//!
//! # Limits
//!
//! Every accepted TCP connection takes a permit of the gateway's `connections_max` (shared
//! with every transport) for as long as it lives, WebSocket included, and one of
//! `handshakes_pending_max` until its TLS handshake ends; the handshake has
//! `handshake_timeout_ms`. Without a permit the connection is closed at once and counted in
//! `gavel_connections_refused_total{transport="https",reason}`. Request bodies are capped at
//! `http_body_bytes_max`, WebSocket messages at `ws_message_bytes_max`, HTTP/2 streams per
//! connection at `streams_per_connection_max`; a connection that sends no request, an HTTP/1.1
//! connection that sends no next request's headers, and a silent WebSocket are closed after
//! `idle_timeout_ms` (an idle HTTP/2 connection whose peer answers pings stays open).
//!
//! # Shutdown
//!
//! When the gateway's shutdown token is cancelled the listener stops accepting, `/readyz`
//! answers 503, HTTP connections finish the requests in flight (hyper's graceful shutdown)
//! and WebSockets close with 1001. [`serve_https`] returns once every connection has ended,
//! or after [`HttpOptions::drain_timeout_ms`] at the latest.
//!
//! # Wiring (for `gavel serve`)
//!
//! ```text
//! // Once, before anything counts (the exporter with default-features = false: no listener
//! // of its own; histograms need a periodic upkeep).
//! let handle = PrometheusBuilder::new().install_recorder()?;
//! gavel_transport::metrics::describe();
//! tokio::spawn({ let h = handle.clone(); async move {
//!     loop { tokio::time::sleep(Duration::from_secs(5)).await; h.run_upkeep(); } } });
//!
//! let shutdown = CancellationToken::new();
//! let gateway = Arc::new(Gateway::<NodeBackend>::new(limits, shutdown.clone()));
//! let tls = ServerTls::load(tls_paths, allow_anonymous_watchers)?;
//! tls.spawn_reloader(reload_poll, shutdown.clone());
//! let listener = TcpListener::bind(https_listen).await?;      // bind errors are fatal
//! let options = HttpOptions::new(MetricsRenderer::prometheus(handle.clone()))
//!     .with_allowed_origins(allowed_origins);
//! let https = tokio::spawn(http::serve_https(listener, tls.clone(), gateway.clone(), options));
//! if let Some(addr) = metrics_listen {                        // optional scrape port
//!     let listener = TcpListener::bind(addr).await?;
//!     tokio::spawn(http::serve_metrics(listener, gateway.clone(),
//!                                      MetricsRenderer::prometheus(handle)));
//! }
//! // Recovery (Node::open) may run while the port already answers /healthz and 503s:
//! gateway.set_ready(Arc::new(NodeBackend(node.clone())));
//! // On SIGTERM/ctrl-c:
//! shutdown.cancel();
//! https.await?;                  // returns after the drain (HttpOptions::drain_timeout_ms)
//! node.shutdown(true)?;          // after the listeners: pending durable acks were sent
//! ```

mod admin;
mod paced;
mod page;
mod response;
mod routes;
mod sse;
mod stream;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admin::{AdminError, LIST_LIMIT_DEFAULT};
pub use sse::{PATH as SSE_PATH, RESUME_POSITIONS_MAX};
pub use ws::{PATH as WS_PATH, SUBPROTOCOL_EDGE, SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO};

use crate::gateway::{Backend, Gateway};
use crate::identity::{Identity, IdentityError};
use crate::metrics;
use crate::tls::stream::ServerStream;
use crate::tls::{self, ServerTls};

/// The metric label of connections served by this module.
const TRANSPORT: &str = "https";
/// The metric label of the plain-HTTP metrics listener.
const TRANSPORT_METRICS: &str = "metrics";
/// Wait after a failed `accept` (out of file descriptors, say) before the next, in
/// milliseconds, so a persistent failure does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;
/// Default [`HttpOptions::drain_timeout_ms`].
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default [`HttpOptions::ws_ping_interval_ms`].
pub const WS_PING_INTERVAL_MS_DEFAULT: u64 = 15_000;
/// Least time between two WebSocket pings of the node, in milliseconds.
pub const WS_PING_INTERVAL_MS_MIN: u64 = 10;

/// Renders the Prometheus text exposition for `/metrics`.
#[derive(Clone)]
pub struct MetricsRenderer(Arc<dyn Fn() -> String + Send + Sync>);

impl MetricsRenderer {
    /// Renders with `render`.
    pub fn new(render: impl Fn() -> String + Send + Sync + 'static) -> MetricsRenderer {
        MetricsRenderer(Arc::new(render))
    }

    /// Renders from the installed Prometheus recorder's handle.
    pub fn prometheus(handle: metrics_exporter_prometheus::PrometheusHandle) -> MetricsRenderer {
        MetricsRenderer::new(move || handle.render())
    }

    /// The exposition text now.
    pub fn render(&self) -> String {
        (self.0)()
    }
}

impl std::fmt::Debug for MetricsRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRenderer")
    }
}

/// What the HTTPS port needs besides the gateway's limits.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Renders `/metrics`.
    pub metrics: MetricsRenderer,
    /// Origins a browser may open `/v1/ws` and `/v1/sse` from, e.g.
    /// `https://market.example.com` (compared without case, a trailing `/` ignored); `*`
    /// allows any. A request without an `Origin` header (not a browser) and one from the
    /// node's own origin (`https://` + its `Host`) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Time between two pings the node sends on a WebSocket, in milliseconds; at most half
    /// of `idle_timeout_ms` and at least [`WS_PING_INTERVAL_MS_MIN`] are used.
    pub ws_ping_interval_ms: u64,
    /// Longest wait for connections to finish after shutdown, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl HttpOptions {
    /// Options with the defaults: no browser origin allowed.
    pub fn new(metrics: MetricsRenderer) -> HttpOptions {
        HttpOptions {
            metrics,
            allowed_origins: Vec::new(),
            ws_ping_interval_ms: WS_PING_INTERVAL_MS_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
        }
    }

    /// The same options allowing `origins` to open WebSockets.
    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> HttpOptions {
        self.allowed_origins = origins;
        self
    }
}

/// How a connection's client certificate chain becomes an [`Identity`] (the TLS module's
/// `peer_identity`).
pub type PeerIdentity = fn(&[CertificateDer<'static>]) -> Result<Identity, IdentityError>;

/// What every connection of one listener shares.
struct Server<B> {
    gateway: Arc<Gateway<B>>,
    options: HttpOptions,
    /// Connection and WebSocket tasks, awaited at shutdown.
    tasks: TaskTracker,
}

/// One accepted connection: who it is and the permit it holds.
#[derive(Clone)]
struct Peer {
    /// `None`: no certificate (an anonymous watcher, if the TLS configuration allows it).
    identity: Option<Identity>,
    remote: SocketAddr,
    /// The `connections_max` permit, shared with a WebSocket the connection upgrades to.
    _permit: Arc<OwnedSemaphorePermit>,
    /// The socket's pacing, enabled once the connection carries a price stream.
    pacing: Arc<paced::Pacing>,
}

/// Serves the HTTPS port on `listener` until the gateway shuts down, then drains.
///
/// Each accepted connection is handshaken with `tls`'s current HTTPS configuration (ALPN
/// `h2`, `http/1.1`; so a reload applies to new connections) and identified by its client
/// certificate; a connection without one (admitted only when `tls` allows anonymous
/// watchers) is an anonymous watcher.
pub async fn serve_https<B: Backend>(
    listener: TcpListener,
    tls: ServerTls,
    gateway: Arc<Gateway<B>>,
    options: HttpOptions,
) {
    serve_tls(
        listener,
        move || tls.https_config(),
        tls::peer_identity,
        gateway,
        options,
    )
    .await;
}

/// [`serve_https`] with the TLS configuration taken from `config` per connection and
/// identities parsed by `identify`.
pub async fn serve_tls<B: Backend>(
    listener: TcpListener,
    config: impl Fn() -> Arc<rustls::ServerConfig> + Send + 'static,
    identify: PeerIdentity,
    gateway: Arc<Gateway<B>>,
    options: HttpOptions,
) {
    metrics::build_info();
    let drain = Duration::from_millis(options.drain_timeout_ms);
    let server = Arc::new(Server {
        gateway,
        options,
        tasks: TaskTracker::new(),
    });
    let local = listener.local_addr().ok();
    tracing::info!(?local, "HTTPS listener serving");
    let shutdown = server.gateway.shutdown().clone();
    while let Some((tcp, remote, permit)) =
        accept_within_limit(&listener, &server.gateway, &shutdown, TRANSPORT).await
    {
        let Some(handshake) = server.gateway.try_handshake() else {
            refuse(TRANSPORT, "handshakes_pending_max", remote);
            continue;
        };
        // Bid outcomes, acks and stream updates are small writes that must not wait for the
        // peer's delayed ACK (Nagle); failing to set it only costs latency.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let config = config();
        let server_for_task = Arc::clone(&server);
        let pacing = Arc::new(paced::Pacing::default());
        let tcp = paced::PacedTcp::new(tcp, Arc::clone(&pacing));
        server.tasks.spawn(async move {
            let server = server_for_task;
            let Some(stream) = handshake_within_timeout(&server, config, tcp, remote).await else {
                return;
            };
            drop(handshake);
            let Ok(identity) = identity_of(&stream, identify, remote) else {
                return;
            };
            let peer = Peer {
                identity,
                remote,
                _permit: Arc::new(permit),
                pacing,
            };
            serve_connection(&server, stream, peer).await;
        });
    }
    tracing::info!(?local, "HTTPS listener stopped accepting; draining");
    drop(listener);
    server.tasks.close();
    if tokio::time::timeout(drain, server.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = server.tasks.len(),
            "HTTPS connections still open after the drain timeout"
        );
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP on `listener` (a port for
/// scrapers, usually bound to a private address), until the gateway shuts down.
pub async fn serve_metrics<B: Backend>(
    listener: TcpListener,
    gateway: Arc<Gateway<B>>,
    metrics: MetricsRenderer,
) {
    metrics::build_info();
    let server = Arc::new(Server {
        gateway,
        options: HttpOptions::new(metrics),
        tasks: TaskTracker::new(),
    });
    let shutdown = server.gateway.shutdown().clone();
    while let Some((tcp, _remote, permit)) =
        accept_within_limit(&listener, &server.gateway, &shutdown, TRANSPORT_METRICS).await
    {
        let server_for_task = Arc::clone(&server);
        server.tasks.spawn(async move {
            let server = server_for_task;
            let _permit = permit;
            let service = {
                let server = Arc::clone(&server);
                service_fn(move |request: Request<Incoming>| {
                    let server = Arc::clone(&server);
                    async move { Ok::<_, Infallible>(routes::probes_only(&server, &request)) }
                })
            };
            let builder = http_builder(server.gateway.limits());
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = server.gateway.shutdown().cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let drain = Duration::from_millis(server.options.drain_timeout_ms);
                    let _ = tokio::time::timeout(drain, connection.as_mut()).await;
                }
            }
        });
    }
    drop(listener);
    server.tasks.close();
    let _ = tokio::time::timeout(
        Duration::from_millis(DRAIN_TIMEOUT_MS_DEFAULT),
        server.tasks.wait(),
    )
    .await;
}

/// An HTTP/1.1 + HTTP/2 connection builder with the edge's limits.
fn http_builder(limits: &crate::Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams_per_connection_max)
        // What a response (an SSE stream) may have buffered per HTTP/2 stream beyond the
        // socket: more waits in its producer (for SSE, conflating in the outbox).
        .max_send_buf_size(limits.stream_unsent_bytes_max)
        .keep_alive_interval(limits.idle_timeout() / 2)
        .keep_alive_timeout(limits.idle_timeout() / 2);
    builder
}

/// Serves one TLS connection's requests until it ends or, at shutdown, until the requests
/// in flight are answered.
async fn serve_connection<B: Backend, S>(server: &Arc<Server<B>>, stream: S, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ::metrics::counter!(metrics::CONNECTIONS_ACCEPTED, "transport" => TRANSPORT).increment(1);
    let gauge = ::metrics::gauge!(metrics::CONNECTIONS, "transport" => TRANSPORT, "role" => metrics::role_label(peer.identity.as_ref()));
    gauge.increment(1.0);
    tracing::debug!(remote = %peer.remote, identity = ?peer.identity, "HTTPS connection");
    let peer_remote = peer.remote;
    // Whether a request arrived: a connection that sends none within the idle timeout is
    // dropped (hyper's header read timeout only starts once it knows HTTP/1.1 from HTTP/2,
    // which takes the client's first bytes).
    let requested = Arc::new(AtomicBool::new(false));
    let service = {
        let server = Arc::clone(server);
        let requested = Arc::clone(&requested);
        service_fn(move |request: Request<Incoming>| {
            // Ordering: a flag read by this connection's own task; no data depends on it.
            requested.store(true, Ordering::Relaxed);
            let server = Arc::clone(&server);
            let peer = peer.clone();
            async move { Ok::<Response<_>, Infallible>(routes::route(&server, &peer, request).await) }
        })
    };
    let builder = http_builder(server.gateway.limits());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let first_request = tokio::time::sleep(server.gateway.limits().idle_timeout());
    tokio::pin!(first_request);
    let mut first_request_due = true;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = &mut first_request, if first_request_due => {
                first_request_due = false;
                // Ordering: see the store above.
                if !requested.load(Ordering::Relaxed) {
                    refuse(TRANSPORT, "idle", peer_remote);
                    break Ok(());
                }
            }
            () = server.gateway.shutdown().cancelled() => {
                connection.as_mut().graceful_shutdown();
                let drain = Duration::from_millis(server.options.drain_timeout_ms);
                break match tokio::time::timeout(drain, connection.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => Ok(()),
                };
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTPS connection ended with an error");
    }
    gauge.decrement(1.0);
}

/// The next TCP connection that gets a `connections_max` permit (refusing and counting the
/// ones that do not), or `None` once the node shuts down. Accept errors (e.g. out of file
/// descriptors) are logged and retried after a pause.
async fn accept_within_limit<B: Backend>(
    listener: &TcpListener,
    gateway: &Gateway<B>,
    shutdown: &CancellationToken,
    transport: &'static str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(transport, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            },
        };
        match gateway.try_connection() {
            Some(permit) => return Some((tcp, remote, permit)),
            None => refuse(transport, "connections_max", remote),
        }
    }
}

fn refuse(transport: &'static str, reason: &'static str, remote: SocketAddr) {
    tracing::debug!(%remote, reason, "connection refused by a limit");
    ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "transport" => transport, "reason" => reason)
        .increment(1);
}

/// The TLS handshake of one connection under `handshake_timeout_ms`; `None` if it failed, timed
/// out (both counted) or the node began shutting down.
async fn handshake_within_timeout<B: Backend, IO: AsyncRead + AsyncWrite + Unpin>(
    server: &Server<B>,
    config: Arc<rustls::ServerConfig>,
    io: IO,
    remote: SocketAddr,
) -> Option<ServerStream<IO>> {
    let timeout = server.gateway.limits().handshake_timeout();
    tokio::select! {
        () = server.gateway.shutdown().cancelled() => None,
        accepted = tokio::time::timeout(timeout, tls::stream::accept(config, io)) => match accepted {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                handshake_failed("tls", remote, &e);
                None
            }
            Err(_) => {
                handshake_failed("timeout", remote, &"no handshake in time");
                None
            }
        },
    }
}

/// The identity the peer's certificate names (`None`: the TLS configuration admitted a
/// client without a certificate, an anonymous watcher); `Err` (counted) if the certificate
/// names none.
fn identity_of<IO: AsyncRead + AsyncWrite + Unpin>(
    stream: &ServerStream<IO>,
    identify: PeerIdentity,
    remote: SocketAddr,
) -> Result<Option<Identity>, ()> {
    match stream.peer_certificates() {
        Some(chain) if !chain.is_empty() => identify(chain).map(Some).map_err(|e| {
            handshake_failed("identity", remote, &e);
        }),
        _ => Ok(None),
    }
}

fn handshake_failed(reason: &'static str, remote: SocketAddr, error: &dyn std::fmt::Display) {
    tracing::debug!(%remote, reason, %error, "TLS handshake failed");
    ::metrics::counter!(metrics::TLS_HANDSHAKE_FAILURES, "transport" => TRANSPORT, "reason" => reason)
        .increment(1);
}
