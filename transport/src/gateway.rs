//! What every connection of a node shares: the engine behind the [`Backend`] (once recovery
//! finished), the limits, the bidder rate limiter, the connection and handshake permits
//! (`connections_max`, `handshakes_pending_max` over all transports), the fan-out
//! [`Hub`], and the shutdown signal.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use gavel_engine::{
    AuctionId, AuctionSpec, AuctionView, Bid, BidDecision, ClosedAuction, CreateError, Engine,
    ManageError, PrunedAuction, Receipt, UnixMicros,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::fanout::Hub;
use crate::fanout::feed::FEED_QUEUE_LEN_MAX;
use crate::limits::{BidRateLimiter, Limits};

/// The engine's lock-free reads the transports need: one auction's view, or a page of them.
pub trait AuctionReads {
    /// A consistent view of auction `id` at `now`, if it exists.
    fn view(&self, id: AuctionId, now: UnixMicros) -> Option<AuctionView>;

    /// Views of up to `limit` auctions with ids after `after`, ascending by id.
    fn list(&self, after: Option<AuctionId>, limit: usize, now: UnixMicros) -> Vec<AuctionView>;

    /// The final result of auction `id`, if the retention rule pruned it (then `view` has
    /// none).
    fn pruned(&self, id: AuctionId) -> Option<PrunedAuction>;
}

impl AuctionReads for Engine {
    fn view(&self, id: AuctionId, now: UnixMicros) -> Option<AuctionView> {
        Engine::view(self, id, now)
    }

    fn list(&self, after: Option<AuctionId>, limit: usize, now: UnixMicros) -> Vec<AuctionView> {
        Engine::list(self, after, limit, now)
    }

    fn pruned(&self, id: AuctionId) -> Option<PrunedAuction> {
        Engine::pruned(self, id)
    }
}

/// The durable engine as the transports see it: its reads, and its operations whose
/// receipts become durable. The node implements it over its engine and write-ahead log; the
/// transports know nothing of files or logs, and never hold the engine itself.
pub trait Backend: AuctionReads + Send + Sync + 'static {
    /// Resolves once a receipt is durable. `Unpin` so a stream's waits sit inline in its
    /// durable-ack queue, with no `Box` per bid; it may be polled again after `Pending`.
    type Durable: Future<Output = Result<(), DurableError>> + Send + Unpin + 'static;

    /// Decides a bid; an accepted bid comes with the receipt its durable ack waits for, and
    /// a bid that closed its auction with that close.
    fn place_bid(&self, bid: &Bid, now: UnixMicros) -> BidDecision;

    /// Creates an auction.
    fn create_auction(&self, spec: AuctionSpec, now: UnixMicros) -> Result<Receipt, CreateError>;

    /// Cancels an open auction.
    fn cancel_auction(&self, id: AuctionId, now: UnixMicros) -> Result<ClosedAuction, ManageError>;

    /// A future resolving once `receipt` is durable, or failing if it never will be.
    fn durable(&self, receipt: Receipt) -> Self::Durable;

    /// The receipt of everything decided so far: once it is durable, so is every earlier
    /// decision (used to acknowledge a retried bid whose original is older).
    fn last_receipt(&self) -> Receipt;

    /// The partitions of a log shared by several nodes and who owns each (`GET /v1/cluster`);
    /// `None` for a node alone on its own log.
    fn cluster(&self) -> Option<gavel_proto::pb::Cluster> {
        None
    }

    /// `Some` when this node does not serve `auction` because several nodes share the
    /// auctions and its partition is not this node's: the owner and its advertised addresses
    /// (`node` empty when nobody owns it now, mid-takeover). Bids are answered
    /// `MISDIRECTED` / `NO_OWNER` and the admin API 421 / 503 instead of deciding here.
    /// Called on every bid: a node alone answers `None` without a lock.
    fn owner_elsewhere(&self, auction: AuctionId) -> Option<gavel_proto::pb::PartitionOwner> {
        let _ = auction;
        None
    }

    /// Lines `/readyz` adds after `ready` (the followers' lag of a node on a shared log);
    /// empty by default.
    fn readiness_detail(&self) -> String {
        String::new()
    }
}

/// Why a receipt will never become durable in this process; `durable` is the log's durable
/// LSN when that was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// The log failed (a write, sync or delivery error); nothing more becomes durable.
    #[error("not durable: the write-ahead log failed; durable LSN stays at {durable}")]
    Failed {
        /// The last durable LSN.
        durable: u64,
    },
    /// The log shut down without this receipt's record.
    #[error("not durable: the write-ahead log is shut down; durable LSN is {durable}")]
    Closed {
        /// The last durable LSN.
        durable: u64,
    },
    /// A bounded wait for durability ended first.
    #[error("not durable: timed out waiting for durability; durable LSN is {durable}")]
    Timeout {
        /// The durable LSN when the wait ended.
        durable: u64,
    },
}

/// The state all connections of one node share.
#[derive(Debug)]
pub struct Gateway<B> {
    backend: OnceLock<Arc<B>>,
    limits: Limits,
    rate: BidRateLimiter,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
}

impl<B: Backend> Gateway<B> {
    /// A gateway that is not ready until [`Gateway::set_ready`] hands it the backend.
    pub fn new(limits: Limits, shutdown: CancellationToken) -> Gateway<B> {
        Gateway {
            backend: OnceLock::new(),
            rate: BidRateLimiter::new(
                limits.bids_per_second_per_bidder,
                limits.bid_burst_per_bidder,
            ),
            connections: Arc::new(Semaphore::new(
                limits.connections_max.min(Semaphore::MAX_PERMITS),
            )),
            handshakes: Arc::new(Semaphore::new(
                limits.handshakes_pending_max.min(Semaphore::MAX_PERMITS),
            )),
            // One fan-out shard (worker) per core.
            hub: Arc::new(Hub::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                FEED_QUEUE_LEN_MAX,
                &limits,
            )),
            limits,
            shutdown,
        }
    }

    /// Recovery finished: serve requests from `backend`. Later calls are ignored.
    pub fn set_ready(&self, backend: Arc<B>) {
        let _ = self.backend.set(backend);
    }

    /// The backend, once recovery finished.
    pub fn backend(&self) -> Option<&Arc<B>> {
        self.backend.get()
    }

    /// Ready to serve: recovered and not shutting down (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.backend.get().is_some() && !self.shutdown.is_cancelled()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The fan-out: subscriptions, the dirty feed, delivery.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The per-bidder bid rate limiter.
    pub fn rate_limiter(&self) -> &BidRateLimiter {
        &self.rate
    }

    /// A permit for one open connection (any transport), or `None` at `connections_max`.
    /// Hold it as long as the connection lives.
    pub fn try_connection(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// A permit for one TLS handshake in progress, or `None` at `handshakes_pending_max`.
    /// Drop it when the handshake ends.
    pub fn try_handshake(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.handshakes).try_acquire_owned().ok()
    }

    /// Cancelled when the node starts shutting down: listeners stop accepting, connections
    /// drain.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}
