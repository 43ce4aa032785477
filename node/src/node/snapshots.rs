//! The snapshot thread: a snapshot every `snapshot_every_records` appended records or
//! `snapshot_every_log_bytes` appended bytes, or when asked, then compaction (why each snapshot is sound is argued at `snapshot_now`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use gavel_engine::UnixMicros;
use gavel_proto::convert::state::{
    encode_snapshot, encode_snapshot_position, encode_snapshot_pruned,
};
use gavel_proto::pb;
use gavel_wal::snapshot::remove_old_snapshots;
use gavel_wal::{CompactReport, Log, write_snapshot};

use super::{DURABLE_WAIT_MAX, SNAPSHOT_POLL_MS, Shared, SnapshotTaken, lock};

/// Starts the snapshot thread when snapshots are on (`every` > 0 records, or `every_bytes`
/// > 0 bytes of log).
pub(super) fn spawn_snapshotter(
    shared: &Arc<Shared>,
    every: u64,
    every_bytes: u64,
) -> Result<Option<JoinHandle<()>>> {
    if every == 0 && every_bytes == 0 {
        return Ok(None);
    }
    let for_thread = Arc::clone(shared);
    let handle = thread::Builder::new()
        .name("gavel-snapshot".into())
        .spawn(move || snapshot_loop(&for_thread, every, every_bytes))
        .context("spawning the snapshot thread")?;
    shared.sink.set_snapshot_thread(handle.thread().clone());
    Ok(Some(handle))
}

/// Starts the thread following the partitions this node does not own and taking the
/// `standby` ones over — or, with group ownership (`group`: the engine's limits), those the
/// group assigns.
pub(super) fn spawn_taker(
    shared: &Arc<Shared>,
    standby: Vec<i32>,
    group: Option<gavel_engine::EngineConfig>,
    workers: usize,
) -> Result<Option<JoinHandle<()>>> {
    let shared = Arc::clone(shared);
    let handle = thread::Builder::new()
        .name("gavel-takeover".into())
        .spawn(move || {
            let settle = |partition| {
                if let Some(engine) = group {
                    super::group::settle(&shared, engine, partition);
                }
            };
            let claims = match group {
                Some(_) => crate::takeover::Claims::Group {
                    assigned: &shared.assigned,
                    settle: &settle,
                },
                None => crate::takeover::Claims::Standby(standby),
            };
            let parts = crate::takeover::Parts {
                engine: &shared.engine,
                wal: &shared.wal,
                snapshots: &shared.last_snapshot_lsn,
                stop: &shared.stop,
                workers,
                holders: &shared.holders,
                followers: &shared.followers,
                claims,
            };
            crate::takeover::run(&parts);
        })
        .context("spawning the takeover thread")?;
    Ok(Some(handle))
}

/// Snapshots whenever the log has grown `every` records past the last snapshot (counting
/// what earlier runs left unsnapshotted too), or `every_bytes` bytes past the last snapshot
/// this thread took (0: that rule is off). Woken by the sink at each multiple of either,
/// and polls in case a wake-up came before it parked.
pub(super) fn snapshot_loop(shared: &Shared, every: u64, every_bytes: u64) {
    let mut bytes_at_snapshot = 0;
    loop {
        thread::park_timeout(Duration::from_millis(SNAPSHOT_POLL_MS));
        // Ordering: Acquire pairs with `stop_snapshotter`'s Release store.
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let last_snapshot_lsn = *lock(&shared.last_snapshot_lsn);
        let records = shared.wal.last_appended_lsn() - last_snapshot_lsn;
        let bytes = shared.sink.appended_log_bytes();
        let due = (every > 0 && records >= every)
            || (every_bytes > 0 && bytes - bytes_at_snapshot >= every_bytes);
        if !due {
            continue;
        }
        match snapshot_now(shared) {
            Ok(Some(taken)) => {
                bytes_at_snapshot = bytes;
                log_taken(&taken);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "snapshot failed");
                if shared.wal.failure().is_some() {
                    return;
                }
            }
        }
    }
}

fn log_taken(taken: &SnapshotTaken) {
    tracing::info!(
        lsn = taken.lsn,
        auctions = taken.auctions,
        bytes = taken.bytes,
        segments_removed = taken.compacted.removed_segments.len(),
        snapshots_removed = taken.compacted.removed_snapshots.len(),
        "snapshot written"
    );
}

pub(super) fn snapshot_now(shared: &Shared) -> Result<Option<SnapshotTaken>> {
    let mut last_snapshot_lsn = lock(&shared.last_snapshot_lsn);
    if let Some(failure) = shared.wal.failure() {
        bail!("the log failed: {failure}");
    }
    // See `Node::snapshot_now` for why the position is read before the snapshot starts. On
    // Kafka it comes with the offsets that durable LSN covers, read together.
    let position = match &*shared.wal {
        Log::Kafka(kafka) => Some(kafka.durable_position()),
        Log::File(_) => None,
    };
    let lsn = position
        .as_ref()
        .map_or_else(|| shared.wal.durable_lsn(), |p| p.lsn);
    if lsn == 0 || lsn <= *last_snapshot_lsn {
        return Ok(None);
    }
    let (states, pruned) = shared.engine.snapshot_with_pruned();
    let appended = shared.wal.last_appended_lsn();
    shared
        .wal
        .wait_durable(appended, DURABLE_WAIT_MAX)
        .context("waiting for the records the snapshot includes to be durable")?;
    let taken_at = UnixMicros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    );
    let mut payload = encode_snapshot(lsn, taken_at, &states);
    encode_snapshot_pruned(&pruned, &mut payload);
    let (path, compacted) = match (shared.wal.as_file(), position, &shared.kafka_snapshots) {
        (Some(file), _, _) => {
            let path = file
                .write_snapshot(lsn, &payload)
                .with_context(|| format!("writing the snapshot at LSN {lsn}"))?;
            let compacted = file
                .compact_to_snapshots()
                .context("compacting the log after a snapshot")?;
            (path, compacted)
        }
        (None, Some(position), Some(dir)) => {
            encode_snapshot_position(
                pb::KafkaPosition {
                    topic: position.topic,
                    next_offsets: position.next_offsets,
                    epochs: position.epochs,
                },
                &mut payload,
            );
            let path = write_snapshot(dir, lsn, &payload)
                .with_context(|| format!("writing the snapshot at LSN {lsn}"))?;
            let removed_snapshots = remove_old_snapshots(dir)
                .with_context(|| format!("removing old snapshots in {}", dir.display()))?;
            let compacted = CompactReport {
                removed_snapshots,
                ..CompactReport::default()
            };
            (path, compacted)
        }
        _ => unreachable!("invariant: a Kafka node has its snapshot directory"),
    };
    *last_snapshot_lsn = lsn;
    Ok(Some(SnapshotTaken {
        lsn,
        auctions: states.len(),
        bytes: payload.len(),
        path,
        compacted,
    }))
}
