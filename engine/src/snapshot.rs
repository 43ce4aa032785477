//! Snapshots: the complete state of auctions as plain values, and restoring an engine from
//! them.
//!
//! An [`AuctionState`] holds everything [`crate::Engine::state_hash`] covers, so an engine
//! restored from the states of another has the same hash. Each auction's state is taken
//! under its lock, one auction at a time: a snapshot of a live engine is consistent per
//! auction (each state says up to which sequence number it reaches), and replay after a
//! restore skips the events each state already contains (see
//! [`crate::Replayer::after_snapshot`]).
//!
//! The encoding of a snapshot on disk belongs to the WAL; these types derive no wire traits.

use std::sync::Arc;

use thiserror::Error;

use crate::event::CloseReason;
use crate::types::{
    Accepted, AuctionId, AuctionSpec, BidId, BidderId, Price, Settlement, Topic, UnixMicros, Winner,
};

/// The complete state of one auction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuctionState {
    /// The rules.
    pub spec: Arc<AuctionSpec>,
    /// Sequence number of the latest state change the state includes.
    pub seq: u64,
    /// Current end, after extensions.
    pub ends_at: UnixMicros,
    /// Soft-close extensions so far.
    pub extensions: u32,
    /// Accepted bids so far.
    pub bids_accepted: u64,
    /// Why and how it closed, once closed (close and settlement happen together).
    pub closed: Option<(CloseReason, Settlement)>,
    /// When it closed and settled, once closed (`UnixMicros(0)` while open, and when a
    /// snapshot written before this was recorded does not say: restore then takes the end).
    /// Only the retention rule reads it, so the state hash does not cover it.
    pub settled_at: UnixMicros,
    /// Kind-specific state.
    pub book: BookState,
    /// The idempotency memory, oldest first.
    pub recent: Vec<RecentBid>,
}

/// The final result of a settled auction that was pruned from memory (the engine's
/// retention rule, [`crate::EngineConfig::settled_retention_us`]): all the engine keeps of
/// it, so reads can still answer and its id is never reused.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PrunedAuction {
    /// The auction.
    pub id: AuctionId,
    /// Its topic (the only part of its rules kept).
    pub topic: Topic,
    /// Why it closed.
    pub reason: CloseReason,
    /// Its result.
    pub settlement: Settlement,
    /// Sequence number of its `Pruned` event, its last.
    pub seq: u64,
    /// When it closed and settled (informational: not covered by the state hash, see
    /// [`AuctionState::settled_at`]).
    pub settled_at: UnixMicros,
    /// When it was pruned.
    pub pruned_at: UnixMicros,
}

/// Kind-specific state of an auction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BookState {
    /// English: the price and the leader with its hidden maximum.
    English {
        /// Current price (meaningful once there is a leader).
        price: Price,
        /// The leader, if any bid was accepted.
        leader: Option<LeaderState>,
    },
    /// Sealed kinds: every bidder's standing bid, sorted by bidder.
    Sealed {
        /// The standing bids.
        bids: Vec<SealedBidState>,
    },
    /// Dutch: the sale, if a bid met the clock.
    Dutch {
        /// The buyer and price.
        sold: Option<Winner>,
    },
}

/// The leader of an English auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LeaderState {
    /// Who leads.
    pub bidder: BidderId,
    /// Its latest accepted bid id.
    pub bid: BidId,
    /// Its hidden proxy maximum.
    pub max: Price,
}

/// A bidder's standing bid in a sealed auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SealedBidState {
    /// The bidder.
    pub bidder: BidderId,
    /// Its bid id.
    pub bid: BidId,
    /// The amount.
    pub amount: Price,
    /// Sequence number of its acceptance (earlier wins ties).
    pub seq: u64,
}

/// One entry of the idempotency memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecentBid {
    /// The bidder.
    pub bidder: BidderId,
    /// The bid id.
    pub bid: BidId,
    /// The outcome it got.
    pub accepted: Accepted,
}

/// Why a state could not be restored.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum RestoreError {
    /// An auction with this id exists already.
    #[error("auction {0} already exists")]
    AlreadyExists(AuctionId),
    /// The engine holds `auctions_max` auctions.
    #[error("the engine holds its maximum of {auctions_max} auctions")]
    TooManyAuctions {
        /// The configured limit.
        auctions_max: usize,
    },
    /// The state does not fit its own rules (a corrupt or foreign snapshot).
    #[error("auction {id}: inconsistent state: {what}")]
    Inconsistent {
        /// The auction.
        id: AuctionId,
        /// What is wrong.
        what: &'static str,
    },
}
