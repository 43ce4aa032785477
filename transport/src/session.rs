//! One connection's request handling, shared by every transport.
//!
//! A stream core (`crate::stream`: a QUIC stream, WebSocket or SSE stream) hands each decoded
//! [`pb::ClientMessage`] to [`Session::handle`], writes the direct answers it gets back at
//! once, and queues the returned [`DurableWait`] (if any) in its
//! [`DurableAcks`](crate::durable_acks::DurableAcks)
//! to send the durable ack later — so an accepted ack never waits for the disk, and the
//! durable ack never comes before the sync.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use std::collections::HashMap;
use std::time::Duration;

use gavel_engine::{AuctionId, Bid, BidDecision, BidOutcome, Rejection};
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;

use crate::clock::now_micros;
use crate::fanout::hub::{Change, Hub, STREAM_EPOCH, SubscribeError, Subscriber, parse_request};
use crate::gateway::{AuctionReads, Backend, DurableError, Gateway};
use crate::identity::Identity;
use crate::metrics;
use crate::settlement;

/// How long a bidder should wait before retrying when the node is not ready or a
/// connection has too many durable acks pending, in microseconds.
pub(crate) const RETRY_AFTER_NOT_READY_US: u64 = 100_000;
/// How long a bidder should wait before resending a bid answered `NO_OWNER` (its partition
/// is being taken over: a lapsed lease, then a replay), in microseconds.
pub(crate) const RETRY_AFTER_NO_OWNER_US: u64 = 200_000;

/// A node answer that is an error, addressed to `request_id`.
pub(crate) fn error_message(
    request_id: u64,
    code: pb::ErrorCode,
    message: impl Into<String>,
) -> pb::ServerMessage {
    pb::ServerMessage {
        request_id,
        body: Some(Reply::Error(pb::Error {
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// One connection's protocol state (clone it for each stream of the connection).
#[derive(Debug)]
pub(crate) struct Session<B> {
    gateway: Arc<Gateway<B>>,
    identity: Option<Identity>,
    transport: &'static str,
    pending_durable: Arc<AtomicUsize>,
    /// The connection's fan-out side, from its first `Subscribe` on.
    subscriber: Option<Arc<Subscriber>>,
    /// A `Subscribe` asked for price updates as datagrams (QUIC).
    datagrams: bool,
    /// A `Subscribe` asked for the edge encoding (QUIC).
    edge: bool,
    /// The bid path's metric handles, looked up once per connection at its first bid (a
    /// lookup hashes the name and labels under the registry's lock, several times per bid
    /// otherwise; watchers never bid and keep none).
    metrics: Option<BidMetrics>,
}

/// A connection's bid metrics: the decision and durable histograms, its durable-ack
/// counter and the bid counters by (result, reason) met so far.
#[derive(Clone, Debug)]
struct BidMetrics {
    decide: ::metrics::Histogram,
    durable: ::metrics::Histogram,
    durable_acks: ::metrics::Counter,
    /// A handful at most (the outcome kinds), searched linearly.
    bids: Vec<((&'static str, &'static str), ::metrics::Counter)>,
}

impl BidMetrics {
    fn new(transport: &'static str) -> BidMetrics {
        BidMetrics {
            decide: ::metrics::histogram!(metrics::BID_DECIDE_SECONDS),
            durable: ::metrics::histogram!(metrics::BID_DURABLE_SECONDS),
            durable_acks: ::metrics::counter!(metrics::DURABLE_ACKS, "transport" => transport),
            bids: Vec::new(),
        }
    }

    /// Counts one bid of this `result` and `reason` over `transport`.
    fn bid(&mut self, transport: &'static str, result: &'static str, reason: &'static str) {
        let labels = (result, reason);
        if let Some((_, counter)) = self.bids.iter().find(|(l, _)| *l == labels) {
            counter.increment(1);
            return;
        }
        let counter = ::metrics::counter!(metrics::BIDS, "transport" => transport, "result" => result, "reason" => reason);
        counter.increment(1);
        self.bids.push((labels, counter));
    }
}

/// A clone serves another stream of the same connection: same peer, and the same count of
/// pending durable acks, so `pending_durable_per_connection_max` holds per connection.
impl<B> Clone for Session<B> {
    fn clone(&self) -> Session<B> {
        Session {
            gateway: Arc::clone(&self.gateway),
            identity: self.identity.clone(),
            transport: self.transport,
            pending_durable: Arc::clone(&self.pending_durable),
            subscriber: self.subscriber.clone(),
            datagrams: self.datagrams,
            edge: self.edge,
            metrics: self.metrics.clone(),
        }
    }
}

impl<B: Backend> Session<B> {
    /// A session for a connection authenticated as `identity` (`None`: an anonymous
    /// watcher), over `transport` (a metric label: `quic`, `ws`).
    pub(crate) fn new(
        gateway: Arc<Gateway<B>>,
        identity: Option<Identity>,
        transport: &'static str,
    ) -> Session<B> {
        Session {
            gateway,
            identity,
            transport,
            pending_durable: Arc::new(AtomicUsize::new(0)),
            subscriber: None,
            datagrams: false,
            edge: false,
            metrics: None,
        }
    }

    fn bid_metrics(&mut self) -> &mut BidMetrics {
        let transport = self.transport;
        self.metrics
            .get_or_insert_with(|| BidMetrics::new(transport))
    }

    /// The connection's fan-out side, once it subscribed.
    pub(crate) fn subscriber(&self) -> Option<&Arc<Subscriber>> {
        self.subscriber.as_ref()
    }

    /// Whether a `Subscribe` asked for price updates as QUIC datagrams.
    pub(crate) fn wants_datagrams(&self) -> bool {
        self.datagrams
    }

    /// Whether a `Subscribe` asked for the edge encoding (QUIC).
    pub(crate) fn wants_edge(&self) -> bool {
        self.edge
    }

    /// The gateway this session belongs to.
    pub(crate) fn gateway(&self) -> &Arc<Gateway<B>> {
        &self.gateway
    }

    /// Durable acks this connection is waiting for.
    pub(crate) fn pending_durable(&self) -> usize {
        // Ordering: a gauge for limits; no other memory depends on it.
        self.pending_durable.load(Ordering::Relaxed)
    }

    /// Handles one request. Direct answers are appended to `out`; an accepted bid returns
    /// the wait for its durable ack, which the stream core queues in its `DurableAcks`
    /// (answered concurrently with later requests, in request order).
    pub(crate) fn handle(
        &mut self,
        request: pb::ClientMessage,
        out: &mut Vec<pb::ServerMessage>,
    ) -> Option<DurableWait<B::Durable>> {
        let request_id = request.request_id;
        match request.body {
            None => {
                metrics::request_error(self.transport, "malformed");
                out.push(error_message(
                    request_id,
                    pb::ErrorCode::Malformed,
                    "the request has no body",
                ));
                None
            }
            Some(Request::PlaceBid(bid)) => self.place_bid(request_id, &bid, out),
            Some(Request::Ping(ping)) => {
                out.push(pb::ServerMessage {
                    request_id,
                    body: Some(Reply::Pong(pb::Pong {
                        nonce: ping.nonce,
                        client_sent_at_us: ping.client_sent_at_us,
                        server_sent_at_us: now_micros().0,
                    })),
                });
                None
            }
            Some(Request::Subscribe(request)) => {
                self.subscribe(request_id, request, out);
                None
            }
            Some(Request::Unsubscribe(request)) => {
                let subscriber = self.connect_subscriber(None);
                let result = self.gateway.hub().change(
                    &subscriber,
                    Change::Remove,
                    &request.topics,
                    &request.patterns,
                );
                self.answer_subscription(request_id, result, out);
                None
            }
            Some(Request::Resume(request)) => {
                let subscriber = self.connect_subscriber(None);
                if let Some(backend) = self.gateway.backend() {
                    resume(
                        self.gateway.hub(),
                        &**backend,
                        &subscriber,
                        &request.positions,
                    );
                }
                let subscriptions = u32::try_from(subscriber.subscriptions()).unwrap_or(u32::MAX);
                out.push(pb::ServerMessage {
                    request_id,
                    body: Some(Reply::Subscribed(pb::Subscribed { subscriptions })),
                });
                None
            }
        }
    }

    /// The connection's subscriber, registered with the hub on first use.
    fn connect_subscriber(&mut self, interval_ms: Option<u32>) -> Arc<Subscriber> {
        let interval = Duration::from_millis(u64::from(interval_ms.unwrap_or(0)));
        match &self.subscriber {
            Some(subscriber) => {
                if interval_ms.is_some() {
                    subscriber.outbox().set_interval(interval);
                }
                Arc::clone(subscriber)
            }
            None => {
                let subscriber = self.gateway.hub().connect(interval);
                self.subscriber = Some(Arc::clone(&subscriber));
                subscriber
            }
        }
    }

    fn subscribe(
        &mut self,
        request_id: u64,
        request: pb::Subscribe,
        out: &mut Vec<pb::ServerMessage>,
    ) {
        let subscriber = self.connect_subscriber(Some(request.interval_ms));
        let hub = Arc::clone(self.gateway.hub());
        let result = hub.change(&subscriber, Change::Add, &request.topics, &request.patterns);
        if !self.answer_subscription(request_id, result, out) {
            return;
        }
        self.datagrams |= request.datagrams;
        self.edge |= request.encoding == pb::StreamEncoding::Edge as i32;
        let Some(backend) = self.gateway.backend() else {
            // Recovering: the snapshots come with the updates once auctions change.
            return;
        };
        // Invariant: `change` just parsed the same texts without error.
        let patterns = parse_request(&request.topics, &request.patterns).unwrap_or_default();
        let mut positions = HashMap::new();
        for position in &request.resume {
            if position.epoch == STREAM_EPOCH {
                positions.insert(AuctionId(position.auction_id), position.seq);
            } else {
                snapshot_required(&subscriber, AuctionId(position.auction_id));
            }
        }
        hub.snapshots(&**backend, &subscriber, &patterns, &positions, now_micros());
    }

    /// Answers a subscription change; `false` if it was refused.
    fn answer_subscription(
        &self,
        request_id: u64,
        result: Result<usize, SubscribeError>,
        out: &mut Vec<pb::ServerMessage>,
    ) -> bool {
        match result {
            Ok(subscriptions) => {
                out.push(pb::ServerMessage {
                    request_id,
                    body: Some(Reply::Subscribed(pb::Subscribed {
                        subscriptions: u32::try_from(subscriptions).unwrap_or(u32::MAX),
                    })),
                });
                true
            }
            Err(e) => {
                let (reason, code) = match e {
                    SubscribeError::BadTopic(_) => ("invalid_argument", pb::ErrorCode::BadTopic),
                    SubscribeError::TooMany { .. } => ("limit", pb::ErrorCode::LimitExceeded),
                };
                metrics::request_error(self.transport, reason);
                out.push(error_message(request_id, code, e.to_string()));
                false
            }
        }
    }

    /// Counts and answers a frame that could not be decoded.
    pub(crate) fn malformed(&self, detail: impl std::fmt::Display) -> pb::ServerMessage {
        metrics::request_error(self.transport, "malformed");
        error_message(
            0,
            pb::ErrorCode::Malformed,
            format!("undecodable message: {detail}"),
        )
    }

    fn place_bid(
        &mut self,
        request_id: u64,
        bid: &pb::PlaceBid,
        out: &mut Vec<pb::ServerMessage>,
    ) -> Option<DurableWait<B::Durable>> {
        let (backend, bid) = self.admit(request_id, bid, out)?;
        let started = Instant::now();
        let BidDecision {
            outcome,
            receipt,
            closed,
        } = backend.place_bid(&bid, now_micros());
        let decided = Instant::now();
        if let BidOutcome::Accepted(_) = outcome {
            // After the change applied: the fan-out reads what this announces.
            self.gateway.hub().changed(bid.auction());
        }
        if let Some(closed) = closed {
            // This bid closed its auction (buy-now, a Dutch sale): the close goes to the
            // watchers once durable, whatever happens to this connection.
            let hub = Arc::clone(self.gateway.hub());
            tokio::spawn(settlement::announce(Arc::clone(&backend), hub, closed));
        }
        let (result, reason) = metrics::outcome_labels(&outcome);
        let transport = self.transport;
        let bid_metrics = self.bid_metrics();
        bid_metrics.decide.record(decided - started);
        bid_metrics.bid(transport, result, reason);
        out.push(pb::ServerMessage {
            request_id,
            body: Some(Reply::BidOutcome(outcome.into())),
        });
        let (accepted, receipt) = match (outcome, receipt) {
            (BidOutcome::Accepted(accepted), Some(receipt)) => (accepted, receipt),
            // A retry of an accepted bid: its original was decided before this answer, so
            // it is durable once everything decided so far is; the client gets the durable
            // ack it may have missed on the connection that sent the original.
            (BidOutcome::Rejected(Rejection::Duplicate { original }), _) => {
                (original, backend.last_receipt())
            }
            _ => return None,
        };
        let ack = durable_ack(&bid, accepted.seq);
        Some(self.durable_wait(request_id, ack, decided, backend.durable(receipt)))
    }

    /// The edge's checks before a bid reaches the engine — the role may bid, the node is
    /// ready and not shutting down, the bid parses, the connection's pending durable acks and
    /// the bidder's rate are within their limits. Answers a bid that fails one and returns
    /// `None`; else the backend and the parsed bid.
    fn admit(
        &mut self,
        request_id: u64,
        bid: &pb::PlaceBid,
        out: &mut Vec<pb::ServerMessage>,
    ) -> Option<(Arc<B>, Bid)> {
        let not_ready = Rejection::Overloaded {
            retry_after_us: RETRY_AFTER_NOT_READY_US,
        };
        let Some(identity) = self.identity.as_ref().filter(|i| i.role.may_bid()) else {
            let role = self
                .identity
                .as_ref()
                .map_or("anonymous", |i| i.role.as_str());
            return self.refuse(request_id, Rejection::Forbidden, out, role);
        };
        let bidder = identity.id;
        let Some(backend) = self.gateway.backend().cloned() else {
            return self.refuse(request_id, not_ready, out, "recovering");
        };
        if self.gateway.shutdown().is_cancelled() {
            out.push(error_message(
                request_id,
                pb::ErrorCode::ShuttingDown,
                "the node is shutting down; retry on another node or later",
            ));
            return None;
        }
        let bid = match bid.to_bid(bidder) {
            Ok(bid) => bid,
            Err(e) => {
                metrics::request_error(self.transport, "invalid_argument");
                let message = format!("bad bid: {e}");
                out.push(error_message(
                    request_id,
                    pb::ErrorCode::InvalidArgument,
                    message,
                ));
                return None;
            }
        };
        if let Some(owner) = backend.owner_elsewhere(bid.auction()) {
            self.redirect(request_id, owner, out);
            return None;
        }
        if self.pending_durable() >= self.gateway.limits().pending_durable_per_connection_max {
            return self.refuse(request_id, not_ready, out, "pending_durable");
        }
        if !self
            .gateway
            .rate_limiter()
            .try_take(&bidder, Instant::now())
        {
            return self.refuse(request_id, Rejection::RateLimited, out, "rate");
        }
        Some((backend, bid))
    }

    /// The wait for `ack` (of a bid accepted at `accepted_at`), counted among the
    /// connection's pending durable acks until it ends.
    fn durable_wait(
        &mut self,
        request_id: u64,
        ack: pb::DurableAck,
        accepted_at: Instant,
        wait: B::Durable,
    ) -> DurableWait<B::Durable> {
        // Ordering: a counter for the limit in `admit`; no other memory depends on it.
        self.pending_durable.fetch_add(1, Ordering::Relaxed);
        let metrics = self.bid_metrics();
        DurableWait {
            request_id,
            ack,
            accepted_at,
            latency: metrics.durable.clone(),
            acks: metrics.durable_acks.clone(),
            wait,
            pending: PendingGuard(Arc::clone(&self.pending_durable)),
        }
    }

    /// Answers a bid for an auction another node owns (`MISDIRECTED`, naming it) or nobody
    /// owns now (`NO_OWNER`, retry after a while): nothing was decided.
    fn redirect(
        &mut self,
        request_id: u64,
        owner: pb::PartitionOwner,
        out: &mut Vec<pb::ServerMessage>,
    ) {
        let transport = self.transport;
        let reason = metrics::redirect(transport, &owner);
        self.bid_metrics().bid(transport, "rejected", reason);
        let mut rejected = pb::Rejected::default();
        if owner.node.is_empty() {
            rejected.set_reason(pb::RejectReason::NoOwner);
            rejected.retry_after_us = Some(RETRY_AFTER_NO_OWNER_US);
        } else {
            rejected.set_reason(pb::RejectReason::Misdirected);
        }
        rejected.owner = Some(owner);
        let outcome = pb::BidOutcome {
            outcome: Some(pb::bid_outcome::Outcome::Rejected(rejected)),
        };
        out.push(pb::ServerMessage {
            request_id,
            body: Some(Reply::BidOutcome(outcome)),
        });
    }

    /// Answers a bid refused at the edge; returns `None` (nothing to wait for).
    fn refuse<T>(
        &mut self,
        request_id: u64,
        rejection: Rejection,
        out: &mut Vec<pb::ServerMessage>,
        why: &'static str,
    ) -> Option<T> {
        tracing::debug!(
            transport = self.transport,
            why,
            ?rejection,
            "bid refused at the edge"
        );
        let transport = self.transport;
        self.bid_metrics()
            .bid(transport, "rejected", metrics::rejection_label(&rejection));
        out.push(pb::ServerMessage {
            request_id,
            body: Some(Reply::BidOutcome(BidOutcome::Rejected(rejection).into())),
        });
        None
    }
}

/// Queues `SnapshotRequired` and the auction's snapshot (when it exists) for a position of
/// another epoch.
fn snapshot_required(subscriber: &Subscriber, auction: AuctionId) {
    let message = pb::ServerMessage {
        request_id: 0,
        body: Some(Reply::SnapshotRequired(pb::SnapshotRequired {
            auction_id: auction.0,
            epoch: STREAM_EPOCH,
        })),
    };
    subscriber
        .outbox()
        .push_ordered(auction, message, Instant::now());
}

/// `Resume`: the current state of every listed auction that moved since its position.
fn resume(
    hub: &Hub,
    reads: &impl AuctionReads,
    subscriber: &Subscriber,
    positions: &[pb::StreamPosition],
) {
    let now = now_micros();
    let at = Instant::now();
    // Bounded by the request: a message holds at most `ws_message_bytes_max` of positions.
    for position in positions {
        let id = AuctionId(position.auction_id);
        if position.epoch != STREAM_EPOCH {
            snapshot_required(subscriber, id);
        }
        let Some(view) = reads.view(id, now) else {
            continue;
        };
        if position.epoch != STREAM_EPOCH || view.seq > position.seq {
            let snapshot = hub.snapshot(&view);
            subscriber.outbox().push_ordered(id, snapshot, at);
        }
    }
    subscriber.wake();
}

/// The durable ack of `bid`, accepted at sequence number `seq`.
fn durable_ack(bid: &Bid, seq: u64) -> pb::DurableAck {
    let (bid_id_hi, bid_id_lo) = gavel_proto::convert::bid_id_halves(bid.id());
    pb::DurableAck {
        auction_id: bid.auction().0,
        bid_id_hi,
        bid_id_lo,
        seq,
    }
}

/// Decrements a connection's pending-durable count when its wait ends (or is dropped).
#[derive(Debug)]
struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        // Ordering: see `Session::pending_durable`.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The wait for one accepted bid's durable ack.
#[derive(Debug)]
#[must_use = "the durable ack is sent only if the wait is polled to its answer"]
pub(crate) struct DurableWait<F> {
    request_id: u64,
    ack: pb::DurableAck,
    accepted_at: Instant,
    /// The connection's durable-latency histogram and durable-ack counter.
    latency: ::metrics::Histogram,
    acks: ::metrics::Counter,
    wait: F,
    pending: PendingGuard,
}

impl<F: Future<Output = Result<(), DurableError>> + Unpin> DurableWait<F> {
    /// Polls the backend's wait for this bid's receipt: `Ready` once it is durable or never
    /// will be.
    pub(crate) fn poll_durable(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DurableError>> {
        Pin::new(&mut self.wait).poll(cx)
    }

    /// The message to send once the wait ended with `result`: the durable ack, or an
    /// internal error if the log failed (the bid's fate is then decided by the next
    /// recovery; it was never acknowledged durable). Ends the wait's pending count.
    pub(crate) fn answer(self, result: Result<(), DurableError>) -> pb::ServerMessage {
        let DurableWait {
            request_id,
            ack,
            accepted_at,
            latency,
            acks,
            wait: _,
            pending,
        } = self;
        drop(pending);
        match result {
            Ok(()) => {
                latency.record(accepted_at.elapsed());
                acks.increment(1);
                pb::ServerMessage {
                    request_id,
                    body: Some(Reply::DurableAck(ack)),
                }
            }
            Err(e) => error_message(
                request_id,
                pb::ErrorCode::Internal,
                format!("the bid was accepted but is {e}; it was never acknowledged durable"),
            ),
        }
    }
}

#[cfg(test)]
impl<F> DurableWait<F> {
    /// A wait for request `request_id` on `wait`, counted in `pending` until answered, with
    /// metric handles that record nothing.
    pub(crate) fn for_test(request_id: u64, wait: F, pending: &Arc<AtomicUsize>) -> Self {
        pending.fetch_add(1, Ordering::Relaxed);
        DurableWait {
            request_id,
            ack: pb::DurableAck::default(),
            accepted_at: Instant::now(),
            latency: ::metrics::Histogram::noop(),
            acks: ::metrics::Counter::noop(),
            wait,
            pending: PendingGuard(Arc::clone(pending)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn bid_counters_keep_each_result_and_reason_apart() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            let mut bids = BidMetrics::new("ws");
            bids.bid("ws", "accepted", "none");
            bids.bid("ws", "rejected", "too_low");
            bids.bid("ws", "rejected", "too_low");
            bids.bid("ws", "rejected", "closed");
            bids.bid("ws", "accepted", "none");
        });
        let text = handle.render();
        let value = |result: &str, reason: &str| {
            let line = format!(
                "{}{{transport=\"ws\",result=\"{result}\",reason=\"{reason}\"}} ",
                metrics::BIDS
            );
            text.lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .unwrap_or_else(|| panic!("no {line} in {text}"))
                .to_owned()
        };
        assert_eq!(value("accepted", "none"), "2");
        assert_eq!(value("rejected", "too_low"), "2");
        assert_eq!(value("rejected", "closed"), "1");
    }
}
