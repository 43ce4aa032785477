//! `gavel-benches`: shared workloads for Gavel's criterion benches and latency probes.
//!
//! Nothing here is timed by itself; the benches (`benches/*.rs`) and the probes
//! (`src/bin/decide_latency.rs`, `wal_latency/`, `wal_replay.rs`) time it. Map:
//! - [`MeasuredSink`]: a sink the measuring thread drains itself, so producing each
//!   decision's events (allocation, queue push, later pop and drop) is inside the timing.
//! - [`Drainer`]: drains a [`MeasuredSink`] every [`DRAIN_EVERY_DECISIONS`] decisions.
//! - [`english_spec`], [`sealed_spec`], [`dutch_spec`]: auctions that never end during a run.
//! - [`ZipfMarket`] and [`ZipfBidder`]: 10k English auctions picked by a Zipf law, bids
//!   mixing raises and too-low amounts, pre-generated outside the timing.
//! - [`Tally`]: outcome counts, to check a run measured what it claims to.
//! - [`wal_load`]: realistic WAL records (encoded accepted-bid events) and a sink that
//!   appends an engine's events to a [`gavel_wal::Wal`].
//! - [`edge_trace`]: a hot-auction and a Zipf price-update trace, and their sizes as the
//!   protobuf stream and as edge frames.
//! - [`process`]: CPU time, resident memory and filesystem, from `/proc` and `df`.

pub mod edge_trace;
pub mod process;
pub mod wal_load;

use std::path::PathBuf;

use anyhow::{Context, ensure};

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    BoundedSink, DiscardSink, Engine, EngineConfig, EventSink, IncrementTable, Price, Rejection,
    Topic, UnixMicros,
};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Start price of the English auctions. With the default increment table the increment is
/// 100 ticks from 100,000 up, so every raise is `price + 100`.
pub const START_PRICE: Price = 1_000_000;
/// The one increment that applies to every price a bench reaches (see [`START_PRICE`]).
pub const INCREMENT: Price = 100;
/// An amount every English auction here refuses as too low.
pub const TOO_LOW_AMOUNT: Price = 1;
/// Bid time used throughout: the auctions open at 0 and end at [`FAR_END`].
pub const NOW: UnixMicros = UnixMicros(1_000);
/// An end no run reaches.
pub const FAR_END: UnixMicros = UnixMicros(u64::MAX / 4);

/// Decisions between two drains of a [`MeasuredSink`], per thread.
pub const DRAIN_EVERY_DECISIONS: u32 = 256;
/// Capacity of a [`BoundedSink`] in batches: room for every thread's decisions between
/// drains, many times over, so a run never sees `Overloaded`.
pub const SINK_BATCHES_MAX: usize = 16_384;
const _: () = assert!(
    SINK_BATCHES_MAX >= 8 * DRAIN_EVERY_DECISIONS as usize,
    "the sink must hold several drain periods of two threads"
);

/// A sink the measuring threads drain themselves.
pub trait MeasuredSink: EventSink + Sync {
    /// A short name for bench ids.
    const NAME: &'static str;
    /// A fresh sink.
    fn fresh() -> Self;
    /// Pops and drops what is queued (at most the sink's capacity); returns the batches.
    fn drain(&self) -> usize;
}

impl MeasuredSink for BoundedSink {
    const NAME: &'static str = "bounded_sink";

    fn fresh() -> Self {
        BoundedSink::new(SINK_BATCHES_MAX, 100)
    }

    fn drain(&self) -> usize {
        // Bounded: another thread may keep pushing while we pop.
        let mut popped = 0;
        while popped < SINK_BATCHES_MAX {
            match self.pop() {
                Some(batch) => {
                    drop(std::hint::black_box(batch));
                    popped += 1;
                }
                None => break,
            }
        }
        popped
    }
}

impl MeasuredSink for DiscardSink {
    const NAME: &'static str = "discard_sink";

    fn fresh() -> Self {
        DiscardSink
    }

    fn drain(&self) -> usize {
        0
    }
}

/// Counts decisions and drains the sink every [`DRAIN_EVERY_DECISIONS`] of them.
#[derive(Default, Debug)]
pub struct Drainer {
    since_drain: u32,
}

impl Drainer {
    /// Call after each decision.
    #[inline]
    pub fn tick<S: MeasuredSink>(&mut self, sink: &S) {
        self.since_drain += 1;
        if self.since_drain >= DRAIN_EVERY_DECISIONS {
            self.since_drain = 0;
            sink.drain();
        }
    }
}

/// Outcome counts of a run.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Tally {
    /// Accepted bids.
    pub accepted: u64,
    /// `TooLow` rejections.
    pub too_low: u64,
    /// `Overloaded` rejections (the sink was full): must stay 0 for an honest number.
    pub overloaded: u64,
    /// Any other outcome (a bench bug if not 0).
    pub other: u64,
}

impl Tally {
    /// Counts one outcome.
    #[inline]
    pub fn count(&mut self, outcome: &BidOutcome) {
        match outcome {
            BidOutcome::Accepted(_) => self.accepted += 1,
            BidOutcome::Rejected(Rejection::TooLow { .. }) => self.too_low += 1,
            BidOutcome::Rejected(Rejection::Overloaded { .. }) => self.overloaded += 1,
            BidOutcome::Rejected(_) => self.other += 1,
        }
    }

    /// Adds another tally.
    pub fn add(&mut self, other: Tally) {
        self.accepted += other.accepted;
        self.too_low += other.too_low;
        self.overloaded += other.overloaded;
        self.other += other.other;
    }

    /// All decisions counted.
    pub fn total(&self) -> u64 {
        self.accepted + self.too_low + self.overloaded + self.other
    }

    /// A one-line summary; panics if the sink overflowed or an unexpected outcome appeared,
    /// since the measurement would then be of something else.
    pub fn report(&self, what: &str) -> String {
        assert_eq!(self.overloaded, 0, "{what}: the sink overflowed: {self:?}");
        assert_eq!(self.other, 0, "{what}: unexpected outcomes: {self:?}");
        let total = self.total().max(1);
        // Cast: a percentage of counts far below 2^53, for display.
        let pct = |n: u64| 100.0 * n as f64 / total as f64;
        format!(
            "{what}: {} decisions, {:.1} % accepted, {:.1} % too low",
            self.total(),
            pct(self.accepted),
            pct(self.too_low)
        )
    }
}

/// Bidder `n`, as `bidder-n`.
pub fn bidder(n: usize) -> BidderId {
    // Invariant: `bidder-` and decimal digits are valid bidder-id characters, well below
    // the length limit.
    BidderId::new(&format!("bidder-{n}")).expect("bench bidder ids are valid")
}

/// A topic for auction `id`.
fn topic(id: AuctionId) -> Topic {
    // Invariant: a fixed prefix and digits form a valid topic.
    Topic::new(&format!("bench.lot-{}", id.0)).expect("bench topics are valid")
}

fn spec(id: AuctionId, kind: AuctionKind) -> AuctionSpec {
    spec_ending(id, kind, FAR_END)
}

fn spec_ending(id: AuctionId, kind: AuctionKind, ends_at: UnixMicros) -> AuctionSpec {
    // Invariant: the bench rules are valid (start before end, positive prices).
    AuctionSpec::try_from(AuctionRules {
        id,
        topic: topic(id),
        kind,
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(0),
        ends_at,
        soft_close: None,
    })
    .expect("bench auction rules are valid")
}

/// An English auction at [`START_PRICE`] with the default increment table, open from 0 to
/// [`FAR_END`].
pub fn english_spec(id: AuctionId) -> AuctionSpec {
    english_spec_ending(id, FAR_END)
}

/// An English auction at [`START_PRICE`] with the default increment table, open from 0 to
/// `ends_at` (after 0).
pub fn english_spec_ending(id: AuctionId, ends_at: UnixMicros) -> AuctionSpec {
    spec_ending(
        id,
        AuctionKind::English {
            start_price: START_PRICE,
            increments: IncrementTable::default(),
        },
        ends_at,
    )
}

/// A sealed first-price auction with minimum bid 1, open from 0 to [`FAR_END`].
pub fn sealed_spec(id: AuctionId) -> AuctionSpec {
    spec(id, AuctionKind::SealedFirstPrice { min_bid: 1 })
}

/// A Dutch auction whose clock starts at [`START_PRICE`] and falls 1 tick a second.
pub fn dutch_spec(id: AuctionId) -> AuctionSpec {
    spec(
        id,
        AuctionKind::Dutch {
            start_price: START_PRICE,
            floor_price: 1,
            step: 1,
            step_interval_us: 1_000_000,
        },
    )
}

/// A bid; panics on an invalid amount (a bench bug).
#[inline]
pub fn bid(auction: AuctionId, bidder: BidderId, id: u128, amount: Price) -> Bid {
    // Invariant: bench amounts are positive and far below PRICE_MAX.
    Bid::new(auction, bidder, BidId(id), amount, None, NOW).expect("bench bids are valid")
}

/// Distinct bid ids per thread: the thread in the high half, a counter in the low half.
#[derive(Debug)]
pub struct BidIds {
    next: u128,
}

impl BidIds {
    /// Ids for thread `thread`. Keep one `BidIds` per thread for the life of an auction, so
    /// the auction never takes a bid for a retry.
    pub fn new(thread: u32) -> BidIds {
        BidIds {
            next: u128::from(thread) << 64,
        }
    }

    /// The next id.
    #[inline]
    pub fn next_id(&mut self) -> u128 {
        self.next += 1;
        self.next
    }
}

/// An engine (default configuration) holding the one auction `spec`.
pub fn engine_with(spec: AuctionSpec) -> Engine {
    let engine = Engine::new(EngineConfig::default());
    // Invariant: a fresh engine takes one auction.
    engine
        .create_auction(spec, UnixMicros(0), &DiscardSink)
        .expect("a fresh engine takes an auction");
    engine
}

/// Number of auctions in the Zipf workload (PRODUCT §10).
pub const ZIPF_AUCTIONS: u64 = 10_000;
/// Zipf exponent: the most popular auction takes about 10 % of the bids.
pub const ZIPF_EXPONENT: f64 = 1.05;
/// Percent of Zipf bids that try to raise the price (the rest bid too low).
pub const ZIPF_RAISE_PERCENT: u32 = 50;
/// Pre-generated steps per bidder thread; the run cycles through them.
pub const ZIPF_STEPS: usize = 1 << 20;
/// Distinct bidders per thread.
const ZIPF_BIDDERS_PER_THREAD: usize = 64;

/// An engine with [`ZIPF_AUCTIONS`] English auctions, ids `0..ZIPF_AUCTIONS`.
pub struct ZipfMarket {
    /// The engine.
    pub engine: Engine,
}

impl ZipfMarket {
    /// Creates the auctions (their `Created` events are discarded: setup, not measured).
    pub fn new() -> ZipfMarket {
        let engine = Engine::new(EngineConfig::default());
        for id in 0..ZIPF_AUCTIONS {
            // Invariant: ids are distinct and far below `auctions_max`.
            engine
                .create_auction(english_spec(AuctionId(id)), UnixMicros(0), &DiscardSink)
                .expect("zipf auctions are created once each");
        }
        ZipfMarket { engine }
    }
}

impl Default for ZipfMarket {
    fn default() -> Self {
        ZipfMarket::new()
    }
}

/// One pre-generated bid: which auction, by whom, and whether it tries to raise.
#[derive(Clone, Copy, Debug)]
struct Step {
    auction: u32,
    bidder: u8,
    raise: bool,
}

/// One bidder thread of the Zipf workload. It bids `price + increment` from its own view
/// of each auction's price (learnt from its acks and `TooLow` answers, as a real client
/// learns it), or [`TOO_LOW_AMOUNT`]. With two threads the views go stale, so some raises
/// lose the race: a realistic mix.
pub struct ZipfBidder {
    steps: Box<[Step]>,
    bidders: Box<[BidderId]>,
    /// This thread's view of the next acceptable amount of every auction.
    min_next: Box<[Price]>,
    ids: BidIds,
    at: usize,
}

impl ZipfBidder {
    /// Pre-generates the steps of thread `thread` (seeded, so runs are repeatable). Use a
    /// distinct `thread` for every bidder on one market: it names the bidders and bid ids.
    pub fn new(thread: u32) -> ZipfBidder {
        // Cast: 10_000 is exact in f64.
        let zipf =
            Zipf::new(ZIPF_AUCTIONS as f64, ZIPF_EXPONENT).expect("zipf parameters are valid");
        let mut rng = SmallRng::seed_from_u64(0x6a5e1 + u64::from(thread));
        let steps = (0..ZIPF_STEPS)
            .map(|_| {
                // Zipf yields ranks 1..=n as floats; rank 1 is the hottest.
                // Cast: the rank is an integer below ZIPF_AUCTIONS.
                let rank = zipf.sample(&mut rng) as u32 - 1;
                Step {
                    auction: rank,
                    // Cast: below ZIPF_BIDDERS_PER_THREAD = 64.
                    bidder: rng.random_range(0..ZIPF_BIDDERS_PER_THREAD) as u8,
                    raise: rng.random_range(0..100) < ZIPF_RAISE_PERCENT,
                }
            })
            .collect();
        let bidders = (0..ZIPF_BIDDERS_PER_THREAD)
            .map(|n| bidder(thread as usize * 1000 + n))
            .collect();
        ZipfBidder {
            steps,
            bidders,
            // Cast: 10_000 fits usize.
            min_next: vec![START_PRICE; ZIPF_AUCTIONS as usize].into(),
            ids: BidIds::new(thread),
            at: 0,
        }
    }

    /// The next bid, built from the pre-generated step and this thread's price view.
    #[inline]
    pub fn next_bid(&mut self) -> Bid {
        let step = self.steps[self.at];
        self.at = (self.at + 1) % self.steps.len();
        let amount = if step.raise {
            self.min_next[step.auction as usize]
        } else {
            TOO_LOW_AMOUNT
        };
        bid(
            AuctionId(u64::from(step.auction)),
            self.bidders[usize::from(step.bidder)],
            self.ids.next_id(),
            amount,
        )
    }

    /// Learns from an outcome of `bid`.
    #[inline]
    pub fn learn(&mut self, bid: &Bid, outcome: &BidOutcome) {
        // Cast: auction ids here are below ZIPF_AUCTIONS.
        let slot = &mut self.min_next[bid.auction().0 as usize];
        match outcome {
            BidOutcome::Accepted(accepted) => *slot = accepted.price + INCREMENT,
            BidOutcome::Rejected(Rejection::TooLow { min_next }) => {
                *slot = (*slot).max(*min_next);
            }
            BidOutcome::Rejected(_) => {}
        }
    }

    /// Decides `n` bids on `engine` into `sink`, draining it as it goes.
    #[inline]
    pub fn run<S: MeasuredSink>(&mut self, engine: &Engine, sink: &S, n: u64) -> Tally {
        let mut tally = Tally::default();
        let mut drainer = Drainer::default();
        for _ in 0..n {
            let bid = self.next_bid();
            let outcome = engine.place_bid(&bid, NOW, sink).outcome;
            self.learn(&bid, &outcome);
            tally.count(&outcome);
            drainer.tick(sink);
        }
        sink.drain();
        tally
    }
}

/// Runs `work` on one scoped thread per bidder, all released together; returns the time
/// from the release until the last thread ended, and each thread's result, in order.
pub fn on_bidder_threads<T: Send>(
    bidders: &mut [ZipfBidder],
    work: impl Fn(&mut ZipfBidder) -> T + Sync,
) -> (Duration, Vec<T>) {
    let barrier = Barrier::new(bidders.len() + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = bidders
            .iter_mut()
            .map(|bidder| {
                let (work, barrier) = (&work, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    work(bidder)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results = handles
            .into_iter()
            .map(|h| h.join().expect("bidder thread panicked"))
            .collect();
        (start.elapsed(), results)
    })
}

/// Records in a generated log by default (`wal_replay`, `node_restart`).
pub const GENERATED_RECORDS_DEFAULT: u64 = 10_000_000;
/// Most records a generated log may hold.
pub const GENERATED_RECORDS_MAX: u64 = 100_000_000;

/// The arguments of a bench that generates a log in a temporary directory.
#[derive(clap::Args, Debug)]
pub struct GeneratedArgs {
    /// Records in the generated log (10k creations, then accepted bids).
    #[arg(long, default_value_t = GENERATED_RECORDS_DEFAULT)]
    pub records: u64,
    /// Directory in which the temporary directory is made (default: the system temp
    /// directory; its filesystem is printed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the generated directory (its path is printed).
    #[arg(long)]
    pub keep: bool,
}

impl GeneratedArgs {
    /// Checks `--records` and makes the temporary directory `<prefix>…`, printing where.
    pub fn temp_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        ensure!(
            (ZIPF_AUCTIONS + 1..=GENERATED_RECORDS_MAX).contains(&self.records),
            "--records must be in {}..={GENERATED_RECORDS_MAX}",
            ZIPF_AUCTIONS + 1
        );
        let base = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)
            .with_context(|| format!("temp dir in {}", base.display()))?;
        println!(
            "data in {} on: {}",
            dir.path().display(),
            process::filesystem(dir.path())
        );
        Ok(dir)
    }
}
