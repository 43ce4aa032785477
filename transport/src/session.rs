//! One connection's request handling, shared by every transport.
//!
//! A driver (QUIC stream, WebSocket) decodes a [`pb::ClientMessage`], hands it to
//! [`Session::handle`], writes the direct answers it gets back at once, and awaits the
//! returned [`DurableWait`] (if any) to send the durable ack later — so an accepted ack never
//! waits for the disk, and the durable ack never comes before the sync.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gavel_engine::{BidOutcome, Rejection, UnixMicros};
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;

use crate::gateway::{Backend, DurableError, Gateway};
use crate::identity::Identity;
use crate::metrics;

/// How long a bidder should wait before retrying when the node is not ready or a
/// connection has too many durable acks pending, in microseconds.
pub const RETRY_AFTER_NOT_READY_US: u64 = 100_000;

/// The wall clock as the engine's time.
pub fn now_micros() -> UnixMicros {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UnixMicros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// A node answer that is an error, addressed to `request_id`.
pub fn error_message(
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
pub struct Session<B> {
    gateway: Arc<Gateway<B>>,
    identity: Option<Identity>,
    transport: &'static str,
    pending_durable: Arc<AtomicUsize>,
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
        }
    }
}

impl<B: Backend> Session<B> {
    /// A session for a connection authenticated as `identity` (`None`: an anonymous
    /// watcher), over `transport` (a metric label: `quic`, `ws`).
    pub fn new(
        gateway: Arc<Gateway<B>>,
        identity: Option<Identity>,
        transport: &'static str,
    ) -> Session<B> {
        Session {
            gateway,
            identity,
            transport,
            pending_durable: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The peer's identity, if it presented a certificate.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The gateway this session belongs to.
    pub fn gateway(&self) -> &Arc<Gateway<B>> {
        &self.gateway
    }

    /// Durable acks this connection is waiting for.
    pub fn pending_durable(&self) -> usize {
        // Ordering: a gauge for limits; no other memory depends on it.
        self.pending_durable.load(Ordering::Relaxed)
    }

    /// Handles one request. Direct answers are appended to `out`; an accepted bid returns
    /// the wait for its durable ack, which the driver awaits (concurrently with later
    /// requests) and then sends.
    pub fn handle(
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
            Some(Request::Subscribe(_) | Request::Unsubscribe(_) | Request::Resume(_)) => {
                metrics::request_error(self.transport, "unsupported");
                out.push(error_message(
                    request_id,
                    pb::ErrorCode::InvalidArgument,
                    "this node version serves bids only; price streams are not available yet",
                ));
                None
            }
        }
    }

    /// Counts and answers a frame that could not be decoded.
    pub fn malformed(&self, detail: impl std::fmt::Display) -> pb::ServerMessage {
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
        let Some(identity) = self.identity.as_ref().filter(|i| i.role.may_bid()) else {
            let role = self
                .identity
                .as_ref()
                .map_or("anonymous", |i| i.role.as_str());
            return self.refuse(request_id, Rejection::Forbidden, out, role);
        };
        let bidder = identity.id;
        let Some(backend) = self.gateway.backend().cloned() else {
            let retry = Rejection::Overloaded {
                retry_after_us: RETRY_AFTER_NOT_READY_US,
            };
            return self.refuse(request_id, retry, out, "recovering");
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
                out.push(error_message(
                    request_id,
                    pb::ErrorCode::InvalidArgument,
                    format!("bad bid: {e}"),
                ));
                return None;
            }
        };
        if self.pending_durable() >= self.gateway.limits().pending_durable_per_connection_max {
            let retry = Rejection::Overloaded {
                retry_after_us: RETRY_AFTER_NOT_READY_US,
            };
            return self.refuse(request_id, retry, out, "pending_durable");
        }
        if !self
            .gateway
            .rate_limiter()
            .try_take(&bidder, Instant::now())
        {
            return self.refuse(request_id, Rejection::RateLimited, out, "rate");
        }
        let started = Instant::now();
        let (outcome, receipt) = backend.place_bid(&bid, now_micros());
        let decided = Instant::now();
        ::metrics::histogram!(metrics::BID_DECIDE_SECONDS).record(decided - started);
        let (result, reason) = metrics::outcome_labels(&outcome);
        ::metrics::counter!(metrics::BIDS, "transport" => self.transport, "result" => result, "reason" => reason)
            .increment(1);
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
        // Ordering: a counter for the limit above; no other memory depends on it.
        self.pending_durable.fetch_add(1, Ordering::Relaxed);
        let (bid_id_hi, bid_id_lo) = gavel_proto::convert::bid_id_halves(bid.id());
        Some(DurableWait {
            request_id,
            ack: pb::DurableAck {
                auction_id: bid.auction().0,
                bid_id_hi,
                bid_id_lo,
                seq: accepted.seq,
            },
            accepted_at: decided,
            transport: self.transport,
            wait: backend.durable(receipt),
            pending: PendingGuard(Arc::clone(&self.pending_durable)),
        })
    }

    fn refuse(
        &self,
        request_id: u64,
        rejection: Rejection,
        out: &mut Vec<pb::ServerMessage>,
        why: &'static str,
    ) -> Option<DurableWait<B::Durable>> {
        tracing::debug!(
            transport = self.transport,
            why,
            ?rejection,
            "bid refused at the edge"
        );
        ::metrics::counter!(
            metrics::BIDS,
            "transport" => self.transport,
            "result" => "rejected",
            "reason" => metrics::rejection_label(&rejection)
        )
        .increment(1);
        out.push(pb::ServerMessage {
            request_id,
            body: Some(Reply::BidOutcome(BidOutcome::Rejected(rejection).into())),
        });
        None
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
#[must_use = "the durable ack is sent only if the wait is awaited"]
pub struct DurableWait<F> {
    request_id: u64,
    ack: pb::DurableAck,
    accepted_at: Instant,
    transport: &'static str,
    wait: F,
    pending: PendingGuard,
}

impl<F: Future<Output = Result<(), DurableError>>> DurableWait<F> {
    /// The request this wait answers.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Waits for the sync and returns the message to send: the durable ack, or an internal
    /// error if the log failed (the bid's fate is then decided by the next recovery; it was
    /// never acknowledged durable).
    pub async fn into_message(self) -> pb::ServerMessage {
        let DurableWait {
            request_id,
            ack,
            accepted_at,
            transport,
            wait,
            pending,
        } = self;
        let result = wait.await;
        drop(pending);
        match result {
            Ok(()) => {
                ::metrics::histogram!(metrics::BID_DURABLE_SECONDS).record(accepted_at.elapsed());
                ::metrics::counter!(metrics::DURABLE_ACKS, "transport" => transport).increment(1);
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
