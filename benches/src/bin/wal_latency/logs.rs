//! The two logs under test behind one [`DurableLog`] interface: the WAL ([`TimedWal`]) and
//! the raw append + fsync baseline ([`RawLog`]), each timing its syncs ([`SyncTimer`]).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gavel_benches::process::named_threads_cpu_seconds;
use gavel_wal::{AppendError, Wal, WriterHooks};
use hdrhistogram::Histogram;

/// Name of the raw baseline's writer thread (for its CPU time).
pub(super) const RAW_WRITER_THREAD: &str = "raw-fsync";
/// Name of the WAL's writer thread, as `gavel-wal` spawns it.
const WAL_WRITER_THREAD: &str = "gavel-wal-writer";
/// Highest latency the histograms track (60 s), ns.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Sync counters of a log over a run.
#[derive(Clone, Debug)]
pub(super) struct SyncStats {
    pub(super) syncs: u64,
    pub(super) records: u64,
    pub(super) sync_us_total: u64,
    /// Each fdatasync's duration, ns.
    pub(super) sync_ns: Histogram<u64>,
}

/// Times each fdatasync of a log's writer thread (through the WAL's writer hooks, or by hand
/// in the raw log).
#[derive(Default)]
pub(super) struct SyncTimer {
    started: Mutex<Option<Instant>>,
    durations: Mutex<Option<Histogram<u64>>>,
}

impl SyncTimer {
    fn start(&self) {
        *lock(&self.started) = Some(Instant::now());
    }

    fn stop(&self) {
        if let Some(started) = lock(&self.started).take() {
            // Cast: a sync never takes 2^64 ns.
            let ns = started.elapsed().as_nanos() as u64;
            record(lock(&self.durations).get_or_insert_with(histogram), ns);
        }
    }

    fn histogram(&self) -> Histogram<u64> {
        lock(&self.durations).clone().unwrap_or_else(histogram)
    }
}

impl WriterHooks for SyncTimer {
    fn before_sync(&self, _last: u64) -> std::io::Result<()> {
        self.start();
        Ok(())
    }

    fn after_sync(&self, _last: u64) {
        self.stop();
    }
}

/// A WAL and the timer of its syncs.
pub(super) struct TimedWal {
    pub(super) wal: Wal,
    pub(super) timer: Arc<SyncTimer>,
}

/// What the driver needs of a log.
pub(super) trait DurableLog: Sync {
    /// Appends; `Ok(None)` when the queue is full (back-pressure).
    fn try_append(&self, payload: &[u8]) -> anyhow::Result<Option<u64>>;
    /// The highest durable sequence number (records count from 1).
    fn durable(&self) -> u64;
    /// Blocks until the durable position passes `seen`, or `timeout`.
    fn wait_beyond(&self, seen: u64, timeout: Duration);
    /// Sync counters so far.
    fn sync_stats(&self) -> SyncStats;
    /// CPU seconds of the log's writer thread so far.
    fn writer_cpu_seconds(&self) -> f64;
}

impl DurableLog for TimedWal {
    fn try_append(&self, payload: &[u8]) -> anyhow::Result<Option<u64>> {
        match self.wal.append(payload) {
            Ok(lsn) => Ok(Some(lsn)),
            Err(AppendError::Backpressure { .. }) => Ok(None),
            Err(e) => Err(e).context("wal append"),
        }
    }

    fn durable(&self) -> u64 {
        self.wal.durable_lsn()
    }

    fn wait_beyond(&self, seen: u64, timeout: Duration) {
        // A timeout is expected (the driver re-checks); a stopped log shows up as a failed
        // append or a durable position that stops moving.
        let _ = self.wal.wait_durable(seen + 1, timeout);
    }

    fn sync_stats(&self) -> SyncStats {
        let m = self.wal.metrics();
        SyncStats {
            syncs: m.batches_synced_total,
            records: m.records_written_total,
            sync_us_total: m.sync_latency_us_total,
            sync_ns: self.timer.histogram(),
        }
    }

    fn writer_cpu_seconds(&self) -> f64 {
        named_threads_cpu_seconds(WAL_WRITER_THREAD)
    }
}

/// The baseline: records appended to a buffer under a mutex, one thread writing whatever has
/// arrived with one `write_all` and one `sync_data`, then publishing the durable position.
pub(super) struct RawLog {
    queue: Mutex<RawQueue>,
    writer_wake: Condvar,
    records_max: usize,
    batch_wait: Duration,
    durable: AtomicU64,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    syncs: AtomicU64,
    sync_us_total: AtomicU64,
    timer: SyncTimer,
}

#[derive(Default)]
struct RawQueue {
    bytes: Vec<u8>,
    records: usize,
    next_seq: u64,
    writer_idle: bool,
    closed: bool,
}

/// Locks a mutex of this bench; nothing here panics while holding one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("no panic under a bench lock")
}

impl RawLog {
    pub(super) fn new(records_max: usize, batch_wait: Duration) -> RawLog {
        RawLog {
            queue: Mutex::new(RawQueue {
                next_seq: 1,
                ..RawQueue::default()
            }),
            writer_wake: Condvar::new(),
            records_max,
            batch_wait,
            durable: AtomicU64::new(0),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            syncs: AtomicU64::new(0),
            sync_us_total: AtomicU64::new(0),
            timer: SyncTimer::default(),
        }
    }

    /// The writer thread: until closed and drained, swap out what arrived, write, sync.
    pub(super) fn write_loop(&self, mut file: File) -> anyhow::Result<()> {
        let mut batch = Vec::new();
        loop {
            let last = {
                let mut queue = lock(&self.queue);
                while queue.records == 0 {
                    if queue.closed {
                        return Ok(());
                    }
                    queue.writer_idle = true;
                    queue = self
                        .writer_wake
                        .wait(queue)
                        .expect("no panic under a bench lock");
                    queue.writer_idle = false;
                }
                if !self.batch_wait.is_zero() {
                    // Gathers by time only: at these rates a batch never fills first.
                    let deadline = Instant::now() + self.batch_wait;
                    while !queue.closed {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        queue = self
                            .writer_wake
                            .wait_timeout(queue, left)
                            .expect("no panic under a bench lock")
                            .0;
                    }
                }
                std::mem::swap(&mut queue.bytes, &mut batch);
                queue.records = 0;
                queue.next_seq - 1
            };
            file.write_all(&batch).context("raw write")?;
            let started = Instant::now();
            self.timer.start();
            file.sync_data().context("raw fdatasync")?;
            self.timer.stop();
            // Cast: a sync never takes 2^64 µs.
            let sync_us = started.elapsed().as_micros() as u64;
            batch.clear();
            // Ordering: Relaxed — statistics; the durable store below publishes.
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.sync_us_total.fetch_add(sync_us, Ordering::Relaxed);
            // Ordering: Release — a waiter that sees `last` sees that the sync returned.
            self.durable.store(last, Ordering::Release);
            // Taking the lock after the store: a waiter that checked before the store is
            // already waiting, so the notification reaches it.
            drop(lock(&self.durable_lock));
            self.durable_changed.notify_all();
        }
    }

    pub(super) fn close(&self) {
        lock(&self.queue).closed = true;
        self.writer_wake.notify_one();
    }
}

impl DurableLog for RawLog {
    fn try_append(&self, payload: &[u8]) -> anyhow::Result<Option<u64>> {
        let mut queue = lock(&self.queue);
        ensure!(!queue.closed, "raw log closed");
        if queue.records >= self.records_max {
            return Ok(None);
        }
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.records += 1;
        queue.bytes.extend_from_slice(payload);
        let wake = queue.writer_idle;
        drop(queue);
        if wake {
            self.writer_wake.notify_one();
        }
        Ok(Some(seq))
    }

    fn durable(&self) -> u64 {
        // Ordering: Acquire pairs with the writer's Release store after the sync.
        self.durable.load(Ordering::Acquire)
    }

    fn wait_beyond(&self, seen: u64, timeout: Duration) {
        let guard = lock(&self.durable_lock);
        let _ = self
            .durable_changed
            .wait_timeout_while(guard, timeout, |()| self.durable() <= seen)
            .expect("no panic under a bench lock");
    }

    fn sync_stats(&self) -> SyncStats {
        // Ordering: Relaxed — statistics.
        SyncStats {
            syncs: self.syncs.load(Ordering::Relaxed),
            records: self.durable(),
            sync_us_total: self.sync_us_total.load(Ordering::Relaxed),
            sync_ns: self.timer.histogram(),
        }
    }

    fn writer_cpu_seconds(&self) -> f64 {
        named_threads_cpu_seconds(RAW_WRITER_THREAD)
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds (1 ns .. 60 s, 3 significant digits).
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

pub(super) fn record(h: &mut Histogram<u64>, ns: u64) {
    // Invariant: clamped into the histogram's bounds.
    h.record(ns.clamp(1, LATENCY_NS_MAX))
        .expect("value within bounds");
}
