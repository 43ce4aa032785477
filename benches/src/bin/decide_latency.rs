//! Per-decision latency of the Zipf workload (10k English auctions; PRODUCT §10: p99.9
//! decide ≤ 2 µs), on 1 and 2 threads, recorded in HdrHistogram.
//!
//! Each decision — `Engine::place_bid` producing its events into a shared `BoundedSink` — is
//! timed with a pair of `Instant::now()` calls. The pair's own cost is measured first and
//! printed beside the results: it is included in every figure. The bidder thread also
//! drains the sink every `DRAIN_EVERY_DECISIONS` decisions, outside the timed pair: draining
//! is the WAL writer's work, not part of any one decision (the criterion benches count it
//! in their throughput). This is the service time of a decision in a closed loop (the next
//! bid starts when the last one ends), not an open-loop latency. The engine's resident
//! memory for the 10k auctions is printed too (Linux only).
//!
//! Usage: `cargo run --release -p gavel-benches --bin decide_latency [decisions_per_thread]`.

use std::time::Instant;

use gavel_benches::{Drainer, MeasuredSink, NOW, Tally, ZipfBidder, ZipfMarket, on_bidder_threads};
use gavel_engine::BoundedSink;
use hdrhistogram::Histogram;

/// Default decisions per thread per run.
const DECISIONS_PER_THREAD: u64 = 5_000_000;
/// Decisions per thread before recording starts (caches, branch predictors, price views).
const WARM_UP_DECISIONS: u64 = 1_000_000;
/// Highest latency the histograms track, in nanoseconds (10 s).
const LATENCY_NS_MAX: u64 = 10_000_000_000;

fn histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds (1 ns .. 10 s, 3 significant digits).
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

fn nanos(since: Instant) -> u64 {
    // Cast: a decision never takes 2^64 ns.
    (since.elapsed().as_nanos() as u64).clamp(1, LATENCY_NS_MAX)
}

/// The cost of the timing itself: back-to-back `Instant::now()` pairs.
fn timer_overhead() -> Histogram<u64> {
    let mut h = histogram();
    for _ in 0..1_000_000 {
        let start = Instant::now();
        h.record(nanos(start)).expect("value within bounds");
    }
    h
}

fn bidder_thread(
    market: &ZipfMarket,
    sink: &BoundedSink,
    bidder: &mut ZipfBidder,
    decisions: u64,
) -> (Histogram<u64>, Tally) {
    let mut drainer = Drainer::default();
    bidder.run(&market.engine, sink, WARM_UP_DECISIONS);
    let mut h = histogram();
    let mut tally = Tally::default();
    for _ in 0..decisions {
        let bid = bidder.next_bid();
        let start = Instant::now();
        let outcome = market.engine.place_bid(&bid, NOW, sink).outcome;
        h.record(nanos(start)).expect("value within bounds");
        drainer.tick(sink);
        bidder.learn(&bid, &outcome);
        tally.count(&outcome);
    }
    sink.drain();
    (h, tally)
}

/// Resident memory of this process in MiB, from `/proc/self/statm` (Linux); 0 elsewhere.
fn rss_mib() -> u64 {
    const PAGE_BYTES: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| (pages * PAGE_BYTES) >> 20)
}

fn run(threads: u32, decisions: u64) -> (Histogram<u64>, Tally, f64) {
    let before = rss_mib();
    let market = ZipfMarket::new();
    let created = rss_mib();
    let sink = BoundedSink::fresh();
    let mut bidders: Vec<ZipfBidder> = (0..threads).map(|t| ZipfBidder::new(t + 1)).collect();
    let (elapsed, results) = on_bidder_threads(&mut bidders, |bidder| {
        bidder_thread(&market, &sink, bidder, decisions)
    });
    let seconds = elapsed.as_secs_f64();
    println!(
        "    resident memory: {} MiB before, {} MiB with 10k fresh auctions, {} MiB after the run",
        before,
        created,
        rss_mib()
    );
    let mut all = histogram();
    let mut tally = Tally::default();
    for (h, t) in results {
        all.add(h).expect("same bounds");
        tally.add(t);
    }
    (all, tally, seconds)
}

fn line(what: &str, h: &Histogram<u64>) -> String {
    format!(
        "{what:<22} p50 {:>6} ns  p90 {:>6} ns  p99 {:>6} ns  p99.9 {:>7} ns  p99.99 {:>8} ns  max {:>9} ns",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.value_at_quantile(0.9999),
        h.max()
    )
}

fn main() {
    let decisions = match std::env::args().nth(1) {
        None => DECISIONS_PER_THREAD,
        Some(arg) => match arg.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("usage: decide_latency [decisions_per_thread]");
                std::process::exit(2);
            }
        },
    };
    println!("{}", line("timer (Instant pair)", &timer_overhead()));
    for threads in [1, 2] {
        let (h, tally, seconds) = run(threads, decisions);
        println!("{}", line(&format!("zipf, {threads} thread(s)"), &h));
        // Cast: counts and seconds, for display.
        println!(
            "    {}; {:.2} M decisions/s with the timing on (incl. {} warm-up/thread)",
            tally.report("outcomes"),
            (tally.total() + u64::from(threads) * WARM_UP_DECISIONS) as f64 / seconds / 1e6,
            WARM_UP_DECISIONS
        );
    }
}
