//! A quick append/sync throughput probe (not a benchmark of record; criterion benches come
//! with issue 3's bench item).
//!
//! `cargo run --release -p gavel-wal --example throughput -- [threads] [records] [payload_bytes] [dir]`
//!
//! Each thread appends its share open-loop (retrying on back-pressure), then waits for its last
//! record to be durable. Prints records/s, syncs, mean batch size and mean fdatasync latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_wal::{AppendError, Wal, WalConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (threads, records, payload_bytes) = (arg(1, 4), arg(2, 1_000_000), arg(3, 100));
    let temp = tempfile::tempdir()?;
    let dir = args
        .get(4)
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let (wal, _) = Wal::open(&dir, WalConfig::default())?;
    let wal = Arc::new(wal);
    let payload = vec![0x5Au8; payload_bytes as usize];
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (wal, payload) = (Arc::clone(&wal), payload.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..records / threads {
                    last = loop {
                        match wal.append(&payload) {
                            Ok(lsn) => break lsn,
                            Err(AppendError::Backpressure { .. }) => std::thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    };
                }
                wal.wait_durable(last, Duration::from_secs(60))
                    .expect("durable");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("appender");
    }
    let elapsed = started.elapsed();
    let m = wal.metrics();
    wal.shutdown()?;
    println!(
        "{} records x {payload_bytes} B, {threads} threads: {:.0} records/s, {:.1} MB/s; \
         {} syncs, {:.0} records/sync, mean fdatasync {} us, backpressure {}",
        m.records_written_total,
        m.records_written_total as f64 / elapsed.as_secs_f64(),
        m.bytes_written_total as f64 / elapsed.as_secs_f64() / 1e6,
        m.batches_synced_total,
        m.records_written_total as f64 / m.batches_synced_total.max(1) as f64,
        m.sync_latency_us_total / m.batches_synced_total.max(1),
        m.backpressure_total,
    );
    Ok(())
}
