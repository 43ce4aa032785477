//! The change feed from the bid path to the fan-out workers: a conflating, bounded queue of
//! *dirty* auction ids per fan-out worker (shard). Every change goes to every worker: each
//! worker serves its share of the subscriber connections, so one hot auction's watchers are
//! spread over all cores instead of one loop on one task.
//!
//! The bid path calls [`DirtyFeed::mark`] after a decision has been applied; that costs, per
//! shard, one atomic swap on a mark slot and, only when the auction is not queued there yet,
//! one push on a lock-free bounded queue. It never blocks, never allocates and never waits
//! for a worker, so a hot auction with many watchers cannot slow bids. A worker calls
//! [`DirtyFeed::drain`], then reads each drained auction's *current* public state once and
//! fans it out to its connections: many changes between two drains are published as one
//! update (natural conflation at the source).
//!
//! Protocol, per shard (why no change is lost):
//! - every shard has a direct-mapped table of mark slots; a slot holds the tag of an auction
//!   known to be queued (and not yet drained), or [`EMPTY`];
//! - `mark(id)`: `swap(slot, tag(id))`; if the previous value was `tag(id)` the auction is
//!   queued and not drained yet, so the worker's later read will see this change; else the
//!   id is pushed (a colliding id overwritten in the slot is only queued again on its next
//!   change: a harmless duplicate the worker removes);
//! - `drain`: for each popped id, `compare_exchange(slot, tag(id), EMPTY)` *before* the
//!   worker reads the state, so a change after the clear queues the id again;
//! - a full queue drops the push, clears the slot and raises the shard's `overflowed` flag:
//!   the worker then compares every auction with what it last published (the sweep), so an
//!   overflow costs time, never a lost update.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use gavel_engine::AuctionId;

/// A mark slot holding no auction.
pub(crate) const EMPTY: u64 = 0;
/// Dirty ids one shard's queue holds before it overflows into a sweep.
pub(crate) const FEED_QUEUE_LEN_MAX: usize = 64 * 1024;
/// Mark slots per shard; a power of two. More slots, fewer duplicate pushes on collisions.
pub(crate) const FEED_MARK_SLOTS: usize = 4096;
/// Most fan-out shards (workers).
pub(crate) const FEED_SHARDS_MAX: usize = 64;

const _: () = assert!(FEED_MARK_SLOTS.is_power_of_two());
const _: () = assert!(FEED_QUEUE_LEN_MAX >= FEED_MARK_SLOTS);

/// What [`DirtyFeed::mark`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Marked {
    /// The id was pushed on its shard's queue.
    Queued,
    /// The id was already queued and not drained yet: this change rides along (conflated).
    AlreadyQueued,
    /// The shard's queue was full: the shard's worker will sweep.
    Overflowed,
}

/// What one [`DirtyFeed::drain`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Drained {
    /// Distinct ids appended to the output.
    pub ids: usize,
    /// The queue overflowed since the last drain: the worker must sweep its shard.
    pub overflowed: bool,
}

#[derive(Debug)]
struct Shard {
    queue: ArrayQueue<AuctionId>,
    marks: Box<[AtomicU64]>,
    /// `marks.len() - 1`; the length is a power of two.
    mark_mask: usize,
    overflowed: AtomicBool,
}

/// The dirty-auction feed shared by the bid path (producers) and the fan-out workers (one
/// consumer per shard).
#[derive(Debug)]
pub struct DirtyFeed {
    shards: Box<[Shard]>,
}

impl DirtyFeed {
    /// A feed with `shards` shards (clamped to `1..=FEED_SHARDS_MAX`), each queue holding
    /// at most `queue_len_max` ids (clamped to `1..=FEED_QUEUE_LEN_MAX`).
    pub fn new(shards: usize, queue_len_max: usize) -> DirtyFeed {
        DirtyFeed::with_mark_slots(shards, queue_len_max, FEED_MARK_SLOTS)
    }

    /// [`DirtyFeed::new`] with `mark_slots` (a power of two) per shard; tests use few
    /// slots to force collisions.
    fn with_mark_slots(shards: usize, queue_len_max: usize, mark_slots: usize) -> DirtyFeed {
        debug_assert!(mark_slots.is_power_of_two());
        let shards = shards.clamp(1, FEED_SHARDS_MAX);
        let queue_len_max = queue_len_max.clamp(1, FEED_QUEUE_LEN_MAX);
        DirtyFeed {
            shards: (0..shards)
                .map(|_| Shard {
                    queue: ArrayQueue::new(queue_len_max),
                    marks: (0..mark_slots).map(|_| AtomicU64::new(EMPTY)).collect(),
                    mark_mask: mark_slots - 1,
                    overflowed: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    /// Number of shards (fan-out workers).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Records that `id` changed, in every shard; calls `queued` with each shard where the
    /// id was not queued already (its worker must be woken). Call it *after* the change is
    /// applied (after the engine returned), never before: the workers must be able to read
    /// what the mark announces.
    pub fn mark(&self, id: AuctionId, mut queued: impl FnMut(usize)) {
        for shard in 0..self.shards.len() {
            if self.mark_in(shard, id) != Marked::AlreadyQueued {
                queued(shard);
            }
        }
    }

    /// Records that `id` changed, in `shard` only.
    ///
    /// # Panics
    /// If `shard >= self.shards()` (a programming error of the caller).
    pub fn mark_in(&self, shard: usize, id: AuctionId) -> Marked {
        let shard = &self.shards[shard];
        let tag = tag_of(id);
        let slot = &shard.marks[slot_of(id, shard.mark_mask)];
        if tag != EMPTY {
            // Ordering: AcqRel. Release publishes the change applied before this call to the
            // worker whose clearing compare-exchange reads this swap (or a later RMW of its
            // release sequence); Acquire is not needed for the skip itself but keeps the RMW
            // symmetric with the worker's. An RMW always reads the latest value, so a stale
            // `tag` cannot be read after the worker cleared it.
            if slot.swap(tag, Ordering::AcqRel) == tag {
                return Marked::AlreadyQueued;
            }
        }
        if shard.queue.push(id).is_ok() {
            return Marked::Queued;
        }
        if tag != EMPTY {
            // Not queued after all: let the next change try again.
            // Ordering: Relaxed; the overflow flag below carries the change to the worker.
            let _ = slot.compare_exchange(tag, EMPTY, Ordering::Relaxed, Ordering::Relaxed);
        }
        // Ordering: Release; the worker's Acquire swap of the flag then sees this change
        // when it sweeps.
        shard.overflowed.store(true, Ordering::Release);
        Marked::Overflowed
    }

    /// Moves up to `ids_max` queued ids of `shard` into `out` (distinct, in no particular
    /// order) and clears their marks, so later changes queue them again. The caller reads
    /// each id's state *after* this returns.
    ///
    /// # Panics
    /// If `shard >= self.shards()` (a programming error of the worker set-up).
    pub fn drain(&self, shard: usize, out: &mut Vec<AuctionId>, ids_max: usize) -> Drained {
        let shard = &self.shards[shard];
        // Ordering: Acquire pairs with the producers' Release store: the changes that
        // overflowed are visible to the sweep that follows.
        let overflowed = shard.overflowed.swap(false, Ordering::Acquire);
        let start = out.len();
        for _ in 0..ids_max {
            let Some(id) = shard.queue.pop() else {
                break;
            };
            let tag = tag_of(id);
            if tag != EMPTY {
                // Ordering: AcqRel; Acquire synchronises with the producers' Release swaps
                // of this slot, so every change announced by a skipped mark is visible to
                // the read that follows. A failed exchange (the slot holds a colliding id)
                // needs nothing: that id is queued and clears its own mark.
                let _ = shard.marks[slot_of(id, shard.mark_mask)].compare_exchange(
                    tag,
                    EMPTY,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            out.push(id);
        }
        let fresh = &mut out[start..];
        fresh.sort_unstable();
        let mut kept = 0;
        for i in 0..fresh.len() {
            if i == 0 || fresh[i] != fresh[kept - 1] {
                fresh[kept] = fresh[i];
                kept += 1;
            }
        }
        out.truncate(start + kept);
        Drained {
            ids: kept,
            overflowed,
        }
    }

    /// Ids waiting in `shard`'s queue (a gauge for metrics; racy by nature).
    pub fn queued(&self, shard: usize) -> usize {
        self.shards.get(shard).map_or(0, |s| s.queue.len())
    }
}

/// The mark-slot value of `id`: never [`EMPTY`] except for `u64::MAX`, which is always
/// pushed (it cannot use the mark).
fn tag_of(id: AuctionId) -> u64 {
    id.0.wrapping_add(1)
}

fn slot_of(id: AuctionId, mask: usize) -> usize {
    // Truncation intended: the low bits of the mix pick the slot.
    (mix(id.0) as usize) & mask
}

/// A 64-bit finaliser (splitmix64): spreads sequential ids over shards and slots.
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn an_auction_is_queued_once_until_drained() {
        let feed = DirtyFeed::new(1, 16);
        let a = AuctionId(7);
        assert_eq!(feed.mark_in(0, a), Marked::Queued);
        assert_eq!(feed.mark_in(0, a), Marked::AlreadyQueued);
        assert_eq!(feed.mark_in(0, AuctionId(8)), Marked::Queued);
        let mut out = Vec::new();
        let drained = feed.drain(0, &mut out, 100);
        assert_eq!(drained.ids, 2);
        assert!(!drained.overflowed);
        out.sort_unstable();
        assert_eq!(out, vec![a, AuctionId(8)]);
        assert_eq!(
            feed.mark_in(0, a),
            Marked::Queued,
            "queued again after the drain"
        );
        assert_eq!(feed.mark_in(0, AuctionId(u64::MAX)), Marked::Queued);
        assert_eq!(
            feed.mark_in(0, AuctionId(u64::MAX)),
            Marked::Queued,
            "no mark: pushed"
        );
        out.clear();
        assert_eq!(feed.drain(0, &mut out, 100).ids, 2, "duplicates removed");
    }

    #[test]
    fn a_full_queue_raises_the_sweep_flag_once() {
        let feed = DirtyFeed::new(1, 2);
        assert_eq!(feed.mark_in(0, AuctionId(1)), Marked::Queued);
        assert_eq!(feed.mark_in(0, AuctionId(2)), Marked::Queued);
        assert_eq!(feed.mark_in(0, AuctionId(3)), Marked::Overflowed);
        assert_eq!(
            feed.mark_in(0, AuctionId(3)),
            Marked::Overflowed,
            "its mark was cleared"
        );
        let mut out = Vec::new();
        assert_eq!(
            feed.drain(0, &mut out, 1),
            Drained {
                ids: 1,
                overflowed: true
            }
        );
        assert_eq!(
            feed.drain(0, &mut out, 10),
            Drained {
                ids: 1,
                overflowed: false
            }
        );
    }

    #[test]
    fn a_change_reaches_every_shard() {
        let feed = DirtyFeed::new(3, 16);
        let mut woken = Vec::new();
        feed.mark(AuctionId(5), |s| woken.push(s));
        assert_eq!(woken, vec![0, 1, 2]);
        woken.clear();
        feed.mark(AuctionId(5), |s| woken.push(s));
        assert!(woken.is_empty(), "queued everywhere already");
        let mut out = Vec::new();
        assert_eq!(feed.drain(1, &mut out, 10).ids, 1);
        feed.mark(AuctionId(5), |s| woken.push(s));
        assert_eq!(woken, vec![1], "only the drained shard queues it again");
        for shard in 0..3 {
            out.clear();
            feed.drain(shard, &mut out, 10);
            assert_eq!(out, vec![AuctionId(5)], "shard {shard}");
        }
    }

    /// Two producers change 64 auctions sharing 4 mark slots (so collisions are the rule)
    /// through a queue of 8 (so overflows happen too) and mark them; one worker drains and
    /// reads. When everything stopped, the worker's last read of every auction is its final
    /// value: no change was lost behind a skipped mark, a collision or an overflow.
    #[test]
    fn no_change_is_lost_between_marks_and_drains() {
        const AUCTIONS: u64 = 64;
        const CHANGES_PER_PRODUCER: usize = 200_000;
        let feed = Arc::new(DirtyFeed::with_mark_slots(1, 8, 4));
        let state: Arc<Vec<AtomicU64>> =
            Arc::new((0..AUCTIONS).map(|_| AtomicU64::new(0)).collect());
        let done = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..2_u64)
            .map(|p| {
                let (feed, state, done) = (feed.clone(), state.clone(), done.clone());
                std::thread::spawn(move || {
                    for i in 0..CHANGES_PER_PRODUCER as u64 {
                        let id = (i * 7 + p) % AUCTIONS;
                        // Ordering: Relaxed; the mark's Release carries it.
                        state[id as usize].fetch_add(1, Ordering::Relaxed);
                        feed.mark_in(0, AuctionId(id));
                    }
                    // Ordering: Release; the worker's Acquire load sees every change.
                    done.fetch_add(1, Ordering::Release);
                })
            })
            .collect();
        let mut seen = vec![0_u64; AUCTIONS as usize];
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Ordering: Acquire; pairs with the producers' Release.
            let finished = done.load(Ordering::Acquire) == 2;
            out.clear();
            let drained = feed.drain(0, &mut out, 64);
            let ids: Vec<u64> = if drained.overflowed {
                (0..AUCTIONS).collect()
            } else {
                out.iter().map(|id| id.0).collect()
            };
            for id in ids {
                // Ordering: Relaxed; the drain's Acquire made the change visible.
                seen[id as usize] = state[id as usize].load(Ordering::Relaxed);
            }
            if finished && drained.ids == 0 && !drained.overflowed {
                break;
            }
            assert!(Instant::now() < deadline, "the worker did not catch up");
        }
        for p in producers {
            p.join().unwrap();
        }
        for (id, seen) in seen.iter().enumerate() {
            // Ordering: Relaxed; the producers were joined.
            assert_eq!(*seen, state[id].load(Ordering::Relaxed), "auction {id}");
        }
    }
}
