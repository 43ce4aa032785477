//! Replay speed and restart time of the write-ahead log (PRODUCT §10: replay ≥ 5 M
//! records/s; restart with 10 M bids ≤ 3 s).
//!
//! Generation: a live engine with 10k English auctions takes bids of `price + increment` on
//! Zipf-picked auctions (s = 1.05) from 1,000 bidders with 16-byte ids, and a sink encodes
//! every event as a `pb::Record` and appends it to a [`Wal`] (default configuration, group
//! commit) in a temporary directory, until the log holds `--records` records. The log is a
//! real engine's, so it replays cleanly; the engine's `state_hash` is kept.
//!
//! Measurement, in a fresh process (this binary re-executed with `--measure DIR`), so its
//! memory is the restart's alone; the log's pages are still in the page cache (a warm
//! restart — dropping the cache needs root and would slow everyone on a shared machine):
//! - open: `Wal::open`, which scans every record (CRC, LSN) under the recovery rules;
//! - (a) scan: iterate `Recovery::replay(1)` (reads and CRC-checks every record again);
//! - (b) scan + decode: (a) plus `pb::Record` decode and `Event::try_from`;
//! - (c) replay: (b) plus `Replayer::apply` into a fresh engine; the resulting `state_hash`
//!   must equal the live engine's.
//!
//! - (d) parallel replay: what the node's start-up does ([`replay_parallel`]: read + CRC on
//!   one thread, decode + apply on one worker per core, partitioned by auction, each batch
//!   applied grouped by auction); the state hash must equal (c)'s.
//!
//! Restart time = open + (d): what a node restarting from the log alone spends.
//!
//! Usage: `cargo run --release -p gavel-benches --bin wal_replay -- [--records 10000000]
//! [--dir DIR] [--keep]`, or `--measure DIR [--expect-hash HEX] [--restart-only]` for an
//! existing log (`--restart-only`: open and (d) alone). (c) and (d) print their CPU seconds
//! too: on a shared machine they vary less than wall time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use gavel_benches::GeneratedArgs;
use gavel_benches::process::{peak_rss_mib, process_cpu_seconds, rss_mib};
use gavel_benches::wal_load::{EPOCH_US, WalAppendSink, bidder16};
use gavel_benches::{INCREMENT, START_PRICE, ZIPF_AUCTIONS, ZIPF_EXPONENT, bid, english_spec};
use gavel_engine::{
    AuctionId, BidOutcome, BidderId, Engine, EngineConfig, Price, Replayer, UnixMicros,
};
use gavel_node::replay::replay_parallel;
use gavel_proto::convert::wal::decode_record;
use gavel_wal::{Recovery, Wal, WalConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Distinct bidders.
const BIDDERS: u64 = 1_000;
/// Pre-generated Zipf picks, cycled.
const PICKS: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(about = "WAL replay speed and restart time over a generated log")]
struct Config {
    #[command(flatten)]
    generated: GeneratedArgs,
    /// Measure an existing log directory instead of generating one.
    #[arg(long)]
    measure: Option<PathBuf>,
    /// With `--measure`: the state hash (hex) the replayed engine must have.
    #[arg(long)]
    expect_hash: Option<String>,
    /// With `--measure`: open and (d) only (the restart), skipping (a)–(c).
    #[arg(long)]
    restart_only: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn per_second(count: u64, seconds: f64) -> String {
    // Cast: for display.
    format!("{:.2} M/s", count as f64 / seconds / 1e6)
}

/// Builds the log in `dir`; returns the live engine's state hash.
fn generate(dir: &Path, records: u64) -> anyhow::Result<[u8; 32]> {
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let (wal, _) = Wal::open(dir, WalConfig::default()).context("open wal")?;
    let engine = Engine::new(EngineConfig::default());
    let sink = WalAppendSink::new(&wal);
    let mut now = EPOCH_US;
    for id in 0..ZIPF_AUCTIONS {
        engine
            .create_auction(english_spec(AuctionId(id)), UnixMicros(now), &sink)
            .context("create auction")?;
        now += 1;
    }
    // Cast: 10_000 is exact in f64.
    let zipf = Zipf::new(ZIPF_AUCTIONS as f64, ZIPF_EXPONENT).context("zipf parameters")?;
    let mut rng = SmallRng::seed_from_u64(0x7e91a7);
    // Zipf yields ranks 1..=n as floats; rank 1 is the hottest. Cast: below 10_000.
    let picks: Vec<u32> = (0..PICKS)
        .map(|_| zipf.sample(&mut rng) as u32 - 1)
        .collect();
    let bidders: Vec<BidderId> = (0..BIDDERS).map(bidder16).collect();
    // Cast: 10_000 fits usize.
    let mut min_next: Vec<Price> = vec![START_PRICE; ZIPF_AUCTIONS as usize];
    let (mut appended, mut bids, mut not_accepted) = (ZIPF_AUCTIONS, 0u64, 0u64);
    while appended < records {
        let auction = picks[bids as usize % PICKS] as usize;
        let bidder = bidders[rng.random_range(0..bidders.len())];
        bids += 1;
        now += 1;
        // Cast: auction indices are below ZIPF_AUCTIONS.
        let b = bid(
            AuctionId(auction as u64),
            bidder,
            rng.random(),
            min_next[auction],
        );
        match engine.place_bid(&b, UnixMicros(now), &sink).outcome {
            BidOutcome::Accepted(accepted) => {
                min_next[auction] = accepted.price + INCREMENT;
                appended += 1;
            }
            BidOutcome::Rejected(_) => not_accepted += 1,
        }
    }
    let last = wal.metrics();
    let durable = wal.shutdown().context("wal shutdown")?;
    ensure!(
        durable == appended,
        "log ends at {durable}, expected {appended}"
    );
    let seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "generated {appended} records ({ZIPF_AUCTIONS} creations, {} accepted bids; {not_accepted} bids not accepted) \
         in {seconds:.2} s = {} (engine decide + encode + append + group commit, 1 bidding thread); \
         {:.0} MiB on disk ({:.1} B/record framed), {} syncs, {} back-pressure retries; \
         CPU {:.2} s; peak RSS {} MiB",
        appended - ZIPF_AUCTIONS,
        per_second(appended, seconds),
        // Cast: for display.
        bytes as f64 / (1u64 << 20) as f64,
        bytes as f64 / appended as f64,
        last.batches_synced_total,
        sink.rejections(),
        process_cpu_seconds() - cpu_before,
        peak_rss_mib(),
    );
    Ok(engine.state_hash())
}

/// Steps (a)–(c) of the measurement (see the crate docs); returns the state hash of (c) and
/// its time (s).
fn sequential_steps(
    recovery: &Recovery,
    records: u64,
    expect_hash: Option<&str>,
) -> anyhow::Result<(String, f64)> {
    let started = Instant::now();
    let (mut scanned, mut payload_bytes) = (0u64, 0u64);
    for record in recovery.replay(1).context("replay")? {
        let record = record.context("read record")?;
        scanned += 1;
        payload_bytes += record.payload.len() as u64;
    }
    let scan_seconds = started.elapsed().as_secs_f64();
    ensure!(scanned == records, "scan read {scanned} of {records}");
    println!(
        "(a) scan (read + CRC):            {scanned} records in {scan_seconds:.3} s = {} ({:.0} MB/s of payload)",
        per_second(scanned, scan_seconds),
        // Cast: for display.
        payload_bytes as f64 / scan_seconds / 1e6
    );

    let started = Instant::now();
    let mut decoded = 0u64;
    for record in recovery.replay(1).context("replay")? {
        let event = decode_record(&record.context("read record")?.payload)?;
        std::hint::black_box(&event);
        decoded += 1;
    }
    let decode_seconds = started.elapsed().as_secs_f64();
    println!(
        "(b) scan + decode (prost + Event): {decoded} records in {decode_seconds:.3} s = {}",
        per_second(decoded, decode_seconds),
    );

    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let engine = Engine::new(EngineConfig::default());
    let mut replayer = Replayer::new(&engine);
    for record in recovery.replay(1).context("replay")? {
        let event = decode_record(&record.context("read record")?.payload)?;
        replayer.apply(&event).context("replay apply")?;
    }
    let summary = replayer.finish();
    let replay_seconds = started.elapsed().as_secs_f64();
    let replay_cpu = process_cpu_seconds() - cpu_before;
    ensure!(
        summary.events == records && summary.missing_tail.is_empty(),
        "replay summary: {summary:?}"
    );
    println!(
        "(c) replay (+ Replayer::apply):   {} records in {replay_seconds:.3} s = {}, CPU {replay_cpu:.2} s; RSS {} MiB (engine with 10k auctions)",
        summary.events,
        per_second(summary.events, replay_seconds),
        rss_mib()
    );
    let hash = hex(&engine.state_hash());
    check_hash("(c)", &hash, expect_hash)?;
    Ok((hash, replay_seconds))
}

/// Compares a replayed state hash with the live engine's, if known.
fn check_hash(step: &str, hash: &str, expect_hash: Option<&str>) -> anyhow::Result<()> {
    match expect_hash {
        Some(expected) if expected != hash => {
            bail!("{step}: replayed state hash {hash} differs from the live engine's {expected}")
        }
        Some(_) => println!("{step}: state hash after replay equals the live engine's: {hash}"),
        None => println!("{step}: state hash after replay: {hash}"),
    }
    Ok(())
}

/// Measures open, scan, decode and replay of the log in `dir` (a fresh process); with
/// `restart_only`, open and (d) only.
fn measure(dir: &Path, expect_hash: Option<&str>, restart_only: bool) -> anyhow::Result<()> {
    let rss_start = rss_mib();
    let started = Instant::now();
    let (wal, recovery) = Wal::open(dir, WalConfig::default()).context("open wal")?;
    let open_seconds = started.elapsed().as_secs_f64();
    let records = recovery.records();
    println!(
        "open (recovery scan: CRC + LSN of every record): {records} records in {open_seconds:.3} s = {}; RSS {} MiB",
        per_second(records, open_seconds),
        rss_mib()
    );

    let sequential = if restart_only {
        None
    } else {
        Some(sequential_steps(&recovery, records, expect_hash)?)
    };

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let engine = Engine::new(EngineConfig::default());
    let summary = replay_parallel(
        &engine,
        false,
        recovery.replay(1).context("replay")?,
        workers,
    )
    .context("parallel replay")?;
    let parallel_seconds = started.elapsed().as_secs_f64();
    let parallel_cpu = process_cpu_seconds() - cpu_before;
    ensure!(
        summary.events == records && summary.missing_tail.is_empty(),
        "parallel replay summary: {summary:?}"
    );
    let parallel_hash = hex(&engine.state_hash());
    match &sequential {
        Some((hash, _)) => ensure!(
            parallel_hash == *hash,
            "parallel replay reached another state than the sequential one"
        ),
        None => check_hash("(d)", &parallel_hash, expect_hash)?,
    }
    println!(
        "(d) parallel replay, {workers} workers (the node's start-up path): {} records in \
         {parallel_seconds:.3} s = {}{}, CPU {parallel_cpu:.2} s",
        summary.events,
        per_second(summary.events, parallel_seconds),
        sequential
            .as_ref()
            .map_or(String::new(), |(_, seconds)| format!(
                " ({:.2}× (c); same state hash)",
                seconds / parallel_seconds
            )),
    );
    let restart = open_seconds + parallel_seconds;
    println!(
        "restart = open + (d): {restart:.3} s for {records} records = {}; RSS {} MiB at start, \
         peak {} MiB; CPU {:.2} s",
        per_second(records, restart),
        rss_start,
        peak_rss_mib(),
        process_cpu_seconds(),
    );
    wal.shutdown().context("wal shutdown")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(dir) = &config.measure {
        return measure(dir, config.expect_hash.as_deref(), config.restart_only);
    }
    let dir = config.generated.temp_dir("gavel-wal-replay-")?;
    let hash = generate(dir.path(), config.generated.records)?;
    // A fresh process: its memory and allocator state are the restart's alone.
    let status = Command::new(std::env::current_exe().context("current exe")?)
        .arg("--measure")
        .arg(dir.path())
        .arg("--expect-hash")
        .arg(hex(&hash))
        .status()
        .context("run the measuring process")?;
    if config.generated.keep {
        println!("kept: {}", dir.keep().display());
    }
    ensure!(status.success(), "measuring process failed: {status}");
    Ok(())
}
