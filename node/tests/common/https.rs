//! A real node behind the HTTPS port, for the HTTP/WebSocket tests: a durable [`Node`] in a
//! temporary directory, [`NodeBackend`] + [`Gateway`], the development PKI, and
//! `serve_https` on `127.0.0.1:0`; plus an HTTP/1.1 and HTTP/2 client (hyper over
//! tokio-rustls, with or without a client certificate) and a WebSocket client
//! (tokio-tungstenite over the same TLS).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gavel_node::{Node, NodeBackend, NodeConfig};
use gavel_transport::http::{self, HttpOptions, MetricsRenderer};
use gavel_transport::tls::dev::{self, DevCertOptions, DevCerts};
use gavel_transport::tls::{ServerTls, client_config};
use gavel_transport::{Gateway, Identity, Limits};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// Longest wait for any one step of these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The process-wide Prometheus recorder (installed once per test binary; every node of the
/// binary records into it, so tests assert on their own labels or on increases).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this test binary");
            gavel_transport::metrics::describe();
            handle
        })
        .clone()
}

/// What to start.
pub struct Setup {
    /// The edge's limits.
    pub limits: Limits,
    /// Origins allowed to open WebSockets.
    pub allowed_origins: Vec<String>,
    /// Time between the node's WebSocket pings, in milliseconds.
    pub ws_ping_interval_ms: u64,
    /// Hand the gateway its backend at once (`false`: the test calls [`TestNode::set_ready`]).
    pub ready: bool,
    /// Admit clients without a certificate (as anonymous watchers).
    pub anonymous_watchers: bool,
    /// The node's configuration (its own file log by default).
    pub node: NodeConfig,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            limits: Limits {
                http_body_bytes_max: 4 * 1024,
                ws_message_bytes_max: 4 * 1024,
                ..Limits::default()
            },
            allowed_origins: vec!["https://market.example.com".to_owned()],
            ws_ping_interval_ms: http::WS_PING_INTERVAL_MS_DEFAULT,
            ready: true,
            anonymous_watchers: true,
            node: NodeConfig::default(),
        }
    }
}

/// A node serving HTTPS on 127.0.0.1.
pub struct TestNode {
    /// The data directory and the PKI (kept alive with the node).
    _dir: tempfile::TempDir,
    /// The development certificates.
    pub certs: DevCerts,
    /// Where the HTTPS port listens.
    pub addr: SocketAddr,
    /// The gateway the server serves.
    pub gateway: Arc<Gateway<NodeBackend>>,
    node: Arc<Node>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl TestNode {
    /// Starts a node with `setup`.
    pub async fn start(setup: Setup) -> TestNode {
        let handle = metrics_handle();
        let dir = tempfile::tempdir().unwrap();
        let certs = dev::generate(&dir.path().join("pki"), &DevCertOptions::default()).unwrap();
        let (node, _) = Node::open(dir.path().join("data"), setup.node).unwrap();
        let node = Arc::new(node);
        let shutdown = CancellationToken::new();
        let gateway = Arc::new(Gateway::new(setup.limits, shutdown.clone()));
        node.follow_into(Arc::clone(gateway.hub()));
        if setup.ready {
            gateway.set_ready(Arc::new(NodeBackend(Arc::clone(&node))));
        }
        let tls = ServerTls::load(certs.tls_paths(), setup.anonymous_watchers).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut options = HttpOptions::new(MetricsRenderer::prometheus(handle))
            .with_allowed_origins(setup.allowed_origins);
        options.ws_ping_interval_ms = setup.ws_ping_interval_ms;
        tokio::spawn(gavel_transport::fanout::run_workers(Arc::clone(&gateway)));
        let server = tokio::spawn(http::serve_https(
            listener,
            tls,
            Arc::clone(&gateway),
            options,
        ));
        TestNode {
            _dir: dir,
            certs,
            addr,
            gateway,
            node,
            shutdown,
            server,
        }
    }

    /// The node behind the gateway.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Recovery finished: the gateway serves from the node.
    pub fn set_ready(&self) {
        self.gateway
            .set_ready(Arc::new(NodeBackend(Arc::clone(&self.node))));
    }

    /// Shuts the server down and waits for it (bounded), then flushes the node.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("the server stops within the wait")
            .unwrap();
        self.node.shutdown(false).unwrap();
    }

    /// Cancels the shutdown token only (the test watches what happens).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The server task, to await after [`TestNode::begin_shutdown`].
    pub async fn join(self) {
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("the server stops within the wait")
            .unwrap();
        self.node.shutdown(false).unwrap();
    }

    /// A TLS connection as `who` (`"admin/admin"`, `"bidder/bidder-1"`, …; `None`: no
    /// client certificate) offering `alpn`.
    pub async fn tls(&self, who: Option<&str>, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        self.try_tls(who, alpn).await.expect("handshake succeeds")
    }

    /// [`TestNode::tls`], or the handshake's error (the node refused the connection).
    pub async fn try_tls(
        &self,
        who: Option<&str>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        try_tls_to(self.addr, &self.certs, who, alpn).await
    }

    /// One HTTP/1.1 request as `who`; returns status, headers and body.
    pub async fn request(
        &self,
        who: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        request_to(self.addr, &self.certs, who, method, path, body).await
    }

    /// `POST /v1/auctions` of `body` as the dev admin; asserts `201 Created` and returns
    /// the body.
    pub async fn create_auction(&self, body: Vec<u8>) -> Bytes {
        let (status, _, body) = self
            .request(Some("admin/admin"), "POST", "/v1/auctions", Some(body))
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// One HTTP/2 `GET` as `who`; returns status and body.
    pub async fn get_h2(&self, who: Option<&str>, path: &str) -> (StatusCode, Bytes) {
        let stream = self.tls(who, &[b"h2"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .uri(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (parts, body) = answer(sender.send_request(request)).await;
        (parts.status, body)
    }

    /// Starts the plain-HTTP metrics listener on 127.0.0.1:0 for this node's gateway.
    pub async fn start_metrics_listener(&self) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(http::serve_metrics(
            listener,
            Arc::clone(&self.gateway),
            MetricsRenderer::prometheus(metrics_handle()),
        ));
        (addr, task)
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = self.request(None, "GET", "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Opens `/v1/ws` as `who` offering `subprotocol`, with `origin` if given.
    pub async fn ws(
        &self,
        who: Option<&str>,
        subprotocol: &str,
        origin: Option<&str>,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, tungstenite::Error> {
        let stream = self.tls(who, &[b"http/1.1"]).await;
        ws_over(stream, subprotocol, origin).await
    }

    /// [`TestNode::ws`] over a socket whose receive buffer is `recv_buffer_bytes` (a
    /// small TCP window, so a client that stops reading backs the node up quickly).
    pub async fn ws_small_window(
        &self,
        who: Option<&str>,
        subprotocol: &str,
        recv_buffer_bytes: u32,
    ) -> WebSocketStream<TlsStream<TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(recv_buffer_bytes).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let stream = tls_over(tcp, &self.certs, who, &[b"http/1.1"])
            .await
            .expect("handshake succeeds");
        ws_over(stream, subprotocol, None).await.unwrap()
    }
}

/// Opens `/v1/ws` over a TLS `stream` to the HTTPS port, offering `subprotocol`, with
/// `origin` if given.
pub async fn ws_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    subprotocol: &str,
    origin: Option<&str>,
) -> Result<WebSocketStream<S>, tungstenite::Error> {
    let mut request = "wss://localhost/v1/ws".into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", subprotocol.parse().unwrap());
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let (socket, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_with_config(request, stream, None),
    )
    .await
    .expect("a WebSocket handshake in time")?;
    Ok(socket)
}

/// One plain-HTTP/1.1 `GET` to `addr`; returns status and body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = answer(sender.send_request(request)).await;
    (parts.status, body)
}

/// A TLS connection to the HTTPS port at `addr` as `who` (`"admin/admin"`, …; `None`: no
/// client certificate) with the development PKI `certs`, offering `alpn`; or the
/// handshake's error.
pub async fn try_tls_to(
    addr: SocketAddr,
    certs: &DevCerts,
    who: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // Small request/answer exchanges: no Nagle delay.
    tcp.set_nodelay(true)?;
    tls_over(tcp, certs, who, alpn).await
}

/// [`try_tls_to`] over a connected socket `io`.
pub async fn tls_over<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    certs: &DevCerts,
    who: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<IO>> {
    let client = who.map(|who| {
        let identity = Identity::from_uri(&format!("gavel://{who}")).unwrap();
        certs.client(&identity).expect("a dev certificate").clone()
    });
    let config = client_config(
        &certs.ca_cert,
        client.as_ref().map(|c| (c.cert.as_path(), c.key.as_path())),
        alpn,
    )
    .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(Arc::new(config)).connect(name, io))
        .await
        .expect("handshake in time")
}

/// One HTTP/1.1 request to the HTTPS port at `addr` as `who`; returns status, headers and
/// body.
pub async fn request_to(
    addr: SocketAddr,
    certs: &DevCerts,
    who: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = try_tls_to(addr, certs, who, &[b"http/1.1"])
        .await
        .expect("handshake succeeds");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let (parts, body) = answer(sender.send_request(request)).await;
    (parts.status, parts.headers, body)
}

/// Awaits a request's response (within [`WAIT`]) and its whole body.
async fn answer(
    response: impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
) -> (hyper::http::response::Parts, Bytes) {
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}
