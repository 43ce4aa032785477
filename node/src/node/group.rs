//! Ownership by Kafka group membership on the node's side (issue 14 item 2; the group
//! consumer is [`gavel_wal::kafka::group`]). The group's assignment is the set of partitions
//! this node should own (`Shared::assigned`); the takeover thread claims each assigned one
//! through the usual takeover (lease under a new epoch, marker, the follower's state handed
//! over or a replay, then bids). A rebalance:
//!
//! - **revoke** (before the partitions are released): every owned partition revoked is
//!   closed — routing answers its bids with no owner — then, [`CLOSE_GRACE`] later (for the
//!   bids already past that check), paused — the log refuses its appends — and what was
//!   appended to it is waited on until durable (or the log fails);
//! - **assign**: a paused partition assigned again is resumed (the eager protocol revokes
//!   everything at each rebalance; its lease was kept, so nothing moved); one not assigned
//!   again is given up: its auctions, as the node's engine holds them, seed a follower that
//!   goes on from the partition's durable offset, its lease is released (the next owner
//!   need not wait for it to lapse), and the auctions leave the node's engine (each ended
//!   and forgotten through a sink that logs nothing: they are not this node's to log).
//!
//! The writer lease and the owner epoch stay the fence: a rebalance is not one.

use std::sync::Arc;
use std::time::Duration;

use gavel_engine::{AuctionId, DiscardSink, Engine, EngineConfig, UnixMicros};
use gavel_proto::convert::state::SnapshotParts;
use gavel_transport::clock::now_micros;
use gavel_wal::Log;
use gavel_wal::kafka::KafkaLog;
use gavel_wal::kafka::group::Rebalancer;

use super::{Shared, lock};

/// Partitions this node gave up because the group moved them to another node.
pub const METRIC_REVOCATIONS: &str = "gavel_kafka_revocations_total";
/// The longest a revocation waits for the revoked partitions' appends to be durable.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// How long a revocation lets decisions already past the ownership check (bids the
/// transport routed here just before) reach the log before it refuses their appends; one
/// that takes longer is answered `OVERLOADED` (retry) rather than `NO_OWNER`.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// The node's answer to the group's rebalances (see the module docs).
pub(super) struct GroupOwner {
    pub(super) shared: Arc<Shared>,
    pub(super) engine: EngineConfig,
    /// Partitions paused by the last revocation, until the next assignment.
    pub(super) paused: std::sync::Mutex<Vec<i32>>,
}

impl Rebalancer for GroupOwner {
    fn revoke(&self, partitions: &[i32]) {
        let Log::Kafka(kafka) = &*self.shared.wal else {
            return;
        };
        let mut assigned = lock(&self.shared.assigned);
        for partition in partitions {
            assigned.remove(partition);
        }
        let paused = pause(&self.shared, kafka, partitions);
        lock(&self.paused).extend(paused);
    }

    fn assign(&self, partitions: &[i32]) {
        let Log::Kafka(kafka) = &*self.shared.wal else {
            return;
        };
        let mut assigned = lock(&self.shared.assigned);
        *assigned = partitions.iter().copied().collect();
        let paused = std::mem::take(&mut *lock(&self.paused));
        for partition in paused {
            if assigned.contains(&partition) {
                kafka.unpause(partition);
            } else {
                give_up(&self.shared, kafka, self.engine, partition);
            }
        }
        let owned = (0..kafka.partitions()).filter(|&p| kafka.owns(p)).count();
        metrics::gauge!(crate::takeover::METRIC_PARTITIONS_OWNED).set(owned as f64);
    }
}

/// After a takeover of `partition`: gives it up at once if the group revoked it meanwhile.
pub(super) fn settle(shared: &Shared, engine: EngineConfig, partition: i32) {
    let Log::Kafka(kafka) = &*shared.wal else {
        return;
    };
    let assigned = lock(&shared.assigned);
    if assigned.contains(&partition) {
        return;
    }
    if !pause(shared, kafka, &[partition]).is_empty() {
        give_up(shared, kafka, engine, partition);
    }
    drop(assigned);
}

/// Closes the owned ones of `partitions`, pauses them [`CLOSE_GRACE`] later and waits until
/// what was appended to them is durable (or the log failed); returns those paused.
fn pause(shared: &Shared, kafka: &KafkaLog, partitions: &[i32]) -> Vec<i32> {
    let owned: Vec<i32> = (partitions.iter().copied())
        .filter(|&p| kafka.owns(p))
        .collect();
    if owned.is_empty() {
        return owned;
    }
    for &partition in &owned {
        kafka.close(partition);
    }
    std::thread::sleep(CLOSE_GRACE);
    let last = (owned.iter()).filter_map(|&p| kafka.pause(p)).max();
    drain(shared, last.unwrap_or(0));
    owned
}

/// Waits until everything appended up to `last` is durable, or the log failed.
fn drain(shared: &Shared, last: u64) {
    if last == 0 {
        return;
    }
    if let Err(e) = shared.wal.wait_durable(last, DRAIN_MAX) {
        tracing::warn!(last, error = %e, "appends to revoked partitions not durable");
    }
}

/// Gives up the paused `partition` (see the module docs).
fn give_up(shared: &Shared, kafka: &KafkaLog, engine: EngineConfig, partition: i32) {
    let _no_snapshot = lock(&shared.last_snapshot_lsn);
    // Paused and drained: the engine holds exactly the partition's records up to here.
    let position = kafka.durable_position();
    let ours = |id: AuctionId| kafka.partition_of(id.0) == partition;
    let (auctions, pruned) = shared.engine.snapshot_with_pruned();
    let auctions: Vec<_> = (auctions.into_iter())
        .filter(|a| ours(a.spec.id()))
        .collect();
    let pruned: Vec<_> = pruned.into_iter().filter(|r| ours(r.id)).collect();
    let whole: Vec<AuctionId> = auctions.iter().map(|a| a.spec.id()).collect();
    let results: Vec<AuctionId> = pruned.iter().map(|r| r.id).collect();
    let seed = SnapshotParts {
        lsn: position.lsn,
        taken_at: UnixMicros(0),
        auctions,
        pruned,
        kafka: None,
    };
    let partitioner: gavel_wal::kafka::Partitioner = super::open::kafka_partition;
    let source = (kafka.config(), partitioner, engine);
    if let Err(e) = (shared.followers).start_seeded(source, partition, seed, position) {
        tracing::error!(
            partition,
            error = format!("{e:#}"),
            "cannot follow a partition given up"
        );
    }
    // From here reads go to the follower's view, which holds what the engine held.
    let Some((_, epoch)) = kafka.give_up(partition) else {
        return;
    };
    let left = evict(&shared.engine, &whole, &results);
    metrics::counter!(METRIC_REVOCATIONS).increment(1);
    tracing::info!(
        partition,
        epoch,
        auctions = whole.len() + results.len(),
        not_evicted = left,
        "gave a partition up to the group's next owner"
    );
}

/// Drops the auctions `whole` and the pruned results `results` from `engine` (each cancelled
/// if open, pruned and forgotten, through a sink that logs nothing); returns how many are
/// still held.
fn evict(engine: &Engine, whole: &[AuctionId], results: &[AuctionId]) -> usize {
    let now = now_micros();
    for &id in whole {
        let _ = engine.cancel_auction(id, now, &DiscardSink);
        let _ = engine.prune_auction(id, now, &DiscardSink);
    }
    for &id in whole.iter().chain(results) {
        let _ = engine.forget_auction(id, now, &DiscardSink);
    }
    (whole.iter().chain(results))
        .filter(|&&id| engine.auction_seq(id).is_some())
        .count()
}
