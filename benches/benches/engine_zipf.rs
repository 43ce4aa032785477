//! 10k English auctions, bids spread by a Zipf law (PRODUCT §10: ≥ 10 M decisions/s on 2
//! threads), on 1 and 2 threads.
//!
//! Bid sequences (auction, bidder, raise or too low) are pre-generated outside the timing
//! (`ZipfBidder`); a raise bids the thread's own view of `price + increment`, learnt from
//! its earlier outcomes, so with two threads some raises lose the race. Every decision
//! produces its events into one shared bounded sink that each thread drains every
//! `DRAIN_EVERY_DECISIONS` of its own decisions, inside the timing. The p99.9 latency of the
//! same workload is measured by `src/bin/decide_latency.rs`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use gavel_benches::{MeasuredSink, Tally, ZipfBidder, ZipfMarket, on_bidder_threads};
use gavel_engine::{BoundedSink, DiscardSink};

fn zipf<S: MeasuredSink>(group: &mut BenchmarkGroup<'_, WallTime>, threads: u32) {
    let market = ZipfMarket::new();
    let sink = S::fresh();
    let mut bidders: Vec<ZipfBidder> = (0..threads).map(|t| ZipfBidder::new(t + 1)).collect();
    let mut tally = Tally::default();
    let name = format!("threads_{threads}/{}", S::NAME);
    group.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(u64::from(threads));
            if threads == 1 {
                let start = Instant::now();
                tally.add(bidders[0].run(&market.engine, &sink, per_thread));
                return start.elapsed();
            }
            let (elapsed, tallies) = on_bidder_threads(&mut bidders, |bidder| {
                bidder.run(&market.engine, &sink, per_thread)
            });
            for t in tallies {
                tally.add(t);
            }
            elapsed
        })
    });
    eprintln!("{}", tally.report(&format!("zipf {name}")));
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_zipf");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    zipf::<BoundedSink>(&mut group, 1);
    zipf::<BoundedSink>(&mut group, 2);
    zipf::<DiscardSink>(&mut group, 2);
    group.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented
    // `pub fn` (the workspace warns on missing docs).
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
