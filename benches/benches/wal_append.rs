//! Records/s through the write-ahead log with group commit, for 1 and 2 appending threads:
//! one iteration appends [`RECORDS_PER_ITER`] encoded accepted-bid records (≈ 100 bytes,
//! 16-byte bidder ids) as fast as the bounded queue admits (retrying at once on
//! back-pressure) and ends when the last one is durable. An element is one record.
//!
//! The log has its default configuration and lives in a temporary directory under
//! `$GAVEL_BENCH_DIR` (default: the system temp directory); segments are compacted between
//! iterations, outside the timing, so the disk use stays bounded. The latency side of the
//! same log is `src/bin/wal_latency/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use gavel_benches::wal_load::{accepted_bid_payloads, append_retrying};
use gavel_wal::{Wal, WalConfig};

/// Records appended (and made durable) per iteration, over all threads.
const RECORDS_PER_ITER: u64 = 100_000;
/// Distinct pre-encoded records cycled through.
const PAYLOADS: usize = 4_096;
/// Longest wait for the last record's durability.
const DURABLE_WAIT: Duration = Duration::from_secs(60);

/// Appends `RECORDS_PER_ITER` records from `threads` threads and waits until all are durable;
/// returns the back-pressure rejections.
fn append_durable(wal: &Wal, payloads: &[Vec<u8>], threads: u64) -> u64 {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let (mut last, mut rejections) = (0, 0);
                    for i in 0..RECORDS_PER_ITER / threads {
                        // Cast: an index modulo a small length.
                        let payload = &payloads[((i * threads + thread) as usize) % payloads.len()];
                        // A failing disk makes the bench meaningless: stop loudly.
                        let (lsn, rejected) =
                            append_retrying(wal, payload).expect("the bench log appends");
                        last = last.max(lsn);
                        rejections += rejected;
                    }
                    wal.wait_durable(last, DURABLE_WAIT)
                        .expect("the bench log syncs");
                    rejections
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("appender panicked"))
            .sum()
    })
}

fn wal_append(c: &mut Criterion) {
    let payloads = accepted_bid_payloads(PAYLOADS, 7);
    let base = std::env::var_os("GAVEL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let mut group = c.benchmark_group("wal_append");
    group
        .throughput(Throughput::Elements(RECORDS_PER_ITER))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for threads in [1u64, 2] {
        let dir = tempfile::Builder::new()
            .prefix("gavel-wal-append-")
            .tempdir_in(&base)
            .expect("a temporary directory for the bench log");
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).expect("a fresh log opens");
        let mut rejections = 0;
        group.bench_with_input(
            BenchmarkId::new("group_commit", format!("{threads}_threads")),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        rejections += append_durable(&wal, &payloads, threads);
                        timed += started.elapsed();
                        wal.compact(wal.durable_lsn())
                            .expect("compacting the bench log");
                    }
                    timed
                });
            },
        );
        let m = wal.metrics();
        println!(
            "    {threads} thread(s): {} records in {} syncs ({:.0} records/sync, mean fdatasync {} µs), \
             {rejections} back-pressure rejections",
            m.records_written_total,
            m.batches_synced_total,
            // Cast: counts, for display.
            m.records_written_total as f64 / m.batches_synced_total.max(1) as f64,
            m.sync_latency_us_total / m.batches_synced_total.max(1),
        );
        wal.shutdown().expect("the bench log shuts down");
    }
    group.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented
    // `pub fn` (the workspace warns on missing docs).
    let mut criterion = Criterion::default().configure_from_args();
    wal_append(&mut criterion);
    criterion.final_summary();
}
