//! Open-loop bidders: one lane per connection, over QUIC — a lean client speaking the framed
//! protocol on one pipelined stream (the same code drives the quinn echo floor), or the SDK
//! (`gavel-client`) — or over WebSocket (`gavel.v1.proto`). Each lane sends a bid at each of
//! its due times — handed over by the pacer thread, or, for the lean QUIC client, computed
//! and slept to by the connection's own task ([`OwnPace`]) — and records from the due time:
//! `decided` (any answer), `accepted` (accepted answers) and `durable` (durable acks of
//! accepted bids), with every outcome counted by kind. Lanes also record their own cost
//! (issue 20 item 2): `client_handoff`, from the due time until the connection's task holds
//! the request (timer slack, plus the pacer's cross-thread hand-off where there is one), and,
//! for the lean QUIC client, `client_sent`, until the request is written to its stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use gavel_client::{Bid, BidError, Client, ClientConfig};
use gavel_proto::pb;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use gavel_proto::frame::{self, ALPN, FrameDecoder};
use gavel_transport::tls;

use crate::pace::{LANE_QUEUE_MAX, Lane, OwnPace, PreciseTimer};
use crate::stats::{Recorder, unix_us};
use crate::target::Node;
use crate::workload::{PlannedBid, Workload};
use crate::ws;

/// Bids one connection may have waiting for an answer or a durable ack; more wait (the wait
/// is part of their latency). The node's own per-connection bound is 4 096 durable acks.
pub const IN_FLIGHT_MAX: usize = 4_000;
/// Longest a lane waits for its last answers after the pacer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The dev identities that may bid (each has its own rate bucket on the node), used round
/// robin by the connections.
pub const BIDDERS: [(&str, &str); 3] = [
    ("bidder", "bidder-1"),
    ("bidder", "bidder-2"),
    ("device", "device-1"),
];

/// The counted kind of a rejected or failed bid.
pub fn error_kind(error: &BidError) -> &'static str {
    match error {
        BidError::TooLow { .. } => "too_low",
        BidError::NotOpen => "not_open",
        BidError::Closed => "closed",
        BidError::UnknownAuction => "unknown_auction",
        BidError::Duplicate { .. } => "duplicate",
        BidError::RateLimited => "rate_limited",
        BidError::Overloaded { .. } => "overloaded",
        BidError::Invalid => "invalid",
        BidError::Forbidden => "forbidden",
        BidError::Server { .. } => "server_error",
        BidError::Connection(_) => "connection",
        BidError::Timeout => "timeout",
    }
}

/// The counted kind of a rejection reason on the wire.
fn reason_kind(reason: i32) -> &'static str {
    match pb::RejectReason::try_from(reason) {
        Ok(pb::RejectReason::TooLow) => "too_low",
        Ok(pb::RejectReason::NotOpen) => "not_open",
        Ok(pb::RejectReason::Closed) => "closed",
        Ok(pb::RejectReason::UnknownAuction) => "unknown_auction",
        Ok(pb::RejectReason::Duplicate) => "duplicate",
        Ok(pb::RejectReason::RateLimited) => "rate_limited",
        Ok(pb::RejectReason::Overloaded) => "overloaded",
        Ok(pb::RejectReason::Invalid) => "invalid",
        Ok(pb::RejectReason::Forbidden) => "forbidden",
        Ok(pb::RejectReason::Misdirected) => "misdirected",
        Ok(pb::RejectReason::NoOwner) => "no_owner",
        _ => "unknown_reason",
    }
}

/// Started lanes: hand due times to `lanes` (or each of `own_paced` its share of the
/// schedule), then await `tasks`.
#[derive(Default)]
pub struct Lanes {
    /// The pacer's side.
    pub lanes: Vec<Lane>,
    /// Lanes that pace themselves: each waits for its share.
    pub own_paced: Vec<oneshot::Sender<OwnPace>>,
    /// One task per connection; each ends after its queue closed and its answers arrived.
    pub tasks: Vec<JoinHandle<()>>,
}

impl Lanes {
    /// Adds a lane whose due times `task` consumes (spawned now).
    pub fn add<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(mpsc::Receiver<(Instant, u64)>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
        self.lanes.push(lane);
        self.tasks.push(tokio::spawn(task(due)));
    }

    /// Adds a lane that paces itself with the share of the schedule `task` receives.
    pub fn add_own_paced<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(oneshot::Receiver<OwnPace>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (share, receive) = oneshot::channel();
        self.own_paced.push(share);
        self.tasks.push(tokio::spawn(task(receive)));
    }
}

/// The `PlaceBid` request of a planned bid, with a fresh random bid id.
pub fn place_bid_message(request_id: u64, planned: PlannedBid) -> pb::ClientMessage {
    let bid_id = gavel_client::random_bid_id();
    pb::ClientMessage {
        request_id,
        body: Some(pb::client_message::Body::PlaceBid(pb::PlaceBid {
            auction_id: planned.auction_id,
            amount: planned.amount,
            max: None,
            bid_id_hi: (bid_id >> 64) as u64,
            // Truncation intended: the low 64 bits.
            bid_id_lo: bid_id as u64,
            client_sent_at_us: unix_us(),
        })),
    }
}

/// The SDK configuration of a dev bidder identity.
pub fn sdk_config(node: &Node, identity: (&str, &str)) -> Result<ClientConfig> {
    let (cert, key) = node.client_files(identity.0, identity.1);
    let mut config = ClientConfig::from_cert_files(
        node.quic,
        "localhost",
        &node.certs.join("ca.pem"),
        &cert,
        &key,
    )
    .with_context(|| format!("SDK configuration for {}/{}", identity.0, identity.1))?;
    config.requests_in_flight_max = IN_FLIGHT_MAX;
    config.queued_requests_max = IN_FLIGHT_MAX;
    Ok(config)
}

/// Connects `connections` SDK clients (identities round robin) and starts their lanes.
pub async fn sdk(
    node: &Node,
    connections: usize,
    workload: Arc<Workload>,
    recorder: Recorder,
) -> Result<Lanes> {
    let mut lanes = Lanes::default();
    for i in 0..connections {
        let config = sdk_config(node, BIDDERS[i % BIDDERS.len()])?;
        let client = Client::connect(config)
            .await
            .with_context(|| format!("QUIC connection {i} to {}", node.quic))?;
        let (workload, recorder) = (Arc::clone(&workload), recorder.clone());
        lanes.add(|due| sdk_lane(client, due, workload, recorder, (i, connections)));
    }
    Ok(lanes)
}

async fn sdk_lane(
    client: Client,
    mut due: mpsc::Receiver<(Instant, u64)>,
    workload: Arc<Workload>,
    recorder: Recorder,
    (lane, lanes): (usize, usize),
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    while let Some((intended, _)) = due.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let planned = workload.next_bid(&mut rng, lane, lanes);
        let client = client.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let bid = Bid::new(planned.auction_id, planned.amount);
            match client.place_bid(bid).await {
                Ok(placed) => {
                    let decided = intended.elapsed();
                    recorder.latency("decided", decided);
                    recorder.latency("accepted", decided);
                    recorder.count("accepted", 1);
                    match placed.durable().await {
                        Ok(_) => recorder.latency("durable", intended.elapsed()),
                        Err(e) => recorder.count(&format!("durable_{}", error_kind(&e)), 1),
                    }
                }
                Err(e) => {
                    if !matches!(e, BidError::Connection(_) | BidError::Timeout) {
                        recorder.latency("decided", intended.elapsed());
                    }
                    recorder.count(error_kind(&e), 1);
                }
            }
        });
    }
    // Every permit back = every bid answered (each has its own timeouts in the SDK).
    let all = u32::try_from(IN_FLIGHT_MAX).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, in_flight.acquire_many(all)).await;
    client.close().await;
}

/// Connects `connections` WebSocket bidders (identities round robin) and starts their lanes.
pub async fn websocket(
    node: &Node,
    connections: usize,
    workload: Arc<Workload>,
    recorder: Recorder,
) -> Result<Lanes> {
    let mut lanes = Lanes::default();
    for i in 0..connections {
        let who = BIDDERS[i % BIDDERS.len()];
        let connector = node.https_connector(Some(who))?;
        let socket = ws::connect(&connector, node.https, "/v1/ws", Some(ws::GAVEL_PROTO))
            .await
            .with_context(|| format!("WebSocket bidder {i}"))?;
        let pending = Pending::new(recorder.clone(), true);
        let workload = Arc::clone(&workload);
        lanes.add(|due| ws_lane(socket, due, workload, pending, (i, connections)));
    }
    Ok(lanes)
}

async fn ws_lane(
    socket: ws::Socket,
    mut due: mpsc::Receiver<(Instant, u64)>,
    workload: Arc<Workload>,
    pending: Arc<Pending>,
    (lane, lanes): (usize, usize),
) {
    let (mut sink, mut stream) = socket.split();
    let reader = {
        let pending = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Binary(bytes) = message else {
                    continue;
                };
                match pb::ServerMessage::decode(bytes) {
                    Ok(answer) => pending.answer(answer),
                    Err(_) => pending.recorder.count("undecodable", 1),
                }
            }
        })
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    while let Some((intended, seq)) = due.recv().await {
        pending
            .recorder
            .latency("client_handoff", intended.elapsed());
        let request_id = seq + 1;
        if !pending.begin(request_id, intended).await {
            break;
        }
        let message = place_bid_message(request_id, workload.next_bid(&mut rng, lane, lanes));
        let sent = sink
            .send(Message::Binary(message.encode_to_vec().into()))
            .await;
        if sent.is_err() {
            pending.failed(request_id);
        }
    }
    pending.drain().await;
    let _ = sink.close().await;
    reader.abort();
}

/// A bid waiting for its answers: when it was due, and its in-flight permit.
struct Waiting {
    intended: Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The bids of one connection waiting for their answers, by request id, at most
/// [`IN_FLIGHT_MAX`]; records every answer.
pub struct Pending {
    waiting: Mutex<HashMap<u64, Waiting>>,
    in_flight: Arc<Semaphore>,
    /// Whether accepted bids get a durable ack (not from the echo floor).
    durable_expected: bool,
    recorder: Recorder,
}

impl Pending {
    /// An empty set recording into `recorder`.
    pub fn new(recorder: Recorder, durable_expected: bool) -> Arc<Pending> {
        Arc::new(Pending {
            waiting: Mutex::default(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_MAX)),
            durable_expected,
            recorder,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for room, then notes request `id` as due at `intended`; `false` if closed.
    pub async fn begin(&self, id: u64, intended: Instant) -> bool {
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return false;
        };
        self.lock().insert(
            id,
            Waiting {
                intended,
                _permit: permit,
            },
        );
        true
    }

    /// Request `id` could not be sent.
    pub fn failed(&self, id: u64) {
        self.lock().remove(&id);
        self.recorder.count("connection", 1);
    }

    /// Records one message from the server.
    pub fn answer(&self, answer: pb::ServerMessage) {
        use pb::server_message::Body;
        let id = answer.request_id;
        let recorder = &self.recorder;
        match answer.body {
            Some(Body::BidOutcome(outcome)) => {
                let mut waiting = self.lock();
                let Some(intended) = waiting.get(&id).map(|w| w.intended) else {
                    recorder.count("unexpected_answer", 1);
                    return;
                };
                recorder.latency("decided", intended.elapsed());
                match outcome.outcome {
                    Some(pb::bid_outcome::Outcome::Accepted(_)) => {
                        recorder.latency("accepted", intended.elapsed());
                        recorder.count("accepted", 1);
                        if !self.durable_expected {
                            waiting.remove(&id);
                        }
                    }
                    Some(pb::bid_outcome::Outcome::Rejected(r)) => {
                        waiting.remove(&id);
                        recorder.count(reason_kind(r.reason), 1);
                    }
                    None => {
                        waiting.remove(&id);
                        recorder.count("unknown_reason", 1);
                    }
                }
            }
            Some(Body::DurableAck(_)) => match self.lock().remove(&id) {
                Some(w) => recorder.latency("durable", w.intended.elapsed()),
                None => recorder.count("unexpected_answer", 1),
            },
            Some(Body::Error(e)) => {
                self.lock().remove(&id);
                let kind = format!("error_{}", e.code().as_str_name().to_lowercase());
                recorder.count(&kind, 1);
            }
            _ => {}
        }
    }

    /// Waits until every request was answered (at most [`DRAIN_TIMEOUT`]); what is left
    /// counts as `timeout`, or `durable_timeout` if its decision arrived.
    pub async fn drain(&self) {
        let all = u32::try_from(IN_FLIGHT_MAX).unwrap_or(u32::MAX);
        if tokio::time::timeout(DRAIN_TIMEOUT, self.in_flight.acquire_many(all))
            .await
            .is_err()
        {
            let lost = self.lock().len() as u64;
            self.recorder.count("durable_timeout", lost);
        }
    }
}

/// Largest frame the lean QUIC client accepts (the node's default `frame_bytes_max`).
const FRAME_BYTES_MAX: usize = 64 * 1024;

/// Connects `connections` lean QUIC clients to `server` with the bidders' dev certificates
/// in `certs` (round robin), each with its own UDP socket and one pipelined stream, and
/// starts their lanes. `durable_expected`: the server sends durable acks (the node, not
/// the echo floor).
pub async fn quic_raw(
    server: SocketAddr,
    certs: &Path,
    connections: usize,
    workload: Arc<Workload>,
    recorder: Recorder,
    durable_expected: bool,
) -> Result<Lanes> {
    let mut lanes = Lanes::default();
    for i in 0..connections {
        let (role, id) = BIDDERS[i % BIDDERS.len()];
        let clients = certs.join("clients");
        let tls = tls::client_config(
            &certs.join("ca.pem"),
            Some((
                &clients.join(format!("{role}-{id}.pem")),
                &clients.join(format!("{role}-{id}.key")),
            )),
            &[ALPN],
        )?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // The SDK's transport settings.
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(30))?))
            .keep_alive_interval(Some(Duration::from_secs(5)));
        config.transport_config(Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(server, "localhost")?
            .await
            .with_context(|| format!("QUIC connection {i} to {server}"))?;
        let (send, recv) = connection.open_bi().await?;
        let pending = Pending::new(recorder.clone(), durable_expected);
        let workload = Arc::clone(&workload);
        let quic = RawQuic {
            endpoint,
            connection,
            send,
            recv,
        };
        lanes
            .add_own_paced(|share| quic_raw_lane(quic, share, workload, pending, (i, connections)));
    }
    Ok(lanes)
}

/// One lean QUIC client connection.
struct RawQuic {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

async fn quic_raw_lane(
    quic: RawQuic,
    share: oneshot::Receiver<OwnPace>,
    workload: Arc<Workload>,
    pending: Arc<Pending>,
    (lane, lanes): (usize, usize),
) {
    let RawQuic {
        endpoint,
        connection,
        mut send,
        mut recv,
    } = quic;
    let reader = {
        let pending = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
            while let Ok(Some(chunk)) = recv.read_chunk(FRAME_BYTES_MAX, true).await {
                decoder.push(&chunk.bytes);
                while let Ok(Some(answer)) = decoder.next_message::<pb::ServerMessage>() {
                    pending.answer(answer);
                }
            }
        })
    };
    match (share.await, PreciseTimer::new()) {
        (Ok(share), Ok(timer)) => {
            send_own_paced(share, timer, &mut send, &pending, &workload, (lane, lanes)).await;
        }
        // The run ended before it started: nothing to send.
        (Err(_), _) => {}
        (Ok(_), Err(_)) => pending.recorder.count("timer", 1),
    }
    pending.drain().await;
    let _ = send.finish();
    reader.abort();
    connection.close(0_u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Sends a lane's share of the schedule on `send`, each bid at its due time (slept to on the
/// lane's own task), until the share ends or the stream fails.
async fn send_own_paced(
    mut share: OwnPace,
    mut timer: PreciseTimer,
    send: &mut quinn::SendStream,
    pending: &Pending,
    workload: &Workload,
    (lane, lanes): (usize, usize),
) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut out = Vec::with_capacity(256);
    while let Some((intended, seq)) = share.next_due() {
        if timer.sleep_until(intended).await.is_err() {
            pending.recorder.count("timer", 1);
            return;
        }
        pending
            .recorder
            .latency("client_handoff", intended.elapsed());
        let request_id = seq + 1;
        if !pending.begin(request_id, intended).await {
            return;
        }
        let message = place_bid_message(request_id, workload.next_bid(&mut rng, lane, lanes));
        out.clear();
        frame::encode(&message, &mut out);
        if send.write_all(&out).await.is_err() {
            pending.failed(request_id);
            return;
        }
        pending.recorder.latency("client_sent", intended.elapsed());
        share.sent();
    }
}
