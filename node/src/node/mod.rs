//! [`Node`]: the engine made durable — start-up from a data directory (latest snapshot +
//! replay of the log after it), auction operations whose events go through the WAL, durable
//! waits, periodic snapshots with compaction, and shutdown.
//!
//! # Start-up
//!
//! [`Node::open`] opens the log in `<data_dir>/wal` (the log truncates a torn tail and
//! refuses corruption anywhere else, naming file and offset), restores every auction of the
//! latest valid snapshot, then replays the records after the snapshot's LSN through
//! [`Replayer`](gavel_engine::Replayer) — the live code path, which must reproduce every logged event — on one
//! thread per core, partitioned by auction ([`crate::replay`]). Any record
//! that does not decode or replay stops the start with an error naming its LSN. If the log
//! ends inside a decision (a crash between the fdatasyncs of one decision's records), the
//! replayer reports the derived events the engine state already holds but the log lacks;
//! they are appended and synced so that log and state agree again.
//!
//! With the Kafka log ([`NodeConfig::kafka`]) the start reaches the brokers (bounded wait),
//! creates the topic if missing, and replays every partition from its beginning through the
//! same parallel replay: Kafka keeps each partition in order and an auction's records in one
//! partition, and per-auction order is all replay needs. With a snapshot in
//! `<data_dir>/kafka-<topic>` ([`kafka_snapshot_dir`]) it restores the newest valid one and
//! replays each partition from the offset the snapshot recorded instead of its beginning.
//!
//! [`Node::open_interruptible`] gives up within a poll once asked to stop (`gavel serve`
//! stopped during recovery), writing nothing a restart would not write anyway.
//!
//! # Snapshots
//!
//! A background thread takes a snapshot every `snapshot_every_records` appended records or
//! `snapshot_every_log_bytes` appended bytes of log, whichever comes first:
//! `L` = the durable LSN, then [`Engine::snapshot`], then a wait until everything appended so
//! far is durable, then the file for `L` and compaction. Why every record ≤ `L` is in the
//! states, and why no state holds a record that could be lost, is argued at
//! [`Node::snapshot_now`]. On the Kafka log `L` comes with, per partition, the offset after
//! the last record `≤ L` (read together: [`KafkaLog::durable_position`]); the snapshot file
//! records them and the two newest snapshots are kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gavel_engine::{
    AuctionId, AuctionSpec, AuctionView, Bid, BidDecision, ClosedAuction, CreateError, Engine,
    EngineConfig, ManageError, PrunedAuction, Receipt, UnixMicros,
};
use gavel_proto::pb;
use gavel_transport::clock::now_micros;
use gavel_wal::SnapshotDefect;
use gavel_wal::kafka::KafkaConfig;
use gavel_wal::kafka::fence::LeaseHolder;
use gavel_wal::kafka::group::GroupMembership;
use gavel_wal::{
    AppendError, CompactReport, DurableFuture, Interrupt, Log, Lsn, TornTail, WaitError, WalConfig,
    WriterHooks,
};

use crate::closer::{DueAlarm, Wake};
use crate::durable::WalSink;
use crate::follow::{FollowerLag, Followers};

mod group;
mod open;
mod snapshots;

pub use group::METRIC_REVOCATIONS;

pub use open::kafka_snapshot_dir;
pub(crate) use open::{append_missing_tail, restore_parts};
use open::{open_file_log, open_kafka_log};
use snapshots::{snapshot_now, spawn_snapshotter, spawn_taker};

/// The log's directory inside a data directory.
pub const WAL_DIR: &str = "wal";
/// How often the snapshot thread looks at the record count even if not woken.
const SNAPSHOT_POLL_MS: u64 = 100;
/// Longest wait for the records a snapshot includes to become durable, and for the records
/// appended at start-up.
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Configuration of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The engine's limits.
    pub engine: EngineConfig,
    /// The file log's bounds and batching.
    pub wal: WalConfig,
    /// `Some`: the log is this Kafka topic instead of the file log in `<data_dir>/wal`.
    pub kafka: Option<KafkaConfig>,
    /// Take a snapshot (and compact) after this many records are appended (0 = not by
    /// records).
    pub snapshot_every_records: u64,
    /// Take a snapshot (and compact) after this many bytes of log are appended, whichever of
    /// the two comes first (0 = not by bytes; both 0: never). Bounds the log a restart
    /// reads and replays after the snapshot, whatever the size of the records.
    pub snapshot_every_log_bytes: u64,
}

/// The default [`NodeConfig::snapshot_every_log_bytes`]: 64 MiB, about 550 k accepted bids,
/// which a restart replays in about a second (BENCHMARKS.md, `node_restart`).
pub const SNAPSHOT_EVERY_LOG_BYTES_DEFAULT: u64 = 64 << 20;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            engine: EngineConfig::default(),
            wal: WalConfig::default(),
            kafka: None,
            snapshot_every_records: 1_000_000,
            snapshot_every_log_bytes: SNAPSHOT_EVERY_LOG_BYTES_DEFAULT,
        }
    }
}

/// What start-up recovered.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// LSN of the snapshot restored, if any.
    pub snapshot_lsn: Option<Lsn>,
    /// Auctions restored from the snapshot.
    pub auctions_restored: usize,
    /// Pruned auctions' results restored from the snapshot.
    pub pruned_restored: usize,
    /// Newer snapshot files that were corrupt and skipped for an older one.
    pub snapshots_skipped: Vec<(PathBuf, SnapshotDefect)>,
    /// Records read after the snapshot.
    pub records_read: u64,
    /// Of those, records the snapshot already included (skipped).
    pub records_skipped: u64,
    /// Derived events the log lacked at its end, appended again.
    pub missing_tail_appended: usize,
    /// The torn tail the log truncated, if any.
    pub torn_tail: Option<TornTail>,
    /// The last LSN of the log after recovery (missing tail included).
    pub last_lsn: Lsn,
    /// Auctions held after recovery.
    pub auctions: usize,
    /// The engine's state hash after recovery.
    pub state_hash: [u8; 32],
    /// Wall time of the start-up.
    pub elapsed: Duration,
}

impl RecoveryReport {
    /// Records replayed through the engine (read and not skipped).
    pub fn records_replayed(&self) -> u64 {
        self.records_read - self.records_skipped
    }

    /// One line for humans: `recovered N auctions, M records replayed, snapshot at LSN x`.
    pub fn summary(&self) -> String {
        let snapshot = match self.snapshot_lsn {
            Some(lsn) => format!("snapshot at LSN {lsn}"),
            None => "no snapshot".to_owned(),
        };
        format!(
            "recovered {} auctions, {} records replayed ({} skipped), {snapshot}, log at LSN {}, in {:.1} ms",
            self.auctions,
            self.records_replayed(),
            self.records_skipped,
            self.last_lsn,
            self.elapsed.as_secs_f64() * 1e3
        )
    }
}

/// A snapshot written by [`Node::snapshot_now`].
#[derive(Debug, Clone)]
pub struct SnapshotTaken {
    /// The LSN it covers (every record ≤ it is included).
    pub lsn: Lsn,
    /// Auctions in it.
    pub auctions: usize,
    /// Payload bytes.
    pub bytes: usize,
    /// The file.
    pub path: PathBuf,
    /// What compaction removed after it.
    pub compacted: CompactReport,
}

/// What the node and its snapshot thread share.
struct Shared {
    engine: Engine,
    wal: Arc<Log>,
    sink: WalSink,
    /// Serialises snapshots; holds the LSN of the last one written (0 = none).
    last_snapshot_lsn: Mutex<Lsn>,
    stop: AtomicBool,
    /// With the Kafka log: the directory of its snapshots.
    kafka_snapshots: Option<PathBuf>,
    /// With the Kafka log: per partition not owned here, its holder as last read.
    holders: Mutex<Vec<Option<crate::takeover::Holder>>>,
    /// With the Kafka log: the partitions not owned here, followed into read-only views.
    followers: Followers,
    /// With group ownership: the partitions the group assigns to this node now.
    assigned: Mutex<std::collections::BTreeSet<i32>>,
}

/// The durable engine. `Sync`: share it by reference or `Arc`.
pub struct Node {
    shared: Arc<Shared>,
    snapshotter: Mutex<Option<JoinHandle<()>>>,
    /// Takes standby partitions over (Kafka log with standby partitions only).
    taker: Mutex<Option<JoinHandle<()>>>,
    /// With group ownership: this node's membership of the group.
    group: Mutex<Option<GroupMembership>>,
    data_dir: PathBuf,
    /// Wakes the closer when a creation ends before its planned wake-up.
    due: DueAlarm,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.data_dir)
            .field("durable_lsn", &self.shared.wal.durable_lsn())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex of this module; nothing panics while holding one.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("node mutex poisoned: a panic under a node lock is a bug")
}

impl Node {
    /// Opens (creating if needed) the data directory and recovers the engine from it.
    pub fn open(data_dir: impl AsRef<Path>, config: NodeConfig) -> Result<(Node, RecoveryReport)> {
        Self::open_inner(data_dir.as_ref(), config, None, &Interrupt::default())
    }

    /// [`Node::open`] that gives up with [`WalError::Interrupted`](gavel_wal::WalError)
    /// (within a poll, a few hundred milliseconds) once `interrupt` is set: while it waits for
    /// the Kafka brokers or another node's writer lease, or replays. An interrupted start
    /// writes nothing past what every start writes first (the file log's torn tail
    /// truncated): no missing tail appended, no compaction, no snapshot. Steps that cannot be
    /// interrupted, each bounded: opening the file log (reading its last segment), restoring
    /// a snapshot, one Kafka topic creation or metadata request after the brokers answered,
    /// and the lease claim (bounded by the lease).
    pub fn open_interruptible(
        data_dir: impl AsRef<Path>,
        config: NodeConfig,
        interrupt: &Interrupt,
    ) -> Result<(Node, RecoveryReport)> {
        Self::open_inner(data_dir.as_ref(), config, None, interrupt)
    }

    /// [`Node::open`] with the log writer's hooks (fault injection in tests).
    pub fn open_with_hooks(
        data_dir: impl AsRef<Path>,
        config: NodeConfig,
        hooks: Arc<dyn WriterHooks>,
    ) -> Result<(Node, RecoveryReport)> {
        Self::open_inner(
            data_dir.as_ref(),
            config,
            Some(hooks),
            &Interrupt::default(),
        )
    }

    fn open_inner(
        data_dir: &Path,
        config: NodeConfig,
        hooks: Option<Arc<dyn WriterHooks>>,
        interrupt: &Interrupt,
    ) -> Result<(Node, RecoveryReport)> {
        let started = Instant::now();
        let engine = Engine::new(config.engine);
        let mut report = RecoveryReport::default();
        let workers = thread::available_parallelism().map_or(1, |n| n.get());
        let (wal, summary, kafka_snapshots) = match &config.kafka {
            None => {
                let wal_dir = data_dir.join(WAL_DIR);
                let opened = open_file_log(
                    &engine,
                    &wal_dir,
                    &config,
                    hooks,
                    interrupt,
                    workers,
                    &mut report,
                )?;
                (opened.0, opened.1, None)
            }
            Some(kafka) => {
                ensure!(
                    hooks.is_none(),
                    "writer hooks are for the file log; the Kafka log has none"
                );
                let dir = kafka_snapshot_dir(data_dir, &kafka.topic);
                let kafka = KafkaConfig {
                    interrupt: interrupt.clone(),
                    ..kafka.clone()
                };
                let opened = open_kafka_log(&engine, &dir, &kafka, workers, &mut report)?;
                (opened.0, opened.1, Some(dir))
            }
        };
        // Asked to stop during the replay's last moments: stop before writing anything.
        interrupt.check()?;
        let wal = Arc::new(wal);
        report.records_read = summary.events;
        report.records_skipped = summary.skipped;
        let sink = WalSink::new(Arc::clone(&wal), config.snapshot_every_records)
            .with_snapshot_every_log_bytes(config.snapshot_every_log_bytes);
        report.missing_tail_appended = append_missing_tail(&wal, &summary.missing_tail)?;
        report.last_lsn = wal.last_appended_lsn();
        report.auctions = engine.len();
        report.state_hash = engine.state_hash();

        let shared = Arc::new(Shared {
            engine,
            wal,
            sink,
            last_snapshot_lsn: Mutex::new(report.snapshot_lsn.unwrap_or(0)),
            stop: AtomicBool::new(false),
            kafka_snapshots,
            holders: Mutex::new(Vec::new()),
            followers: Followers::default(),
            assigned: Mutex::new(Default::default()),
        });
        if let Log::Kafka(kafka) = &*shared.wal {
            *lock(&shared.holders) = vec![None; kafka.partitions().max(0) as usize];
            let followed: Vec<i32> = (0..kafka.partitions())
                .filter(|&p| !kafka.owns(p))
                .collect();
            let partitions = (&followed[..], kafka.partitions());
            (shared.followers)
                .start(
                    kafka.config(),
                    open::kafka_partition,
                    config.engine,
                    partitions,
                )
                .context("starting the followers of the other nodes' partitions")?;
        }
        // Old segments may be removable already (a snapshot written just before a crash).
        if let Some(file) = shared.wal.as_file() {
            file.compact_to_snapshots().context("compacting the log")?;
        }
        let snapshotter = spawn_snapshotter(
            &shared,
            config.snapshot_every_records,
            config.snapshot_every_log_bytes,
        )?;
        let grouped = (config.kafka.as_ref()).is_some_and(|k| k.group.is_some());
        let taker = match &config.kafka {
            Some(kafka) if !kafka.owned_partitions.is_empty() || kafka.follow_only || grouped => {
                let group = grouped.then_some(config.engine);
                spawn_taker(&shared, kafka.standby_partitions.clone(), group, workers)?
            }
            _ => None,
        };
        let group = match &config.kafka {
            Some(kafka) if grouped => {
                let owner = Arc::new(group::GroupOwner {
                    shared: Arc::clone(&shared),
                    engine: config.engine,
                    paused: Mutex::new(Vec::new()),
                });
                let joined = GroupMembership::join(kafka, owner)
                    .context("joining the Kafka group that assigns the partitions")?;
                Some(joined)
            }
            _ => None,
        };
        report.elapsed = started.elapsed();
        tracing::info!(
            auctions = report.auctions,
            records_replayed = report.records_replayed(),
            records_skipped = report.records_skipped,
            snapshot_lsn = report.snapshot_lsn.unwrap_or(0),
            last_lsn = report.last_lsn,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "recovered"
        );
        Ok((
            Node {
                shared,
                snapshotter: Mutex::new(snapshotter),
                taker: Mutex::new(taker),
                group: Mutex::new(group),
                due: DueAlarm::default(),
                data_dir: data_dir.to_path_buf(),
            },
            report,
        ))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The engine (read-only uses: views, prices, the state hash). Decisions that change
    /// state go through the node's methods or [`Node::sink`].
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Auction `id`'s view at `now`: from the view of its partition when another node owns
    /// it (the partition is followed), else from the node's engine.
    pub fn view(&self, id: AuctionId, now: UnixMicros) -> Option<AuctionView> {
        match self.followed_partition(id) {
            Some(partition) => self.shared.followers.view(partition, id, now),
            None => self.shared.engine.view(id, now),
        }
    }

    /// Views of up to `limit` auctions after `after`, ascending by id: the node's own and
    /// the followed partitions' together.
    pub fn list(
        &self,
        after: Option<AuctionId>,
        limit: usize,
        now: UnixMicros,
    ) -> Vec<AuctionView> {
        let mut views = self.shared.engine.list(after, limit, now);
        (self.shared.followers).list_into(&mut views, (after, limit, now));
        views
    }

    /// The final result of the pruned auction `id`, wherever it is held (as [`Node::view`]).
    pub fn pruned(&self, id: AuctionId) -> Option<PrunedAuction> {
        match self.followed_partition(id) {
            Some(partition) => self.shared.followers.pruned(partition, id),
            None => self.shared.engine.pruned(id),
        }
    }

    /// The partition of `id` when this node follows it rather than owns it.
    fn followed_partition(&self, id: AuctionId) -> Option<i32> {
        let Log::Kafka(kafka) = &*self.shared.wal else {
            return None;
        };
        let partition = kafka.partition_of(id.0);
        (!kafka.owns(partition)).then_some(partition)
    }

    /// The followed partitions' lag, by partition (empty: the node follows nothing).
    pub fn follower_lags(&self) -> Vec<FollowerLag> {
        self.shared.followers.lags()
    }

    /// Marks every change the followed partitions' views apply in `hub` (their watchers'
    /// streams), from now on.
    pub fn follow_into(&self, hub: Arc<gavel_transport::fanout::Hub>) {
        self.shared.followers.set_hub(hub);
    }

    /// The sink to hand the engine for bids, closes and cancels.
    pub fn sink(&self) -> &WalSink {
        &self.shared.sink
    }

    /// The log (file or Kafka).
    pub fn wal(&self) -> &Log {
        &self.shared.wal
    }

    /// Creates an auction; durable once the receipt is. Wakes the closer if the auction
    /// ends before the closer planned to wake.
    pub fn create_auction(
        &self,
        spec: AuctionSpec,
        now: UnixMicros,
    ) -> Result<Receipt, CreateError> {
        let ends_at = spec.rules().ends_at;
        let receipt = self
            .shared
            .engine
            .create_auction(spec, now, &self.shared.sink)?;
        self.due.due_at(ends_at);
        Ok(receipt)
    }

    /// Decides a bid; the receipt of an accepted bid is what its durable ack waits for, and
    /// a bid that closed its auction says so.
    pub fn place_bid(&self, bid: &Bid, now: UnixMicros) -> BidDecision {
        let decision = self.shared.engine.place_bid(bid, now, &self.shared.sink);
        if decision.closed.is_some() {
            self.settled_at(now);
        }
        decision
    }

    /// An auction settled at `now` outside the closer: wakes the closer if its prune is due
    /// before the closer planned to wake.
    fn settled_at(&self, now: UnixMicros) {
        let retention = self.shared.engine.config().settled_retention_us;
        if retention > 0 {
            self.due.due_at(UnixMicros(now.0.saturating_add(retention)));
        }
    }

    /// Closes and settles up to `max` due auctions; announce each settlement once its
    /// receipt is durable.
    pub fn close_due(&self, now: UnixMicros, max: usize) -> Vec<ClosedAuction> {
        self.shared.engine.close_due(now, max, &self.shared.sink)
    }

    /// Prunes up to `max` auctions settled longer ago than the engine's retention (each
    /// by a logged `Pruned` record); returns how many.
    pub fn prune_due(&self, now: UnixMicros, max: usize) -> usize {
        self.shared
            .engine
            .prune_due(now, max, &self.shared.sink)
            .len()
    }

    /// Forgets up to `max` pruned results older than the engine's retention of results
    /// (each by a logged `Forgotten` record); returns how many.
    pub fn forget_due(&self, now: UnixMicros, max: usize) -> usize {
        self.shared.engine.forget_due(now, max, &self.shared.sink)
    }

    /// The next time an auction is due to close, to be pruned or to be forgotten (possibly
    /// stale: an extended auction shows its old end, which only wakes the closer early), in
    /// the manner of quinn's `poll_timeout`; [`Node::close_due`], [`Node::prune_due`] and
    /// [`Node::forget_due`] are its `handle_timeout`.
    pub fn poll_timeout(&self) -> Option<UnixMicros> {
        let engine = &self.shared.engine;
        [
            engine.next_due(),
            engine.next_prune_due(),
            engine.next_forget_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Blocks until [`Node::poll_timeout`] comes, an auction created since ends (or one
    /// settled since is due for pruning) earlier,
    /// [`Node::wake_closer`] rings, or `longest` passes (the closer's sleep).
    pub fn sleep_until_due(&self, longest: Duration) -> Wake {
        self.due.sleep(self.poll_timeout(), now_micros(), longest)
    }

    /// Wakes a closer sleeping in [`Node::sleep_until_due`] now (shutdown).
    pub fn wake_closer(&self) {
        self.due.ring();
    }

    /// Cancels an open auction.
    pub fn cancel_auction(
        &self,
        id: AuctionId,
        now: UnixMicros,
    ) -> Result<ClosedAuction, ManageError> {
        let closed = self
            .shared
            .engine
            .cancel_auction(id, now, &self.shared.sink)?;
        self.settled_at(now);
        Ok(closed)
    }

    /// The Kafka log's partitions and their holders (`GET /v1/cluster`); `None` on the file
    /// log. Partitions this node does not own are as its follower thread last read them
    /// (none read yet for a node that owns every partition: it follows nothing).
    pub fn cluster(&self) -> Option<pb::Cluster> {
        let Log::Kafka(kafka) = &*self.shared.wal else {
            return None;
        };
        let config = kafka.config();
        let holders = lock(&self.shared.holders);
        let partitions: Vec<pb::ClusterPartition> = (0..kafka.partitions())
            .map(|p| {
                let holder = match kafka.epoch_of(p) {
                    0 => holders
                        .get(p as usize)
                        .cloned()
                        .flatten()
                        .unwrap_or_default(),
                    epoch => LeaseHolder {
                        owner: config.owner.clone(),
                        epoch,
                        live: true,
                        advertise: config.advertise.clone(),
                    },
                };
                let (quic, https) = crate::routing::addresses(&holder.advertise);
                pb::ClusterPartition {
                    partition: p as u32,
                    owner: holder.owner,
                    epoch: holder.epoch,
                    live: holder.live,
                    standby: config.standby_partitions.contains(&p),
                    quic,
                    https,
                }
            })
            .collect();
        let mut members: Vec<String> = partitions
            .iter()
            .filter(|p| p.live && !p.owner.is_empty())
            .map(|p| p.owner.clone())
            .collect();
        members.sort();
        members.dedup();
        let group_members = (lock(&self.group).as_ref()).map_or_else(Vec::new, |g| g.members());
        let assigned = lock(&self.shared.assigned)
            .iter()
            .map(|&p| p as u32)
            .collect();
        let ownership = if config.group.is_some() {
            "group"
        } else {
            "static"
        };
        Some(pb::Cluster {
            topic: config.topic.clone(),
            node: config.owner.clone(),
            partitions,
            members,
            ownership: ownership.into(),
            group_members,
            assigned,
        })
    }

    /// The owner of the partition of `auction` when this node does not write it, with its
    /// advertised addresses as its lease claim published them (`node` empty when nobody
    /// serves it now, see [`crate::routing`]). `None` on the file log and for this node's own
    /// partitions.
    pub fn owner_elsewhere(&self, auction: AuctionId) -> Option<pb::PartitionOwner> {
        let Log::Kafka(kafka) = &*self.shared.wal else {
            return None;
        };
        crate::routing::owner_elsewhere(kafka, auction.0, |partition| {
            let holders = lock(&self.shared.holders);
            holders.get(partition as usize).cloned().flatten()
        })
    }

    /// Whether `receipt` is durable now.
    pub fn is_durable(&self, receipt: Receipt) -> bool {
        self.shared.wal.durable_lsn() >= receipt.0
    }

    /// Blocks until `receipt` is durable, the log stops, or `timeout`.
    pub fn wait_durable(&self, receipt: Receipt, timeout: Duration) -> Result<Lsn, WaitError> {
        self.shared.wal.wait_durable(receipt.0, timeout)
    }

    /// A future resolving once `receipt` is durable (or the log stops).
    pub fn durable(&self, receipt: Receipt) -> DurableFuture {
        self.shared.wal.durable(receipt.0)
    }

    /// Why the node must stop, if it must: the log failed or refused a decision for a
    /// reason other than back-pressure. Nothing is acknowledged durable after that.
    pub fn failure(&self) -> Option<String> {
        if let Some(failure) = self.shared.wal.failure() {
            return Some(failure.to_string());
        }
        self.shared.sink.failure().map(|e| match e {
            AppendError::Closed => "the write-ahead log is shut down".to_owned(),
            other => other.to_string(),
        })
    }

    /// Takes a snapshot now (unless nothing new is durable since the last one), writes it,
    /// and compacts the log (on Kafka: records the partitions' offsets and keeps the two
    /// newest snapshots). Returns `None` if there was nothing to snapshot.
    ///
    /// Why the snapshot at `L` includes every record with LSN ≤ `L`, where `L` is the
    /// durable LSN read *before* [`Engine::snapshot`] starts:
    /// - A bid, close or cancel appends its records under the auction's lock, before it
    ///   applies the change and releases the lock. A record with LSN ≤ `L` was durable when
    ///   `L` was read, so its append returned before that read (the writer's Release store of
    ///   the durable LSN, our Acquire load). The snapshot takes each auction's lock after
    ///   reading `L`, hence after the appending thread released it: the change is applied in
    ///   the state it reads.
    /// - A creation appends its `Created` record under the shard's writer lock and lists
    ///   the auction before releasing it; [`Engine::snapshot`] reads each shard's registry
    ///   under that lock, after `L` was read: every creation with LSN ≤ `L` is listed.
    ///
    /// And why no state in the file holds a record that a crash could still lose: the states
    /// may include records appended after `L` was read; before the file is written the
    /// snapshot waits until every LSN appended by then is durable (a state can only include
    /// records whose append returned before the state was read).
    pub fn snapshot_now(&self) -> Result<Option<SnapshotTaken>> {
        snapshot_now(&self.shared)
    }

    /// Stops the snapshot thread, optionally writes a final snapshot, then stops the log:
    /// everything appended is written and synced. Returns the final durable LSN. Idempotent.
    pub fn shutdown(&self, final_snapshot: bool) -> Result<Lsn> {
        self.stop_snapshotter();
        if final_snapshot && self.failure().is_none() {
            snapshot_now(&self.shared).context("writing the final snapshot")?;
        }
        let lsn = self
            .shared
            .wal
            .shutdown()
            .context("flushing the write-ahead log")?;
        tracing::info!(durable_lsn = lsn, "log flushed and closed");
        Ok(lsn)
    }

    fn stop_snapshotter(&self) {
        // No rebalance callback runs from here on (they would start followers).
        if let Some(mut group) = lock(&self.group).take() {
            group.stop();
        }
        // Ordering: Release pairs with the snapshot thread's Acquire load.
        self.shared.stop.store(true, Ordering::Release);
        self.shared.followers.stop();
        for thread in [&self.snapshotter, &self.taker] {
            if let Some(handle) = lock(thread).take() {
                handle.thread().unpark();
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_snapshotter();
        // The log flushes on drop of its last handle.
    }
}
