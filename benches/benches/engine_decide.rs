//! One bid decision on one thread, with its events produced into a real bounded sink (the
//! shape of the WAL queue) that the measuring thread drains every
//! `DRAIN_EVERY_DECISIONS` decisions inside the timing; `discard_sink` variants show what
//! the sink costs.
//!
//! - `english_accepted`: a long-lived English auction; every bid raises by one increment.
//! - `english_too_low`: a too-low bid on a live English auction (the lock-free path).
//! - `sealed_accepted`: a sealed first-price auction; 1,000 bidders replace their bids.
//! - `dutch_sold`: the first bid on a fresh Dutch auction sells it (accepted, closed and
//!   settled in one decision); auctions are created outside the timing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use gavel_benches::{
    BidIds, Drainer, INCREMENT, MeasuredSink, NOW, START_PRICE, TOO_LOW_AMOUNT, Tally, bid, bidder,
    dutch_spec, engine_with, english_spec, sealed_spec,
};
use gavel_engine::{AuctionId, BidOutcome, BoundedSink, DiscardSink, Engine, EngineConfig};

const AUCTION: AuctionId = AuctionId(1);

fn english_accepted<S: MeasuredSink>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let engine = engine_with(english_spec(AUCTION));
    let sink = S::fresh();
    let bidders = [bidder(1), bidder(2), bidder(3), bidder(4)];
    let mut ids = BidIds::new(0);
    let mut amount = START_PRICE;
    let mut drainer = Drainer::default();
    let mut tally = Tally::default();
    group.bench_function(format!("english_accepted/{}", S::NAME), |b| {
        b.iter(|| {
            // Invariant of the bench: `amount` is one increment above the price.
            let who = bidders[(amount / INCREMENT) as usize % bidders.len()];
            let outcome = engine
                .place_bid(&bid(AUCTION, who, ids.next_id(), amount), NOW, &sink)
                .outcome;
            tally.count(&outcome);
            if let BidOutcome::Accepted(accepted) = outcome {
                amount = accepted.price + INCREMENT;
            }
            drainer.tick(&sink);
            black_box(outcome)
        })
    });
    assert_eq!(tally.accepted, tally.total(), "{tally:?}");
    eprintln!("{}", tally.report("english_accepted"));
}

fn english_too_low<S: MeasuredSink>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let engine = engine_with(english_spec(AUCTION));
    let sink = S::fresh();
    let mut ids = BidIds::new(0);
    // A price and a full idempotency memory, so the filter is as loaded as in steady state.
    let mut amount = START_PRICE;
    for n in 0..4_096 {
        let outcome = engine
            .place_bid(
                &bid(AUCTION, bidder(n % 8), ids.next_id(), amount),
                NOW,
                &DiscardSink,
            )
            .outcome;
        assert!(matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
        amount += INCREMENT;
    }
    let who = bidder(100);
    let mut drainer = Drainer::default();
    let mut tally = Tally::default();
    group.bench_function(format!("english_too_low/{}", S::NAME), |b| {
        b.iter(|| {
            let outcome = engine
                .place_bid(
                    &bid(AUCTION, who, ids.next_id(), TOO_LOW_AMOUNT),
                    NOW,
                    &sink,
                )
                .outcome;
            tally.count(&outcome);
            drainer.tick(&sink);
            black_box(outcome)
        })
    });
    assert_eq!(tally.too_low, tally.total(), "{tally:?}");
    eprintln!("{}", tally.report("english_too_low"));
}

fn sealed_accepted<S: MeasuredSink>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let engine = engine_with(sealed_spec(AUCTION));
    let sink = S::fresh();
    let bidders: Vec<_> = (0..1_000).map(bidder).collect();
    let mut ids = BidIds::new(0);
    let mut n = 0usize;
    let mut drainer = Drainer::default();
    let mut tally = Tally::default();
    group.bench_function(format!("sealed_accepted/{}", S::NAME), |b| {
        b.iter(|| {
            n += 1;
            let who = bidders[n % bidders.len()];
            // Cast: a small amount that varies; any amount >= 1 is accepted.
            let amount = 1_000 + (n % 997) as u64;
            let outcome = engine
                .place_bid(&bid(AUCTION, who, ids.next_id(), amount), NOW, &sink)
                .outcome;
            tally.count(&outcome);
            drainer.tick(&sink);
            black_box(outcome)
        })
    });
    assert_eq!(tally.accepted, tally.total(), "{tally:?}");
    eprintln!("{}", tally.report("sealed_accepted"));
}

fn dutch_sold<S: MeasuredSink>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let sink = S::fresh();
    let who = bidder(1);
    let mut drainer = Drainer::default();
    let mut tally = Tally::default();
    group.bench_function(format!("dutch_sold/{}", S::NAME), |b| {
        b.iter_batched_ref(
            || {
                let engine = Engine::new(EngineConfig {
                    shards: 1,
                    ..EngineConfig::default()
                });
                engine
                    .create_auction(dutch_spec(AUCTION), NOW, &DiscardSink)
                    .expect("a fresh engine takes an auction");
                engine
            },
            |engine| {
                let outcome = engine
                    .place_bid(&bid(AUCTION, who, 1, START_PRICE), NOW, &sink)
                    .outcome;
                tally.count(&outcome);
                drainer.tick(&sink);
                black_box(outcome)
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(tally.accepted, tally.total(), "{tally:?}");
    eprintln!("{}", tally.report("dutch_sold"));
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_decide");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    english_accepted::<BoundedSink>(&mut group);
    english_accepted::<DiscardSink>(&mut group);
    english_too_low::<BoundedSink>(&mut group);
    english_too_low::<DiscardSink>(&mut group);
    sealed_accepted::<BoundedSink>(&mut group);
    dutch_sold::<BoundedSink>(&mut group);
    group.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented
    // `pub fn` (the workspace warns on missing docs).
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
