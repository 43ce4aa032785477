//! The background connection task: one QUIC connection with one bidirectional stream at a
//! time, requests pipelined on it by request id, answers routed back to their callers;
//! reconnects with full-jitter backoff and resends every bid still waiting for an answer.
//!
//! Why resending is safe: a bid carries its client-chosen bid id, the node's idempotency
//! key. A resent bid the node already accepted is answered `Duplicate { original }`, which
//! this task turns back into the original acceptance (the bid was this client's own), and
//! the node then sends the durable ack of the original.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use gavel_proto::frame::{self, FrameDecoder};
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;
use tokio::sync::{mpsc, oneshot};

use crate::backoff::full_jitter;
use crate::config::ClientConfig;
use crate::error::{BidError, ConnectError};
use crate::router::{Router, hop_delay};
use crate::{Accepted, DurableAck};

/// Largest frame the client accepts from the node, in bytes.
pub(crate) const FRAME_BYTES_MAX: usize = 1 << 20;
/// Bytes read from the stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Encoded requests gathered before they are written, in bytes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// How often requests whose callers gave up are forgotten, in milliseconds.
const SWEEP_INTERVAL_MS: u64 = 500;
/// Longest wait for the node to acknowledge the close, in milliseconds.
const CLOSE_WAIT_MS: u64 = 1_000;
/// The QUIC application close code of a client going away normally.
const CLOSE_NORMAL: u32 = 0;

/// A bid to send, and who waits for its answers; it moves between connection tasks when
/// a node redirects it or its connection is lost ([`Router::hand_off`]).
pub(crate) struct BidRequest {
    pub(crate) bid: pb::PlaceBid,
    /// `None` once the outcome was delivered (it waits for its durable ack only).
    pub(crate) outcome: Option<oneshot::Sender<Result<Accepted, BidError>>>,
    pub(crate) durable: oneshot::Sender<Result<DurableAck, BidError>>,
    /// Sent before where it may have been decided: a `Duplicate` answer is this client's own.
    pub(crate) retried: bool,
    /// Times it was redirected or routed anew.
    pub(crate) hops: u32,
}

impl BidRequest {
    /// Whether nobody waits for this bid's answers any more.
    pub(crate) fn abandoned(&self) -> bool {
        self.outcome.as_ref().is_none_or(|o| o.is_closed()) && self.durable.is_closed()
    }

    /// Ends the bid with `error` (see [`fail_bid`]).
    pub(crate) fn fail(self, error: BidError) {
        fail_bid(self.outcome, self.durable, error);
    }
}

/// What a [`crate::Client`] asks its connection task to do.
pub(crate) enum Command {
    /// Send a bid; answer its outcome, then its durable ack.
    Bid(BidRequest),
    /// Send a ping; answer when the pong arrives.
    Ping {
        reply: oneshot::Sender<Result<(), BidError>>,
    },
    /// Close the connection once nothing is in flight.
    Close { done: oneshot::Sender<()> },
    /// Hand out the current QUIC connection (to open a stream for updates).
    Connection {
        reply: oneshot::Sender<quinn::Connection>,
    },
}

/// A request sent (or to be sent) and not fully answered.
struct Pending {
    message: pb::ClientMessage,
    kind: PendingKind,
}

enum PendingKind {
    Bid(BidState),
    Ping {
        reply: oneshot::Sender<Result<(), BidError>>,
        sent: bool,
    },
}

/// A bid sent or to be sent on this connection, and who waits for its answers.
struct BidState {
    /// `None` once the outcome was delivered.
    outcome: Option<oneshot::Sender<Result<Accepted, BidError>>>,
    durable: oneshot::Sender<Result<DurableAck, BidError>>,
    /// Sent on an earlier connection too: a `Duplicate` answer is this client's own.
    retried: bool,
    /// Written on the current connection.
    sent: bool,
    /// Times it was redirected or routed anew before.
    hops: u32,
}

impl Pending {
    /// Whether nobody waits for this request's answers any more.
    fn abandoned(&self) -> bool {
        match &self.kind {
            PendingKind::Bid(bid) => {
                bid.outcome.as_ref().is_none_or(|o| o.is_closed()) && bid.durable.is_closed()
            }
            PendingKind::Ping { reply, .. } => reply.is_closed(),
        }
    }

    /// A bid as a request to send elsewhere; `None` for a ping.
    fn into_request(self) -> Option<BidRequest> {
        match (self.message.body, self.kind) {
            (Some(Request::PlaceBid(bid)), PendingKind::Bid(state)) => Some(BidRequest {
                bid,
                outcome: state.outcome,
                durable: state.durable,
                retried: state.retried,
                hops: state.hops,
            }),
            _ => None,
        }
    }
}

/// One established connection and its request stream.
pub(crate) struct Link {
    pub(crate) connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Connects, opens the request stream and checks the node answers a ping (so that a node
/// refusing the client certificate fails here, not on the first bid).
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
    quic: &quinn::ClientConfig,
) -> Result<Link, ConnectError> {
    let attempt = async {
        let connecting = endpoint
            .connect_with(quic.clone(), config.server, &config.server_name)
            .map_err(|e| ConnectError::Connection(e.to_string()))?;
        let connection = connecting
            .await
            .map_err(|e| ConnectError::Connection(e.to_string()))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| ConnectError::Connection(e.to_string()))?;
        let mut bytes = Vec::new();
        frame::encode(
            &pb::ClientMessage {
                request_id: 0,
                body: Some(Request::Ping(pb::Ping::default())),
            },
            &mut bytes,
        );
        send.write_all(&bytes)
            .await
            .map_err(|e| ConnectError::Connection(e.to_string()))?;
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        loop {
            match decoder.next_message::<pb::ServerMessage>() {
                Ok(Some(pb::ServerMessage {
                    body: Some(Reply::Pong(_)),
                    ..
                })) => break,
                Ok(Some(other)) => {
                    return Err(ConnectError::Connection(format!(
                        "the node answered a ping with {other:?}"
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Connection(e.to_string())),
            }
            match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => decoder.push(&chunk.bytes),
                Ok(None) => {
                    return Err(ConnectError::Connection(
                        "the node closed the stream".into(),
                    ));
                }
                Err(e) => return Err(ConnectError::Connection(e.to_string())),
            }
        }
        Ok(Link {
            connection,
            send,
            recv,
        })
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// Why a session on one connection ended.
enum Ended {
    /// The connection or stream failed: reconnect.
    Lost(String),
    /// The client is gone and nothing is pending, or it asked to close.
    Closed(Option<oneshot::Sender<()>>),
}

/// The connection task's state, kept across reconnects.
pub(crate) struct Driver {
    config: Arc<ClientConfig>,
    quic: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<u64, Pending>,
    next_request_id: u64,
    /// The client handle was dropped: no more commands will come.
    commands_closed: bool,
    /// The client's router (gone once the client is): where bids go that this node does not
    /// serve, or that wait here while this connection is down.
    router: Weak<Router>,
    /// This node's key in the router.
    address: String,
    /// Set while a connection is up (the router sends new bids only to such tasks).
    up: Arc<AtomicBool>,
    /// Commands taken from the queue while the connection was down, done at the next one.
    deferred: Vec<Command>,
}

impl Driver {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        quic: quinn::ClientConfig,
        endpoint: quinn::Endpoint,
        commands: mpsc::Receiver<Command>,
    ) -> Driver {
        Driver {
            address: config.server.to_string(),
            config,
            quic,
            endpoint,
            commands,
            pending: HashMap::new(),
            next_request_id: 1,
            commands_closed: false,
            router: Weak::new(),
            up: Arc::new(AtomicBool::new(false)),
            deferred: Vec::new(),
        }
    }

    /// This task as the router's connection to the node at `address`, its state in `up`.
    pub(crate) fn routed(self, router: Weak<Router>, address: &str, up: Arc<AtomicBool>) -> Driver {
        Driver {
            router,
            address: address.to_owned(),
            up,
            ..self
        }
    }

    /// Runs until the client is dropped (and nothing is pending) or closed.
    pub(crate) async fn run(mut self, first: Link) {
        let mut link = Some(first);
        let mut attempt = 0_u32;
        loop {
            let current = match link.take() {
                Some(link) => link,
                None => match self.reconnect(&mut attempt).await {
                    Some(link) => link,
                    None => break,
                },
            };
            attempt = 0;
            let connection = current.connection.clone();
            // Ordering: a routing hint (see `Router::sender_for`); nothing else depends on it.
            self.up.store(true, Ordering::Relaxed);
            let ended = self.session(current).await;
            self.up.store(false, Ordering::Relaxed);
            match ended {
                Ended::Lost(why) => {
                    tracing::info!(%why, node = %self.address, pending = self.pending.len(), "connection lost; reconnecting");
                    self.connection_lost();
                    self.hand_off_lost();
                }
                Ended::Closed(done) => {
                    connection.close(CLOSE_NORMAL.into(), b"client closed");
                    let idle = Duration::from_millis(CLOSE_WAIT_MS);
                    let _ = tokio::time::timeout(idle, self.endpoint.wait_idle()).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
        self.endpoint.close(CLOSE_NORMAL.into(), b"client closed");
    }

    /// Reconnects with backoff; `None` if the client went away with nothing pending.
    async fn reconnect(&mut self, attempt: &mut u32) -> Option<Link> {
        loop {
            let delay = full_jitter(
                *attempt,
                self.config.reconnect_backoff_base,
                self.config.reconnect_backoff_max,
                &mut rand::rng(),
            );
            *attempt = attempt.saturating_add(1);
            tokio::time::sleep(delay).await;
            self.sweep();
            // The client is gone (every sender dropped, queued commands taken or none).
            self.commands_closed |= self.commands.is_closed() && self.commands.is_empty();
            if self.commands_closed && self.pending.is_empty() {
                return None;
            }
            match connect(&self.endpoint, &self.config, &self.quic).await {
                Ok(link) => {
                    tracing::info!(attempt = *attempt, "reconnected");
                    return Some(link);
                }
                Err(e) => tracing::debug!(error = %e, attempt = *attempt, "reconnect failed"),
            }
        }
    }

    /// After a connection loss: pings fail (a late pong means nothing), bids stay to be
    /// resent.
    fn connection_lost(&mut self) {
        self.pending.retain(|_, pending| match &mut pending.kind {
            PendingKind::Ping { .. } => false,
            PendingKind::Bid(bid) => {
                bid.retried |= bid.sent;
                bid.sent = false;
                true
            }
        });
        // Dropping a ping's reply sender tells its caller the connection failed.
    }

    /// After a connection loss, when the client knows another node: every bid waiting here
    /// (sent or queued) goes to the router to be routed anew — this node may be gone for
    /// good and its partitions taken over elsewhere. Other commands wait for the reconnect.
    fn hand_off_lost(&mut self) {
        let Some(router) = self.router.upgrade() else {
            return;
        };
        if !router.node_lost(&self.address) {
            // No other node known: resent here after reconnecting, as ever.
            return;
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            if let Some(mut request) = self.pending.remove(&id).and_then(Pending::into_request) {
                request.hops += 1;
                router.hand_off(request, Duration::ZERO);
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(Command::Bid(request)) => router.hand_off(request, Duration::ZERO),
                Ok(other) => self.deferred.push(other),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.commands_closed = true;
                    break;
                }
            }
        }
    }

    /// Forgets requests nobody waits for: one not sent yet is never sent; the answer to
    /// one already sent is ignored when it comes.
    fn sweep(&mut self) {
        self.pending.retain(|_, p| !p.abandoned());
    }

    async fn session(&mut self, link: Link) -> Ended {
        let Link {
            connection,
            mut send,
            mut recv,
        } = link;
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        let mut out = Vec::new();
        // Resend everything not answered, in request order.
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.write_pending(id, &mut out);
        }
        let mut sweep = tokio::time::interval(Duration::from_millis(SWEEP_INTERVAL_MS));
        let mut close_requested: Option<oneshot::Sender<()>> = None;
        for command in std::mem::take(&mut self.deferred) {
            match command {
                Command::Connection { reply } => {
                    let _ = reply.send(connection.clone());
                }
                command => {
                    if let Some(done) = self.take(command, &mut out) {
                        close_requested = Some(done);
                    }
                }
            }
        }
        loop {
            if !out.is_empty() {
                if let Err(e) = send.write_all(&out).await {
                    return Ended::Lost(e.to_string());
                }
                out.clear();
            }
            if (self.commands_closed || close_requested.is_some()) && self.pending.is_empty() {
                let _ = send.finish();
                return Ended::Closed(close_requested);
            }
            let room = self.pending.len() < self.config.requests_in_flight_max;
            let taking = room && !self.commands_closed && close_requested.is_none();
            tokio::select! {
                command = self.commands.recv(), if taking => match command {
                    None => self.commands_closed = true,
                    Some(Command::Connection { reply }) => {
                        let _ = reply.send(connection.clone());
                    }
                    Some(command) => {
                        if let Some(done) = self.take(command, &mut out) {
                            close_requested = Some(done);
                        }
                        self.take_queued(&connection, &mut out, &mut close_requested);
                    }
                },
                chunk = recv.read_chunk(READ_CHUNK_BYTES, true) => match chunk {
                    Ok(Some(chunk)) => {
                        if let Err(ended) = self.read(&mut decoder, &chunk.bytes) {
                            return ended;
                        }
                    }
                    Ok(None) => return Ended::Lost("the node finished the stream".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    /// Batching: takes what else is queued (answering connection queries at once) while the
    /// write stays under `WRITE_BATCH_BYTES`, requests in flight under their maximum, and no
    /// close was asked for.
    fn take_queued(
        &mut self,
        connection: &quinn::Connection,
        out: &mut Vec<u8>,
        close_requested: &mut Option<oneshot::Sender<()>>,
    ) {
        while out.len() < WRITE_BATCH_BYTES
            && self.pending.len() < self.config.requests_in_flight_max
            && close_requested.is_none()
        {
            match self.commands.try_recv() {
                Ok(Command::Connection { reply }) => {
                    let _ = reply.send(connection.clone());
                }
                Ok(command) => {
                    if let Some(done) = self.take(command, out) {
                        *close_requested = Some(done);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.commands_closed = true;
                    break;
                }
            }
        }
    }

    /// Decodes `bytes` read from the node and routes every whole message; a fatal framing
    /// error ends the connection.
    fn read(&mut self, decoder: &mut FrameDecoder, bytes: &[u8]) -> Result<(), Ended> {
        decoder.push(bytes);
        loop {
            match decoder.next_message::<pb::ServerMessage>() {
                Ok(Some(message)) => self.answer(message),
                Ok(None) => return Ok(()),
                Err(e) if e.is_fatal() => return Err(Ended::Lost(e.to_string())),
                Err(e) => tracing::warn!(error = %e, "undecodable message from the node"),
            }
        }
    }

    /// Registers a command and encodes its request; returns the close acknowledgement if it
    /// was a close.
    fn take(&mut self, command: Command, out: &mut Vec<u8>) -> Option<oneshot::Sender<()>> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let (body, kind) = match command {
            Command::Close { done } => return Some(done),
            // Answered by the session loop, which holds the connection.
            Command::Connection { .. } => return None,
            Command::Bid(BidRequest {
                bid,
                outcome,
                durable,
                retried,
                hops,
            }) => (
                Request::PlaceBid(bid),
                PendingKind::Bid(BidState {
                    outcome,
                    durable,
                    retried,
                    sent: false,
                    hops,
                }),
            ),
            Command::Ping { reply } => (
                Request::Ping(pb::Ping {
                    nonce: request_id,
                    client_sent_at_us: 0,
                }),
                PendingKind::Ping { reply, sent: false },
            ),
        };
        let message = pb::ClientMessage {
            request_id,
            body: Some(body),
        };
        self.pending.insert(request_id, Pending { message, kind });
        self.write_pending(request_id, out);
        None
    }

    fn write_pending(&mut self, request_id: u64, out: &mut Vec<u8>) {
        let Some(pending) = self.pending.get_mut(&request_id) else {
            return;
        };
        frame::encode(&pending.message, out);
        match &mut pending.kind {
            PendingKind::Bid(BidState { sent, .. }) | PendingKind::Ping { sent, .. } => {
                *sent = true;
            }
        }
    }

    /// Routes one message from the node to the request it answers.
    fn answer(&mut self, message: pb::ServerMessage) {
        let request_id = message.request_id;
        let Some(body) = message.body else {
            tracing::warn!(request_id, "a message without a body from the node");
            return;
        };
        if request_id == 0 {
            match body {
                Reply::Error(error) => {
                    tracing::warn!(code = error.code, message = %error.message, "the node reported an error");
                }
                // The connect-time ping's pong, or a pushed update this client does not use.
                _ => tracing::trace!("unaddressed message from the node ignored"),
            }
            return;
        }
        let Some(pending) = self.pending.remove(&request_id) else {
            // An answer to a request forgotten (its caller gave up) or fully answered.
            return;
        };
        if let (PendingKind::Bid(_), Some((owner, retry_after))) =
            (&pending.kind, routing_answer(&body))
        {
            return self.reroute(pending, &owner, retry_after);
        }
        let Pending { message, kind } = pending;
        let kind = match kind {
            PendingKind::Ping { reply, sent } => answer_ping(reply, sent, body, request_id),
            PendingKind::Bid(bid) => answer_bid(bid, body, request_id),
        };
        if let Some(kind) = kind {
            self.pending.insert(request_id, Pending { message, kind });
        }
    }

    /// A bid this node does not serve (`MISDIRECTED` naming `owner`, or `NO_OWNER`): the map
    /// learns the answer and the router resends the bid (nothing was decided here).
    fn reroute(
        &mut self,
        pending: Pending,
        owner: &pb::PartitionOwner,
        retry_after: Option<Duration>,
    ) {
        let Some(mut request) = pending.into_request() else {
            return;
        };
        let Some(router) = self.router.upgrade() else {
            return request.fail(BidError::Connection("the client was closed".into()));
        };
        if router.learn(owner).is_none() && !owner.node.is_empty() {
            let auction = request.bid.auction_id;
            return request.fail(BidError::Connection(format!(
                "auction {auction} is served by node {} (partition {}), which advertises no QUIC address",
                owner.node, owner.partition
            )));
        }
        request.hops += 1;
        let delay = hop_delay(request.hops, retry_after, &self.config);
        router.hand_off(request, delay);
    }
}

/// The owner named by a routing answer (`MISDIRECTED`, `NO_OWNER`) and the wait it asks
/// for; `None` for any other message.
fn routing_answer(body: &Reply) -> Option<(pb::PartitionOwner, Option<Duration>)> {
    use pb::RejectReason as R;
    let Reply::BidOutcome(pb::BidOutcome {
        outcome: Some(pb::bid_outcome::Outcome::Rejected(rejected)),
    }) = body
    else {
        return None;
    };
    match R::try_from(rejected.reason) {
        Ok(R::Misdirected | R::NoOwner) => Some((
            rejected.owner.clone().unwrap_or_default(),
            rejected.retry_after_us.map(Duration::from_micros),
        )),
        _ => None,
    }
}

/// A ping's answer: resolves the caller's wait, or keeps it for an unexpected message.
fn answer_ping(
    reply: oneshot::Sender<Result<(), BidError>>,
    sent: bool,
    body: Reply,
    request_id: u64,
) -> Option<PendingKind> {
    match body {
        Reply::Pong(_) => {
            let _ = reply.send(Ok(()));
            None
        }
        Reply::Error(error) => {
            let _ = reply.send(Err(server_error(error)));
            None
        }
        other => {
            tracing::warn!(request_id, ?other, "unexpected answer from the node");
            Some(PendingKind::Ping { reply, sent })
        }
    }
}

/// One answer to a bid: its outcome (an accepted bid stays pending until its durable ack),
/// its durable ack, or an error (`SHUTTING_DOWN`: not decided, resent after reconnecting).
/// Returns what stays pending.
fn answer_bid(mut bid: BidState, body: Reply, request_id: u64) -> Option<PendingKind> {
    match body {
        Reply::BidOutcome(answer) => match bid_result(answer, bid.retried) {
            Ok(accepted) => {
                if let Some(outcome) = bid.outcome.take() {
                    let _ = outcome.send(Ok(accepted));
                }
                // Keep it until the durable ack.
                Some(PendingKind::Bid(bid))
            }
            Err(error) => {
                fail_bid(bid.outcome, bid.durable, error);
                None
            }
        },
        Reply::DurableAck(ack) => {
            let _ = bid.durable.send(Ok(DurableAck {
                auction_id: ack.auction_id,
                bid_id: join_bid_id(ack.bid_id_hi, ack.bid_id_lo),
                seq: ack.seq,
            }));
            None
        }
        Reply::Error(error) if error.code == pb::ErrorCode::ShuttingDown as i32 => {
            // Not decided: the node is going away. Resend after reconnecting.
            bid.sent = false;
            Some(PendingKind::Bid(bid))
        }
        Reply::Error(error) => {
            fail_bid(bid.outcome, bid.durable, server_error(error));
            None
        }
        other => {
            tracing::warn!(request_id, ?other, "unexpected answer from the node");
            Some(PendingKind::Bid(bid))
        }
    }
}

/// A bid's outcome message as the SDK's result; `retried` turns a duplicate of this client's
/// own earlier attempt into that attempt's acceptance.
fn bid_result(outcome: pb::BidOutcome, retried: bool) -> Result<Accepted, BidError> {
    use pb::RejectReason as R;
    use pb::bid_outcome::Outcome;
    let rejected = match outcome.outcome {
        Some(Outcome::Accepted(accepted)) => return Ok(Accepted::from(accepted)),
        Some(Outcome::Rejected(rejected)) => rejected,
        None => {
            return Err(BidError::Connection(
                "a bid outcome without an outcome".into(),
            ));
        }
    };
    let reason = R::try_from(rejected.reason).unwrap_or(R::Unspecified);
    Err(match reason {
        R::TooLow => BidError::TooLow {
            min_next: rejected.min_next.unwrap_or(0),
        },
        R::NotOpen => BidError::NotOpen,
        R::Closed => BidError::Closed,
        R::UnknownAuction => BidError::UnknownAuction,
        R::Duplicate => {
            let original = Accepted::from(rejected.original.unwrap_or_default());
            if retried {
                return Ok(original);
            }
            BidError::Duplicate { original }
        }
        R::RateLimited => BidError::RateLimited,
        R::Overloaded => BidError::Overloaded {
            retry_after: Duration::from_micros(rejected.retry_after_us.unwrap_or(0)),
        },
        R::Invalid => BidError::Invalid,
        R::Forbidden => BidError::Forbidden,
        // Routing answers are followed before an outcome is read (`routing_answer`).
        R::Misdirected | R::NoOwner => {
            BidError::Connection(format!("a routing answer {reason:?} read as an outcome"))
        }
        R::Unspecified => BidError::Connection(format!(
            "a rejection with an unknown reason {}",
            rejected.reason
        )),
    })
}

/// Ends a bid with `error`: to the caller of `place_bid` if it still waits for the outcome;
/// otherwise the outcome was delivered on an earlier connection and the retry meant to
/// recover the durable ack got this answer, so the durable waiter gets it.
fn fail_bid(
    outcome: Option<oneshot::Sender<Result<Accepted, BidError>>>,
    durable: oneshot::Sender<Result<DurableAck, BidError>>,
    error: BidError,
) {
    match outcome {
        Some(outcome) => {
            let _ = outcome.send(Err(error));
        }
        None => {
            let _ = durable.send(Err(error));
        }
    }
}

pub(crate) fn server_error(error: pb::Error) -> BidError {
    BidError::Server {
        code: pb::ErrorCode::try_from(error.code).unwrap_or(pb::ErrorCode::Unspecified),
        message: error.message,
    }
}

/// The 128-bit bid id from its wire halves.
pub(crate) fn join_bid_id(hi: u64, lo: u64) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(reason: pb::RejectReason) -> pb::Rejected {
        let mut rejected = pb::Rejected::default();
        rejected.set_reason(reason);
        rejected
    }

    fn outcome(rejected: pb::Rejected) -> pb::BidOutcome {
        pb::BidOutcome {
            outcome: Some(pb::bid_outcome::Outcome::Rejected(rejected)),
        }
    }

    #[test]
    fn a_duplicate_is_the_original_acceptance_only_for_a_retry() {
        let original = pb::Accepted {
            seq: 4,
            price: 150,
            leader: Some("b1".into()),
            ends_at_us: 9,
        };
        let duplicate = pb::Rejected {
            original: Some(original.clone()),
            ..rejected(pb::RejectReason::Duplicate)
        };
        let expected = Accepted::from(original);
        assert_eq!(
            bid_result(outcome(duplicate.clone()), true),
            Ok(expected.clone())
        );
        assert_eq!(
            bid_result(outcome(duplicate), false),
            Err(BidError::Duplicate { original: expected })
        );
    }

    #[test]
    fn every_reject_reason_has_its_error() {
        let too_low = pb::Rejected {
            min_next: Some(160),
            ..rejected(pb::RejectReason::TooLow)
        };
        let overloaded = pb::Rejected {
            retry_after_us: Some(2_000),
            ..rejected(pb::RejectReason::Overloaded)
        };
        let cases = [
            (too_low, BidError::TooLow { min_next: 160 }),
            (rejected(pb::RejectReason::NotOpen), BidError::NotOpen),
            (rejected(pb::RejectReason::Closed), BidError::Closed),
            (
                rejected(pb::RejectReason::UnknownAuction),
                BidError::UnknownAuction,
            ),
            (
                rejected(pb::RejectReason::RateLimited),
                BidError::RateLimited,
            ),
            (
                overloaded,
                BidError::Overloaded {
                    retry_after: Duration::from_millis(2),
                },
            ),
            (rejected(pb::RejectReason::Invalid), BidError::Invalid),
            (rejected(pb::RejectReason::Forbidden), BidError::Forbidden),
        ];
        for (message, expected) in cases {
            assert_eq!(bid_result(outcome(message), false), Err(expected));
        }
        assert!(matches!(
            bid_result(outcome(rejected(pb::RejectReason::Unspecified)), false),
            Err(BidError::Connection(_))
        ));
    }

    #[test]
    fn bid_ids_join_their_halves() {
        assert_eq!(join_bid_id(1, 2), (1_u128 << 64) | 2);
        assert_eq!(join_bid_id(u64::MAX, u64::MAX), u128::MAX);
    }
}
