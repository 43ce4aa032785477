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
//!
//! Here: the command line, the runs of each log at each rate. Inside: `logs` (the two logs
//! behind one interface), `driver` (the appender and waiter threads), `print` (the output).

mod driver;
mod logs;
mod print;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use gavel_benches::process::{filesystem, peak_rss_mib};
use gavel_benches::wal_load::accepted_bid_payloads;
use gavel_wal::{Wal, WalConfig, WriterHooks};

use crate::driver::{Run, drive};
use crate::logs::{RAW_WRITER_THREAD, RawLog, SyncTimer, TimedWal};
use crate::print::{load_average, print_run, us};

/// Distinct pre-encoded records the appender cycles through.
const PAYLOADS: usize = 4_096;
/// Highest arrival rate accepted, records/s.
const RATE_MAX: u64 = 10_000_000;

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
