//! The price word: one `AtomicU64` per auction holding the visible price in its low 62
//! bits plus the `HAS_BID` and `CLOSED` flags.
//!
//! It is written only while the auction lock is held, with a compare-and-swap from the
//! value the lock holder last stored (so a second writer, a bug, is caught at once), and
//! read without any lock by watchers and by the bid path.

use crate::sync::{AtomicU64, Ordering};
use crate::types::{PRICE_MAX, Price};

/// Flag in the price word: the auction is closed; no bid is accepted any more.
pub(super) const CLOSED: u64 = 1 << 63;
/// Flag in the price word: at least one bid was accepted (English: the price is a bid).
pub(super) const HAS_BID: u64 = 1 << 62;
const _: () = assert!(
    PRICE_MAX & (CLOSED | HAS_BID) == 0,
    "prices must not overlap flags"
);

/// The price word of one auction.
pub(super) struct PriceWord(AtomicU64);

impl PriceWord {
    pub(super) fn new(word: u64) -> PriceWord {
        PriceWord(AtomicU64::new(word))
    }

    /// The current word, read without any lock.
    pub(super) fn load(&self) -> u64 {
        // Ordering: Acquire pairs with the Release CAS in `store_locked`, so a reader that
        // sees a price also sees the state change (and filter inserts) that produced it.
        self.0.load(Ordering::Acquire)
    }

    /// Replaces `last` — the value this lock holder's predecessor stored — by `word`.
    /// Only ever called under the auction lock.
    ///
    /// # Panics
    /// If the word is not `last`: something wrote it outside the lock.
    pub(super) fn store_locked(&self, last: u64, word: u64) {
        // Ordering: Release publishes the state change and the filter inserts to lock-free
        // readers (who load with Acquire); readers seeing CLOSED see the settlement. The
        // CAS, not a store, checks that nobody else wrote the word since this lock
        // holder's predecessor did: the lock makes us the only writer, and a failure here
        // is a bug. Failure ordering Relaxed: we panic.
        let swapped = self
            .0
            .compare_exchange(last, word, Ordering::Release, Ordering::Relaxed);
        assert!(
            swapped.is_ok(),
            "the price word was written outside the auction lock"
        );
    }
}

/// The visible price of a word (`None` before a bid) and whether it says closed.
pub(super) fn decode(word: u64) -> (Option<Price>, bool) {
    let price = (word & HAS_BID != 0).then_some(word & PRICE_MAX);
    (price, word & CLOSED != 0)
}
