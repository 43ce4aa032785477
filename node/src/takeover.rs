//! Other nodes' partitions (issue 14 items 4 and 7): a node that owns some partitions of the
//! Kafka log follows the leases of the others, for `GET /v1/cluster`, and takes a standby
//! partition over once its owner's writer lease lapsed — the owner died or was paused.
//!
//! One thread follows the lease of every partition this node does not own ([`LeaseWatch`]),
//! recording each holder in the cluster map. When a standby partition's lease lapses it takes
//! the partition over ([`KafkaLog::take_over`]: the lease under a new owner epoch,
//! then the takeover marker), brings the partition's state into the running engine — handed
//! over by the partition's follower, which reads on past the marker (`crate::follow`), or,
//! without one, replayed from the beginning through the same parallel replay as the start —
//! activates it, and appends the derived events a cut decision left out: until the
//! activation the engine does not hold the partition's auctions (bids on them are
//! `UnknownAuction`) and the log refuses its records (a creation is refused). Snapshots wait meanwhile (the snapshot lock is held), so no
//! snapshot records a partition's offset without all of its auctions or the reverse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use gavel_engine::{Engine, ReplaySummary};
use gavel_wal::kafka::KafkaLog;
use gavel_wal::kafka::fence::LeaseWatch;
use gavel_wal::{Log, Lsn};

use crate::replay::replay_parallel;

/// Partitions taken over by this node since it started.
pub const METRIC_TAKEOVERS: &str = "gavel_kafka_takeovers_total";
/// Time from a lapsed lease seen to the partition activated (lease, marker, replay), seconds.
pub const METRIC_TAKEOVER_SECONDS: &str = "gavel_kafka_takeover_seconds";
/// Partitions this node writes (owned from the start or taken over).
pub const METRIC_PARTITIONS_OWNED: &str = "gavel_kafka_partitions_owned";
/// How long one look at a partition's lock topic reads.
const WATCH_SLICE: Duration = Duration::from_millis(100);

/// What the takeover thread needs of the node.
pub(crate) struct Parts<'a> {
    pub engine: &'a Engine,
    pub wal: &'a Arc<Log>,
    /// The snapshot lock (held during a takeover).
    pub snapshots: &'a Mutex<Lsn>,
    pub stop: &'a AtomicBool,
    pub workers: usize,
    /// Per partition, its holder as last read: name, owner epoch, live.
    pub holders: &'a Mutex<Vec<Option<Holder>>>,
    /// The views of the partitions followed (a partition's stops once taken over).
    pub followers: &'a crate::follow::Followers,
    /// Which partitions to take over once free.
    pub claims: Claims<'a>,
}

/// Which partitions a node takes over, and when.
pub(crate) enum Claims<'a> {
    /// These standby partitions, once their owner's lease lapsed (static assignment).
    Standby(Vec<i32>),
    /// Those the group assigned to this node, once nobody else holds their lease (never
    /// claimed included); `settle` runs after each takeover (the group may have revoked the
    /// partition meanwhile).
    Group {
        assigned: &'a Mutex<std::collections::BTreeSet<i32>>,
        settle: &'a dyn Fn(i32),
    },
}

impl Claims<'_> {
    fn wants(&self, partition: i32) -> bool {
        match self {
            Claims::Standby(standby) => standby.contains(&partition),
            Claims::Group { assigned, .. } => lock(assigned).contains(&partition),
        }
    }

    /// Whether the partition's lease lets this node claim it now.
    fn free(&self, watch: &mut LeaseWatch) -> Result<bool, gavel_wal::WalError> {
        match self {
            Claims::Standby(_) => watch.lapsed(WATCH_SLICE),
            Claims::Group { .. } => watch.free(WATCH_SLICE),
        }
    }
}

/// A partition's lease holder as last read: name, owner epoch, whether its lease is live,
/// its advertised addresses.
pub type Holder = gavel_wal::kafka::fence::LeaseHolder;

/// Follows the leases of the partitions this node does not own and takes those of its
/// [`Claims`] over once free; returns when the log failed or `stop` is set.
pub(crate) fn run(parts: &Parts<'_>) {
    let Log::Kafka(kafka) = &**parts.wal else {
        return;
    };
    let mut watches: Vec<(i32, Option<LeaseWatch>)> = (0..kafka.partitions())
        .filter(|&p| !kafka.owns(p))
        .map(|p| (p, None))
        .collect();
    // Ordering: Acquire pairs with the node's Release store at shutdown.
    while !parts.stop.load(Ordering::Acquire) && parts.wal.failure().is_none() {
        let owned = (0..kafka.partitions()).filter(|&p| kafka.owns(p)).count();
        metrics::gauge!(METRIC_PARTITIONS_OWNED).set(owned as f64);
        for (partition, watch) in &mut watches {
            if kafka.owns(*partition) || parts.stop.load(Ordering::Acquire) {
                continue;
            }
            if watch.is_none() {
                match LeaseWatch::open(kafka.config(), *partition) {
                    Ok(opened) => *watch = Some(opened),
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "cannot follow a standby partition's lease");
                        std::thread::sleep(WATCH_SLICE);
                        continue;
                    }
                }
            }
            let lapsed = watch.as_mut().map(|w| parts.claims.free(w));
            if let (Some(slot), Some(watch)) = (
                lock(parts.holders).get_mut(*partition as usize),
                watch.as_ref(),
            ) {
                *slot = watch.holder();
            }
            match lapsed {
                Some(Ok(true)) if parts.claims.wants(*partition) => {
                    match take_over(parts, kafka, *partition) {
                        Ok(()) => {
                            if let Claims::Group { settle, .. } = &parts.claims {
                                settle(*partition);
                            }
                        }
                        Err(e) => tracing::warn!(
                            partition,
                            error = format!("{e:#}"),
                            "takeover failed; will retry"
                        ),
                    }
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    tracing::warn!(partition, error = %e, "lost the standby partition's lease reader");
                    *watch = None;
                }
            }
        }
    }
}

/// Replays `partition` from its beginning into the engine; returns the offset after its last
/// record read and the replay's summary.
fn replay(parts: &Parts<'_>, kafka: &KafkaLog, partition: i32) -> Result<(i64, ReplaySummary)> {
    let mut records = kafka.reader(partition)?;
    let summary = replay_parallel(parts.engine, false, &mut records, parts.workers)?;
    Ok((records.next_offset(partition), summary))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("node mutex poisoned: a panic under a node lock is a bug")
}

/// Takes `partition` over: lease and marker, the partition's state in the engine (handed
/// over by its follower, or replayed), activate, missing tail.
fn take_over(parts: &Parts<'_>, kafka: &KafkaLog, partition: i32) -> Result<()> {
    let started = Instant::now();
    let _no_snapshot = lock(parts.snapshots);
    let takeover = kafka.take_over(partition)?;
    let handed = parts.followers.hand_over(partition, parts.engine);
    let from_view = handed.is_some();
    let state = match handed {
        Some(moved) => moved,
        None => replay(parts, kafka, partition),
    };
    let (next_offset, summary) = match state {
        Ok(state) => state,
        Err(e) => {
            // Part of the partition is in the engine: stop rather than serve it half.
            kafka.fail_takeover(&takeover, format!("{e:#}"));
            return Err(e);
        }
    };
    kafka.activate(&takeover, next_offset);
    // The node's engine now serves the partition's reads, with all its view had.
    parts.followers.release(partition);
    let missing = crate::node::append_missing_tail(parts.wal, &summary.missing_tail)?;
    let elapsed = started.elapsed();
    metrics::counter!(METRIC_TAKEOVERS).increment(1);
    metrics::histogram!(METRIC_TAKEOVER_SECONDS).record(elapsed.as_secs_f64());
    tracing::info!(
        partition,
        epoch = takeover.epoch(),
        records_replayed = summary.events,
        from_view,
        missing_tail_appended = missing,
        elapsed_ms = elapsed.as_millis() as u64,
        "took a partition over"
    );
    Ok(())
}
