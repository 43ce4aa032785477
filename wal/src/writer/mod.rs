//! The group-commit writer: [`Wal`] (open + recovery, `append`, durability waits, shutdown,
//! compaction), its configuration, counters and test hooks.
//!
//! # Ordering: LSN order is on-disk order
//!
//! [`Wal::append`] takes no lock: it claims the next LSNs with one compare-and-swap on the
//! pending queue's counter and copies the payloads into that queue's slots (a ring; see
//! `ring`), so appends for different auctions no longer wait for each other. LSNs are dense
//! and assigned in claim order, and the writer thread takes the slots strictly in LSN order,
//! so the order on disk is the LSN order whatever the number of appending threads; a
//! caller that appends under a lock of its own (the engine, under an auction's lock) gets its
//! records in that lock's order. Slots reuse their buffers: no allocation once warm.
//!
//! # Group commit
//!
//! One dedicated std thread writes. When it finds records pending while the log is under
//! load — its previous batch held more than one record — it waits up to `batch_wait_us_max`
//! for a full batch (`batch_records_max` or `batch_bytes_max`; 0 = never wait); a lone
//! record after a quiet spell is synced at once, so the gather costs nothing at low rates
//! and saves syncs (and on VMs their host stalls) under load. Records that arrive during a
//! sync form the next batch anyway. Then it writes each
//! chunk of at most `batch_records_max` records / `batch_bytes_max` bytes (and never past the
//! segment size) with one `write` of one buffer and one `fdatasync` (`File::sync_data`), and
//! only then advances the durable LSN and wakes waiters. A write or sync error is fatal: the
//! log stops, every later append fails with [`AppendError::Failed`], and the durable LSN stays
//! at what was synced — fsync is never retried (a failed fsync may have dropped the dirty
//! pages, so a retry that succeeds proves nothing; PostgreSQL's "fsyncgate").
//!
//! # Waiting for durability
//!
//! [`Wal::durable_lsn`] is an atomic load. Blocking callers use [`Wal::wait_durable`]
//! (a `Condvar`). Async callers use [`Wal::durable`], a runtime-agnostic
//! `std::future::Future`: it checks the atomic, and otherwise registers its `Waker` in a
//! registry keyed by LSN; after each sync the writer wakes exactly the wakers whose LSN is now
//! durable. A tokio task awaits it directly (`wal.durable(lsn).await`) — no blocking thread,
//! no channel per record. The registry is bounded by the records in flight: a waker is
//! removed when its LSN becomes durable or the log stops.
//!
//! # Memory bound
//!
//! The pending queue holds at most `queue_records_max` records and `queue_bytes_max` payload
//! bytes (a single record larger than `queue_bytes_max` is accepted into an empty queue, so the
//! byte bound is `max(queue_bytes_max, PAYLOAD_BYTES_MAX)`); the writer holds one more such
//! batch while writing it. The ring has `queue_records_max` slots (rounded up to a power of
//! two, at least 64), each a stamp and a reused buffer (32 bytes, and at most 512 bytes of
//! payload capacity kept once the writer took it).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Lsn;
use crate::durability::{Durability, DurableFuture, LogStatus, batch_bytes, lock};
use crate::error::{AppendError, LogFailure, WaitError, WalError};
use crate::frame::PAYLOAD_BYTES_MAX;
use crate::segment::{self, Records, Scan, ScanMode, SegmentFile, SegmentSummary, TornTail};
use crate::snapshot;
use crate::storage::{AppendFile, DirLock, OsStorage, Storage};

mod commit;
pub(crate) mod ring;

use commit::Writer;
use ring::{Bounds, Refusal, Ring};

/// Smallest back-pressure retry hint.
const RETRY_AFTER_US_MIN: u64 = 100;
/// Largest back-pressure retry hint (PRODUCT.md §4: rejected "within a second").
const RETRY_AFTER_US_MAX: u64 = 1_000_000;
/// Default `batch_wait_us_max`: on the 2-vCPU VM of BENCHMARKS.md a 300 µs gather under
/// load halved the accepted-ack p99 over QUIC and cut the durable p99 by a third at 10 k
/// bids/s (fewer `fdatasync`s, fewer host stalls), with the durable p50 unchanged.
pub const BATCH_WAIT_US_DEFAULT: u64 = 300;
/// Upper bound on `batch_wait_us_max`.
const BATCH_WAIT_US_LIMIT: u64 = 1_000_000;

/// Configuration of a [`Wal`]. Sizes are in bytes, times in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// A new segment is started before a batch that would take the current one past this size.
    pub segment_bytes_max: u64,
    /// Pending records at most; beyond, appends get [`AppendError::Backpressure`].
    pub queue_records_max: usize,
    /// Pending payload bytes at most; beyond, appends get [`AppendError::Backpressure`].
    pub queue_bytes_max: usize,
    /// Records per write + fdatasync at most.
    pub batch_records_max: usize,
    /// Encoded bytes per write + fdatasync at most (a single larger record goes alone).
    pub batch_bytes_max: usize,
    /// How long the writer may wait for a full batch once records are pending and its
    /// previous batch held more than one record (0 = never).
    pub batch_wait_us_max: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 << 20,
            queue_records_max: 65_536,
            queue_bytes_max: 32 << 20,
            batch_records_max: 16_384,
            batch_bytes_max: 8 << 20,
            batch_wait_us_max: BATCH_WAIT_US_DEFAULT,
        }
    }
}

impl WalConfig {
    /// The pending queue's bounds.
    fn ring_bounds(&self) -> Bounds {
        Bounds {
            records_max: self.queue_records_max,
            bytes_max: self.queue_bytes_max,
            batch_records_max: self.batch_records_max,
            batch_bytes_max: self.batch_bytes_max,
        }
    }

    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<(), WalError> {
        let check = WalError::require;
        check(
            self.segment_bytes_max >= 1,
            "segment_bytes_max must be at least 1",
        )?;
        check(
            self.queue_records_max >= 1,
            "queue_records_max must be at least 1",
        )?;
        check(
            self.queue_records_max <= 1 << 24,
            "queue_records_max must be at most 2^24",
        )?;
        check(
            self.queue_bytes_max >= 1,
            "queue_bytes_max must be at least 1",
        )?;
        check(
            self.queue_bytes_max <= 1 << 30,
            "queue_bytes_max must be at most 1 GiB",
        )?;
        check(
            self.batch_records_max >= 1,
            "batch_records_max must be at least 1",
        )?;
        check(
            self.batch_bytes_max >= 1,
            "batch_bytes_max must be at least 1",
        )?;
        check(
            self.batch_bytes_max <= 1 << 30,
            "batch_bytes_max must be at most 1 GiB",
        )?;
        check(
            self.batch_wait_us_max <= BATCH_WAIT_US_LIMIT,
            "batch_wait_us_max must be at most 1 s",
        )
    }
}

/// Instrumentation and fault injection, called on the writer thread. Every method defaults
/// to doing nothing; tests use them to slow the writer, count syncs or fail them.
pub trait WriterHooks: Send + Sync + 'static {
    /// Before the write of records `first..=last`; an error is treated as a write error.
    fn before_write(&self, first: Lsn, last: Lsn) -> io::Result<()> {
        let _ = (first, last);
        Ok(())
    }
    /// Before the fdatasync that makes records up to `last` durable; an error is treated as
    /// an fsync error (the real sync is not called).
    fn before_sync(&self, last: Lsn) -> io::Result<()> {
        let _ = last;
        Ok(())
    }
    /// After that fdatasync returned, before the durable LSN advances to `last`.
    fn after_sync(&self, last: Lsn) {
        let _ = last;
    }
}

struct NoHooks;
impl WriterHooks for NoHooks {}

/// Counters for metrics (read with [`Wal::metrics`]); updated once per batch, not per record.
#[derive(Debug, Default)]
struct Counters {
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    batches_synced: AtomicU64,
    backpressure: AtomicU64,
    last_batch_records: AtomicU64,
    last_sync_us: AtomicU64,
    sync_us_total: AtomicU64,
}

/// A snapshot of the log's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalMetrics {
    /// Records written and synced.
    pub records_written_total: u64,
    /// Encoded bytes written and synced.
    pub bytes_written_total: u64,
    /// Batches written, each with one fdatasync.
    pub batches_synced_total: u64,
    /// Appends refused with [`AppendError::Backpressure`].
    pub backpressure_total: u64,
    /// Records in the last synced batch.
    pub last_batch_records: u64,
    /// Latency of the last fdatasync, µs.
    pub last_sync_latency_us: u64,
    /// Sum of fdatasync latencies, µs.
    pub sync_latency_us_total: u64,
    /// The durable LSN.
    pub durable_lsn: Lsn,
    /// Records pending in the queue.
    pub queue_records: u64,
    /// Payload bytes pending in the queue.
    pub queue_bytes: u64,
}

/// Records waiting to be written: dense LSNs from `first_lsn`, payloads back to back.
#[derive(Debug, Default)]
struct Pending {
    first_lsn: Lsn,
    lens: Vec<u32>,
    bytes: Vec<u8>,
}

impl Pending {
    /// Adds a record; its length was checked against [`PAYLOAD_BYTES_MAX`] (< 2^32), so it
    /// cannot truncate.
    fn push(&mut self, payload: &[u8]) {
        debug_assert!(payload.len() <= PAYLOAD_BYTES_MAX);
        self.lens.push(payload.len() as u32);
        self.bytes.extend_from_slice(payload);
    }

    fn clear(&mut self) {
        self.lens.clear();
        self.bytes.clear();
    }
}

struct Shared {
    config: WalConfig,
    dir: PathBuf,
    /// The directory lock, held (by the OS, per open file) until [`Wal::shutdown`] or the
    /// process dies: two writers on one log would interleave LSNs and corrupt it.
    lock: Box<dyn DirLock>,
    /// Where the files are: the real filesystem unless a simulation says otherwise.
    storage: Arc<dyn Storage>,
    /// The pending records (lock-free appends, taken by the writer).
    ring: Ring,
    /// The durable LSN, the writer's final status and the waiters.
    durability: Arc<Durability>,
    segments: Mutex<Vec<SegmentFile>>,
    counters: Counters,
    hooks: Arc<dyn WriterHooks>,
}

impl Shared {
    /// Records the writer's final status and wakes every waiter.
    fn stop(&self, status: LogStatus, failure: Option<LogFailure>) {
        if let Some(failure) = failure {
            self.durability.record_failure(failure);
        }
        // Nothing pending will be written after this; none of it was acknowledged durable.
        self.ring.set_status(status);
        self.durability.finish(status);
    }
}

/// What [`Wal::open`] recovered: the records to replay and what was truncated.
pub struct Recovery {
    segments: Vec<SegmentFile>,
    scan: Scan,
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("segments", &self.segments)
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

impl Recovery {
    /// LSN of the first record the log holds, if any.
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.scan.first_lsn
    }
    /// LSN of the last record recovered (0 for an empty log); the next append gets this + 1.
    pub fn last_lsn(&self) -> Lsn {
        self.scan.last_lsn
    }
    /// Records recovered.
    pub fn records(&self) -> u64 {
        self.scan.records
    }
    /// The segments found, in order.
    pub fn segments(&self) -> &[SegmentSummary] {
        &self.scan.segments
    }
    /// The torn tail that was truncated, if any (the node logs it).
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.scan.torn_tail.as_ref()
    }
    /// Streams the recovered records with LSN ≥ `from_lsn` (e.g. snapshot LSN + 1) from disk,
    /// up to [`Recovery::last_lsn`]. Fails at once if the log starts after `from_lsn` or ends
    /// before `from_lsn − 1`. Call it before compacting.
    pub fn replay(&self, from_lsn: Lsn) -> Result<Records, WalError> {
        Records::new(
            Arc::clone(&self.storage),
            self.segments.clone(),
            from_lsn,
            Some(self.scan.last_lsn),
        )
    }
}

/// What compaction removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segment files deleted.
    pub removed_segments: Vec<PathBuf>,
    /// Snapshot files deleted (by [`Wal::compact_to_snapshots`]).
    pub removed_snapshots: Vec<PathBuf>,
}

/// The write-ahead log: append from any thread, a writer thread syncs in batches.
///
/// Share it as `Arc<Wal>`. Dropping it shuts it down as [`Wal::shutdown`] does.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("durable_lsn", &self.durable_lsn())
            .finish_non_exhaustive()
    }
}

/// The lock file inside a log directory.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the exclusive lock of a log directory, or says who holds it. The OS releases it
/// when the process dies, so a crash never leaves a stale lock behind.
fn lock_dir(storage: &dyn Storage, dir: &Path) -> Result<Box<dyn DirLock>, WalError> {
    let path = dir.join(LOCK_FILE);
    match storage.try_lock(&path) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(WalError::Locked {
            dir: dir.to_path_buf(),
            lock_file: path,
        }),
        Err(e) => Err(WalError::io("lock", &path)(e)),
    }
}

/// Opens the last segment for appending and syncs it (what a killed process left in the
/// page cache is on disk only after this), or creates the first one; its size. Then syncs
/// the directory.
fn open_tail(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut Vec<SegmentFile>,
    scan: &Scan,
) -> Result<(Box<dyn AppendFile>, u64), WalError> {
    let tail = match segments.last() {
        Some(last) => {
            let mut file = storage
                .open_append(&last.path)
                .map_err(WalError::io("open", &last.path))?;
            file.sync_data()
                .map_err(WalError::io("fsync", &last.path))?;
            let bytes = scan.segments.last().map_or(0, |s| s.bytes);
            (file, bytes)
        }
        None => {
            let first = SegmentFile {
                first_lsn: 1,
                path: dir.join(segment::segment_file_name(1)),
            };
            let file = storage
                .create_new(&first.path)
                .map_err(WalError::io("create", &first.path))?;
            segments.push(first);
            (file, 0)
        }
    };
    segment::sync_dir(storage, dir)?;
    Ok(tail)
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`: scans and repairs it under the recovery
    /// rules (see [`segment`](crate::segment)), removes stale snapshot temp files, syncs the
    /// last segment so everything recovered is durable, and starts the writer thread.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<(Self, Recovery), WalError> {
        Self::open_with_hooks(dir, config, Arc::new(NoHooks))
    }

    /// [`Wal::open`] with writer hooks (instrumentation and fault injection).
    pub fn open_with_hooks(
        dir: impl AsRef<Path>,
        config: WalConfig,
        hooks: Arc<dyn WriterHooks>,
    ) -> Result<(Self, Recovery), WalError> {
        Self::open_on(Arc::new(OsStorage), dir, config, hooks)
    }

    /// [`Wal::open_with_hooks`] on `storage` instead of the real filesystem (a simulated
    /// disk). Every file operation of the log, its recovery, replay, compaction and
    /// snapshots then goes to `storage`.
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        config: WalConfig,
        hooks: Arc<dyn WriterHooks>,
    ) -> Result<(Self, Recovery), WalError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let disk = &*storage;
        if !disk.is_dir(&dir) {
            disk.create_dir_all(&dir)
                .map_err(WalError::io("create directory", &dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(disk, parent)?;
            }
        }
        let lock = lock_dir(disk, &dir)?;
        snapshot::remove_stale_temp_files_in(disk, &dir)?;
        let mut segments = segment::list_segments_in(disk, &dir)?;
        if segments.is_empty() && !snapshot::list_snapshots_in(disk, &dir)?.is_empty() {
            return Err(WalError::SegmentsMissing { dir });
        }
        let mut scan = Scan::default();
        segment::scan(disk, &segments, ScanMode::Repair, &mut scan)?;

        let (file, segment_bytes) = open_tail(disk, &dir, &mut segments, &scan)?;

        let next_lsn = scan.last_lsn + 1;
        let shared = Arc::new(Shared {
            ring: Ring::new(next_lsn, config.ring_bounds()),
            durability: Arc::new(Durability::new(scan.last_lsn)),
            segments: Mutex::new(segments.clone()),
            counters: Counters::default(),
            hooks,
            config,
            dir,
            lock,
            storage: Arc::clone(&storage),
        });
        let path = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let handle = Writer::spawn(Arc::clone(&shared), file, path, segment_bytes)?;
        let wal = Self {
            shared,
            writer: Mutex::new(Some(handle)),
        };
        let recovery = Recovery {
            segments,
            scan,
            storage,
        };
        Ok((wal, recovery))
    }

    /// The durable LSN and its waiters (for [`Log`](crate::Log)).
    pub(crate) fn durability(&self) -> &Arc<Durability> {
        &self.shared.durability
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Assigns the next LSN to `payload` and enqueues it, without blocking on I/O. Fails with
    /// [`AppendError::Backpressure`] when the queue is full (records or bytes); nothing is
    /// enqueued then. The record is durable once [`Wal::durable_lsn`] reaches the LSN.
    pub fn append(&self, payload: impl AsRef<[u8]>) -> Result<Lsn, AppendError> {
        self.append_batch(std::slice::from_ref(&payload))
    }

    /// Counts a refusal for a full queue and builds it, with the last fdatasync's duration
    /// as the retry hint (about when room frees up).
    fn backpressure(&self) -> AppendError {
        // Ordering: Relaxed — statistics.
        self.shared
            .counters
            .backpressure
            .fetch_add(1, Ordering::Relaxed);
        let hint = self.shared.counters.last_sync_us.load(Ordering::Relaxed);
        AppendError::Backpressure {
            retry_after_us: hint.clamp(RETRY_AFTER_US_MIN, RETRY_AFTER_US_MAX),
        }
    }

    /// Appends `payloads` as one unit — the events of one engine decision — with contiguous
    /// LSNs, and returns the LSN of the last one. All or none: the whole batch is checked
    /// against the queue bounds (its record count and its total bytes) before anything is
    /// enqueued, so a refusal ([`AppendError::Backpressure`], [`AppendError::TooLarge`] for
    /// any payload, `Failed`, `Closed`) leaves the queue as it was. One claim for the batch:
    /// no other append interleaves, so the LSNs are `last − n + 1 ..= last`. A batch of more
    /// records than the queue's ring has slots (`queue_records_max` rounded up to a power
    /// of two, at least 64) is refused as [`AppendError::TooLarge`].
    /// An empty batch appends nothing and returns the last LSN assigned so far.
    ///
    /// The writer may still split the batch over two fdatasyncs (at a segment or
    /// batch-size boundary), so a crash can persist a prefix of it; the torn-tail rule and
    /// the node's recovery (which re-appends a decision's missing derived events) cover that.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Lsn, AppendError> {
        let batch_bytes = batch_bytes(payloads)?;
        let ring = &self.shared.ring;
        if payloads.is_empty() {
            ring.status().check_open()?;
            return Ok(ring.last_claimed());
        }
        // As before the ring, a batch larger than a bound is admitted into an empty queue
        // (so it is never refused for ever); otherwise its records and bytes must both fit.
        ring.append(&[], payloads, batch_bytes)
            .map_err(|refusal| match refusal {
                Refusal::Full => self.backpressure(),
                Refusal::Stopped(error) => error,
            })
    }

    /// The last LSN assigned by an append so far (durable or not; 0 for an empty log). Every
    /// append that returned before this call has an LSN ≤ the answer.
    pub fn last_appended_lsn(&self) -> Lsn {
        self.shared.ring.last_claimed()
    }

    /// The highest LSN known to be on stable storage (every LSN ≤ it is).
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durability.durable_lsn()
    }

    /// Blocks until `lsn` is durable (returns the durable LSN), the log stops, or `timeout`.
    pub fn wait_durable(&self, lsn: Lsn, timeout: Duration) -> Result<Lsn, WaitError> {
        self.shared.durability.wait(lsn, timeout)
    }

    /// A future that resolves once `lsn` is durable (or the log stops). Runtime-agnostic: it
    /// uses only `std::task::Waker`, so a tokio task can `.await` it.
    pub fn durable(&self, lsn: Lsn) -> DurableFuture {
        DurableFuture::new(Arc::clone(&self.shared.durability), lsn)
    }

    /// The writer's failure, if it failed (the log then accepts nothing).
    pub fn failure(&self) -> Option<LogFailure> {
        self.shared.durability.failure()
    }

    /// The counters, for metrics.
    pub fn metrics(&self) -> WalMetrics {
        let c = &self.shared.counters;
        // Ordering: Relaxed — statistics, no data depends on them.
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (queue_records, queue_bytes) = self.shared.ring.queued();
        WalMetrics {
            records_written_total: get(&c.records_written),
            bytes_written_total: get(&c.bytes_written),
            batches_synced_total: get(&c.batches_synced),
            backpressure_total: get(&c.backpressure),
            last_batch_records: get(&c.last_batch_records),
            last_sync_latency_us: get(&c.last_sync_us),
            sync_latency_us_total: get(&c.sync_us_total),
            durable_lsn: self.durable_lsn(),
            queue_records,
            queue_bytes,
        }
    }

    /// Deletes (does not archive) every segment all of whose records have LSN ≤ `upto_lsn`,
    /// never the segment being written, then syncs the directory. The caller chooses
    /// `upto_lsn`; [`Wal::compact_to_snapshots`] applies the snapshot retention rule. Call it
    /// after replay has finished reading.
    pub fn compact(&self, upto_lsn: Lsn) -> Result<CompactReport, WalError> {
        let removed: Vec<SegmentFile> = {
            let mut segments = lock(&self.shared.segments);
            // Segment i ends at segments[i + 1].first_lsn − 1; the last one is being written.
            let removable = segments
                .windows(2)
                .take_while(|pair| pair[1].first_lsn - 1 <= upto_lsn)
                .count();
            segments.drain(..removable).collect()
        };
        let mut report = CompactReport::default();
        let storage = &*self.shared.storage;
        for segment in removed {
            storage
                .remove(&segment.path)
                .map_err(WalError::io("remove", &segment.path))?;
            report.removed_segments.push(segment.path);
        }
        if !report.removed_segments.is_empty() {
            segment::sync_dir(storage, &self.shared.dir)?;
        }
        Ok(report)
    }

    /// Applies the retention rule that keeps snapshot fallback possible (see
    /// [`snapshot`](crate::snapshot)): keeps the two newest valid snapshots, deletes older
    /// snapshot files, and compacts the log up to the *older* of the two kept snapshots. With
    /// fewer than two valid snapshots it removes nothing.
    pub fn compact_to_snapshots(&self) -> Result<CompactReport, WalError> {
        let storage = &*self.shared.storage;
        let Some((bound, older)) = snapshot::retention(storage, &self.shared.dir)? else {
            return Ok(CompactReport::default());
        };
        let mut report = self.compact(bound)?;
        for path in older {
            storage
                .remove(&path)
                .map_err(WalError::io("remove", &path))?;
            report.removed_snapshots.push(path);
        }
        if !report.removed_snapshots.is_empty() {
            segment::sync_dir(storage, &self.shared.dir)?;
        }
        Ok(report)
    }

    /// Writes a snapshot of state as of `lsn` (see [`snapshot::write_snapshot`]); refuses an
    /// `lsn` that is not yet durable, since a snapshot ahead of the log could not be replayed
    /// onto after a crash.
    pub fn write_snapshot(&self, lsn: Lsn, payload: &[u8]) -> Result<PathBuf, WalError> {
        let durable = self.durable_lsn();
        if lsn > durable {
            return Err(WalError::SnapshotAheadOfLog { lsn, durable });
        }
        snapshot::write_snapshot_in(&*self.shared.storage, &self.shared.dir, lsn, payload)
    }

    /// Stops accepting appends, writes and syncs everything queued, and joins the writer.
    /// Returns the final durable LSN, or the writer's failure. Idempotent.
    pub fn shutdown(&self) -> Result<Lsn, WalError> {
        self.shared.ring.set_status(LogStatus::Closed);
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle {
            // The writer catches its own errors; a panic there is a bug worth propagating.
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        // The writer is gone: nothing of this process writes the log any more.
        // An unlock error leaves the lock held until the process exits: a later open in this
        // process is refused (never corrupted), so there is nothing better to do with it.
        let _ = self.shared.lock.unlock();
        match self.failure() {
            Some(failure) => Err(WalError::WriterFailed(failure)),
            None => Ok(self.durable_lsn()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Flushes what is queued; anything already acknowledged durable is on disk anyway.
        let _ = self.shutdown();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}
