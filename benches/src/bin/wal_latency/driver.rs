//! The open-loop driver: an appender thread on the schedule, a waiter thread recording
//! each record's durable latency from its scheduled time ([`drive`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gavel_benches::process::{process_cpu_seconds, thread_cpu_seconds, vm_steal_seconds};
use hdrhistogram::Histogram;

use crate::Rate;
use crate::logs::{DurableLog, SyncStats, histogram, record};

/// Slots of the ring of scheduled times, indexed by sequence number. The appender never
/// runs more than this far ahead of the waiter (it yields until the waiter catches up).
const RING_SLOTS: u64 = 1 << 20;
/// How long the waiter blocks before re-checking whether the run is over.
const WAIT_SLICE: Duration = Duration::from_millis(5);
/// Longest run: a schedule the log cannot keep up with is abandoned after this many times
/// its duration, and the run is marked as not sustained.
const OVERRUN_FACTOR: f64 = 3.0;

const _: () = assert!(RING_SLOTS.is_power_of_two());
const _: () = assert!(
    RING_SLOTS as usize > 2 * (1 << 16),
    "the ring must cover the WAL's default queue plus the batch being written"
);

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
pub(super) struct AppenderReport {
    pub(super) sent: u64,
    pub(super) rejections: u64,
    /// Actual first append attempt − scheduled time.
    pub(super) send_lag: Histogram<u64>,
    /// When the last record was appended, ns after start.
    pub(super) last_sent_ns: u64,
    pub(super) sustained: bool,
    pub(super) cpu_seconds: f64,
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
        let scheduled_ns = wait_until_due(shared.start, rate, i);
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
        report.rejections += append_until_admitted(shared.log, payload, seq)?;
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

/// Sleeps until record `i` is due at `rate` (never, for `max`); its scheduled time, ns
/// after `start`.
fn wait_until_due(start: Instant, rate: Rate, i: u64) -> u64 {
    match rate {
        Rate::PerSecond(r) => {
            // Cast: i / r seconds in ns fits u64 for any run here.
            let due = (u128::from(i) * 1_000_000_000 / u128::from(r)) as u64;
            loop {
                let now = ns_since(start);
                if now >= due {
                    break;
                }
                // Sleeps overshoot by the timer slack (≈ 50 µs): records then leave in
                // small bursts, each still timed from its own due time.
                std::thread::sleep(Duration::from_nanos(due - now));
            }
            due
        }
        Rate::Max => ns_since(start),
    }
}

/// Appends `payload` as record `seq`, retrying at once while the queue is full; how many
/// times the queue refused it.
fn append_until_admitted(log: &dyn DurableLog, payload: &[u8], seq: u64) -> anyhow::Result<u64> {
    let mut rejections = 0;
    loop {
        match log.try_append(payload)? {
            Some(assigned) => {
                ensure!(
                    assigned == seq,
                    "the log assigned {assigned} to record {seq}: not a fresh log?"
                );
                return Ok(rejections);
            }
            None => {
                rejections += 1;
                std::thread::yield_now();
            }
        }
    }
}

/// What the waiter saw.
pub(super) struct WaiterReport {
    pub(super) latency: Histogram<u64>,
    pub(super) last_durable_ns: u64,
    pub(super) cpu_seconds: f64,
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
pub(super) struct Run {
    pub(super) log: &'static str,
    pub(super) rate: Rate,
    pub(super) appender: AppenderReport,
    pub(super) waiter: WaiterReport,
    pub(super) sync: SyncStats,
    pub(super) wall_seconds: f64,
    pub(super) process_cpu_seconds: f64,
    pub(super) writer_cpu_seconds: f64,
    pub(super) steal_seconds: f64,
}

/// Drives `log` at `rate` for `seconds`; the log must be fresh (sequence numbers from 1).
pub(super) fn drive(
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
