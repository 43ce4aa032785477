//! What one subscriber connection was last sent of each auction it watches: 16 bytes per
//! (connection, auction), the rest of an auction's state being kept once for all
//! connections (`super::latest`).
//!
//! [`Seen`] is a vector of entries sorted by auction id (binary search; auctions are
//! usually created with rising ids, so a new one is appended), each an auction id and one
//! word of state:
//!
//! | bits   | field                                                                       |
//! |--------|-----------------------------------------------------------------------------|
//! | 0..32  | `seq`: the low 32 bits of the highest sequence number queued or written      |
//! | 32..47 | the pending price update's encoded size (saturated at 32 KiB − 1), else 0    |
//! | 47..63 | when the auction's last price update was taken, in the outbox's time units   |
//! | 63     | a price update newer than what was written waits for the writer             |
//!
//! Sequence numbers compare as serial numbers (RFC 1982): a newer one is less than 2³¹
//! ahead. A connection is sent every change of its auctions or a later one, so the stored
//! number never falls that far behind; a resume position the client made up only mis-orders
//! its own stream. One bit per block of 64 entries says that a block may hold a pending
//! entry, so the writer finds the pending ones without reading every entry. Growth is by an
//! eighth at most (no doubling), so the spare capacity stays small.

const SEQ_BITS: u32 = 32;
const SIZE_SHIFT: u32 = 32;
const SIZE_MAX: u64 = (1 << 15) - 1;
const STAMP_SHIFT: u32 = 47;
const STAMP_MASK: u64 = (1 << 16) - 1;
const PENDING: u64 = 1 << 63;
/// Entries per summary bit.
const BLOCK: usize = 64;
/// Entries added at least when the vector grows.
const GROW_MIN: usize = 8;

/// One auction of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    auction: u64,
    state: u64,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);
const _: () = assert!(SIZE_SHIFT == SEQ_BITS && STAMP_SHIFT == SIZE_SHIFT + 15);
const _: () = assert!(STAMP_SHIFT + 16 == 63);

/// The low bits of `seq` an entry keeps.
fn low(seq: u64) -> u32 {
    // Truncation intended: serial numbers of 32 bits.
    seq as u32
}

/// Whether serial number `a` is after `b`.
fn after(a: u32, b: u32) -> bool {
    // Reinterpretation intended: the signed distance of serial arithmetic.
    (a.wrapping_sub(b) as i32) > 0
}

impl Entry {
    fn seq(self) -> u32 {
        low(self.state)
    }

    fn pending_size(self) -> Option<usize> {
        // Truncation intended: the field is 15 bits wide.
        (self.state & PENDING != 0).then_some(((self.state >> SIZE_SHIFT) & SIZE_MAX) as usize)
    }

    /// When its last price update was taken (`None`: never).
    fn stamp(self) -> Option<u16> {
        // Truncation intended: the field is 16 bits wide; 0 stands for "never" (a stamp
        // is stored plus one).
        let stored = ((self.state >> STAMP_SHIFT) & STAMP_MASK) as u16;
        stored.checked_sub(1)
    }

    fn set_seq(&mut self, seq: u32) {
        self.state = (self.state & !u64::from(u32::MAX)) | u64::from(seq);
    }
}

/// What [`Seen::mark_pending`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mark {
    /// The connection was never sent the auction: it needs a snapshot, not an update.
    Unknown,
    /// Not newer than what was queued or written: nothing changed.
    Stale,
    /// Now pending; it was not before. The size charged for it, and when the auction's
    /// last update was taken.
    Queued { size: usize, stamp: Option<u16> },
    /// Replaced a pending update: the sizes charged for the old and the new one.
    Conflated { old: usize, new: usize },
    /// It would add more bytes than the room given: nothing changed.
    Full,
}

/// A pending price update found by [`Seen::next_pending`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Pending {
    pub(crate) auction: u64,
    /// The low 32 bits of its sequence number.
    pub(crate) seq: u32,
    /// The size charged for it when it was queued.
    pub(crate) size: usize,
    /// When the auction's last price update was taken (`None`: never).
    pub(crate) stamp: Option<u16>,
}

impl Pending {
    /// Whether `seq` is this update's sequence number or a later one.
    pub(crate) fn is_covered_by(&self, seq: u64) -> bool {
        !after(self.seq, low(seq))
    }
}

/// One connection's auctions (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    entries: Vec<Entry>,
    /// Bit `i % 64` of word `i / 64`: block `i` (entries `64 i ..`) may hold a pending entry.
    blocks: Vec<u64>,
    pending: usize,
}

impl Seen {
    /// Auctions held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries with a pending price update.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Bytes of heap held (the entries' capacity and the summary).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.blocks.capacity() * 8
    }

    fn find(&self, auction: u64) -> Result<usize, usize> {
        // The common case first: the newest auction, at the end.
        match self.entries.last() {
            Some(last) if last.auction < auction => Err(self.entries.len()),
            _ => self.entries.binary_search_by_key(&auction, |e| e.auction),
        }
    }

    /// Whether `auction` was ever queued or written.
    pub(crate) fn knows(&self, auction: u64) -> bool {
        self.find(auction).is_ok()
    }

    /// Records that `auction` is at `seq` for the peer without a pending update (a
    /// snapshot queued, a resume position), keeping a pending one if it is newer.
    pub(crate) fn note(&mut self, auction: u64, seq: u64) {
        match self.find(auction) {
            Ok(i) => {
                let entry = &mut self.entries[i];
                if after(low(seq), entry.seq()) {
                    entry.set_seq(low(seq));
                }
            }
            Err(i) => self.insert(
                i,
                Entry {
                    auction,
                    state: u64::from(low(seq)),
                },
            ),
        }
    }

    /// Marks a price update of `auction` at `seq`, `size` bytes encoded, as pending, if
    /// it adds at most `room` bytes to what is charged.
    pub(crate) fn mark_pending(
        &mut self,
        auction: u64,
        seq: u64,
        size: usize,
        room: usize,
    ) -> Mark {
        let Ok(i) = self.find(auction) else {
            return Mark::Unknown;
        };
        let entry = &mut self.entries[i];
        if !after(low(seq), entry.seq()) {
            return Mark::Stale;
        }
        // Truncation intended: the size saturates at the field's width.
        let new = size.min(SIZE_MAX as usize);
        let old = entry.pending_size();
        if new.saturating_sub(old.unwrap_or(0)) > room {
            return Mark::Full;
        }
        let stamp = entry.state & (STAMP_MASK << STAMP_SHIFT);
        entry.state = PENDING | stamp | ((new as u64) << SIZE_SHIFT) | u64::from(low(seq));
        let entry = *entry;
        self.blocks[i / BLOCK / 64] |= 1 << (i / BLOCK % 64);
        match old {
            Some(old) => Mark::Conflated { old, new },
            None => {
                self.pending += 1;
                Mark::Queued {
                    size: new,
                    stamp: entry.stamp(),
                }
            }
        }
    }

    /// Clears `auction`'s pending mark and, with `stamp`, records that its update was taken
    /// then; returns the size charged for the pending update, if it had one.
    pub(crate) fn clear_pending(&mut self, auction: u64, stamp: Option<u16>) -> Option<usize> {
        let i = self.find(auction).ok()?;
        let entry = &mut self.entries[i];
        if let Some(stamp) = stamp {
            let stored = u64::from(stamp % u16::MAX) + 1;
            entry.state = (entry.state & !(STAMP_MASK << STAMP_SHIFT)) | (stored << STAMP_SHIFT);
        }
        let size = entry.pending_size()?;
        entry.state &= !(PENDING | (SIZE_MAX << SIZE_SHIFT));
        self.pending -= 1;
        Some(size)
    }

    /// The first pending entry at or after auction id `from`; summary bits of blocks found
    /// without one are cleared on the way.
    pub(crate) fn next_pending(&mut self, from: u64) -> Option<Pending> {
        if self.pending == 0 {
            return None;
        }
        let start = self.find(from).unwrap_or_else(|i| i);
        let mut block = start / BLOCK;
        while block * BLOCK < self.entries.len() {
            let (word, bit) = (block / 64, block % 64);
            let rest = self.blocks[word] >> bit;
            if rest == 0 {
                block = (word + 1) * 64;
                continue;
            }
            block += rest.trailing_zeros() as usize;
            let begin = (block * BLOCK).max(start);
            let end = ((block + 1) * BLOCK).min(self.entries.len());
            let found = self.entries[begin..end]
                .iter()
                .find_map(|e| e.pending_size().map(|size| (e, size)));
            if let Some((entry, size)) = found {
                return Some(Pending {
                    auction: entry.auction,
                    seq: entry.seq(),
                    size,
                    stamp: entry.stamp(),
                });
            }
            if begin == block * BLOCK {
                // The whole block was read: nothing pending in it.
                self.blocks[block / 64] &= !(1 << (block % 64));
            }
            block += 1;
        }
        None
    }

    /// Forgets `auction`; returns the size charged for its pending update, if any.
    pub(crate) fn remove(&mut self, auction: u64) -> Option<usize> {
        let i = self.find(auction).ok()?;
        let entry = self.entries.remove(i);
        self.mark_blocks_from(i);
        let size = entry.pending_size();
        if size.is_some() {
            self.pending -= 1;
        }
        size
    }

    fn insert(&mut self, i: usize, entry: Entry) {
        if self.entries.len() == self.entries.capacity() {
            let more = (self.entries.len() / 8).max(GROW_MIN);
            self.entries.reserve_exact(more);
        }
        self.entries.insert(i, entry);
        let words = self.entries.len().div_ceil(BLOCK).div_ceil(64);
        if self.blocks.len() < words {
            self.blocks.resize(words, 0);
        }
        if i + 1 < self.entries.len() {
            // Entries after `i` moved up by one: their blocks may now hold pending ones.
            self.mark_blocks_from(i);
        }
    }

    /// Sets the summary bits of every block from the one holding entry `i` on (after
    /// entries moved: a bit may be set without need, never missing).
    fn mark_blocks_from(&mut self, i: usize) {
        let blocks = self.entries.len().div_ceil(BLOCK);
        for block in i / BLOCK..blocks {
            self.blocks[block / 64] |= 1 << (block % 64);
        }
    }

    /// Gives back spare capacity (after a subscription added many auctions at once).
    pub(crate) fn shrink(&mut self) {
        self.entries.shrink_to_fit();
        self.blocks.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_ids(seen: &mut Seen) -> Vec<u64> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(p) = seen.next_pending(from) {
            out.push(p.auction);
            from = p.auction + 1;
        }
        out
    }

    #[test]
    fn an_auction_is_unknown_until_noted_and_stale_updates_change_nothing() {
        let mut seen = Seen::default();
        assert_eq!(seen.mark_pending(7, 2, 80, usize::MAX), Mark::Unknown);
        seen.note(7, 3);
        assert!(seen.knows(7));
        assert_eq!(seen.mark_pending(7, 3, 80, usize::MAX), Mark::Stale);
        assert_eq!(
            seen.mark_pending(7, 4, 80, usize::MAX),
            Mark::Queued {
                size: 80,
                stamp: None
            }
        );
        assert_eq!(
            seen.mark_pending(7, 6, 90, usize::MAX),
            Mark::Conflated { old: 80, new: 90 }
        );
        assert_eq!(
            seen.mark_pending(7, 5, 90, usize::MAX),
            Mark::Stale,
            "older"
        );
        assert_eq!(
            seen.mark_pending(7, 7, 101, 10),
            Mark::Full,
            "11 more bytes"
        );
        assert_eq!(seen.pending(), 1);
        seen.note(7, 5);
        let pending = seen.next_pending(0).unwrap();
        assert_eq!((pending.seq, pending.size, pending.stamp), (6, 90, None));
        assert!(pending.is_covered_by(6) && pending.is_covered_by(7));
        assert!(!pending.is_covered_by(5));
        assert_eq!(seen.clear_pending(7, Some(40)), Some(90));
        assert_eq!(seen.clear_pending(7, None), None);
        assert_eq!(seen.pending(), 0);
        assert_eq!(
            seen.mark_pending(7, 6, 90, usize::MAX),
            Mark::Stale,
            "already taken"
        );
        assert_eq!(
            seen.mark_pending(7, 8, 90, usize::MAX),
            Mark::Queued {
                size: 90,
                stamp: Some(40)
            },
            "the stamp is kept"
        );
    }

    #[test]
    fn pending_entries_are_found_in_id_order_across_blocks_and_inserts() {
        let mut seen = Seen::default();
        // Even ids, in a shuffled order, then odd ones in between.
        for id in (0..500_u64).map(|i| (i * 37) % 500 * 2) {
            seen.note(id, 1);
        }
        for id in [1_u64, 301, 999] {
            seen.note(id, 1);
        }
        assert_eq!(seen.len(), 503);
        for id in [998_u64, 4, 301, 130, 640] {
            assert_eq!(
                seen.mark_pending(id, 2, 50, usize::MAX),
                Mark::Queued {
                    size: 50,
                    stamp: None
                }
            );
        }
        assert_eq!(pending_ids(&mut seen), vec![4, 130, 301, 640, 998]);
        // An insert below pending entries moves them into other blocks.
        for id in (1..128_u64).map(|i| i * 2 + 1001) {
            seen.note(id, 1);
        }
        seen.note(3, 1);
        assert_eq!(pending_ids(&mut seen), vec![4, 130, 301, 640, 998]);
        assert_eq!(seen.remove(130), Some(50));
        assert_eq!(seen.remove(131), None);
        assert_eq!(seen.clear_pending(4, None), Some(50));
        assert_eq!(pending_ids(&mut seen), vec![301, 640, 998]);
        assert_eq!(seen.next_pending(641).map(|p| p.auction), Some(998));
        assert_eq!(seen.pending(), 3);
    }

    #[test]
    fn an_entry_is_sixteen_bytes_and_growth_keeps_little_spare() {
        let mut seen = Seen::default();
        for id in 0..10_000 {
            seen.note(id, 1);
        }
        let per_auction = seen.heap_bytes() as f64 / 10_000.0;
        assert!(per_auction <= 18.1, "{per_auction} bytes per auction");
        seen.shrink();
        let per_auction = seen.heap_bytes() as f64 / 10_000.0;
        assert!(per_auction <= 16.1, "{per_auction} bytes per auction");
    }

    #[test]
    fn sequence_numbers_compare_as_serial_numbers_past_32_bits() {
        let mut seen = Seen::default();
        let base = (1_u64 << 32) - 2;
        seen.note(1, base);
        assert_eq!(
            seen.mark_pending(1, base + 3, 10, usize::MAX),
            Mark::Queued {
                size: 10,
                stamp: None
            }
        );
        assert_eq!(seen.mark_pending(1, base + 1, 10, usize::MAX), Mark::Stale);
        assert_eq!(seen.clear_pending(1, Some(u16::MAX)), Some(10));
        assert_eq!(
            seen.mark_pending(1, base + 4, 1 << 20, usize::MAX),
            Mark::Queued {
                size: 32_767,
                stamp: Some(0)
            },
            "sizes saturate, stamps wrap"
        );
    }
}
