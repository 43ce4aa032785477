//! Restart of a real node with its default snapshot cadence (PRODUCT §10: a node that has
//! taken 10 M bids is ready ≤ 3 s after a restart; a snapshot never stalls bids).
//!
//! Generation: a [`Node`] with [`NodeConfig::default`] (the default snapshot cadence, the
//! file log, group commit) in a temporary directory takes 10k English auctions, then bids
//! of `price + increment` on Zipf-picked auctions (s = 1.05) from 1,000 bidders with
//! 16-byte ids, until its log has had `--records` records appended. Its own snapshot thread
//! snapshots and compacts as it would in production. Then the node shuts down without a
//! final snapshot (what a restart after a crash finds: the last periodic snapshot and the
//! log after it); the live engine's state hash is kept.
//!
//! Stall probe (`--stall-seconds`, after the restarts, on the node opened again): one thread
//! offers bids open loop at `--stall-rate` per second (half of them raises, half too low)
//! while another takes snapshots back to back with a pause between them (`Node::snapshot_now`,
//! the snapshot thread's own function); each bid's latency, from its intended send time, goes
//! to one of two histograms — sent while a snapshot was being taken, or not.
//!
//! Measurement, in a fresh process (this binary re-executed with `--measure DIR`): first
//! the steps of the start one by one (open the log; choose, read and verify the snapshot;
//! decode it; restore its auctions; replay the tail), then, in a second fresh process,
//! `Node::open` itself — the restart — whose state hash must equal the live engine's.
//!
//! Usage: `cargo run --release -p gavel-benches --bin node_restart -- [--records 10000000]
//! [--dir DIR] [--keep] [--stall-seconds 10]`, or `--measure DIR [--expect-hash HEX]`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use gavel_benches::GeneratedArgs;
use gavel_benches::process::{peak_rss_mib, process_cpu_seconds, rss_mib};
use gavel_benches::wal_load::{EPOCH_US, bidder16};
use gavel_benches::{INCREMENT, START_PRICE, ZIPF_AUCTIONS, ZIPF_EXPONENT, bid, english_spec};
use gavel_engine::{
    AuctionId, BidOutcome, BidderId, Engine, EngineConfig, Price, Rejection, UnixMicros,
};
use gavel_node::node::{Node, NodeConfig, WAL_DIR};
use gavel_node::replay::replay_parallel;
use gavel_proto::convert::state::decode_snapshot_parts;
use gavel_wal::{Wal, latest_snapshot};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Distinct bidders.
const BIDDERS: u64 = 1_000;
/// Pre-generated Zipf picks, cycled.
const PICKS: usize = 1 << 20;
/// Pause between two snapshots of the stall probe.
const STALL_SNAPSHOT_PAUSE: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(about = "Restart time of a node with its default snapshot cadence")]
struct Config {
    #[command(flatten)]
    generated: GeneratedArgs,
    /// Seconds of the stall probe (0 = none).
    #[arg(long, default_value_t = 10)]
    stall_seconds: u64,
    /// Bids per second offered by the stall probe.
    #[arg(long, default_value_t = 20_000)]
    stall_rate: u64,
    /// Measure an existing data directory instead of generating one.
    #[arg(long)]
    measure: Option<PathBuf>,
    /// With `--measure`: the state hash (hex) the restarted node must have.
    #[arg(long)]
    expect_hash: Option<String>,
    /// With `--measure`: only `Node::open` (the second process).
    #[arg(long)]
    node_only: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Zipf bidding workload: picks, bidders and each auction's next raise.
struct Workload {
    picks: Vec<u32>,
    bidders: Vec<BidderId>,
    min_next: Vec<Price>,
    rng: SmallRng,
    bids: u64,
    now: u64,
}

impl Workload {
    fn new() -> anyhow::Result<Workload> {
        // Cast: 10_000 is exact in f64.
        let zipf = Zipf::new(ZIPF_AUCTIONS as f64, ZIPF_EXPONENT).context("zipf parameters")?;
        let mut rng = SmallRng::seed_from_u64(0x7e91a7);
        Ok(Workload {
            // Zipf yields ranks 1..=n as floats. Cast: below 10_000.
            picks: (0..PICKS)
                .map(|_| zipf.sample(&mut rng) as u32 - 1)
                .collect(),
            bidders: (0..BIDDERS).map(bidder16).collect(),
            // Cast: 10_000 fits usize.
            min_next: vec![START_PRICE; ZIPF_AUCTIONS as usize],
            rng,
            bids: 0,
            now: EPOCH_US + ZIPF_AUCTIONS,
        })
    }

    /// Places the next bid (a raise, or with `too_low` a bid below the price); returns
    /// whether it was accepted, and whether the log refused it (back-pressure).
    fn place(&mut self, node: &Node, too_low: bool) -> (bool, bool) {
        let auction = self.picks[self.bids as usize % PICKS] as usize;
        let bidder = self.bidders[self.rng.random_range(0..self.bidders.len())];
        self.bids += 1;
        self.now += 1;
        let amount = if too_low {
            START_PRICE / 2
        } else {
            self.min_next[auction]
        };
        // Cast: auction indices are below ZIPF_AUCTIONS.
        let b = bid(AuctionId(auction as u64), bidder, self.rng.random(), amount);
        match node.place_bid(&b, UnixMicros(self.now)).outcome {
            BidOutcome::Accepted(accepted) => {
                self.min_next[auction] = accepted.price + INCREMENT;
                (true, false)
            }
            BidOutcome::Rejected(Rejection::Overloaded { .. }) => (false, true),
            BidOutcome::Rejected(_) => (false, false),
        }
    }
}

/// Fills the node's log to `records` records; returns the workload for the stall probe.
fn generate(node: &Node, records: u64) -> anyhow::Result<Workload> {
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    for id in 0..ZIPF_AUCTIONS {
        node.create_auction(english_spec(AuctionId(id)), UnixMicros(EPOCH_US + id))
            .context("create auction")?;
    }
    let mut work = Workload::new()?;
    let mut overloaded = 0u64;
    while node.wal().last_appended_lsn() < records {
        let (_, refused) = work.place(node, false);
        if refused {
            overloaded += 1;
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let appended = node.wal().last_appended_lsn();
    println!(
        "generated {appended} records through a node with the default snapshot cadence in \
         {seconds:.2} s ({:.2} M/s; {overloaded} bids refused by back-pressure); CPU {:.2} s; \
         RSS {} MiB",
        // Cast: for display.
        appended as f64 / seconds / 1e6,
        process_cpu_seconds() - cpu_before,
        rss_mib()
    );
    Ok(work)
}

/// The stall probe (see the crate docs): bid latency (µs) while a snapshot is taken vs not.
fn stall_probe(node: &Node, work: &mut Workload, seconds: u64, rate: u64) -> anyhow::Result<()> {
    let snapshotting = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let mut during = Histogram::<u64>::new(3).context("histogram")?;
    let mut outside = Histogram::<u64>::new(3).context("histogram")?;
    let snapshots = std::thread::scope(|scope| {
        let taker = scope.spawn(|| {
            let mut taken = Vec::new();
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(STALL_SNAPSHOT_PAUSE);
                snapshotting.store(true, Ordering::Release);
                let started = Instant::now();
                let result = node.snapshot_now();
                snapshotting.store(false, Ordering::Release);
                taken.push((started.elapsed(), result.map(|t| t.map(|t| t.bytes))));
            }
            taken
        });
        let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let started = Instant::now();
        let mut intended = started;
        while intended.duration_since(started).as_secs() < seconds {
            while Instant::now() < intended {
                std::hint::spin_loop();
            }
            let in_snapshot = snapshotting.load(Ordering::Acquire);
            work.place(node, work.bids % 2 == 1);
            // Cast: latencies are far below u64::MAX µs.
            let micros = intended.elapsed().as_micros() as u64;
            let histogram = if in_snapshot {
                &mut during
            } else {
                &mut outside
            };
            histogram.saturating_record(micros.max(1));
            intended += interval;
        }
        stop.store(true, Ordering::Release);
        taker.join()
    });
    let snapshots = snapshots.map_err(|_| anyhow::anyhow!("the snapshot thread panicked"))?;
    for (elapsed, result) in &snapshots {
        let bytes = result.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        println!(
            "  snapshot: {:.3} s, {} bytes",
            elapsed.as_secs_f64(),
            bytes.unwrap_or(0)
        );
    }
    for (what, h) in [
        ("during a snapshot", &during),
        ("no snapshot      ", &outside),
    ] {
        println!(
            "stall probe, {rate} bids/s open loop, bids sent {what}: n={} p50 {} µs, p99 {} µs, \
             p99.9 {} µs, max {} µs",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    Ok(())
}

/// Times one step, printing it.
fn timed<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let started = Instant::now();
    let value = f()?;
    let seconds = started.elapsed().as_secs_f64();
    println!("  {what}: {seconds:.3} s; RSS {} MiB", rss_mib());
    Ok((value, seconds))
}

/// The start's steps one by one, as `Node::open` takes them (a fresh process).
fn measure_steps(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join(WAL_DIR);
    println!("steps of the start ({}):", dir.display());
    let ((wal, recovery), open) = timed("open the log (recovery scan)", || {
        Ok(Wal::open(&dir, gavel_wal::WalConfig::default())?)
    })?;
    let (snapshot, read) = timed("choose, read and verify the snapshot", || {
        Ok(latest_snapshot(&dir)?)
    })?;
    let engine = Engine::new(EngineConfig::default());
    let mut from = 1;
    let (mut decode, mut restore) = (0.0, 0.0);
    if let Some(snapshot) = snapshot {
        println!(
            "  snapshot at LSN {}: {} bytes",
            snapshot.lsn,
            snapshot.payload.len()
        );
        from = snapshot.lsn + 1;
        let parts;
        (parts, decode) = timed("decode the snapshot", || {
            Ok(decode_snapshot_parts(&snapshot.payload)?)
        })?;
        let auctions = parts.auctions.len();
        ((), restore) = timed(&format!("restore {auctions} auctions"), || {
            for state in parts.auctions {
                engine.restore(state)?;
            }
            Ok(())
        })?;
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (summary, replay) = timed("replay the tail", || {
        replay_parallel(&engine, from > 1, recovery.replay(from)?, workers)
    })?;
    println!(
        "  tail: {} records from LSN {from} ({} skipped); total {:.3} s",
        summary.events + summary.skipped,
        summary.skipped,
        open + read + decode + restore + replay
    );
    wal.shutdown()?;
    Ok(())
}

/// `Node::open`, the restart (a fresh process).
fn measure_node(data_dir: &Path, expect_hash: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let (node, report) = Node::open(data_dir, NodeConfig::default()).context("node open")?;
    let seconds = started.elapsed().as_secs_f64();
    let hash = hex(&report.state_hash);
    println!(
        "restart (Node::open, default config): ready in {seconds:.3} s, CPU {:.2} s; {}; \
         peak RSS {} MiB",
        process_cpu_seconds() - cpu_before,
        report.summary(),
        peak_rss_mib()
    );
    match expect_hash {
        Some(expected) if expected != hash => {
            bail!("restarted state hash {hash} differs from the live engine's {expected}")
        }
        Some(_) => println!("state hash after the restart equals the live engine's: {hash}"),
        None => println!("state hash after the restart: {hash}"),
    }
    node.shutdown(false)?;
    Ok(())
}

/// Runs this binary again with `args`.
fn rerun(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let status = Command::new(std::env::current_exe().context("current exe")?)
        .args(args)
        .status()
        .context("run the measuring process")?;
    ensure!(status.success(), "measuring process failed: {status}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(dir) = &config.measure {
        if !config.node_only {
            measure_steps(dir)?;
        }
        return measure_node(dir, config.expect_hash.as_deref());
    }
    let dir = config.generated.temp_dir("gavel-node-restart-")?;
    let (node, _) = Node::open(dir.path(), NodeConfig::default()).context("node open")?;
    let mut work = generate(&node, config.generated.records)?;
    node.shutdown(false).context("node shutdown")?;
    let hash = hex(&node.engine().state_hash());
    drop(node);
    let path = dir.path().as_os_str();
    rerun(&[
        "--measure".as_ref(),
        path,
        "--expect-hash".as_ref(),
        hash.as_ref(),
    ])?;
    rerun(&[
        "--measure".as_ref(),
        path,
        "--node-only".as_ref(),
        "--expect-hash".as_ref(),
        hash.as_ref(),
    ])?;
    if config.stall_seconds > 0 {
        // After the restarts (its snapshots would shorten the tail they replay).
        let (node, _) = Node::open(dir.path(), NodeConfig::default()).context("node open")?;
        stall_probe(&node, &mut work, config.stall_seconds, config.stall_rate)?;
        node.shutdown(false).context("node shutdown")?;
    }
    if config.generated.keep {
        println!("kept: {}", dir.keep().display());
    }
    Ok(())
}
