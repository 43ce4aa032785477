//! Many auctions in one engine (issue 21 §2): in-process creation rate (target ≥ 100 k
//! auctions/s), resident memory per live auction (target: 1 M live auctions in one node),
//! and the bid decision rate over all of them.
//!
//! Specs are built before the timing (topics are formatted strings); the timing covers
//! `Engine::create_auction` alone, into a `DiscardSink`. Memory per auction is the growth
//! of the process's resident set from before the specs are built to after they are all in
//! the engine (the specs' own vector freed), divided by the count. The bid phase sends
//! too-low bids to auctions drawn uniformly (seeded), so the decision is the registry
//! lookup plus the cheapest refusal, with every lookup likely a cache miss: the lookup cost
//! at this scale.
//!
//! `--soak N` instead runs a soak in simulated time (see [`soak`]): N auctions created, bid
//! on, settled, pruned and forgotten at a steady rate, with the engine's counts and the
//! process's resident memory sampled along the way, to show memory flat once the
//! retention periods have passed.
//!
//! Usage: `cargo run --release -p gavel-benches --bin auction_scale -- [--auctions N]
//! [--threads T] [--bids M] [--dedup-window-bids W] [--soak N]`.

use std::time::Instant;

use clap::Parser;
use gavel_benches::process::rss_mib;
use gavel_benches::{
    INCREMENT, NOW, START_PRICE, TOO_LOW_AMOUNT, bid, bidder, english_spec, english_spec_ending,
};
use gavel_engine::{AuctionId, AuctionSpec, DiscardSink, Engine, EngineConfig, UnixMicros};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// Auctions to create.
    #[arg(long, default_value_t = 1_000_000)]
    auctions: u64,
    /// Threads creating (each its own range of ids) and bidding.
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// Too-low bids per thread after the creations.
    #[arg(long, default_value_t = 2_000_000)]
    bids: u64,
    /// The engine's idempotency window (its seen-bid filter, allocated with the auction,
    /// is most of an auction's memory); default the engine's.
    #[arg(long)]
    dedup_window_bids: Option<usize>,
    /// Run the soak of this many auctions instead.
    #[arg(long)]
    soak: Option<u64>,
}
/// The soak's shape, in simulated time: auctions are created at a steady rate, each open
/// for `SOAK_OPEN_US`, bid on `SOAK_BIDS` times when created, closed by the timer, pruned
/// `SOAK_SETTLED_RETENTION_US` after settling and forgotten `SOAK_PRUNED_RETENTION_US`
/// after that. So after `SOAK_OPEN_US + SOAK_SETTLED_RETENTION_US + SOAK_PRUNED_RETENTION_US`
/// the engine holds a steady number of auctions and results.
const SOAK_OPEN_US: u64 = 60_000_000;
const SOAK_SETTLED_RETENTION_US: u64 = 60_000_000;
const SOAK_PRUNED_RETENTION_US: u64 = 120_000_000;
/// Auctions created per simulated second.
const SOAK_CREATED_PER_S: u64 = 2_000;
const SOAK_BIDS: u64 = 3;
/// Creations between two rounds of the timers (close, prune, forget).
const SOAK_ROUND_EVERY: u64 = 1_000;
/// RSS samples over the soak.
const SOAK_SAMPLES: u64 = 40;

/// Creates, bids on, settles, prunes and forgets `auctions` auctions in simulated time,
/// printing the engine's counts and the process's RSS `SOAK_SAMPLES` times.
fn soak(auctions: u64) {
    let engine = Engine::new(EngineConfig {
        settled_retention_us: SOAK_SETTLED_RETENTION_US,
        pruned_retention_us: SOAK_PRUNED_RETENTION_US,
        auctions_max: usize::MAX,
        ..EngineConfig::default()
    });
    let step_us = 1_000_000 / SOAK_CREATED_PER_S;
    let bidders: Vec<_> = (0..SOAK_BIDS).map(|n| bidder(n as usize)).collect();
    let start = Instant::now();
    println!("sim_s,created,held,results,rss_mib,wall_s");
    for id in 0..auctions {
        let now = UnixMicros(id * step_us);
        let spec = english_spec_ending(AuctionId(id), UnixMicros(now.0 + SOAK_OPEN_US));
        // Invariant: ids are distinct, never reused, and there is no limit.
        engine
            .create_auction(spec, now, &DiscardSink)
            .expect("each soak auction is created once");
        for (n, who) in bidders.iter().enumerate() {
            let amount = START_PRICE + INCREMENT * 10 * n as u64;
            let b = bid(AuctionId(id), *who, u128::from(id) << 8 | n as u128, amount);
            engine.place_bid(&b, now, &DiscardSink);
        }
        if id % SOAK_ROUND_EVERY == 0 {
            engine.close_due(now, usize::MAX, &DiscardSink);
            engine.prune_due(now, usize::MAX, &DiscardSink);
            engine.forget_due(now, usize::MAX, &DiscardSink);
        }
        if id % (auctions / SOAK_SAMPLES).max(1) == 0 {
            println!(
                "{},{id},{},{},{},{:.1}",
                now.0 / 1_000_000,
                engine.len(),
                engine.pruned_len(),
                rss_mib(),
                start.elapsed().as_secs_f64()
            );
        }
    }
}

/// Creates `specs` on `threads` threads; returns the seconds taken.
fn create_all(engine: &Engine, specs: Vec<AuctionSpec>, threads: u64) -> f64 {
    // Cast: a thread count is small.
    let per_thread = specs.len().div_ceil(threads as usize).max(1);
    let mut chunks: Vec<Vec<AuctionSpec>> = Vec::new();
    let mut specs = specs.into_iter().peekable();
    while specs.peek().is_some() {
        chunks.push(specs.by_ref().take(per_thread).collect());
    }
    let start = Instant::now();
    std::thread::scope(|scope| {
        for chunk in chunks {
            scope.spawn(move || {
                for spec in chunk {
                    // Invariant: ids are distinct and `auctions_max` is above their count.
                    engine
                        .create_auction(spec, UnixMicros(0), &DiscardSink)
                        .expect("each bench auction is created once");
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// Sends `bids` too-low bids per thread to uniformly drawn auctions; returns the seconds.
fn bid_all(engine: &Engine, auctions: u64, threads: u64, bids: u64) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(0x5ca1e + thread);
                let who = bidder(thread as usize);
                for n in 0..bids {
                    let auction = AuctionId(rng.random_range(0..auctions));
                    let b = bid(auction, who, u128::from(n), TOO_LOW_AMOUNT);
                    std::hint::black_box(engine.place_bid(&b, NOW, &DiscardSink));
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    if let Some(auctions) = args.soak {
        soak(auctions);
        return;
    }
    let threads = args.threads.max(1);
    // Cast: the count fits in memory, so in usize.
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        auctions_max: args.auctions as usize + 1,
        dedup_window_bids: args.dedup_window_bids.unwrap_or(defaults.dedup_window_bids),
        ..defaults
    };
    let engine = Engine::new(config);
    let rss_before = rss_mib();
    let specs: Vec<AuctionSpec> = (0..args.auctions)
        .map(|id| english_spec(AuctionId(id)))
        .collect();
    let seconds = create_all(&engine, specs, threads);
    let rss_after = rss_mib();
    // Cast: counts and MiB far below 2^53.
    let per_s = args.auctions as f64 / seconds;
    let bytes = (rss_after.saturating_sub(rss_before) * 1024 * 1024) as f64 / args.auctions as f64;
    println!(
        "created {} auctions on {threads} thread(s) in {seconds:.3} s = {:.0} k auctions/s",
        engine.len(),
        per_s / 1e3
    );
    println!(
        "resident {rss_before} MiB before, {rss_after} MiB after: {bytes:.0} B per live auction"
    );
    let seconds = bid_all(&engine, args.auctions, threads, args.bids);
    // Cast: as above.
    let total = (args.bids * threads) as f64;
    println!(
        "{total:.0} too-low bids over all auctions in {seconds:.3} s = {:.2} M decisions/s ({:.0} ns each per thread)",
        total / seconds / 1e6,
        seconds * 1e9 * threads as f64 / total
    );
}
