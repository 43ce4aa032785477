//! Fan-out judged by freshness (issue 17 item 1): for each watcher and each price change of
//! an auction it watches, the **staleness** is the time from the change's decision until
//! the watcher holds that change or a newer one of the same auction. Conflation costs
//! nothing here — a watcher that gets the newest price at once has lost nothing by skipping
//! the ones between — while a queue of old updates does.
//!
//! The watchers log what they got and when ([`Held`]); the decisions come from the side that
//! made them ([`Decisions`]): the node's write-ahead log (every change with its decision
//! time, so changes no watcher ever saw are counted too), or the nats publisher's own
//! record of what it stamped. [`measure`] then walks each log. Only a sample of the
//! watchers logs (see [`sampled`]): percentiles come from the sample, and the count of fresh
//! (watcher, change) pairs is scaled from it to all watchers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use gavel_proto::convert::wal::decode_record;

use crate::stats::Latency;

/// Most watchers of a phase that log their updates.
pub const SAMPLED_WATCHERS_MAX: usize = 256;
/// Staleness within which a (watcher, change) pair counts as fresh, µs.
pub const FRESH_BOUND_US: u64 = 100_000;

/// Whether watcher `index` of `count` logs its updates: every k-th, at most
/// [`SAMPLED_WATCHERS_MAX`] of them.
pub fn sampled(index: usize, count: usize) -> bool {
    index.is_multiple_of(count.div_ceil(SAMPLED_WATCHERS_MAX).max(1))
}

/// An update a watcher received: its auction and seq, and when it arrived (µs since the
/// Unix epoch, this machine's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    /// The auction.
    pub auction: u64,
    /// The change it carries (the auction's seq after it).
    pub seq: u64,
    /// When it arrived.
    pub at_us: u64,
}

/// Every change of the auctions watched: per auction, `(seq, decided at µs)` by seq.
#[derive(Debug, Default)]
pub struct Decisions {
    by_auction: HashMap<u64, Vec<(u64, u64)>>,
}

impl Decisions {
    /// Adds a change.
    pub fn add(&mut self, auction: u64, seq: u64, decided_us: u64) {
        self.by_auction
            .entry(auction)
            .or_default()
            .push((seq, decided_us));
    }

    /// Every event of the auctions `watched` in the node's file log in `wal_dir`, as far as
    /// it reads cleanly (a log being written may end in a record not yet complete).
    pub fn from_wal(wal_dir: &Path, watched: impl Fn(u64) -> bool) -> Result<Decisions> {
        let segments = gavel_wal::segment::list_segments(wal_dir)
            .with_context(|| format!("listing the log in {}", wal_dir.display()))?;
        let first = segments.first().map_or(1, |segment| segment.first_lsn);
        let mut decisions = Decisions::default();
        for record in gavel_wal::records(wal_dir, first)? {
            let Ok(record) = record else { break };
            let event = decode_record(&record.payload).context("a record of the node's log")?;
            if watched(event.auction.0) {
                decisions.add(event.auction.0, event.seq, event.at.0);
            }
        }
        decisions.sort();
        Ok(decisions)
    }

    /// Orders each auction's changes by seq (call after the last [`Decisions::add`]).
    pub fn sort(&mut self) {
        for changes in self.by_auction.values_mut() {
            changes.sort_unstable();
            changes.dedup_by_key(|(seq, _)| *seq);
        }
    }
}

/// Staleness over the sampled watchers of a phase.
#[derive(Debug, Default)]
pub struct Staleness {
    /// Staleness of every (sampled watcher, change) pair the watcher came to hold, µs.
    pub latency: Latency,
    /// Pairs held within [`FRESH_BOUND_US`].
    pub fresh: u64,
    /// Pairs: every change decided in the window, for every sampled watcher.
    pub pairs: u64,
    /// Pairs the watcher never came to hold.
    pub never_held: u64,
}

/// Walks each watcher's log against the changes decided at or after `from_us` (earlier
/// changes count as held when the window opens: the watchers subscribed before it).
pub fn measure(decisions: &Decisions, logs: &[Vec<Held>], from_us: u64) -> Staleness {
    let mut staleness = Staleness::default();
    for log in logs {
        // Per auction: the index in its changes of the first one not yet held.
        let mut next: HashMap<u64, usize> = HashMap::new();
        let first_in_window = |changes: &[(u64, u64)]| changes.partition_point(|c| c.1 < from_us);
        for held in log {
            let Some(changes) = decisions.by_auction.get(&held.auction) else {
                continue;
            };
            let start = *next
                .entry(held.auction)
                .or_insert_with(|| first_in_window(changes));
            let end = changes.partition_point(|c| c.0 <= held.seq).max(start);
            for &(_, decided_us) in &changes[start..end] {
                let us = held.at_us.saturating_sub(decided_us);
                staleness.latency.record_us(us);
                staleness.fresh += u64::from(us <= FRESH_BOUND_US);
            }
            next.insert(held.auction, end);
        }
        for (auction, changes) in &decisions.by_auction {
            let start = first_in_window(changes);
            let held_to = next.get(auction).copied().unwrap_or(start);
            staleness.pairs += (changes.len() - start) as u64;
            staleness.never_held += (changes.len() - held_to) as u64;
        }
    }
    staleness
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decisions(changes: &[(u64, u64, u64)]) -> Decisions {
        let mut d = Decisions::default();
        for &(auction, seq, at) in changes {
            d.add(auction, seq, at);
        }
        d.sort();
        d
    }

    fn held(auction: u64, seq: u64, at_us: u64) -> Held {
        Held {
            auction,
            seq,
            at_us,
        }
    }

    #[test]
    fn a_conflated_update_makes_every_change_it_covers_held() {
        // Changes 2, 3, 4 at 1,000, 2,000, 3,000 µs; the watcher gets only seq 4 at 3,500.
        let d = decisions(&[(7, 2, 1_000), (7, 3, 2_000), (7, 4, 3_000)]);
        let s = measure(&d, &[vec![held(7, 4, 3_500)]], 0);
        assert_eq!((s.pairs, s.never_held, s.fresh), (3, 0, 3));
        assert_eq!(s.latency.count(), 3);
        let h = s.latency.histogram();
        assert!(h.equivalent(h.max(), 2_500), "{}", h.max());
        assert!(h.equivalent(h.min(), 500), "{}", h.min());
    }

    #[test]
    fn changes_never_held_count_and_stale_ones_are_not_fresh() {
        let d = decisions(&[(1, 2, 0), (1, 3, 10), (2, 2, 20)]);
        // Seq 2 of auction 1 arrives 150 ms late; nothing else ever arrives.
        let s = measure(&d, &[vec![held(1, 2, 150_000)]], 0);
        assert_eq!((s.pairs, s.never_held, s.fresh), (3, 2, 0));
    }

    #[test]
    fn changes_before_the_window_and_repeats_count_once() {
        let d = decisions(&[(1, 2, 5), (1, 3, 100), (1, 4, 200)]);
        let log = vec![held(1, 3, 150), held(1, 3, 160), held(1, 4, 260)];
        let s = measure(&d, &[log.clone(), log], 50);
        // Per watcher: seq 3 (50 µs) and seq 4 (60 µs); seq 2 was before the window.
        assert_eq!((s.pairs, s.never_held, s.fresh), (4, 0, 4));
        assert_eq!(s.latency.count(), 4);
    }

    #[test]
    fn at_most_the_bound_of_watchers_is_sampled() {
        for count in [1, 10, 256, 257, 10_000] {
            let n = (0..count).filter(|&i| sampled(i, count)).count();
            assert!((1..=SAMPLED_WATCHERS_MAX).contains(&n), "{count}: {n}");
        }
    }
}
