//! The seen-bid filter: a lock-free, two-generation Bloom filter over the `(bidder, bid id)`
//! keys an auction accepted recently.
//!
//! It lets the lock-free path reject a too-low bid without missing a retry: a retried bid
//! must get its original outcome (`Duplicate`), not `TooLow`, even though its amount is now
//! below the price. The filter has no false negatives for keys inside the exact memory
//! window (see `auction::Recent`), so "not in the filter" proves "not a retry"; "maybe in
//! it" sends the bid to the locked path, which looks the key up exactly.
//!
//! Two generations rotate together with the exact memory: inserts go to the current one;
//! when it has taken `window` keys, the older one is cleared and becomes current. Readers
//! check both, so every key among the last `window` inserts is always present.

use crate::sync::{AtomicU64, Ordering};

/// Filter bits per key in one generation. With 3 probes this gives ≈0.5 % false positives
/// per generation at a full window.
const BITS_PER_KEY: usize = 16;
/// Probes per key.
const PROBES: u32 = 3;
/// Smallest generation, in 64-bit words.
const GENERATION_WORDS_MIN: usize = 2;

pub(crate) struct SeenFilter {
    /// Two generations back to back: `[0, words_per_generation)` and the rest.
    words: Box<[AtomicU64]>,
    /// Power of two.
    words_per_generation: usize,
}

impl SeenFilter {
    /// A filter sized for `window` keys per generation.
    pub(crate) fn new(window: usize) -> SeenFilter {
        let words_per_generation = (window * BITS_PER_KEY)
            .div_ceil(64)
            .next_power_of_two()
            .max(GENERATION_WORDS_MIN);
        SeenFilter {
            words: (0..2 * words_per_generation)
                .map(|_| AtomicU64::new(0))
                .collect(),
            words_per_generation,
        }
    }

    fn probes(&self, key_hash: u64) -> impl Iterator<Item = (usize, u64)> + use<> {
        let bits = (self.words_per_generation * 64) as u64;
        let h1 = key_hash & 0xffff_ffff;
        let h2 = (key_hash >> 32) | 1;
        (0..u64::from(PROBES)).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & (bits - 1);
            // Cast: bit < bits = words_per_generation * 64, a usize.
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    /// Whether the key may have been inserted in either generation. Never `false` for a key
    /// inserted into a generation that was not cleared since.
    pub(crate) fn may_contain(&self, key_hash: u64) -> bool {
        (0..2).any(|generation| {
            let base = generation * self.words_per_generation;
            self.probes(key_hash).all(|(word, mask)| {
                // Ordering: Relaxed is enough. The caller loaded the auction's price word
                // with Acquire; every insert it must see happened before the Release store
                // of that word (under the auction lock), so it is visible here.
                self.words[base + word].load(Ordering::Relaxed) & mask != 0
            })
        })
    }

    /// Adds the key to `generation`. Called under the auction lock only.
    pub(crate) fn insert(&self, generation: usize, key_hash: u64) {
        let base = generation * self.words_per_generation;
        for (word, mask) in self.probes(key_hash) {
            // Ordering: Relaxed; published by the Release store of the price word that
            // follows under the same lock (see `may_contain`).
            self.words[base + word].fetch_or(mask, Ordering::Relaxed);
        }
    }

    /// Empties `generation`. Called under the auction lock only, when the generation's keys
    /// have all left the exact memory window; a reader that still sees some of its bits
    /// only gets a false positive.
    pub(crate) fn clear(&self, generation: usize) {
        let base = generation * self.words_per_generation;
        for word in &self.words[base..base + self.words_per_generation] {
            // Ordering: Relaxed; see above, clearing only removes keys outside the window.
            word.store(0, Ordering::Relaxed);
        }
    }

    /// Memory held, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_found_until_their_generation_is_cleared() {
        let f = SeenFilter::new(64);
        for k in 0..64u64 {
            f.insert(0, k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        for k in 0..64u64 {
            assert!(f.may_contain(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
        f.clear(1);
        assert!(f.may_contain(5u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        f.clear(0);
        assert!(!f.may_contain(5u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    }

    #[test]
    fn false_positive_rate_is_low_at_a_full_window() {
        let window = 1024;
        let f = SeenFilter::new(window);
        let mix = |k: u64| {
            let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for k in 0..window as u64 {
            f.insert(0, mix(k));
            f.insert(1, mix(k + 1_000_000));
        }
        let false_positives = (10_000_000..10_100_000u64)
            .filter(|&k| f.may_contain(mix(k)))
            .count();
        // Two full generations at ≈0.5 % each: well under 2 %.
        assert!(
            false_positives < 2_000,
            "{false_positives} false positives in 100k"
        );
    }
}
