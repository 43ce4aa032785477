//! Forgetting: a pruned auction's result is kept for `pruned_retention_us`, then dropped
//! too, each by a logged `Forgotten` event (the auction's last), so that the memory of a
//! long-running engine is bounded by the auctions settled, pruned and forgotten within
//! those two periods, and a replay forgets exactly what the live engine forgot.
//!
//! As for prunes, the rule (the age) is the live driver's policy: [`Engine::forget_auction`],
//! which replay runs, forgets any pruned result whatever its age. A forgotten auction is
//! unknown: reads find nothing, bids are `UnknownAuction`, and its id may be created again
//! (a new auction, from sequence number 1).

use super::{Engine, ManageError, Shard, due_cutoff, lock_due, take_due};
use crate::event::{Event, EventKind, EventSink};
use crate::types::{AuctionId, UnixMicros};

impl Engine {
    /// Forgets the pruned auction `id`'s result at `now` (whatever its age): its
    /// `Forgotten` event goes to `sink`. Replay re-executes logged forgets with this.
    pub fn forget_auction<S: EventSink + ?Sized>(
        &self,
        id: AuctionId,
        now: UnixMicros,
        sink: &S,
    ) -> Result<(), ManageError> {
        let shard = self.shard(id);
        let _writer = shard.writer.lock().expect("shard writer lock poisoned");
        let pruned_at = forget_held(shard, id, now, sink)?;
        lock_due(&shard.forgettable).remove(&(pruned_at, id));
        Ok(())
    }

    /// Forgets up to `max` results pruned at least `pruned_retention_us` before `now`,
    /// oldest first within each shard; returns how many. Those whose events the sink
    /// refuses stay and are tried again on the next call.
    pub fn forget_due<S: EventSink + ?Sized>(
        &self,
        now: UnixMicros,
        max: usize,
        sink: &S,
    ) -> usize {
        let Some(cutoff) = due_cutoff(now, self.config.pruned_retention_us) else {
            return 0;
        };
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            if forgotten >= max {
                break;
            }
            let _writer = shard.writer.lock().expect("shard writer lock poisoned");
            let mut due = take_due(&shard.forgettable, cutoff, max - forgotten).into_iter();
            for (pruned_at, id) in due.by_ref() {
                match forget_held(shard, id, now, sink) {
                    Ok(_) => forgotten += 1,
                    Err(ManageError::Overloaded { .. }) => {
                        let mut set = lock_due(&shard.forgettable);
                        set.insert((pruned_at, id));
                        set.extend(due);
                        return forgotten;
                    }
                    // Invariant: an entry is added when its result is kept and removed
                    // when it is forgotten, under the writer lock held here.
                    Err(other) => unreachable!("a forget entry for {id} failed: {other}"),
                }
            }
        }
        forgotten
    }

    /// The earliest time a pruned result is due to be forgotten; `None` when none is held
    /// or the engine keeps them forever.
    pub fn next_forget_due(&self) -> Option<UnixMicros> {
        self.next_due_after(self.config.pruned_retention_us, |s| &s.forgettable)
    }
}

/// Publishes the `Forgotten` event of the pruned auction `id` of `shard` (whose writer lock
/// the caller holds) and drops its result; returns when it was pruned. The caller takes it
/// off the shard's forget set.
fn forget_held<S: EventSink + ?Sized>(
    shard: &Shard,
    id: AuctionId,
    now: UnixMicros,
    sink: &S,
) -> Result<UnixMicros, ManageError> {
    let Some((seq, pruned_at)) = shard.pruned_read().get(&id).map(|r| (r.seq, r.pruned_at)) else {
        return Err(if shard.map_read().contains_key(&id) {
            ManageError::NotPruned(id)
        } else {
            ManageError::UnknownAuction(id)
        });
    };
    let event = Event {
        auction: id,
        seq: seq + 1,
        at: now,
        kind: EventKind::Forgotten,
    };
    sink.publish(std::slice::from_ref(&event))
        .map_err(|bp| ManageError::Overloaded {
            retry_after_us: bp.retry_after_us,
        })?;
    shard.pruned_write().remove(&id);
    Ok(pruned_at)
}
