//! Bid decisions/s through the node's real `WalSink` (file log, group commit, `fdatasync`
//! on): the engine of PRODUCT §10's Zipf row (10k English auctions, Zipf 1.05, half the
//! bids raising) on `--threads` bidder threads, every accepted bid encoded and appended to
//! the log exactly as the node does it (issue 20 item 1).
//!
//! Each thread decides `--decisions` bids; a bid refused `Overloaded` (the log's queue full)
//! is retried at once and counted. The figure is decisions/s from the start until the last
//! thread's last decision; the log then syncs what is queued and the time until the last
//! receipt is durable is reported beside it, with the syncs and the CPU used.
//!
//! `cargo run --release -p gavel-benches --bin wal_zipf -- [--threads 2] [--decisions 2000000]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use gavel_benches::process::process_cpu_seconds;
use gavel_benches::{NOW, Tally, ZipfBidder, ZipfMarket, on_bidder_threads};
use gavel_engine::{BidOutcome, Engine, Rejection};
use gavel_node::durable::WalSink;
use gavel_wal::{Log, Wal, WalConfig};

#[derive(Parser, Debug)]
#[command(about = "Zipf bid decisions/s through the real WAL sink (file log, fsync on)")]
struct Args {
    /// Bidder threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Decisions per thread.
    #[arg(long, default_value_t = 2_000_000)]
    decisions: u64,
    /// Directory for the log (a temporary directory inside it; default: the system's).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// What one bidder thread did.
#[derive(Default)]
struct Run {
    tally: Tally,
    retries: u64,
    last_receipt: u64,
}

/// Decides `n` bids of `bidder` on `engine` into `sink`, retrying each `Overloaded` one.
fn bid(bidder: &mut ZipfBidder, engine: &Engine, sink: &WalSink, n: u64) -> Run {
    let mut run = Run::default();
    for _ in 0..n {
        let bid = bidder.next_bid();
        let decision = loop {
            let decision = engine.place_bid(&bid, NOW, sink);
            if let BidOutcome::Rejected(Rejection::Overloaded { .. }) = decision.outcome {
                run.retries += 1;
                std::thread::yield_now();
                continue;
            }
            break decision;
        };
        bidder.learn(&bid, &decision.outcome);
        run.tally.count(&decision.outcome);
        if let Some(receipt) = decision.receipt {
            run.last_receipt = run.last_receipt.max(receipt.0);
        }
    }
    run
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("gavel-wal-zipf-")
        .tempdir_in(&base)
        .context("a temporary directory for the log")?;
    let (wal, _) = Wal::open(dir.path(), WalConfig::default())?;
    let log = Arc::new(Log::File(wal));
    let sink = WalSink::new(Arc::clone(&log), 0);
    let market = ZipfMarket::new();
    let mut bidders: Vec<ZipfBidder> = (0..args.threads).map(|t| ZipfBidder::new(t + 1)).collect();
    let cpu_before = process_cpu_seconds();
    let (elapsed, runs) = on_bidder_threads(&mut bidders, |bidder| {
        bid(bidder, &market.engine, &sink, args.decisions)
    });
    let last = runs.iter().map(|r| r.last_receipt).max().unwrap_or(0);
    let synced = Instant::now();
    log.wait_durable(last, Duration::from_secs(60))?;
    report(&args, elapsed, synced.elapsed(), &runs, &log, cpu_before);
    log.shutdown()?;
    Ok(())
}

fn report(
    args: &Args,
    elapsed: Duration,
    drain: Duration,
    runs: &[Run],
    log: &Log,
    cpu_before: f64,
) {
    let mut tally = Tally::default();
    for run in runs {
        tally.add(run.tally);
    }
    let retries: u64 = runs.iter().map(|r| r.retries).sum();
    let cpu = process_cpu_seconds() - cpu_before;
    let m = log.metrics();
    let secs = elapsed.as_secs_f64();
    // Casts: counts far below 2^53, for display.
    let per_s = |n: u64| n as f64 / secs;
    println!(
        "{}",
        tally.report(&format!("wal_zipf {} threads", args.threads))
    );
    println!(
        "decisions/s {:.0}  accepted/s {:.0}  ({:.3} s; then {:.1} ms until the last durable)",
        per_s(tally.total()),
        per_s(tally.accepted),
        secs,
        drain.as_secs_f64() * 1e3
    );
    println!(
        "overloaded retries {retries}; {} records in {} syncs ({:.0} per sync); CPU {:.2} s \
         ({:.0} ns per decision)",
        m.records_written_total,
        m.batches_synced_total,
        m.records_written_total as f64 / m.batches_synced_total.max(1) as f64,
        cpu,
        cpu * 1e9 / tally.total().max(1) as f64
    );
}
