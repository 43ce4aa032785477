//! The idempotency memory: the last `dedup_window_bids` accepted `(bidder, bid id)` keys of
//! one auction with their outcomes, so a retry gets its original's outcome.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::filter::{FilterKey, SeenFilter};
use crate::hash::{BuildPassThroughHasher, mix64};
use crate::types::{Accepted, Bid, BidId, BidderId};

/// Key of the idempotency memory: bid ids are scoped by bidder, so one bidder cannot learn
/// another's outcome by reusing its id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(super) struct BidKey {
    pub(super) bidder: BidderId,
    pub(super) id: BidId,
}

impl BidKey {
    pub(super) fn of(bid: &Bid) -> BidKey {
        BidKey {
            bidder: bid.bidder(),
            id: bid.id(),
        }
    }

    /// The key as the seen-bid filter sees it: fixed (unkeyed, deterministic) hashes.
    /// Collisions only cost a trip to the locked path, so they need not resist crafted keys.
    pub(super) fn filter_key(&self) -> FilterKey {
        let id = self.id.0;
        let bidder = self.bidder.fingerprint();
        // Cast: the low and high halves of the 128-bit id.
        FilterKey::new(mix64(id as u64 ^ mix64((id >> 64) as u64 ^ bidder)), bidder)
    }
}

/// The exact idempotency memory: the last `window` accepted bid keys with their outcomes,
/// evicted oldest first, one per insert (no rebuild, no latency spike). The seen-bid filter
/// rotates its two generations every `window` inserts, so it always holds a superset.
///
/// Entries live in a ring in acceptance order; a small index maps a keyed 64-bit
/// fingerprint of the key to the entry's position, so lookups and evictions touch a few
/// bytes per entry rather than whole entries. The full key is compared on a hit. Should two
/// keys in one window share a fingerprint (≈ 2⁻⁶⁴ per pair, and the key is per-process
/// random), the older one leaves the memory early.
pub(super) struct Recent {
    /// Fingerprint → absolute position in `entries`.
    index: HashMap<u64, u64, BuildPassThroughHasher>,
    /// `(fingerprint, key, outcome)`, oldest first; at most `window`.
    entries: VecDeque<(u64, BidKey, Accepted)>,
    /// Absolute position of `entries[0]`.
    first: u64,
    fingerprints: foldhash::fast::RandomState,
    /// The filter generation taking inserts.
    generation: usize,
    /// Inserts into `generation` so far.
    in_generation: usize,
}

impl Recent {
    pub(super) fn new() -> Recent {
        Recent {
            index: HashMap::default(),
            entries: VecDeque::new(),
            first: 0,
            // Keyed per process: bidders choose their bid ids, and must not be able to
            // choose colliding fingerprints.
            fingerprints: foldhash::fast::RandomState::default(),
            generation: 0,
            in_generation: 0,
        }
    }

    pub(super) fn get(&self, key: &BidKey) -> Option<Accepted> {
        let position = *self.index.get(&self.fingerprints.hash_one(key))?;
        // Cast: positions in the index are within the ring (evictions remove them).
        let (_, stored, accepted) = self.entries[(position - self.first) as usize];
        (stored == *key).then_some(accepted)
    }

    pub(super) fn insert(
        &mut self,
        key: BidKey,
        accepted: Accepted,
        filter: &SeenFilter,
        window: usize,
    ) {
        if self.in_generation >= window {
            self.generation ^= 1;
            self.in_generation = 0;
            filter.clear(self.generation);
        }
        filter.insert(self.generation, key.filter_key(), window);
        self.in_generation += 1;
        if self.entries.len() >= window {
            // Invariant: a full window has an oldest entry.
            let (fingerprint, _, _) = self
                .entries
                .pop_front()
                .expect("a full window is not empty");
            if self.index.get(&fingerprint) == Some(&self.first) {
                self.index.remove(&fingerprint);
            }
            self.first += 1;
        }
        let fingerprint = self.fingerprints.hash_one(key);
        let position = self.first + self.entries.len() as u64;
        self.entries.push_back((fingerprint, key, accepted));
        self.index.insert(fingerprint, position);
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(u64, BidKey, Accepted)> {
        self.entries.iter()
    }
}
