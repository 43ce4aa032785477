//! The seen-bid filter: a lock-free, two-generation Bloom filter over the `(bidder, bid id)`
//! keys an auction accepted recently.
//!
//! It lets the lock-free path reject a too-low bid without missing a retry: a retried bid
//! must get its original outcome (`Duplicate`), not `TooLow`, even though its amount is now
//! below the price. The filter has no false negatives for keys inside the exact memory
//! window (see `auction::recent::Recent`), so "not in the filter" proves "not a retry"; "maybe in
//! it" sends the bid to the locked path, which looks the key up exactly.
//!
//! Two generations rotate together with the exact memory: inserts go to the current one;
//! when it has taken `window` keys, the older one is cleared and becomes current. Readers
//! check both, so every key among the last `window` inserts is always present.
//!
//! The blocks (4 KiB at the default window of 1,024) are allocated at the first insert, the
//! auction's first accepted bid, not with the auction: an auction that never takes a bid
//! (most of a million live auctions) holds only the bidder summary and an empty slot.

use std::sync::OnceLock;

use crate::sync::{AtomicU64, Ordering};

/// Filter bits per key in one generation. With 3 probes in one 256-bit half block this
/// gives ≈1 % false positives per generation at a full window.
const BITS_PER_KEY: usize = 16;
/// Probes per key, all in one block.
const PROBES: u32 = 3;
/// Bits of one generation in a block; a block holds both generations in one cache line.
const HALF_BITS: usize = 256;
const HALF_WORDS: usize = HALF_BITS / 64;

/// One cache line of filter bits: words `[0, 4)` are generation 0, `[4, 8)` generation 1,
/// so a query of both generations touches exactly one cache line.
#[repr(align(64))]
struct Block([AtomicU64; 2 * HALF_WORDS]);

impl Block {
    fn new() -> Block {
        Block([(); 2 * HALF_WORDS].map(|_| AtomicU64::new(0)))
    }
}

/// What the filter knows of a key: its hash, and its bidder's bit in the bidder summary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FilterKey {
    /// Hash of `(bidder, bid id)`.
    pub(crate) hash: u64,
    /// One bit (of 64) for the bidder.
    pub(crate) bidder_bit: u64,
}

impl FilterKey {
    pub(crate) fn new(hash: u64, bidder_fingerprint: u64) -> FilterKey {
        FilterKey {
            hash,
            bidder_bit: 1 << (bidder_fingerprint % 64),
        }
    }
}

pub(crate) struct SeenFilter {
    /// Per generation, one bit per bidder (hashed): a retry must come from a bidder with an
    /// accepted bid in the window. Inline in the auction, next to its price word, so most
    /// bids on a quiet auction are cleared without touching the blocks.
    bidders: [AtomicU64; 2],
    /// Power of two in length; allocated at the first insert (sized for its `window`).
    blocks: OnceLock<Box<[Block]>>,
}

impl SeenFilter {
    /// An empty filter; its blocks come with the first insert.
    pub(crate) fn new() -> SeenFilter {
        SeenFilter {
            bidders: [AtomicU64::new(0), AtomicU64::new(0)],
            blocks: OnceLock::new(),
        }
    }

    /// Blocks for `window` keys per generation.
    fn allocate(window: usize) -> Box<[Block]> {
        let blocks = (window.max(1) * BITS_PER_KEY)
            .div_ceil(HALF_BITS)
            .next_power_of_two();
        (0..blocks).map(|_| Block::new()).collect()
    }

    /// The block of `key_hash` among `blocks`, and its probes in `generation` as (word, mask).
    fn probes(
        blocks: &[Block],
        generation: usize,
        key_hash: u64,
    ) -> (&Block, impl Iterator<Item = (usize, u64)>) {
        // Cast: the top bits pick the block; the mask keeps it in range.
        let block = (key_hash >> 40) as usize & (blocks.len() - 1);
        let probes = (0..PROBES).map(move |i| {
            // Cast: 8 bits per probe, a bit position below 256.
            let bit = (key_hash >> (8 * i)) as usize % HALF_BITS;
            (generation * HALF_WORDS + bit / 64, 1u64 << (bit % 64))
        });
        (&blocks[block], probes)
    }

    /// Whether the key may have been inserted in either generation. Never `false` for a key
    /// inserted into a generation that was not cleared since.
    pub(crate) fn may_contain(&self, key: FilterKey) -> bool {
        // Ordering (all loads here): Relaxed is enough. The caller loaded the auction's price
        // word with Acquire; every insert it must see happened before the Release store of
        // that word (under the auction lock), so it is visible here. The same holds for the
        // blocks' allocation, which comes before the first insert: no blocks, no key.
        (0..2).any(|generation| {
            if self.bidders[generation].load(Ordering::Relaxed) & key.bidder_bit == 0 {
                return false;
            }
            let Some(blocks) = self.blocks.get() else {
                return false;
            };
            let (block, mut probes) = Self::probes(blocks, generation, key.hash);
            probes.all(|(word, mask)| block.0[word].load(Ordering::Relaxed) & mask != 0)
        })
    }

    /// Adds the key to `generation`, allocating the blocks for `window` keys per generation
    /// at the first insert. Called under the auction lock only: the lock holder is the only
    /// writer, so a load and a store set a bit (no read-modify-write instruction).
    pub(crate) fn insert(&self, generation: usize, key: FilterKey, window: usize) {
        // Ordering (all accesses here): Relaxed; published by the Release store of the price
        // word that follows under the same lock (see `may_contain`).
        let set = |word: &AtomicU64, mask: u64| {
            let bits = word.load(Ordering::Relaxed);
            if bits & mask != mask {
                word.store(bits | mask, Ordering::Relaxed);
            }
        };
        let blocks = self.blocks.get_or_init(|| Self::allocate(window));
        set(&self.bidders[generation], key.bidder_bit);
        let (block, probes) = Self::probes(blocks, generation, key.hash);
        for (word, mask) in probes {
            set(&block.0[word], mask);
        }
    }

    /// Empties `generation`. Called under the auction lock only, when the generation's keys
    /// have all left the exact memory window; a reader that still sees some of its bits
    /// only gets a false positive.
    pub(crate) fn clear(&self, generation: usize) {
        // Ordering: Relaxed; as below.
        self.bidders[generation].store(0, Ordering::Relaxed);
        for block in self
            .blocks
            .get()
            .into_iter()
            .flat_map(|blocks| blocks.iter())
        {
            for word in &block.0[generation * HALF_WORDS..(generation + 1) * HALF_WORDS] {
                // Ordering: Relaxed; see above, clearing only removes keys outside the window.
                word.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A key whose bidder is the hash itself (many bidders: the summary is saturated).
    fn key(hash: u64) -> FilterKey {
        FilterKey::new(hash, hash.rotate_left(17))
    }

    #[test]
    fn the_bidder_summary_clears_keys_of_bidders_without_accepted_bids() {
        let f = SeenFilter::new();
        f.insert(0, FilterKey::new(42, 3), 64);
        assert!(f.may_contain(FilterKey::new(42, 3)));
        // Same key hash, another bidder bit: not present without touching the blocks.
        assert!(!f.may_contain(FilterKey::new(42, 4)));
    }

    #[test]
    fn the_blocks_come_with_the_first_insert() {
        let f = SeenFilter::new();
        assert!(f.blocks.get().is_none());
        assert!(!f.may_contain(key(7)));
        f.clear(0);
        assert!(f.blocks.get().is_none(), "clearing allocates nothing");
        f.insert(1, key(7), 1024);
        // 1,024 keys × 16 bits in 256-bit halves: 64 blocks of one cache line each.
        assert_eq!(f.blocks.get().map(|b| b.len()), Some(64));
        assert!(f.may_contain(key(7)));
    }

    #[test]
    fn inserted_keys_are_found_until_their_generation_is_cleared() {
        let f = SeenFilter::new();
        for k in 0..64u64 {
            f.insert(0, key(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 64);
        }
        for k in 0..64u64 {
            assert!(f.may_contain(key(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        }
        f.clear(1);
        assert!(f.may_contain(key(5u64.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        f.clear(0);
        assert!(!f.may_contain(key(5u64.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
    }

    #[test]
    fn false_positive_rate_is_low_at_a_full_window() {
        let window = 1024;
        let f = SeenFilter::new();
        let mix = |k: u64| {
            let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for k in 0..window as u64 {
            f.insert(0, key(mix(k)), window);
            f.insert(1, key(mix(k + 1_000_000)), window);
        }
        let false_positives = (10_000_000..10_100_000u64)
            .filter(|&k| f.may_contain(key(mix(k))))
            .count();
        // Two full generations at ≈0.5 % each: well under 2 %.
        assert!(
            false_positives < 2_000,
            "{false_positives} false positives in 100k"
        );
    }
}
