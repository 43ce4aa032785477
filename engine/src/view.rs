//! Read-only views of an auction, for the admin API, snapshots and subscriptions.

use std::sync::Arc;

use crate::event::CloseReason;
use crate::types::{AuctionSpec, BidderId, Price, Settlement, UnixMicros};

/// Where an auction is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Phase {
    /// Created; `now` is before `starts_at`.
    Scheduled,
    /// Taking bids.
    Open,
    /// Closed and settled (the two happen together, under the settlement lock).
    Settled,
}

/// A consistent snapshot of one auction, taken under its lock.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuctionView {
    /// The rules.
    pub spec: Arc<AuctionSpec>,
    /// Phase at the `now` the view was taken.
    pub phase: Phase,
    /// Sequence number of the latest state change.
    pub seq: u64,
    /// Visible price: English, the current price; Dutch, the clock price at `now` (or the
    /// sale price); sealed kinds, `None` until settled.
    pub price: Option<Price>,
    /// Visible leader (English only).
    pub leader: Option<BidderId>,
    /// Current end, after extensions.
    pub ends_at: UnixMicros,
    /// Soft-close extensions so far.
    pub extensions: u32,
    /// Accepted bids so far.
    pub bids_accepted: u64,
    /// The result, once settled.
    pub settlement: Option<Settlement>,
    /// Why it closed, once settled.
    pub close_reason: Option<CloseReason>,
    /// When the latest state change (`seq`) was decided; `UnixMicros(0)` when unknown (an
    /// auction restored from a snapshot that has not changed since).
    pub changed_at: UnixMicros,
}
