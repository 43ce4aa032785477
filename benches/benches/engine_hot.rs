//! One hot auction under two contending threads (PRODUCT §10: ≥ 5 M decisions/s).
//!
//! Each measurement times `iters` decisions in total, half on each of two threads released
//! together by a barrier; every decision produces its events into one shared bounded sink
//! that each thread drains every `DRAIN_EVERY_DECISIONS` of its own decisions.
//!
//! - `english_racing`: each thread reads the price lock-free (`Engine::price`) and bids
//!   `price + increment`; the threads race, so many bids lose as `TooLow` (on the
//!   lock-free path, or under the lock when both read the same price). The target's case.
//! - `english_too_low`: both threads bid too low: the lock-free path alone, under sharing.
//! - `sealed_accepted`: every bid is accepted, so every decision takes the auction lock:
//!   the lock's ceiling under contention.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use gavel_benches::{
    BidIds, Drainer, INCREMENT, MeasuredSink, NOW, START_PRICE, TOO_LOW_AMOUNT, Tally, bid, bidder,
    engine_with, english_spec, sealed_spec,
};
use gavel_engine::{AuctionId, AuctionSpec, BoundedSink, DiscardSink, Engine};

const AUCTION: AuctionId = AuctionId(1);
const THREADS: u32 = 2;

#[derive(Clone, Copy, Debug)]
enum Shape {
    EnglishRacing,
    EnglishTooLow,
    SealedAccepted,
}

/// One thread's share of a measurement.
fn bidder_thread<S: MeasuredSink>(
    engine: &Engine,
    sink: &S,
    shape: Shape,
    ids: &mut BidIds,
    thread: u32,
    n: u64,
) -> Tally {
    let who = bidder(thread as usize);
    let mut drainer = Drainer::default();
    let mut tally = Tally::default();
    for i in 0..n {
        let amount = match shape {
            Shape::EnglishRacing => match engine.price(AUCTION) {
                Some((Some(price), _)) => price + INCREMENT,
                _ => START_PRICE,
            },
            Shape::EnglishTooLow => TOO_LOW_AMOUNT,
            // Cast: a small varying amount; any amount >= 1 is accepted.
            Shape::SealedAccepted => 1_000 + (i % 997),
        };
        let outcome = engine
            .place_bid(&bid(AUCTION, who, ids.next_id(), amount), NOW, sink)
            .outcome;
        tally.count(&outcome);
        drainer.tick(sink);
        black_box(outcome);
    }
    sink.drain();
    tally
}

fn hot<S: MeasuredSink>(group: &mut BenchmarkGroup<'_, WallTime>, shape: Shape, spec: AuctionSpec) {
    let engine = engine_with(spec);
    let sink = S::fresh();
    if let Shape::EnglishTooLow = shape {
        // A price, so every later bid of 1 tick is too low.
        let outcome = engine
            .place_bid(&bid(AUCTION, bidder(99), 1, START_PRICE), NOW, &sink)
            .outcome;
        assert!(matches!(outcome, gavel_engine::BidOutcome::Accepted(_)));
        sink.drain();
    }
    let mut ids: Vec<BidIds> = (0..THREADS).map(|t| BidIds::new(t + 1)).collect();
    let mut tally = Tally::default();
    let name = match shape {
        Shape::EnglishRacing => "english_racing",
        Shape::EnglishTooLow => "english_too_low",
        Shape::SealedAccepted => "sealed_accepted",
    };
    group.bench_function(format!("{name}/{}", S::NAME), |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(u64::from(THREADS));
            let barrier = Barrier::new(THREADS as usize + 1);
            let (elapsed, tallies) = std::thread::scope(|scope| {
                let handles: Vec<_> = ids
                    .iter_mut()
                    .enumerate()
                    .map(|(t, ids)| {
                        let (engine, sink, barrier) = (&engine, &sink, &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            // Cast: t < THREADS.
                            bidder_thread(engine, sink, shape, ids, t as u32 + 1, per_thread)
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                let tallies: Vec<Tally> = handles
                    .into_iter()
                    .map(|h| h.join().expect("bidder thread panicked"))
                    .collect();
                (start.elapsed(), tallies)
            });
            for t in tallies {
                tally.add(t);
            }
            elapsed
        })
    });
    eprintln!("{}", tally.report(&format!("hot {name}/{}", S::NAME)));
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_hot");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    hot::<BoundedSink>(&mut group, Shape::EnglishRacing, english_spec(AUCTION));
    hot::<DiscardSink>(&mut group, Shape::EnglishRacing, english_spec(AUCTION));
    hot::<BoundedSink>(&mut group, Shape::EnglishTooLow, english_spec(AUCTION));
    hot::<BoundedSink>(&mut group, Shape::SealedAccepted, sealed_spec(AUCTION));
    group.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented
    // `pub fn` (the workspace warns on missing docs).
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
