//! Durable-ack latency of the write-ahead log, open loop, side by side with raw append +
//! fsync of the same records in the same run (PRODUCT §10: p99 ≤ 3 ms at 100 k bids/s, and
//! ≤ 1.5 × the raw append + fsync of the same batches).
//!
//! For each arrival rate, two logs run one after the other, each in a fresh directory:
//! - `wal`: [`gavel_wal::Wal`] with its default configuration (group commit, framing,
//!   CRC32C, bounded queue);
//! - `raw`: a plain append-only `File` in the same filesystem, written by one thread that
//!   takes whatever has arrived, `write_all`s it and `sync_data`s it (group commit by hand:
//!   no framing, no CRC, a queue bounded by the same record count as the WAL's).
//!
//! The load is the same for both: one appender thread follows a fixed schedule (record `i`
//! is due at `start + i / rate`) and appends ≈ 100-byte encoded `pb::Record`s of accepted
//! bids (16-byte bidder ids). It sleeps while ahead, so records leave in small bursts; if it
//! falls behind, it catches up as fast as it can, and a record's latency still counts from
//! its scheduled time (no coordinated omission). A record the full queue rejects is retried
//! at once and counted. A waiter thread blocks on the log's durability wait; each time the
//! durable position advances, it reads the clock once and records `now − scheduled time`
//! for every record the sync covered (they all become durable at the same instant). The
//! `max` mode has no schedule: the appender appends as fast as the queue admits, and a
//! record's time starts at its first append attempt.
//!
//! Usage: `cargo run --release -p gavel-benches --bin wal_latency -- [--rates
//! 10000,100000,max] [--seconds 5] [--dir DIR]`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use gavel_benches::process::{
    filesystem, named_threads_cpu_seconds, peak_rss_mib, process_cpu_seconds, thread_cpu_seconds,
    vm_steal_seconds,
};
use gavel_benches::wal_load::accepted_bid_payloads;
use gavel_wal::{AppendError, Wal, WalConfig, WriterHooks};
use hdrhistogram::Histogram;

/// Distinct pre-encoded records the appender cycles through.
const PAYLOADS: usize = 4_096;
/// Slots of the ring of scheduled times, indexed by sequence number. The appender never
/// runs more than this far ahead of the waiter (it yields until the waiter catches up).
const RING_SLOTS: u64 = 1 << 20;
/// Highest latency the histograms track (60 s), ns.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// How long the waiter blocks before re-checking whether the run is over.
const WAIT_SLICE: Duration = Duration::from_millis(5);
/// Name of the raw baseline's writer thread (for its CPU time).
const RAW_WRITER_THREAD: &str = "raw-fsync";
/// Name of the WAL's writer thread, as `gavel-wal` spawns it.
const WAL_WRITER_THREAD: &str = "gavel-wal-writer";
/// Longest run: a schedule the log cannot keep up with is abandoned after this many times
/// its duration, and the run is marked as not sustained.
const OVERRUN_FACTOR: f64 = 3.0;
/// Highest arrival rate accepted, records/s.
const RATE_MAX: u64 = 10_000_000;

const _: () = assert!(RING_SLOTS.is_power_of_two());
const _: () = assert!(
    RING_SLOTS as usize > 2 * (1 << 16),
    "the ring must cover the WAL's default queue plus the batch being written"
);

#[derive(Parser, Debug)]
#[command(about = "Open-loop durable-ack latency of the WAL beside raw append + fsync")]
struct Config {
    /// Arrival rates in records/s, comma-separated; `max` appends as fast as the queue admits.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,max")]
    rates: Vec<Rate>,
    /// Seconds each log runs at each rate.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// How long each log's writer gathers a batch once records are pending, µs
    /// (`WalConfig::batch_wait_us_max`; the raw baseline waits the same; 0 = never).
    #[arg(long, default_value_t = 0)]
    batch_wait_us: u64,
    /// Directory in which the temporary log directories are made (default: the system temp
    /// directory; its filesystem is printed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.seconds > 0.0 && self.seconds <= 600.0,
            "--seconds must be in (0, 600]"
        );
        ensure!(!self.rates.is_empty(), "--rates needs at least one rate");
        ensure!(
            self.batch_wait_us <= 1_000_000,
            "--batch-wait-us must be at most 1 s"
        );
        Ok(())
    }
}

/// An arrival rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rate {
    /// A fixed schedule, records per second.
    PerSecond(u64),
    /// As fast as the queue admits.
    Max,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.replace('_', "").parse::<u64>() {
            Ok(rate) if (1..=RATE_MAX).contains(&rate) => Ok(Rate::PerSecond(rate)),
            _ => Err(format!(
                "a rate is `max` or records/s in 1..={RATE_MAX}, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSecond(rate) if rate % 1000 == 0 => write!(f, "{} k/s", rate / 1000),
            Rate::PerSecond(rate) => write!(f, "{rate}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// Sync counters of a log over a run.
#[derive(Clone, Debug)]
struct SyncStats {
    syncs: u64,
    records: u64,
    sync_us_total: u64,
    /// Each fdatasync's duration, ns.
    sync_ns: Histogram<u64>,
}

/// Times each fdatasync of a log's writer thread (through the WAL's writer hooks, or by hand
/// in the raw log).
#[derive(Default)]
struct SyncTimer {
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
struct TimedWal {
    wal: Wal,
    timer: Arc<SyncTimer>,
}

/// What the driver needs of a log.
trait DurableLog: Sync {
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
struct RawLog {
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
    fn new(records_max: usize, batch_wait: Duration) -> RawLog {
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
    fn write_loop(&self, mut file: File) -> anyhow::Result<()> {
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

    fn close(&self) {
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

fn histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds (1 ns .. 60 s, 3 significant digits).
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, ns: u64) {
    // Invariant: clamped into the histogram's bounds.
    h.record(ns.clamp(1, LATENCY_NS_MAX))
        .expect("value within bounds");
}

fn ns_since(start: Instant) -> u64 {
    // Cast: a run never lasts 2^64 ns.
    Instant::now().saturating_duration_since(start).as_nanos() as u64
}

/// State shared by the appender and the waiter of one run.
struct Shared<'a> {
    log: &'a dyn DurableLog,
    start: Instant,
    /// Scheduled time (ns after `start`) of record `seq`, at `seq % RING_SLOTS`.
    scheduled: Vec<AtomicU64>,
    /// Sequence number of the last record appended.
    appended: AtomicU64,
    /// Sequence number of the last record the waiter has accounted for.
    accounted: AtomicU64,
    /// Set by the appender after its last append.
    finished: AtomicBool,
}

/// What the appender saw.
struct AppenderReport {
    sent: u64,
    rejections: u64,
    /// Actual first append attempt − scheduled time.
    send_lag: Histogram<u64>,
    /// When the last record was appended, ns after start.
    last_sent_ns: u64,
    sustained: bool,
    cpu_seconds: f64,
}

fn appender(
    shared: &Shared<'_>,
    rate: Rate,
    seconds: f64,
    payloads: &[Vec<u8>],
) -> anyhow::Result<AppenderReport> {
    // Cast: durations of seconds, in ns, far below 2^64.
    let run_ns = (seconds * 1e9) as u64;
    let overrun_ns = (seconds * OVERRUN_FACTOR * 1e9) as u64;
    let count = match rate {
        // Cast: rate × seconds is far below 2^64.
        Rate::PerSecond(r) => (r as f64 * seconds) as u64,
        Rate::Max => u64::MAX,
    };
    let mut report = AppenderReport {
        sent: 0,
        rejections: 0,
        send_lag: histogram(),
        last_sent_ns: 0,
        sustained: true,
        cpu_seconds: 0.0,
    };
    let until_start = shared.start.saturating_duration_since(Instant::now());
    std::thread::sleep(until_start);
    for i in 0..count {
        let scheduled_ns = match rate {
            Rate::PerSecond(r) => {
                // Cast: i / r seconds in ns fits u64 for any run here.
                let due = (u128::from(i) * 1_000_000_000 / u128::from(r)) as u64;
                loop {
                    let now = ns_since(shared.start);
                    if now >= due {
                        break;
                    }
                    // Sleeps overshoot by the timer slack (≈ 50 µs): records then leave in
                    // small bursts, each still timed from its own due time.
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                due
            }
            Rate::Max => ns_since(shared.start),
        };
        let now = ns_since(shared.start);
        if rate == Rate::Max && now >= run_ns {
            break;
        }
        if now >= overrun_ns {
            report.sustained = false;
            break;
        }
        record(&mut report.send_lag, now - scheduled_ns);
        let seq = i + 1;
        // Ordering: Acquire pairs with the waiter's Release after it read the slots.
        while seq - shared.accounted.load(Ordering::Acquire) > RING_SLOTS {
            std::thread::yield_now();
        }
        // Ordering: Release — published before the append; the waiter reads the slot only
        // after the log's durable position (synchronised through the log) covers `seq`.
        shared.scheduled[(seq % RING_SLOTS) as usize].store(scheduled_ns, Ordering::Release);
        let payload = &payloads[i as usize % payloads.len()];
        loop {
            match shared.log.try_append(payload)? {
                Some(assigned) => {
                    ensure!(
                        assigned == seq,
                        "the log assigned {assigned} to record {seq}: not a fresh log?"
                    );
                    break;
                }
                None => {
                    report.rejections += 1;
                    std::thread::yield_now();
                }
            }
        }
        // Ordering: Release — the waiter reads `appended` after `finished` to know the end.
        shared.appended.store(seq, Ordering::Release);
        report.sent = seq;
    }
    report.last_sent_ns = ns_since(shared.start);
    // Ordering: Release pairs with the waiter's Acquire: it then sees the final `appended`.
    shared.finished.store(true, Ordering::Release);
    report.cpu_seconds = thread_cpu_seconds();
    Ok(report)
}

/// What the waiter saw.
struct WaiterReport {
    latency: Histogram<u64>,
    last_durable_ns: u64,
    cpu_seconds: f64,
}

fn waiter(shared: &Shared<'_>) -> WaiterReport {
    let mut latency = histogram();
    let mut seen = 0;
    let mut last_durable_ns = 0;
    loop {
        let durable = shared.log.durable();
        if durable > seen {
            let now = ns_since(shared.start);
            for seq in seen + 1..=durable {
                // Ordering: Acquire pairs with the appender's Release store of the slot.
                let scheduled =
                    shared.scheduled[(seq % RING_SLOTS) as usize].load(Ordering::Acquire);
                record(&mut latency, now.saturating_sub(scheduled));
            }
            seen = durable;
            last_durable_ns = now;
            // Ordering: Release — the appender may reuse the slots read above.
            shared.accounted.store(seen, Ordering::Release);
            continue;
        }
        // Ordering: Acquire pairs with the appender's Release of `finished`, after which
        // `appended` is final.
        if shared.finished.load(Ordering::Acquire)
            && seen >= shared.appended.load(Ordering::Acquire)
        {
            break;
        }
        shared.log.wait_beyond(seen, WAIT_SLICE);
    }
    WaiterReport {
        latency,
        last_durable_ns,
        cpu_seconds: thread_cpu_seconds(),
    }
}

/// One log at one rate.
struct Run {
    log: &'static str,
    rate: Rate,
    appender: AppenderReport,
    waiter: WaiterReport,
    sync: SyncStats,
    wall_seconds: f64,
    process_cpu_seconds: f64,
    writer_cpu_seconds: f64,
    steal_seconds: f64,
}

/// Drives `log` at `rate` for `seconds`; the log must be fresh (sequence numbers from 1).
fn drive(
    log: &dyn DurableLog,
    name: &'static str,
    rate: Rate,
    seconds: f64,
    payloads: &[Vec<u8>],
) -> anyhow::Result<Run> {
    let cpu_before = process_cpu_seconds();
    let steal_before = vm_steal_seconds();
    let writer_cpu_before = log.writer_cpu_seconds();
    let shared = Shared {
        log,
        // The schedule starts a little after the threads are spawned.
        start: Instant::now() + Duration::from_millis(20),
        scheduled: (0..RING_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        appended: AtomicU64::new(0),
        accounted: AtomicU64::new(0),
        finished: AtomicBool::new(false),
    };
    let (appender_report, waiter_report) = std::thread::scope(|scope| {
        let waiter = std::thread::Builder::new()
            .name("bench-waiter".into())
            .spawn_scoped(scope, || waiter(&shared))
            .context("spawn waiter")?;
        let appender = std::thread::Builder::new()
            .name("bench-appender".into())
            .spawn_scoped(scope, || appender(&shared, rate, seconds, payloads))
            .context("spawn appender")?;
        let appended = appender.join().expect("appender panicked");
        if appended.is_err() {
            // The waiter would wait for records that will never be durable.
            // Ordering: Release, as the appender would have.
            shared.finished.store(true, Ordering::Release);
        }
        let waited = waiter.join().expect("waiter panicked");
        anyhow::Ok((appended?, waited))
    })?;
    let wall_seconds = shared.start.elapsed().as_secs_f64();
    Ok(Run {
        log: name,
        rate,
        appender: appender_report,
        waiter: waiter_report,
        sync: log.sync_stats(),
        wall_seconds,
        process_cpu_seconds: process_cpu_seconds() - cpu_before,
        writer_cpu_seconds: log.writer_cpu_seconds() - writer_cpu_before,
        steal_seconds: vm_steal_seconds() - steal_before,
    })
}

fn wal_config(batch_wait_us: u64) -> WalConfig {
    WalConfig {
        batch_wait_us_max: batch_wait_us,
        ..WalConfig::default()
    }
}

fn run_wal(config: &Config, base: &Path, rate: Rate, payloads: &[Vec<u8>]) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("gavel-wal-latency-")
        .tempdir_in(base)
        .context("temp dir")?;
    let timer = Arc::new(SyncTimer::default());
    let (wal, _) = Wal::open_with_hooks(
        dir.path(),
        wal_config(config.batch_wait_us),
        Arc::clone(&timer) as Arc<dyn WriterHooks>,
    )
    .context("open wal")?;
    let wal = TimedWal { wal, timer };
    let run = drive(&wal, "wal", rate, config.seconds, payloads)?;
    wal.wal.shutdown().context("wal shutdown")?;
    Ok(run)
}

fn run_raw(config: &Config, base: &Path, rate: Rate, payloads: &[Vec<u8>]) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("gavel-raw-latency-")
        .tempdir_in(base)
        .context("temp dir")?;
    let path = dir.path().join("raw.log");
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    File::open(dir.path())
        .and_then(|d| d.sync_all())
        .context("sync dir")?;
    let raw = RawLog::new(
        WalConfig::default().queue_records_max,
        Duration::from_micros(config.batch_wait_us),
    );
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name(RAW_WRITER_THREAD.into())
            .spawn_scoped(scope, || raw.write_loop(file))
            .context("spawn raw writer")?;
        let run = drive(&raw, "raw", rate, config.seconds, payloads);
        raw.close();
        writer.join().expect("raw writer panicked")?;
        run
    })
}

fn us(ns: u64) -> String {
    // Cast: for display.
    let us = ns as f64 / 1e3;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

fn print_run(run: &Run) {
    let h = &run.waiter.latency;
    let a = &run.appender;
    // Cast: counts and seconds, for display.
    let send_seconds = a.last_sent_ns as f64 / 1e9;
    let durable_seconds = run.waiter.last_durable_ns as f64 / 1e9;
    println!(
        "{:<4} {:>8}: durable ack from scheduled send, µs: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
        run.log,
        run.rate.to_string(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.value_at_quantile(0.9999)),
        us(h.max()),
    );
    println!(
        "     {} records in {send_seconds:.2} s = {:.0}/s sent ({:.0}/s made durable){}; \
         send lag p50 {} p99 {} max {} µs; back-pressure rejections {}",
        a.sent,
        a.sent as f64 / send_seconds.max(1e-9),
        a.sent as f64 / durable_seconds.max(1e-9),
        if a.sustained {
            ""
        } else {
            " — SCHEDULE NOT SUSTAINED, abandoned"
        },
        us(a.send_lag.value_at_quantile(0.5)),
        us(a.send_lag.value_at_quantile(0.99)),
        us(a.send_lag.max()),
        a.rejections,
    );
    println!(
        "     {} syncs, {:.1} records/sync, fdatasync mean {} p99 {} max {} µs; CPU: process {:.2} s in {:.2} s wall \
         ({:.0} % of one core), load generator {:.2} s (appender {:.2} + waiter {:.2}), log writer {:.2} s; \
         VM steal {:.2} s",
        run.sync.syncs,
        run.sync.records as f64 / run.sync.syncs.max(1) as f64,
        run.sync.sync_us_total / run.sync.syncs.max(1),
        us(run.sync.sync_ns.value_at_quantile(0.99)),
        us(run.sync.sync_ns.max()),
        run.process_cpu_seconds,
        run.wall_seconds,
        100.0 * run.process_cpu_seconds / run.wall_seconds,
        a.cpu_seconds + run.waiter.cpu_seconds,
        a.cpu_seconds,
        run.waiter.cpu_seconds,
        run.writer_cpu_seconds,
        run.steal_seconds,
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate()?;
    let base = config.dir.clone().unwrap_or_else(std::env::temp_dir);
    if !base.is_dir() {
        bail!("--dir {} is not a directory", base.display());
    }
    let payloads = accepted_bid_payloads(PAYLOADS, 0x3a1);
    let payload_bytes: usize = payloads.iter().map(Vec::len).sum();
    println!(
        "records: {PAYLOADS} distinct encoded pb::Record (accepted English bid, 16-byte bidder id), \
         mean {:.1} B payload (+ 25 B WAL frame header); logs in {} on: {}",
        // Cast: for display.
        payload_bytes as f64 / PAYLOADS as f64,
        base.display(),
        filesystem(&base),
    );
    println!(
        "{:?}; each log runs {} s per rate",
        wal_config(config.batch_wait_us),
        config.seconds
    );
    let mut runs = Vec::new();
    for &rate in &config.rates {
        println!("-- {rate} (load average before: {})", load_average());
        let wal = run_wal(&config, &base, rate, &payloads)?;
        print_run(&wal);
        let raw = run_raw(&config, &base, rate, &payloads)?;
        print_run(&raw);
        runs.push((wal, raw));
    }
    println!("-- summary: WAL / raw append+fsync of the same records, same run");
    for (wal, raw) in &runs {
        let ratio = |q: f64| {
            // Cast: for display.
            wal.waiter.latency.value_at_quantile(q) as f64
                / raw.waiter.latency.value_at_quantile(q).max(1) as f64
        };
        println!(
            "{:>8}: WAL p50 {} / p99 {} / p99.9 {} µs; raw p50 {} / p99 {} / p99.9 {} µs; \
             ratio p50 {:.2}× p99 {:.2}× p99.9 {:.2}×",
            wal.rate.to_string(),
            us(wal.waiter.latency.value_at_quantile(0.5)),
            us(wal.waiter.latency.value_at_quantile(0.99)),
            us(wal.waiter.latency.value_at_quantile(0.999)),
            us(raw.waiter.latency.value_at_quantile(0.5)),
            us(raw.waiter.latency.value_at_quantile(0.99)),
            us(raw.waiter.latency.value_at_quantile(0.999)),
            ratio(0.5),
            ratio(0.99),
            ratio(0.999),
        );
    }
    println!(
        "load average after: {}; peak RSS {} MiB",
        load_average(),
        peak_rss_mib()
    );
    Ok(())
}
