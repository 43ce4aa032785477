//! Opening the node's log and recovering the engine from it: the file log (latest snapshot,
//! then replay), the Kafka log (snapshot offsets, then each owned partition), and the missing
//! tail of a decision a crash cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use gavel_engine::{AuctionId, Engine, Event, ReplaySummary};
use gavel_proto::convert::state::{SnapshotParts, decode_snapshot_parts};
use gavel_proto::convert::wal::encode_records;
use gavel_wal::kafka::{KafkaConfig, KafkaLog, KafkaPosition};
use gavel_wal::snapshot::{list_snapshots, read_snapshot};
use gavel_wal::{Interrupt, Log, Recovery, Wal, WriterHooks, latest_snapshot};

use crate::replay::replay_parallel;

use super::{DURABLE_WAIT_MAX, NodeConfig, RecoveryReport};

/// The file log's recovery: logs a truncated torn tail, restores the latest valid snapshot
/// into `engine`, and replays the records after it.
/// Opens the file log in `wal_dir` (with the writer's `hooks`, if any) and recovers the
/// engine from it: the latest snapshot, then the records after it.
pub(super) fn open_file_log(
    engine: &Engine,
    wal_dir: &Path,
    config: &NodeConfig,
    hooks: Option<Arc<dyn WriterHooks>>,
    interrupt: &Interrupt,
    workers: usize,
    report: &mut RecoveryReport,
) -> Result<(Log, ReplaySummary)> {
    let opened = match hooks {
        Some(hooks) => Wal::open_with_hooks(wal_dir, config.wal.clone(), hooks),
        None => Wal::open(wal_dir, config.wal.clone()),
    };
    let (wal, recovery) =
        opened.with_context(|| format!("opening the write-ahead log in {}", wal_dir.display()))?;
    let summary = recover_file(engine, wal_dir, &recovery, interrupt, workers, report)?;
    Ok((Log::File(wal), summary))
}

/// Opens the Kafka log and recovers the engine from it: the newest snapshot in
/// `snapshots` (created if missing), then every partition from the snapshot's offsets (or
/// from its beginning).
pub(super) fn open_kafka_log(
    engine: &Engine,
    snapshots: &Path,
    kafka: &KafkaConfig,
    workers: usize,
    report: &mut RecoveryReport,
) -> Result<(Log, ReplaySummary)> {
    std::fs::create_dir_all(snapshots)
        .with_context(|| format!("creating {}", snapshots.display()))?;
    let start = restore_kafka_snapshot(engine, snapshots, kafka, report)?;
    let (log, mut records) = KafkaLog::open(kafka.clone(), start.as_ref(), kafka_partition)
        .with_context(|| {
            format!(
                "opening the Kafka write-ahead log (topic {} on {})",
                kafka.topic, kafka.brokers
            )
        })?;
    tracing::info!(
        brokers = %kafka.brokers,
        topic = %kafka.topic,
        partitions = records.partitions(),
        from = ?start.as_ref().map(|s| &s.next_offsets),
        "replaying the Kafka log (from the snapshot's offsets, or every partition's beginning)"
    );
    let summary = replay_parallel(engine, start.is_some(), &mut records, workers)
        .with_context(|| format!("replaying the Kafka topic {}", kafka.topic))?;
    log.resume(&records);
    let owned = (0..log.partitions()).filter(|&p| log.owns(p)).count();
    metrics::gauge!(crate::takeover::METRIC_PARTITIONS_OWNED).set(owned as f64);
    Ok((Log::Kafka(Box::new(log)), summary))
}

/// The node's partitioner of the Kafka log: [`partition_of`](gavel_proto::partition::partition_of),
/// the function the SDK routes by.
pub(super) fn kafka_partition(auction: u64, partitions: i32) -> i32 {
    let partitions = u32::try_from(partitions).unwrap_or(1);
    gavel_proto::partition::partition_of(auction, partitions) as i32
}

/// Appends and syncs the derived events a decision cut short by a crash left out of the log
/// (the replayer reports them), one batch per auction (the Kafka log keys a batch by its
/// auction). Returns how many.
pub(crate) fn append_missing_tail(wal: &Log, missing: &[Event]) -> Result<usize> {
    if missing.is_empty() {
        return Ok(0);
    }
    let payloads = encode_records(missing);
    let mut last = 0;
    let mut start = 0;
    while start < payloads.len() {
        let auction = missing[start].auction;
        let end = start
            + missing[start..]
                .iter()
                .take_while(|e| e.auction == auction)
                .count();
        last = wal
            .append_batch(auction.0, &payloads[start..end])
            .context("appending the events missing at the end of the log")?;
        start = end;
    }
    wal.wait_durable(last, DURABLE_WAIT_MAX)
        .context("syncing the events missing at the end of the log")?;
    tracing::warn!(
        events = payloads.len(),
        last_lsn = last,
        "the log ended inside a decision: appended its missing derived events"
    );
    Ok(payloads.len())
}

pub(super) fn recover_file(
    engine: &Engine,
    wal_dir: &Path,
    recovery: &Recovery,
    interrupt: &Interrupt,
    workers: usize,
    report: &mut RecoveryReport,
) -> Result<ReplaySummary> {
    if let Some(torn) = recovery.torn_tail() {
        tracing::warn!(
            file = %torn.path.display(),
            offset = torn.offset,
            bytes_removed = torn.bytes_removed,
            reason = %torn.reason,
            "torn tail truncated: the last write batch was incomplete (never acknowledged durable)"
        );
    }
    report.torn_tail = recovery.torn_tail().cloned();
    let snapshot = latest_snapshot(wal_dir)
        .with_context(|| format!("choosing a snapshot in {}", wal_dir.display()))?;
    if let Some(snapshot) = &snapshot {
        for (path, defect) in &snapshot.skipped {
            tracing::warn!(file = %path.display(), %defect, "corrupt snapshot skipped; using an older one");
        }
        report.snapshots_skipped = snapshot.skipped.clone();
        let parts = decode_snapshot_parts(&snapshot.payload)
            .with_context(|| format!("decoding snapshot {}", snapshot.path.display()))?;
        ensure!(
            parts.lsn == snapshot.lsn,
            "snapshot {} says LSN {} inside but its file is for LSN {}",
            snapshot.path.display(),
            parts.lsn,
            snapshot.lsn
        );
        let path = snapshot.path.display().to_string();
        restore_parts(engine, parts, &path, |_| true, report)?;
        report.snapshot_lsn = Some(snapshot.lsn);
    }
    let from = snapshot.as_ref().map_or(1, |s| s.lsn + 1);
    let records = recovery
        .replay(from)
        .with_context(|| format!("reading the log in {} from LSN {from}", wal_dir.display()))?;
    // Interrupted: the reading ends at the next record with the interrupt's error.
    let records = records.map(|record| interrupt.check().and(record));
    replay_parallel(engine, snapshot.is_some(), records, workers)
}

/// Where a Kafka node keeps the snapshots of `topic`: `<data_dir>/kafka-<topic>`.
pub fn kafka_snapshot_dir(data_dir: &Path, topic: &str) -> PathBuf {
    data_dir.join(format!("kafka-{topic}"))
}

/// A Kafka node's start from a snapshot: restores the newest valid snapshot of `dir` into
/// `engine` and returns its position in the topic. A corrupt newer snapshot is skipped for an
/// older one (the topic still holds everything after any of them); no snapshot: `None`, the
/// topic is replayed from its beginning. Only the auctions of partitions this node owns are
/// restored (the reader replays the others' partitions, if owned again later, from their
/// beginning).
pub(super) fn restore_kafka_snapshot(
    engine: &Engine,
    dir: &Path,
    kafka: &KafkaConfig,
    report: &mut RecoveryReport,
) -> Result<Option<KafkaPosition>> {
    let topic = kafka.topic.as_str();
    let files = list_snapshots(dir).with_context(|| format!("listing {}", dir.display()))?;
    for file in files.iter().rev() {
        let snapshot = match read_snapshot(file)? {
            Ok(snapshot) => snapshot,
            Err(defect) => {
                tracing::warn!(file = %file.path.display(), %defect, "corrupt snapshot skipped; using an older one");
                report.snapshots_skipped.push((file.path.clone(), defect));
                continue;
            }
        };
        let path = file.path.display();
        let mut parts = decode_snapshot_parts(&snapshot.payload)
            .with_context(|| format!("decoding snapshot {path}"))?;
        let (lsn, position) = (parts.lsn, parts.kafka.take());
        ensure!(
            lsn == snapshot.lsn,
            "snapshot {path} says LSN {lsn} inside but its file is for LSN {}",
            snapshot.lsn
        );
        let position = position
            .with_context(|| format!("snapshot {path} records no position in a Kafka topic"))?;
        ensure!(
            position.topic == topic,
            "snapshot {path} is of the Kafka topic {}, not {topic}",
            position.topic
        );
        let partitions = i32::try_from(position.next_offsets.len()).unwrap_or(i32::MAX);
        let owned = kafka.owned_in(partitions)?;
        let is_owned = |id: AuctionId| owned.contains(&kafka_partition(id.0, partitions));
        restore_parts(engine, parts, &path.to_string(), is_owned, report)?;
        report.snapshot_lsn = Some(lsn);
        return Ok(Some(KafkaPosition {
            lsn,
            topic: position.topic,
            next_offsets: position.next_offsets,
            epochs: position.epochs,
        }));
    }
    Ok(None)
}

/// Restores a snapshot's auctions and pruned results for which `wanted` holds into
/// `engine`, counting them in `report`.
pub(crate) fn restore_parts(
    engine: &Engine,
    parts: SnapshotParts,
    path: &str,
    wanted: impl Fn(AuctionId) -> bool,
    report: &mut RecoveryReport,
) -> Result<()> {
    for state in parts.auctions {
        let id = state.spec.id();
        if !wanted(id) {
            continue;
        }
        engine
            .restore(state)
            .with_context(|| format!("restoring auction {id} from snapshot {path}"))?;
        report.auctions_restored += 1;
    }
    for result in parts.pruned {
        let id = result.id;
        if !wanted(id) {
            continue;
        }
        engine
            .restore_pruned(result)
            .with_context(|| format!("restoring pruned auction {id} from snapshot {path}"))?;
        report.pruned_restored += 1;
    }
    Ok(())
}
