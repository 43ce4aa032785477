//! The engine: auctions sharded in memory by id, the close timer, and the state hash.
//!
//! Each shard's map sits behind a reader-writer lock: a bid holds the read lock for its one
//! decision (a lookup costs one atomic on the shard's lock word, and no copy); creation and
//! prunes take the write lock only to insert or remove one entry, so creating an auction
//! costs O(1) whatever the number held (the map used to be copied on every creation). The
//! shard's separate writer lock serialises creations and prunes, from publishing their
//! event until the map shows it.
//! The close timer is an ordered set per shard keyed by end time, so finding due auctions
//! costs O(due + log n) rather than a scan; a soft-close extension does not touch it —
//! a popped entry whose auction was extended is simply put back at the new end.
//!
//! Retention: a second ordered set per shard holds settled auctions by settlement time;
//! [`Engine::prune_due`] removes those settled longer than `settled_retention_us` ago with a
//! logged `Pruned` event each, keeping only their [`PrunedAuction`] results; a third holds
//! those results by prune time, and [`Engine::forget_due`] drops the ones older than
//! `pruned_retention_us` with a logged `Forgotten` event each.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use crate::auction::{Auction, CloseAttempt, Limits};
use crate::decision::{BidDecision, ClosedAuction};
use crate::event::{EventSink, Receipt};
use crate::hash::{BuildMixHasher, mix64};
use crate::snapshot::{AuctionState, PrunedAuction, RestoreError};
use crate::types::{AuctionId, AuctionSpec, Bid, Price, Rejection, UnixMicros};
use crate::view::AuctionView;

mod forget;
mod retention;

/// Engine limits and sizing. Every field has a safe default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Number of registry shards; a power of two.
    pub shards: usize,
    /// Most auctions held (open and settled).
    pub auctions_max: usize,
    /// Accepted bids remembered per auction for idempotency, per generation: a retry
    /// within this many accepted bids of its original is always recognised.
    pub dedup_window_bids: usize,
    /// Most distinct bidders in one sealed auction.
    pub sealed_bidders_max: usize,
    /// How long a settled auction stays whole before [`Engine::prune_due`] prunes it to
    /// its final result, in µs; 0 keeps settled auctions forever.
    pub settled_retention_us: u64,
    /// How long a pruned auction's result is kept before [`Engine::forget_due`] forgets it,
    /// in µs; 0 keeps the results forever.
    pub pruned_retention_us: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: 64,
            auctions_max: 1_000_000,
            dedup_window_bids: 1024,
            sealed_bidders_max: 100_000,
            settled_retention_us: 24 * 3_600 * 1_000_000,
            pruned_retention_us: 7 * 24 * 3_600 * 1_000_000,
        }
    }
}

/// Why an auction could not be created.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum CreateError {
    /// An auction with this id exists.
    #[error("auction {0} already exists")]
    AlreadyExists(AuctionId),
    /// The engine holds `auctions_max` auctions.
    #[error("the engine holds its maximum of {auctions_max} auctions")]
    TooManyAuctions {
        /// The configured limit.
        auctions_max: usize,
    },
    /// The event sink is full; retry later.
    #[error("overloaded; retry after {retry_after_us} µs")]
    Overloaded {
        /// Suggested wait.
        retry_after_us: u64,
    },
}

/// Why an operation on an existing auction failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ManageError {
    /// No auction with this id.
    #[error("unknown auction {0}")]
    UnknownAuction(AuctionId),
    /// The auction was already closed and settled.
    #[error("auction {0} is already closed")]
    AlreadyClosed(AuctionId),
    /// The auction's end has not passed yet.
    #[error("auction {id} is not due until {ends_at:?}")]
    NotDue {
        /// The auction.
        id: AuctionId,
        /// Its current end.
        ends_at: UnixMicros,
    },
    /// The event sink is full; retry later.
    #[error("overloaded; retry after {retry_after_us} µs")]
    Overloaded {
        /// Suggested wait.
        retry_after_us: u64,
    },
    /// Only a settled auction can be pruned.
    #[error("auction {0} has not settled")]
    NotSettled(AuctionId),
    /// Only a pruned auction's result can be forgotten.
    #[error("auction {0} has not been pruned")]
    NotPruned(AuctionId),
}

/// Auction ids are chosen by operators, not by bidders, so the map hashes them with the
/// engine's fixed mixer rather than a keyed (slower) hash.
type AuctionMap = HashMap<AuctionId, Arc<Auction>, BuildMixHasher>;
/// The results of pruned auctions.
type PrunedMap = HashMap<AuctionId, PrunedAuction, BuildMixHasher>;
/// `(time, id)` entries ordered by time: when each auction is due for something.
type DueSet = Mutex<BTreeSet<(UnixMicros, AuctionId)>>;

struct Shard {
    /// The shard's auctions held whole. Read-locked by a bid for its decision; write-locked
    /// only to insert or remove one entry (under `writer`).
    auctions: RwLock<AuctionMap>,
    /// Serialises creations and prunes in this shard, from publishing their event until
    /// `auctions` shows it (snapshots read the shard under it).
    writer: Mutex<()>,
    /// `(end, id)` of every auction not yet closed, possibly with stale ends (and of
    /// auctions closed early, until their old end comes).
    timer: DueSet,
    /// `(settled at, id)` of every settled auction still held whole.
    settled: DueSet,
    /// Results of the auctions pruned from `auctions`; changed under `writer`.
    pruned: RwLock<PrunedMap>,
    /// `(pruned at, id)` of every result in `pruned`; changed under `writer`.
    forgettable: DueSet,
}

/// The auction engine. `Sync`: call it from any number of threads.
pub struct Engine {
    shards: Box<[Shard]>,
    config: EngineConfig,
    limits: Limits,
    auctions: AtomicUsize,
}

impl Engine {
    /// An empty engine.
    ///
    /// # Panics
    /// If `config.shards` is not a power of two or a limit is zero (a programmer error:
    /// drivers validate their configuration first).
    pub fn new(config: EngineConfig) -> Engine {
        assert!(
            config.shards.is_power_of_two(),
            "shards must be a power of two"
        );
        assert!(config.auctions_max > 0, "auctions_max must be positive");
        assert!(
            config.dedup_window_bids > 0,
            "dedup_window_bids must be positive"
        );
        assert!(
            config.sealed_bidders_max > 0,
            "sealed_bidders_max must be positive"
        );
        Engine {
            shards: (0..config.shards)
                .map(|_| Shard {
                    auctions: RwLock::new(AuctionMap::default()),
                    writer: Mutex::new(()),
                    timer: Mutex::new(BTreeSet::new()),
                    settled: Mutex::new(BTreeSet::new()),
                    pruned: RwLock::new(PrunedMap::default()),
                    forgettable: Mutex::new(BTreeSet::new()),
                })
                .collect(),
            config,
            limits: Limits {
                dedup_window_bids: config.dedup_window_bids,
                sealed_bidders_max: config.sealed_bidders_max,
            },
            auctions: AtomicUsize::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn shard(&self, id: AuctionId) -> &Shard {
        // Cast: the mask keeps the index below `shards.len()`.
        &self.shards[(mix64(id.0) as usize) & (self.shards.len() - 1)]
    }

    fn auction(&self, id: AuctionId) -> Option<Arc<Auction>> {
        self.shard(id).map_read().get(&id).cloned()
    }

    /// Creates an auction; its `Created` event (sequence 1) goes to `sink`. Returns the
    /// sink's receipt for it.
    pub fn create_auction<S: EventSink + ?Sized>(
        &self,
        spec: AuctionSpec,
        now: UnixMicros,
        sink: &S,
    ) -> Result<Receipt, CreateError> {
        let id = spec.id();
        let shard = self.shard(id);
        let _writer = shard.writer.lock().expect("shard writer lock poisoned");
        if shard.is_held(id) {
            return Err(CreateError::AlreadyExists(id));
        }
        // Ordering: Relaxed; the count is a limit, not a synchronisation point, and
        // creations in one shard are serialised by the writer lock. Across shards two
        // creations may both pass at the limit minus one; the limit is then exceeded by at
        // most `shards - 1`, which the default sizing tolerates.
        if self.auctions.load(Ordering::Relaxed) >= self.config.auctions_max {
            return Err(CreateError::TooManyAuctions {
                auctions_max: self.config.auctions_max,
            });
        }
        let (auction, created) = Auction::new(Arc::new(spec), now);
        let receipt =
            sink.publish(std::slice::from_ref(&created))
                .map_err(|bp| CreateError::Overloaded {
                    retry_after_us: bp.retry_after_us,
                })?;
        let ends_at = auction.spec().rules().ends_at;
        shard.map_write().insert(id, Arc::new(auction));
        // Ordering: Relaxed; see above.
        self.auctions.fetch_add(1, Ordering::Relaxed);
        shard
            .timer
            .lock()
            .expect("timer lock poisoned")
            .insert((ends_at, id));
        Ok(receipt)
    }

    /// The complete state of one auction (for snapshots).
    pub fn auction_state(&self, id: AuctionId) -> Option<AuctionState> {
        self.auction(id).map(|a| a.state())
    }

    /// The complete state of every auction held whole, ascending by id: a snapshot without
    /// the pruned auctions' results ([`Engine::snapshot_with_pruned`] has both). Each auction's
    /// state is taken under its own lock, one after another, so on a live engine the
    /// snapshot is consistent per auction; each state's `seq` says what it includes.
    ///
    /// Every event published before the call is included: a bid's, close's or cancel's
    /// (published under the auction's lock, applied before it is released), and a
    /// creation's — each shard's map is read under the shard's writer lock, which a
    /// creation holds from publishing its `Created` event until the auction is listed.
    pub fn snapshot(&self) -> Vec<AuctionState> {
        let mut all: Vec<Arc<Auction>> = Vec::new();
        for shard in self.shards.iter() {
            let _writer = shard.writer.lock().expect("shard writer lock poisoned");
            all.extend(shard.map_read().values().cloned());
        }
        all.sort_unstable_by_key(|a| a.id());
        all.iter().map(|a| a.state()).collect()
    }

    /// Adds an auction from a snapshot state (into an engine being rebuilt; no event is
    /// produced: the state's events are already in the log).
    pub fn restore(&self, state: AuctionState) -> Result<(), RestoreError> {
        let id = state.spec.id();
        let shard = self.shard(id);
        let _writer = shard.writer.lock().expect("shard writer lock poisoned");
        if shard.is_held(id) {
            return Err(RestoreError::AlreadyExists(id));
        }
        // Ordering: Relaxed; see `create_auction`.
        if self.auctions.load(Ordering::Relaxed) >= self.config.auctions_max {
            return Err(RestoreError::TooManyAuctions {
                auctions_max: self.config.auctions_max,
            });
        }
        let auction = Auction::from_state(state, self.limits)?;
        let (ends_at, closed) = auction.end();
        if let Some(settled_at) = auction.settled_at() {
            shard.settled_since(settled_at, id);
        }
        shard.map_write().insert(id, Arc::new(auction));
        // Ordering: Relaxed; see `create_auction`.
        self.auctions.fetch_add(1, Ordering::Relaxed);
        if !closed {
            shard
                .timer
                .lock()
                .expect("timer lock poisoned")
                .insert((ends_at, id));
        }
        Ok(())
    }

    /// Adds a pruned auction's result from a snapshot (into an engine being rebuilt).
    pub fn restore_pruned(&self, result: PrunedAuction) -> Result<(), RestoreError> {
        let id = result.id;
        let shard = self.shard(id);
        let _writer = shard.writer.lock().expect("shard writer lock poisoned");
        if shard.is_held(id) {
            return Err(RestoreError::AlreadyExists(id));
        }
        if result.seq < 3 {
            // Created, Closed, Settled come before Pruned.
            return Err(RestoreError::Inconsistent {
                id,
                what: "a pruned auction's last sequence number is at least 4",
            });
        }
        shard.keep_pruned(std::iter::once(result));
        Ok(())
    }

    /// The sequence number of an auction's latest state change (a pruned auction's: its
    /// `Pruned` event's).
    pub fn auction_seq(&self, id: AuctionId) -> Option<u64> {
        self.auction(id)
            .map(|a| a.seq())
            .or_else(|| self.pruned(id).map(|p| p.seq))
    }

    /// The result of a pruned auction, if `id` was pruned.
    pub fn pruned(&self, id: AuctionId) -> Option<PrunedAuction> {
        self.shard(id).pruned_read().get(&id).cloned()
    }

    /// How many pruned auctions' results are held.
    pub fn pruned_len(&self) -> usize {
        self.shards.iter().map(|s| s.pruned_read().len()).sum()
    }

    fn all_auctions(&self) -> Vec<Arc<Auction>> {
        self.shards
            .iter()
            .flat_map(|s| s.map_read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Decides one bid at `now`. An accepted bid hands its events to `sink` first; the
    /// decision carries the outcome, the sink's receipt and the close the bid made, if any.
    pub fn place_bid<S: EventSink + ?Sized>(
        &self,
        bid: &Bid,
        now: UnixMicros,
        sink: &S,
    ) -> BidDecision {
        let shard = self.shard(bid.auction());
        // The read lock is held for the decision: a creation or prune in this shard waits
        // for it (one decision, never blocking), and no `Arc` is cloned on the bid path.
        let map = shard.map_read();
        match map.get(&bid.auction()) {
            Some(auction) => {
                let decision = auction.place_bid(bid, now, sink, self.limits);
                if decision.closed.is_some() {
                    shard.settled_since(now, bid.auction());
                }
                decision
            }
            None if shard.is_pruned(bid.auction()) => BidDecision::rejected(Rejection::Closed),
            None => BidDecision::rejected(Rejection::UnknownAuction),
        }
    }

    /// The visible price (`None` before the first bid, and for sealed auctions until
    /// settled) and whether the auction is closed, read without any lock.
    pub fn price(&self, id: AuctionId) -> Option<(Option<Price>, bool)> {
        self.shard(id).map_read().get(&id).map(|a| a.price())
    }

    /// Cancels an open auction: it closes at `now` with no winner.
    pub fn cancel_auction<S: EventSink + ?Sized>(
        &self,
        id: AuctionId,
        now: UnixMicros,
        sink: &S,
    ) -> Result<ClosedAuction, ManageError> {
        let auction = self.managed(id)?;
        let closed = close_result(id, auction.cancel(now, sink))?;
        self.shard(id).settled_since(now, id);
        Ok(closed)
    }

    /// Closes one auction whose end has passed at `now` (the timer does this for all of
    /// them in [`Engine::close_due`]; replay uses this).
    pub fn close_auction<S: EventSink + ?Sized>(
        &self,
        id: AuctionId,
        now: UnixMicros,
        sink: &S,
    ) -> Result<ClosedAuction, ManageError> {
        let auction = self.managed(id)?;
        let closed = close_result(id, auction.close_if_due(now, sink))?;
        self.shard(id).settled_since(now, id);
        Ok(closed)
    }

    /// The auction `id`, for an operation: a pruned one is closed, any other unknown.
    fn managed(&self, id: AuctionId) -> Result<Arc<Auction>, ManageError> {
        match self.auction(id) {
            Some(auction) => Ok(auction),
            None if self.shard(id).is_pruned(id) => Err(ManageError::AlreadyClosed(id)),
            None => Err(ManageError::UnknownAuction(id)),
        }
    }

    /// Closes and settles up to `max` auctions whose end passed at `now`. Returns what
    /// closed. Auctions whose events the sink refuses stay due and
    /// are tried again on the next call.
    pub fn close_due<S: EventSink + ?Sized>(
        &self,
        now: UnixMicros,
        max: usize,
        sink: &S,
    ) -> Vec<ClosedAuction> {
        let mut closed = Vec::new();
        for shard in self.shards.iter() {
            if closed.len() >= max {
                break;
            }
            let due = take_due(&shard.timer, now, max - closed.len());
            let mut put_back = Vec::new();
            for (ends_at, id) in due {
                // Timer entries are only added for auctions in the map; one that is gone
                // was closed early (a cancel, buy-now, a Dutch sale) and then pruned.
                let Some(auction) = shard.map_read().get(&id).cloned() else {
                    continue;
                };
                match auction.close_if_due(now, sink) {
                    CloseAttempt::Closed(settlement, receipt) => {
                        shard.settled_since(now, id);
                        closed.push(ClosedAuction {
                            id,
                            settlement,
                            receipt,
                        });
                    }
                    CloseAttempt::NotDue(new_end) => put_back.push((new_end, id)),
                    CloseAttempt::AlreadyClosed => {}
                    CloseAttempt::Backpressure { .. } => put_back.push((ends_at, id)),
                }
            }
            if !put_back.is_empty() {
                shard
                    .timer
                    .lock()
                    .expect("timer lock poisoned")
                    .extend(put_back);
            }
        }
        closed
    }

    /// The earliest end among auctions not yet closed (possibly stale: an extended auction
    /// shows its old end, which only makes the driver wake early).
    pub fn next_due(&self) -> Option<UnixMicros> {
        self.shards.iter().filter_map(|s| first_due(&s.timer)).min()
    }

    /// The earliest time an entry of the shards' `set` is `period` old; `None` when the
    /// sets are empty or `period` is 0 (never due).
    fn next_due_after(&self, period: u64, set: impl Fn(&Shard) -> &DueSet) -> Option<UnixMicros> {
        if period == 0 {
            return None;
        }
        self.shards
            .iter()
            .filter_map(|s| first_due(set(s)))
            .min()
            .map(|t| UnixMicros(t.0.saturating_add(period)))
    }

    /// A consistent view of one auction at `now`.
    pub fn view(&self, id: AuctionId, now: UnixMicros) -> Option<AuctionView> {
        self.auction(id).map(|a| a.view(now))
    }

    /// Views of up to `limit` auctions with ids after `after`, ascending by id.
    pub fn list(
        &self,
        after: Option<AuctionId>,
        limit: usize,
        now: UnixMicros,
    ) -> Vec<AuctionView> {
        let mut ids = self.all_auctions();
        ids.retain(|a| after.is_none_or(|after| a.id() > after));
        ids.sort_unstable_by_key(|a| a.id());
        ids.truncate(limit);
        ids.iter().map(|a| a.view(now)).collect()
    }

    /// How many auctions are in each phase at `now`: `[scheduled, open, settled]` (the
    /// order of [`Phase`](crate::Phase)). Lock-free (price words only), one pass over the
    /// registry: for gauges, not for decisions — a concurrent close may be counted either
    /// way.
    pub fn phase_counts(&self, now: UnixMicros) -> [usize; 3] {
        let mut counts = [0; 3];
        for shard in self.shards.iter() {
            for auction in shard.map_read().values() {
                let (_, closed) = auction.price();
                let phase = if closed {
                    2
                } else if now < auction.spec().rules().starts_at {
                    0
                } else {
                    1
                };
                counts[phase] += 1;
            }
        }
        counts
    }

    /// Auctions held.
    pub fn len(&self) -> usize {
        // Ordering: Relaxed; a statistic.
        self.auctions.load(Ordering::Relaxed)
    }

    /// Whether no auction is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hash of the complete state of every auction, in id order. Replaying the events
    /// of an engine into a fresh one reproduces it exactly (invariant 5). Takes each
    /// auction's lock in turn: call it on a quiet engine for a consistent answer.
    pub fn state_hash(&self) -> [u8; 32] {
        let mut all = self.all_auctions();
        all.sort_unstable_by_key(|a| a.id());
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(all.len() as u64).to_le_bytes());
        for auction in all {
            auction.hash_into(&mut hasher);
        }
        let mut pruned = self.pruned_results();
        // Without pruned auctions the hash is what it was before there were any.
        if !pruned.is_empty() {
            pruned.sort_unstable_by_key(|p| p.id);
            hasher.update(&(pruned.len() as u64).to_le_bytes());
            for result in &pruned {
                crate::auction::hash_pruned(result, &mut hasher);
            }
        }
        *hasher.finalize().as_bytes()
    }

    fn pruned_results(&self) -> Vec<PrunedAuction> {
        self.shards
            .iter()
            .flat_map(|s| s.pruned_read().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

impl Shard {
    fn map_read(&self) -> std::sync::RwLockReadGuard<'_, AuctionMap> {
        self.auctions.read().expect("auction map lock poisoned")
    }

    fn map_write(&self) -> std::sync::RwLockWriteGuard<'_, AuctionMap> {
        self.auctions.write().expect("auction map lock poisoned")
    }

    /// Keeps pruned auctions' results (the caller holds the writer lock).
    fn keep_pruned(&self, results: impl IntoIterator<Item = PrunedAuction>) {
        let mut pruned = self.pruned_write();
        let mut forgettable = lock_due(&self.forgettable);
        for result in results {
            forgettable.insert((result.pruned_at, result.id));
            pruned.insert(result.id, result);
        }
    }

    /// Whether `id` is taken: held whole or pruned.
    fn is_held(&self, id: AuctionId) -> bool {
        self.map_read().contains_key(&id) || self.is_pruned(id)
    }

    fn pruned_read(&self) -> std::sync::RwLockReadGuard<'_, PrunedMap> {
        self.pruned.read().expect("pruned lock poisoned")
    }

    fn pruned_write(&self) -> std::sync::RwLockWriteGuard<'_, PrunedMap> {
        self.pruned.write().expect("pruned lock poisoned")
    }

    fn is_pruned(&self, id: AuctionId) -> bool {
        self.pruned_read().contains_key(&id)
    }

    /// Auction `id` settled at `settled_at`: the retention rule starts counting.
    fn settled_since(&self, settled_at: UnixMicros, id: AuctionId) {
        self.settled
            .lock()
            .expect("settled lock poisoned")
            .insert((settled_at, id));
    }
}

fn lock_due(set: &DueSet) -> std::sync::MutexGuard<'_, BTreeSet<(UnixMicros, AuctionId)>> {
    set.lock().expect("due set lock poisoned")
}

/// The earliest time in `set`.
fn first_due(set: &DueSet) -> Option<UnixMicros> {
    lock_due(set).first().map(|(t, _)| *t)
}

/// Takes up to `budget` entries due at or before `cutoff` off `set`, earliest first.
fn take_due(set: &DueSet, cutoff: UnixMicros, budget: usize) -> Vec<(UnixMicros, AuctionId)> {
    let mut set = lock_due(set);
    let mut due = Vec::new();
    while due.len() < budget {
        match set.first() {
            Some(&entry) if entry.0 <= cutoff => {
                set.pop_first();
                due.push(entry);
            }
            _ => break,
        }
    }
    due
}

/// The latest time that is `period` old at `now`; `None` if `period` is 0 (never due).
fn due_cutoff(now: UnixMicros, period: u64) -> Option<UnixMicros> {
    if period == 0 {
        return None;
    }
    now.0.checked_sub(period).map(UnixMicros)
}

fn close_result(id: AuctionId, attempt: CloseAttempt) -> Result<ClosedAuction, ManageError> {
    match attempt {
        CloseAttempt::Closed(settlement, receipt) => Ok(ClosedAuction {
            id,
            settlement,
            receipt,
        }),
        CloseAttempt::NotDue(ends_at) => Err(ManageError::NotDue { id, ends_at }),
        CloseAttempt::AlreadyClosed => Err(ManageError::AlreadyClosed(id)),
        CloseAttempt::Backpressure { retry_after_us } => {
            Err(ManageError::Overloaded { retry_after_us })
        }
    }
}
