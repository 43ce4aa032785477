//! A real node serving QUIC for integration tests: a durable [`Node`] in a temp dir behind
//! [`NodeBackend`] and a [`Gateway`], dev certificates from `tls::dev`, the QUIC listener on
//! `127.0.0.1:0`; plus a gate that holds the log's fsyncs (durable acks wait while it is
//! closed), a UDP relay that can cut a connection, and a raw QUIC stream for sending bytes
//! the SDK never would.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gavel_client::ClientConfig;
use gavel_engine::{AuctionId, AuctionView, UnixMicros};
use gavel_node::{Node, NodeBackend, NodeConfig};
use gavel_proto::frame::{self, ALPN, FrameDecoder};
use gavel_proto::pb;
use gavel_transport::clock::now_micros;
use gavel_transport::tls::{self, ServerTls, dev};
use gavel_transport::{Gateway, Identity, Limits, quic};
use gavel_wal::{Lsn, WriterHooks};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any helper waits for something that should happen quickly.
pub const WAIT_MAX: Duration = Duration::from_secs(10);

/// Holds the log's fsyncs while closed, so durable acks wait; never longer than
/// [`WAIT_MAX`] (a forgotten gate cannot hang a test).
#[derive(Debug, Default)]
pub struct SyncGate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl SyncGate {
    /// Holds every fsync from now on.
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    /// Lets fsyncs through again.
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
}

impl WriterHooks for SyncGate {
    fn before_sync(&self, _last: Lsn) -> io::Result<()> {
        let closed = self.closed.lock().unwrap();
        let _unused = self
            .opened
            .wait_timeout_while(closed, WAIT_MAX, |closed| *closed)
            .unwrap();
        Ok(())
    }
}

/// A node serving QUIC on loopback.
pub struct QuicNode {
    /// The data and certificate directories live as long as this.
    pub dir: tempfile::TempDir,
    /// The durable node.
    pub node: Arc<Node>,
    /// The gateway; cancel its shutdown token to stop the listener.
    pub gateway: Arc<Gateway<NodeBackend>>,
    /// The dev PKI.
    pub certs: dev::DevCerts,
    /// Where the listener is.
    pub addr: SocketAddr,
    /// The fsync gate of the node's log.
    pub sync_gate: Arc<SyncGate>,
    /// The node's TLS material (reload it after changing the files).
    pub tls: ServerTls,
    /// The listener task; ends after the drain.
    pub server: JoinHandle<()>,
}

impl QuicNode {
    /// Starts a node with `limits` and a drain deadline of 5 s; clients need a certificate.
    pub async fn start(limits: Limits) -> QuicNode {
        QuicNode::start_with(limits, false).await
    }

    /// [`QuicNode::start`], letting watchers in without a certificate if
    /// `anonymous_watchers`.
    pub async fn start_with(limits: Limits, anonymous_watchers: bool) -> QuicNode {
        // The process-wide recorder, so tests can read the edge's counters.
        gavel_node::serve::prometheus();
        let dir = tempfile::tempdir().unwrap();
        let sync_gate = Arc::new(SyncGate::default());
        let hooks: Arc<dyn WriterHooks> = sync_gate.clone();
        let (node, _) =
            Node::open_with_hooks(dir.path().join("data"), NodeConfig::default(), hooks).unwrap();
        let node = Arc::new(node);
        let certs =
            dev::generate(&dir.path().join("certs"), &dev::DevCertOptions::default()).unwrap();
        let server_tls = ServerTls::load(certs.tls_paths(), anonymous_watchers).unwrap();
        let gateway = Arc::new(Gateway::new(limits, CancellationToken::new()));
        gateway.set_ready(Arc::new(NodeBackend(Arc::clone(&node))));
        let endpoint = quic::bind(
            "127.0.0.1:0".parse().unwrap(),
            server_tls.quic_config(),
            gateway.limits(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let server = tokio::spawn(quic::serve_quic(
            endpoint,
            Arc::clone(&gateway),
            Some(server_tls.clone()),
            Duration::from_secs(5),
        ));
        // Price streams: the fan-out workers end with the gateway's shutdown.
        tokio::spawn(gavel_transport::fanout::run_workers(Arc::clone(&gateway)));
        QuicNode {
            dir,
            node,
            gateway,
            certs,
            addr,
            sync_gate,
            tls: server_tls,
            server,
        }
    }

    /// An English auction `id` starting at 100 ticks, open for an hour.
    pub fn create_english(&self, id: u64) {
        let now = now_micros();
        let spec = super::english(id, UnixMicros(now.0 + 3_600_000_000));
        let receipt = self.node.create_auction(spec, now).unwrap();
        self.node.wait_durable(receipt, WAIT_MAX).unwrap();
    }

    /// The auction's public state now.
    pub fn view(&self, id: u64) -> AuctionView {
        self.node
            .engine()
            .view(AuctionId(id), now_micros())
            .unwrap()
    }

    /// An SDK configuration for the dev client `<role>/<id>`, with short test timeouts.
    pub fn client_config(&self, role: &str, id: &str) -> ClientConfig {
        self.client_config_at(self.addr, role, id)
    }

    /// [`QuicNode::client_config`] for a node reached at `addr` (through a relay).
    pub fn client_config_at(&self, addr: SocketAddr, role: &str, id: &str) -> ClientConfig {
        let identity = Identity::from_uri(&format!("gavel://{role}/{id}")).unwrap();
        let client = self.certs.client(&identity).unwrap();
        let mut config = ClientConfig::from_cert_files(
            addr,
            "localhost",
            &self.certs.ca_cert,
            &client.cert,
            &client.key,
        )
        .unwrap();
        config.connect_timeout = Duration::from_secs(2);
        config.request_timeout = WAIT_MAX;
        config.durable_timeout = WAIT_MAX;
        config
    }

    /// A raw stream of a new connection as `<role>/<id>`, for bytes the SDK never sends.
    pub async fn raw_connection(&self, role: &str, id: &str) -> RawConnection {
        let identity = Identity::from_uri(&format!("gavel://{role}/{id}")).unwrap();
        let client = self.certs.client(&identity).unwrap();
        self.raw_connection_as(Some((&client.cert, &client.key)))
            .await
            .unwrap()
    }

    /// A raw connection presenting `cert_key` (none: anonymous).
    pub async fn raw_connection_as(
        &self,
        cert_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<RawConnection, quinn::ConnectionError> {
        raw_connect(
            self.addr,
            &self.certs.ca_cert,
            cert_key,
            quinn::TransportConfig::default(),
        )
        .await
    }
}

/// A raw QUIC connection to the node at `addr` (CA `ca`) presenting `cert_key` (none:
/// anonymous), with the client transport parameters `transport`.
pub async fn raw_connect(
    addr: SocketAddr,
    ca: &std::path::Path,
    cert_key: Option<(&std::path::Path, &std::path::Path)>,
    transport: quinn::TransportConfig,
) -> Result<RawConnection, quinn::ConnectionError> {
    let tls = tls::client_config(ca, cert_key, &[ALPN]).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    let connection = endpoint.connect(addr, "localhost").unwrap().await?;
    Ok(RawConnection {
        _endpoint: endpoint,
        connection,
    })
}

/// A QUIC connection driven by hand.
pub struct RawConnection {
    _endpoint: quinn::Endpoint,
    /// The connection.
    pub connection: quinn::Connection,
}

impl RawConnection {
    /// Opens a stream.
    pub async fn stream(&self) -> RawStream {
        let (send, recv) = self.connection.open_bi().await.unwrap();
        RawStream {
            send,
            recv,
            decoder: FrameDecoder::new(1 << 20),
        }
    }
}

/// One stream: write bytes or messages, read the node's messages.
pub struct RawStream {
    /// The sending half.
    pub send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl RawStream {
    /// Writes bytes as they are.
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Writes one framed message.
    pub async fn write(&mut self, message: &pb::ClientMessage) {
        let mut bytes = Vec::new();
        frame::encode(message, &mut bytes);
        self.write_bytes(&bytes).await;
    }

    /// The next message from the node; `None` once the node finished the stream.
    pub async fn read(&mut self) -> Option<pb::ServerMessage> {
        tokio::time::timeout(WAIT_MAX, async {
            loop {
                if let Some(message) = self.decoder.next_message().unwrap() {
                    return Some(message);
                }
                match self.recv.read_chunk(64 * 1024, true).await.unwrap() {
                    Some(chunk) => self.decoder.push(&chunk.bytes),
                    None => return None,
                }
            }
        })
        .await
        .expect("the node answers in time")
    }
}

/// The value of the metric line starting with `series` (name and labels as rendered), 0 if
/// absent. Counters are process-wide: tests running in parallel add to them, so compare
/// before and after.
pub fn metric(series: &str) -> f64 {
    let text = gavel_node::serve::prometheus().render();
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}

/// A ping request.
pub fn ping(request_id: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        request_id,
        body: Some(pb::client_message::Body::Ping(pb::Ping::default())),
    }
}

/// What a [`UdpRelay`] lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayMode {
    /// Both directions.
    Pass = 0,
    /// Client to node only: the node's answers are lost.
    DropAnswers = 1,
    /// Nothing: the connection dies by idle timeout.
    DropAll = 2,
}

/// A UDP relay on loopback between one client and a node, whose traffic a test can cut.
pub struct UdpRelay {
    /// The address clients connect to.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// Relays to `server`.
    pub async fn start(server: SocketAddr) -> UdpRelay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        upstream.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(RelayMode::Pass as u8));
        let task = tokio::spawn(relay(front, upstream, Arc::clone(&mode)));
        UdpRelay { addr, mode, task }
    }

    /// Changes what passes.
    pub fn set(&self, mode: RelayMode) {
        // Ordering: the relay task reads the mode per datagram; no other memory depends on it.
        self.mode.store(mode as u8, Ordering::Relaxed);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(front: UdpSocket, upstream: UdpSocket, mode: Arc<AtomicU8>) {
    let mut client: Option<SocketAddr> = None;
    let mut up = vec![0_u8; 65_536];
    let mut down = vec![0_u8; 65_536];
    // Ordering: see `UdpRelay::set`.
    let current = || mode.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            received = front.recv_from(&mut up) => {
                let Ok((len, from)) = received else { continue };
                client = Some(from);
                if current() != RelayMode::DropAll as u8 {
                    let _ = upstream.send(&up[..len]).await;
                }
            }
            received = upstream.recv(&mut down) => {
                let Ok(len) = received else { continue };
                if let (Some(client), true) = (client, current() == RelayMode::Pass as u8) {
                    let _ = front.send_to(&down[..len], client).await;
                }
            }
        }
    }
}
