//! The state hash of one auction: everything that determines its future, fed to a
//! `blake3` hasher in a canonical order, so replay can prove it reproduced the state bit
//! for bit.

use super::Auction;
use super::rules::Book;
use crate::snapshot::PrunedAuction;
use crate::types::{AuctionKind, AuctionSpec, BidderId, Winner};

impl Auction {
    /// Feeds everything that determines this auction's future into `hasher`, in a canonical
    /// order: replay must reproduce it bit for bit.
    pub(crate) fn hash_into(&self, hasher: &mut blake3::Hasher) {
        let state = self.lock();
        let mut h = Canonical(hasher);
        h.spec(&self.spec);
        h.u64(state.seq);
        h.u64(state.ends_at.0);
        h.u64(u64::from(state.extensions));
        h.u64(state.bids_accepted);
        h.u64(state.word);
        h.u64(state.settled.map_or(0, |(reason, _)| 1 + reason as u64));
        h.winner(state.settled.and_then(|(_, s)| s.winner));
        match &state.book {
            Book::English { price, lead } => {
                h.u64(*price);
                h.bidder(lead.map(|l| l.bidder));
                h.u128(lead.map_or(0, |l| l.bid.0));
                h.u64(lead.map_or(0, |l| l.max));
            }
            Book::Sealed { bids } => {
                let mut sorted: Vec<_> = bids.iter().collect();
                sorted.sort_unstable_by_key(|(bidder, _)| **bidder);
                h.u64(sorted.len() as u64);
                for (bidder, b) in sorted {
                    h.bidder(Some(*bidder));
                    h.u128(b.bid.0);
                    h.u64(b.amount);
                    h.u64(b.seq);
                }
            }
            Book::Dutch { sold } => h.winner(*sold),
        }
        // The memory, oldest first: its order decides what a future insert evicts.
        h.u64(state.recent.len() as u64);
        for (_, key, accepted) in state.recent.iter() {
            h.bidder(Some(key.bidder));
            h.u128(key.id.0);
            h.u64(accepted.seq);
            h.u64(accepted.price);
            h.u64(accepted.ends_at.0);
            h.bidder(accepted.leader);
        }
    }
}

/// Feeds a pruned auction's result into `hasher`, in a canonical order. Its `settled_at`
/// is left out, as it is for a whole auction (`AuctionState::settled_at`).
pub(crate) fn hash_pruned(result: &PrunedAuction, hasher: &mut blake3::Hasher) {
    let mut h = Canonical(hasher);
    h.u64(result.id.0);
    h.text(result.topic.as_str());
    h.u64(1 + result.reason as u64);
    h.winner(result.settlement.winner);
    h.u64(result.seq);
    h.u64(result.pruned_at.0);
}

/// Canonical little-endian encoding of state into the state hash; every optional value is
/// preceded by a presence byte, every variable-length one by its length.
struct Canonical<'h>(&'h mut blake3::Hasher);

impl Canonical<'_> {
    fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }

    fn u128(&mut self, v: u128) {
        self.0.update(&v.to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.u64(text.len() as u64);
        self.0.update(text.as_bytes());
    }

    fn option(&mut self, v: Option<u64>) {
        self.0.update(&[u8::from(v.is_some())]);
        self.u64(v.unwrap_or(0));
    }

    fn bidder(&mut self, bidder: Option<BidderId>) {
        self.0.update(&[u8::from(bidder.is_some())]);
        self.text(bidder.as_ref().map_or("", BidderId::as_str));
    }

    fn winner(&mut self, winner: Option<Winner>) {
        self.bidder(winner.map(|w| w.bidder));
        self.u128(winner.map_or(0, |w| w.bid.0));
        self.u64(winner.map_or(0, |w| w.price));
    }

    fn spec(&mut self, spec: &AuctionSpec) {
        let r = spec.rules();
        self.u64(r.id.0);
        self.text(r.topic.as_str());
        match &r.kind {
            AuctionKind::English {
                start_price,
                increments,
            } => {
                self.u64(1);
                self.u64(*start_price);
                self.u64(increments.bands().len() as u64);
                for band in increments.bands() {
                    self.u64(band.below);
                    self.u64(band.increment);
                }
                self.u64(increments.above());
            }
            AuctionKind::SealedFirstPrice { min_bid } => {
                self.u64(2);
                self.u64(*min_bid);
            }
            AuctionKind::SealedSecondPrice { min_bid } => {
                self.u64(3);
                self.u64(*min_bid);
            }
            AuctionKind::Dutch {
                start_price,
                floor_price,
                step,
                step_interval_us,
            } => {
                self.u64(4);
                for v in [*start_price, *floor_price, *step, *step_interval_us] {
                    self.u64(v);
                }
            }
        }
        self.option(r.reserve);
        self.option(r.buy_now);
        self.u64(r.starts_at.0);
        self.u64(r.ends_at.0);
        self.option(r.soft_close.map(|sc| sc.window_us));
        self.option(r.soft_close.map(|sc| sc.extension_us));
        self.option(r.soft_close.map(|sc| u64::from(sc.extensions_max)));
    }
}
