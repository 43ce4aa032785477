//! `gavel simulate`: demo auctions with simulated bidders, in process.
//!
//! Real threads place bids on the real engine; auctions of every kind run on a simulated
//! clock (the engine takes `now` as a parameter, so a whole auction day fits in a second).
//! Every decision's events go to a bounded queue drained by a consumer thread, the shape
//! the write-ahead log will have. At the end the timer closes every auction, the results
//! are printed, and — unless `--no-verify` — the recorded events are replayed into a fresh
//! engine whose state hash must equal the live one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    BoundedSink, Engine, EngineConfig, Event, IncrementTable, Rejection, Replayer, Settlement,
    SoftClose, Topic, UnixMicros,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Simulated length of the auction day, in µs of engine time.
const DAY_US: u64 = 1_000_000;
/// Events the event queue holds before bids are refused `Overloaded`.
const QUEUE_EVENTS_MAX: usize = 1 << 16;
/// Most bids one run may place (the run is always bounded).
const BIDS_MAX: u64 = 50_000_000;
/// Most bids a run that verifies replay may place (it keeps every event in memory).
const VERIFY_BIDS_MAX: u64 = 5_000_000;
/// Distinct simulated bidders.
const BIDDERS: usize = 64;

/// Options of `gavel simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Number of auctions (a mix of English, sealed first/second-price and Dutch).
    #[arg(long, default_value_t = 1_000)]
    pub auctions: u64,
    /// Bids to place in total (at most 50 000 000).
    #[arg(long, default_value_t = 1_000_000)]
    pub bids: u64,
    /// Bidding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Zipf exponent of auction popularity (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Seed of the simulated bidders' choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip replaying the events into a fresh engine to check the state hash.
    #[arg(long)]
    pub no_verify: bool,
    /// Settled auctions to print.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
}

/// What a simulation did.
#[derive(Debug)]
pub struct Report {
    /// Bid decisions made (retries after `Overloaded` included).
    pub decisions: u64,
    /// Wall time of the bidding phase.
    pub elapsed: Duration,
    /// Bids accepted.
    pub accepted: u64,
    /// Rejections by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Events the consumer received.
    pub events: u64,
    /// Every settlement, by auction id.
    pub settlements: BTreeMap<AuctionId, (String, Settlement)>,
    /// The engine's state hash at the end.
    pub state_hash: [u8; 32],
    /// Whether replaying the events reproduced the state hash (`None`: not checked).
    pub replay_verified: Option<bool>,
    show: usize,
}

fn kind_of(i: u64) -> AuctionKind {
    match i % 10 {
        0..=5 => AuctionKind::English {
            start_price: 100,
            increments: IncrementTable::default(),
        },
        6 | 7 => AuctionKind::SealedFirstPrice { min_bid: 100 },
        8 => AuctionKind::SealedSecondPrice { min_bid: 100 },
        _ => AuctionKind::Dutch {
            start_price: 50_000,
            floor_price: 500,
            step: 500,
            step_interval_us: 10_000,
        },
    }
}

fn kind_name(kind: &AuctionKind) -> &'static str {
    match kind {
        AuctionKind::English { .. } => "english",
        AuctionKind::SealedFirstPrice { .. } => "sealed-first",
        AuctionKind::SealedSecondPrice { .. } => "sealed-second",
        AuctionKind::Dutch { .. } => "dutch",
    }
}

fn demo_rules(i: u64) -> Result<AuctionSpec> {
    let kind = kind_of(i);
    let name = kind_name(&kind);
    let english = matches!(kind, AuctionKind::English { .. });
    let rules = AuctionRules {
        id: AuctionId(i),
        topic: Topic::new(&format!("demo.{name}.lot-{i}"))?,
        reserve: (i % 3 == 0 && !matches!(kind, AuctionKind::Dutch { .. })).then_some(2_000),
        buy_now: (english && i % 7 == 0).then_some(60_000),
        starts_at: UnixMicros(0),
        // Ends spread over the last tenth of the day.
        ends_at: UnixMicros(DAY_US - (i % 100) * (DAY_US / 1_000)),
        soft_close: english.then_some(SoftClose {
            window_us: 20_000,
            extension_us: 10_000,
            extensions_max: 5,
        }),
        kind,
    };
    Ok(AuctionSpec::try_from(rules)?)
}

fn rejection_name(r: &Rejection) -> &'static str {
    match r {
        Rejection::TooLow { .. } => "too_low",
        Rejection::NotOpen => "not_open",
        Rejection::Closed => "closed",
        Rejection::UnknownAuction => "unknown_auction",
        Rejection::Duplicate { .. } => "duplicate",
        Rejection::RateLimited => "rate_limited",
        Rejection::Overloaded { .. } => "overloaded",
        Rejection::Invalid => "invalid",
        Rejection::Forbidden => "forbidden",
    }
}

/// Per-thread tallies.
#[derive(Default)]
struct Tally {
    decisions: u64,
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
}

/// Runs a simulation.
pub fn run(options: &Options) -> Result<Report> {
    ensure!(options.auctions >= 1, "--auctions must be at least 1");
    ensure!(options.threads >= 1, "--threads must be at least 1");
    ensure!(options.bids <= BIDS_MAX, "--bids is limited to {BIDS_MAX}");
    if !options.no_verify && options.bids > VERIFY_BIDS_MAX {
        bail!(
            "verifying replay keeps every event in memory: use --bids <= {VERIFY_BIDS_MAX} or --no-verify"
        );
    }
    let zipf =
        Zipf::new(options.auctions as f64, options.zipf.max(0.0)).context("bad --zipf exponent")?;

    let engine = Engine::new(EngineConfig {
        auctions_max: usize::try_from(options.auctions)?.max(1),
        ..EngineConfig::default()
    });
    let sink = BoundedSink::new(QUEUE_EVENTS_MAX, 100);
    let mut kinds = Vec::new();
    for i in 0..options.auctions {
        let spec = demo_rules(i)?;
        kinds.push(spec.rules().kind.clone());
        // The consumer is not running yet: drain as we go.
        engine.create_auction(spec, UnixMicros(0), &sink)?;
    }
    let mut created: Vec<Event> = Vec::new();
    while let Some(event) = sink.pop() {
        created.push(event);
    }
    let bidders: Vec<BidderId> = (0..BIDDERS)
        .map(|b| BidderId::new(&format!("sim-bidder-{b:02}")))
        .collect::<Result<_, _>>()?;

    let done = AtomicBool::new(false);
    let threads = options.threads;
    let start_line = Barrier::new(threads + 1);
    let (tallies, consumed, elapsed) = thread::scope(|scope| {
        let consumer = scope.spawn(|| {
            let mut kept = Vec::new();
            let mut count = 0u64;
            loop {
                match sink.pop() {
                    Some(event) => {
                        count += 1;
                        if !options.no_verify {
                            kept.push(event);
                        }
                    }
                    // Ordering: Acquire pairs with the Release store after the bidders
                    // joined: every event they pushed is visible to the final drain.
                    None if done.load(Ordering::Acquire) => {
                        while let Some(event) = sink.pop() {
                            count += 1;
                            if !options.no_verify {
                                kept.push(event);
                            }
                        }
                        return (count, kept);
                    }
                    None => thread::yield_now(),
                }
            }
        });
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (engine, sink, zipf, kinds, bidders, start_line) =
                    (&engine, &sink, &zipf, &kinds, &bidders, &start_line);
                let share = options.bids / threads as u64
                    + u64::from((t as u64) < options.bids % threads as u64);
                let seed = options.seed.wrapping_add(t as u64);
                scope.spawn(move || {
                    start_line.wait();
                    bid_loop(engine, sink, zipf, kinds, bidders, t, share, seed)
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        let tallies: Vec<Tally> = workers
            .into_iter()
            .map(|w| w.join().expect("a bidder thread panicked"))
            .collect();
        let elapsed = started.elapsed();
        // Ordering: Release; see the consumer.
        done.store(true, Ordering::Release);
        let consumed = consumer.join().expect("the consumer thread panicked");
        (tallies, consumed, elapsed)
    });
    let (events_consumed, mut kept) = consumed;

    // The day is over: the timer closes everything, soft-close extensions included.
    let close_sink = BoundedSink::new(QUEUE_EVENTS_MAX, 100);
    let mut closing_events = Vec::new();
    let close_at = UnixMicros(DAY_US + 10 * DAY_US);
    while !engine.close_due(close_at, 1_024, &close_sink).is_empty() {
        while let Some(event) = close_sink.pop() {
            closing_events.push(event);
        }
    }
    let settlements: BTreeMap<AuctionId, (String, Settlement)> = (0..options.auctions)
        .filter_map(|i| {
            let id = AuctionId(i);
            let view = engine.view(id, close_at)?;
            let settlement = view.settlement?;
            Some((
                id,
                (view.spec.rules().topic.as_str().to_owned(), settlement),
            ))
        })
        .collect();
    ensure!(
        settlements.len() as u64 == options.auctions,
        "{} of {} auctions settled",
        settlements.len(),
        options.auctions
    );

    let state_hash = engine.state_hash();
    let replay_verified = if options.no_verify {
        None
    } else {
        let fresh = Engine::new(*engine.config());
        let mut replayer = Replayer::new(&fresh);
        let log = created
            .iter()
            .chain(kept.iter())
            .chain(closing_events.iter());
        for event in log {
            replayer
                .apply(event)
                .context("replaying the simulation's events")?;
        }
        ensure!(
            replayer.finish().missing_tail.is_empty(),
            "replay left decisions half-applied"
        );
        Some(fresh.state_hash() == state_hash)
    };
    kept.clear();

    let mut report = Report {
        decisions: 0,
        elapsed,
        accepted: 0,
        rejected: BTreeMap::new(),
        events: created.len() as u64 + events_consumed + closing_events.len() as u64,
        settlements,
        state_hash,
        replay_verified,
        show: options.show,
    };
    for tally in tallies {
        report.decisions += tally.decisions;
        report.accepted += tally.accepted;
        for (reason, n) in tally.rejected {
            *report.rejected.entry(reason).or_default() += n;
        }
    }
    Ok(report)
}

/// One simulated trading desk: `share` bids on Zipf-chosen auctions.
#[allow(clippy::too_many_arguments)]
fn bid_loop(
    engine: &Engine,
    sink: &BoundedSink,
    zipf: &Zipf<f64>,
    kinds: &[AuctionKind],
    bidders: &[BidderId],
    thread_index: usize,
    share: u64,
    seed: u64,
) -> Tally {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let increments = IncrementTable::default();
    let mut last_accepted: Option<Bid> = None;
    for i in 0..share {
        // Simulated time sweeps the day, spread evenly over all threads' bids.
        let now = UnixMicros(i * DAY_US / share);
        // Zipf samples are 1..=n; auction ids are 0..n.
        let id = AuctionId(zipf.sample(&mut rng) as u64 - 1);
        let bidder = bidders[rng.random_range(0..bidders.len())];
        let bid_id = BidId((thread_index as u128) << 64 | u128::from(i));
        // Kind index is the auction id, by construction of the demo.
        let kind = &kinds[usize::try_from(id.0).expect("auction ids index kinds")];
        let (amount, max) = match kind {
            AuctionKind::English { start_price, .. } => {
                let price = engine.price(id).and_then(|(p, _)| p);
                let base = price.unwrap_or(*start_price);
                let inc = increments.increment_at(base);
                if rng.random_bool(0.2) {
                    (base.saturating_sub(inc).max(1), None)
                } else {
                    let amount = base + inc * rng.random_range(1..=3);
                    let max = rng
                        .random_bool(0.1)
                        .then(|| amount + inc * rng.random_range(0..50));
                    (amount, max)
                }
            }
            AuctionKind::SealedFirstPrice { min_bid }
            | AuctionKind::SealedSecondPrice { min_bid } => {
                (rng.random_range(*min_bid..*min_bid * 20), None)
            }
            AuctionKind::Dutch {
                start_price,
                floor_price,
                ..
            } => (rng.random_range(*floor_price..*start_price), None),
        };
        // 1 % of bids are retries of this desk's last accepted bid.
        let bid = match last_accepted {
            Some(previous) if rng.random_bool(0.01) => previous,
            _ => match Bid::new(id, bidder, bid_id, amount, max, now) {
                Ok(bid) => bid,
                Err(_) => continue,
            },
        };
        loop {
            tally.decisions += 1;
            match engine.place_bid(&bid, now, sink) {
                BidOutcome::Accepted(_) => {
                    tally.accepted += 1;
                    last_accepted = Some(bid);
                }
                BidOutcome::Rejected(Rejection::Overloaded { .. }) => {
                    *tally.rejected.entry("overloaded").or_default() += 1;
                    // The queue is full: let the consumer catch up, then retry.
                    thread::yield_now();
                    continue;
                }
                BidOutcome::Rejected(r) => {
                    *tally.rejected.entry(rejection_name(&r)).or_default() += 1
                }
            }
            break;
        }
    }
    tally
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "gavel simulate")?;
        writeln!(
            f,
            "  decisions      {} in {:.3} s = {:.0} decisions/s",
            self.decisions,
            secs,
            self.decisions as f64 / secs
        )?;
        writeln!(f, "  accepted       {}", self.accepted)?;
        for (reason, n) in &self.rejected {
            writeln!(f, "  rejected       {n} {reason}")?;
        }
        writeln!(f, "  events         {}", self.events)?;
        let sold = self
            .settlements
            .values()
            .filter(|(_, s)| s.winner.is_some())
            .count();
        let revenue: u64 = self
            .settlements
            .values()
            .filter_map(|(_, s)| s.winner.map(|w| w.price))
            .sum();
        writeln!(
            f,
            "  settled        {} auctions: {sold} sold, {} unsold, revenue {revenue} ticks",
            self.settlements.len(),
            self.settlements.len() - sold
        )?;
        for (id, (topic, s)) in self.settlements.iter().take(self.show) {
            match s.winner {
                Some(w) => writeln!(
                    f,
                    "    #{id:<6} {topic:<28} won by {} at {} (bid {:#x})",
                    w.bidder, w.price, w.bid.0
                )?,
                None => writeln!(f, "    #{id:<6} {topic:<28} no winner")?,
            }
        }
        let hash: String = self.state_hash.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(f, "  state hash     {hash}")?;
        match self.replay_verified {
            Some(true) => writeln!(
                f,
                "  replay         events replayed into a fresh engine: same state hash"
            ),
            Some(false) => writeln!(f, "  replay         MISMATCH: replayed state hash differs"),
            None => writeln!(f, "  replay         not verified (--no-verify)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(threads: usize) -> Options {
        Options {
            auctions: 50,
            bids: 40_000,
            threads,
            zipf: 1.1,
            seed: 7,
            no_verify: false,
            show: 3,
        }
    }

    #[test]
    fn a_small_simulation_settles_everything_and_replays_to_the_same_hash() {
        for threads in [1, 3] {
            let report = run(&small(threads)).unwrap();
            assert_eq!(report.settlements.len(), 50);
            assert_eq!(report.replay_verified, Some(true));
            assert!(report.accepted > 1_000, "{report}");
            assert!(
                report.rejected.get("too_low").copied().unwrap_or(0) > 0,
                "{report}"
            );
            assert!(
                report.rejected.get("duplicate").copied().unwrap_or(0) > 0,
                "{report}"
            );
            assert!(report.settlements.values().any(|(_, s)| s.winner.is_some()));
            let text = report.to_string();
            assert!(text.contains("decisions/s"), "{text}");
            assert!(text.contains("same state hash"), "{text}");
        }
    }

    #[test]
    fn one_thread_runs_are_deterministic() {
        let a = run(&small(1)).unwrap();
        let b = run(&small(1)).unwrap();
        assert_eq!(a.state_hash, b.state_hash);
    }

    #[test]
    fn bounds_are_enforced() {
        let mut options = small(1);
        options.bids = BIDS_MAX + 1;
        assert!(run(&options).is_err());
        let mut options = small(1);
        options.bids = VERIFY_BIDS_MAX + 1;
        assert!(run(&options).is_err());
        let mut options = small(1);
        options.threads = 0;
        assert!(run(&options).is_err());
    }
}
