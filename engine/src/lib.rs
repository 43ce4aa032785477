//! `gavel-engine`: the sans-IO auction core of Gavel.
//!
//! The engine decides bids. It knows nothing of sockets, files, tokio or protobuf, and it
//! never reads a clock: every call takes `now`. Drivers (`transport`, `wal`, the `gavel`
//! binary) feed it input and carry its output — outcomes to clients, [`Event`]s to the
//! write-ahead log and the price streams.
//!
//! Map of the crate:
//! - [`types`]: validated value types — ids, money, time, bids, auction rules, outcomes.
//! - [`event`]: the events every state change produces and the [`EventSink`] they go to.
//! - `auction` (private): one auction — the lock-free price word and seen-bid filter, the
//!   auction lock, the idempotency memory, and the rules of every kind (one module each).
//! - `filter` (private): the seen-bid filter; `hash` (private): the one fixed mixer.
//! - [`decision`]: what a bid or a close decided ([`BidDecision`], [`ClosedAuction`]).
//! - [`engine`]: the sharded registry of auctions, the close timer and the state hash.
//! - [`replay`]: rebuilds an engine from its events through the live code path.
//! - [`snapshot`]: the complete state of auctions as values, and restoring from it.
//! - [`view`]: read-only snapshots of auctions.
//! - `sim_bugs` (feature `sim-bugs`, never in a real build): switches of hand-injected bugs
//!   for the fault matrix of `gavel-sim`.

mod auction;
pub mod decision;
pub mod engine;
pub mod event;
mod filter;
mod hash;
pub mod replay;
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs;
pub mod snapshot;
mod sync;
pub mod types;
pub mod view;

pub use decision::{BidDecision, ClosedAuction};
pub use engine::{CreateError, Engine, EngineConfig, ManageError};

pub use event::{
    Backpressure, BoundedSink, CloseReason, DECISION_EVENTS_MAX, DiscardSink, Event, EventKind,
    EventSink, Receipt, RecordingSink,
};
pub use replay::{ReplayError, ReplaySummary, Replayer};
pub use snapshot::{
    AuctionState, BookState, LeaderState, PrunedAuction, RecentBid, RestoreError, SealedBidState,
};
pub use types::*;
pub use view::{AuctionView, Phase};
