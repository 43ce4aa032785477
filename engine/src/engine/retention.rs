//! The retention rule: settled auctions older than `settled_retention_us` are pruned to
//! their [`PrunedAuction`] results, each by a logged `Pruned` event, so a replay of the log
//! prunes exactly what the live engine pruned.
//!
//! The rule (the age) is the live driver's policy: [`Engine::prune_auction`], which replay
//! runs, prunes any settled auction whatever its age, so a change of the configured
//! retention between runs never makes a replay diverge. A prune holds the shard's writer
//! lock from its event until the auction leaves the map, which keeps a snapshot from seeing
//! an auction both whole and pruned.

use super::{Engine, ManageError, Shard, due_cutoff, take_due};
use crate::auction::PruneRefusal;
use crate::event::EventSink;
use crate::snapshot::{AuctionState, PrunedAuction};
use crate::types::{AuctionId, UnixMicros};

impl Engine {
    /// Prunes the settled auction `id` at `now` (whatever its age): its `Pruned` event goes
    /// to `sink`, and its result is kept in its place. Replay re-executes logged prunes
    /// with this.
    pub fn prune_auction<S: EventSink + ?Sized>(
        &self,
        id: AuctionId,
        now: UnixMicros,
        sink: &S,
    ) -> Result<PrunedAuction, ManageError> {
        let shard = self.shard(id);
        let _writer = shard.writer.lock().expect("shard writer lock poisoned");
        let result = self.prune_held(shard, id, now, sink)?;
        self.remove_pruned(shard, vec![result.clone()]);
        Ok(result)
    }

    /// Prunes auction `id` of `shard` (whose writer lock the caller holds) and takes it off
    /// the shard's retention set; the caller removes it from the map.
    fn prune_held<S: EventSink + ?Sized>(
        &self,
        shard: &Shard,
        id: AuctionId,
        now: UnixMicros,
        sink: &S,
    ) -> Result<PrunedAuction, ManageError> {
        if shard.is_pruned(id) {
            return Err(ManageError::AlreadyClosed(id));
        }
        let auction = shard
            .map_read()
            .get(&id)
            .cloned()
            .ok_or(ManageError::UnknownAuction(id))?;
        let settled_at = auction.settled_at();
        let result = auction.prune(now, sink).map_err(|refusal| match refusal {
            PruneRefusal::NotSettled => ManageError::NotSettled(id),
            PruneRefusal::Backpressure { retry_after_us } => {
                ManageError::Overloaded { retry_after_us }
            }
        })?;
        if let Some(settled_at) = settled_at {
            shard
                .settled
                .lock()
                .expect("settled lock poisoned")
                .remove(&(settled_at, id));
        }
        Ok(result)
    }

    /// Prunes up to `max` auctions settled at least `settled_retention_us` before `now`,
    /// oldest first within each shard. Returns their results. Auctions whose events the
    /// sink refuses stay and are tried again on the next call.
    pub fn prune_due<S: EventSink + ?Sized>(
        &self,
        now: UnixMicros,
        max: usize,
        sink: &S,
    ) -> Vec<PrunedAuction> {
        let mut pruned = Vec::new();
        let Some(cutoff) = due_cutoff(now, self.config.settled_retention_us) else {
            return pruned;
        };
        for shard in self.shards.iter() {
            if pruned.len() >= max {
                break;
            }
            let due = take_due(&shard.settled, cutoff, max - pruned.len());
            if !due.is_empty() {
                pruned.extend(self.prune_in_shard(shard, due, now, sink));
            }
        }
        pruned
    }

    /// The earliest time an auction is due to be pruned; `None` when none is held or the
    /// engine keeps settled auctions forever.
    pub fn next_prune_due(&self) -> Option<UnixMicros> {
        self.next_due_after(self.config.settled_retention_us, |s| &s.settled)
    }

    /// Prunes the `due` auctions of one shard, all settled; what the sink refuses goes back
    /// to the shard's retention set.
    fn prune_in_shard<S: EventSink + ?Sized>(
        &self,
        shard: &Shard,
        due: Vec<(UnixMicros, AuctionId)>,
        now: UnixMicros,
        sink: &S,
    ) -> Vec<PrunedAuction> {
        let _writer = shard.writer.lock().expect("shard writer lock poisoned");
        let mut results = Vec::with_capacity(due.len());
        let mut entries = due.into_iter();
        for (settled_at, id) in entries.by_ref() {
            // Invariant: an entry is added when its auction settles and removed when it is
            // pruned, under the writer lock held here.
            let auction = shard
                .map_read()
                .get(&id)
                .cloned()
                .expect("a retention entry for a held auction");
            match auction.prune(now, sink) {
                Ok(result) => results.push(result),
                Err(PruneRefusal::NotSettled) => {
                    unreachable!("a retention entry for an auction that has not settled")
                }
                Err(PruneRefusal::Backpressure { .. }) => {
                    let mut settled = shard.settled.lock().expect("settled lock poisoned");
                    settled.insert((settled_at, id));
                    settled.extend(entries);
                    break;
                }
            }
        }
        self.remove_pruned(shard, results.clone());
        results
    }

    /// Keeps the pruned auctions' results and removes the auctions from the shard's map.
    /// The caller holds the shard's writer lock.
    fn remove_pruned(&self, shard: &Shard, results: Vec<PrunedAuction>) {
        if results.is_empty() {
            return;
        }
        let ids: Vec<AuctionId> = results.iter().map(|r| r.id).collect();
        shard.keep_pruned(results);
        let mut map = shard.map_write();
        let before = map.len();
        for id in &ids {
            map.remove(id);
        }
        // Ordering: Relaxed; see `create_auction`.
        self.auctions
            .fetch_sub(before - map.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The complete state of every auction held whole and every pruned auction's result,
    /// each ascending by id: what a snapshot holds. As [`Engine::snapshot`], with each
    /// shard's auctions and results read together under its writer lock, which a prune
    /// holds from publishing its event until the result replaces the auction: every
    /// auction is in exactly one of the two lists.
    pub fn snapshot_with_pruned(&self) -> (Vec<AuctionState>, Vec<PrunedAuction>) {
        let mut all = Vec::new();
        let mut pruned = Vec::new();
        for shard in self.shards.iter() {
            let _writer = shard.writer.lock().expect("shard writer lock poisoned");
            all.extend(shard.map_read().values().cloned());
            pruned.extend(shard.pruned_read().values().cloned());
        }
        all.sort_unstable_by_key(|a| a.id());
        pruned.sort_unstable_by_key(|p| p.id);
        (all.iter().map(|a| a.state()).collect(), pruned)
    }
}
