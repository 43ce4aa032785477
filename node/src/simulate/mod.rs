//! `gavel simulate`: demo auctions with simulated bidders, in process.
//!
//! Real threads place bids on the real engine; auctions of every kind run on a simulated
//! clock (the engine takes `now` as a parameter, so a whole auction day fits in a second).
//! At the end the timer closes every auction and the results are printed.
//!
//! Two modes:
//! - **durable** (the default, `--data-dir ./data`): the engine runs inside a [`Node`]: every
//!   decision's events are appended to the write-ahead log in the data directory before they
//!   apply, each accepted bid's durable acknowledgement is tracked (its latency is reported),
//!   and settlements are reported once durable. A run first recovers what earlier runs left
//!   (snapshot + replay) and then runs a new day on new auction ids after the existing ones.
//!   Unless `--no-verify`, the data directory is reopened at the end and the recovered state
//!   hash must equal the live one.
//! - **in memory** (`--in-memory`): events go to a bounded queue drained by a consumer
//!   thread; unless `--no-verify`, they are replayed into a fresh engine whose state hash
//!   must equal the live one. Nothing persists.
//!
//! A hidden flag for the crash tests, `--ack-log <file|->` (durable mode only), streams one
//! line per durable-acknowledged bid — `ack <auction> <bidder> <bid id> <seq> <lsn>` — written
//! and flushed as soon as the bidder observes the log's durable LSN at or past the bid's
//! receipt (never before), so that a parent that kills the process knows what was promised.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId, Engine,
    EventSink, IncrementTable, Receipt, Rejection, SoftClose, Topic, UnixMicros,
};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::node::Node;

mod in_memory;
mod on_node;
mod report;

use in_memory::InMemory;
use on_node::{AckLog, OnNode, settlements_of};
pub use report::{DurableReport, Report};

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
/// Accepted bids a bidder thread tracks while their durable acks are outstanding; beyond,
/// it waits for the oldest (the WAL queue bounds what is in flight anyway).
const ACKS_PENDING_MAX: usize = 1 << 17;
/// Largest durable-ack latency the histogram tells apart (60 s), µs.
const ACK_LATENCY_US_MAX: u64 = 60_000_000;
/// Longest wait for a durable acknowledgement before the run fails.
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Wait before retrying a decision the log refused with back-pressure (durable mode).
const OVERLOADED_SLEEP: Duration = Duration::from_micros(50);

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
    /// Keep the write-ahead log and snapshots here; a later run recovers from it and adds a
    /// new day of auctions.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keep nothing: run in memory only (faster; nothing persists).
    #[arg(long, conflicts_with = "data_dir")]
    pub in_memory: bool,
    /// Durable mode: write a snapshot (and compact the log) every this many records.
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_every_records: u64,
    /// Durable mode, for the crash tests: write one line per durable-acknowledged bid to this
    /// file (`-` = stdout) as soon as its ack is observed. Hidden: a test hook, not a feature.
    #[arg(long, hide = true, conflicts_with = "in_memory")]
    pub ack_log: Option<PathBuf>,
    /// Durable mode on a Kafka topic instead of the file log: bootstrap brokers,
    /// host:port[,host:port...]. A run first replays the topic, as `gavel serve --wal kafka`.
    #[arg(long, conflicts_with = "in_memory")]
    pub kafka_brokers: Option<String>,
    /// The Kafka topic, with --kafka-brokers.
    #[arg(long, default_value = "gavel-wal", requires = "kafka_brokers")]
    pub kafka_topic: String,
    /// The topic's writer lease with --kafka-brokers, in milliseconds: a successor of a
    /// crashed run waits this long.
    #[arg(long, default_value_t = 10_000, requires = "kafka_brokers")]
    pub kafka_writer_lease_ms: u64,
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

fn demo_rules(i: u64, epoch: u64) -> Result<AuctionSpec> {
    let kind = kind_of(i);
    let name = kind_name(&kind);
    let english = matches!(kind, AuctionKind::English { .. });
    let rules = AuctionRules {
        id: AuctionId(i),
        topic: Topic::new(&format!("demo.{name}.lot-{i}"))?,
        reserve: (i.is_multiple_of(3) && !matches!(kind, AuctionKind::Dutch { .. }))
            .then_some(2_000),
        buy_now: (english && i.is_multiple_of(7)).then_some(60_000),
        starts_at: UnixMicros(epoch),
        // Ends spread over the last tenth of the day.
        ends_at: UnixMicros(epoch + DAY_US - (i % 100) * (DAY_US / 1_000)),
        soft_close: english.then_some(SoftClose {
            window_us: 20_000,
            extension_us: 10_000,
            extensions_max: 5,
        }),
        kind,
    };
    Ok(AuctionSpec::try_from(rules)?)
}

/// Per-thread tallies.
#[derive(Default)]
struct Tally {
    decisions: u64,
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
    /// Durable mode: acks observed and their latency.
    acks: Option<Acks>,
    /// The thread stopped early because the log failed.
    stopped: bool,
}

/// A bidder thread's outstanding durable acknowledgements, oldest first, and the latency of
/// the ones observed.
struct Acks {
    pending: VecDeque<PendingAck>,
    latency_us: Histogram<u64>,
    /// Acks released by the last [`Acks::observe`], for the ack log (empty without one).
    released: Vec<PendingAck>,
}

/// An accepted bid waiting for its durable acknowledgement.
#[derive(Clone, Copy)]
struct PendingAck {
    /// The decision's receipt: durable once the log's durable LSN reaches it.
    lsn: u64,
    at: Instant,
    bid: Bid,
    /// The acceptance's per-auction sequence number.
    seq: u64,
}

impl Acks {
    fn new() -> Acks {
        Acks {
            pending: VecDeque::new(),
            // 1 µs to 60 s at 3 significant digits: a fixed few tens of KiB; longer waits
            // are clamped (the run fails after DURABLE_WAIT_MAX anyway).
            latency_us: Histogram::new_with_bounds(1, ACK_LATENCY_US_MAX, 3)
                .expect("invariant: the bounds and 3 significant figures are valid"),
            released: Vec::new(),
        }
    }

    /// Records every pending ack now durable, and streams them to the ack log if there is
    /// one; false if that log failed.
    fn observe(&mut self, durable_lsn: u64, log: Option<&AckLog>) -> bool {
        self.released.clear();
        while let Some(&ack) = self.pending.front() {
            if ack.lsn > durable_lsn {
                break;
            }
            self.latency_us
                .saturating_record(ack.at.elapsed().as_micros() as u64);
            if log.is_some() {
                self.released.push(ack);
            }
            self.pending.pop_front();
        }
        log.is_none_or(|log| log.write(&self.released))
    }
}

/// The simulation's view of where its events go: in-memory (no acks) or a node.
#[derive(Clone, Copy)]
struct Durability<'a> {
    node: Option<&'a Node>,
}

impl Durability<'_> {
    fn failed(&self) -> bool {
        self.node.is_some_and(|n| n.failure().is_some())
    }
}

/// Runs a simulation.
pub fn run(options: &Options) -> Result<Report> {
    ensure!(options.auctions >= 1, "--auctions must be at least 1");
    ensure!(options.threads >= 1, "--threads must be at least 1");
    ensure!(options.bids <= BIDS_MAX, "--bids is limited to {BIDS_MAX}");
    if options.in_memory {
        let venue = InMemory::new(options)?;
        let (report, _) = simulate(options, &venue, Day::default())?;
        venue.verify(options, report)
    } else {
        let venue = OnNode::open(options)?;
        let day = venue.day(options)?;
        let (report, tallies) = simulate(options, &venue, day)?;
        venue.finish(options, day, report, tallies)
    }
}

/// Where this run's auctions live: its first auction id, and the engine time its day starts.
#[derive(Clone, Copy, Debug, Default)]
struct Day {
    first_auction: u64,
    epoch: u64,
}

/// What differs between the two modes; [`simulate`] is the day they share.
trait Venue: Sync {
    /// The sink the bidders hand the engine.
    type Sink: EventSink + Sync;

    fn engine(&self) -> &Engine;
    fn sink(&self) -> &Self::Sink;
    /// The node, in durable mode (durable acks are then tracked).
    fn node(&self) -> Option<&Node>;
    /// `--ack-log`, if given (durable mode only).
    fn ack_log(&self) -> Option<&AckLog>;
    /// Creates one of the day's auctions at `now`.
    fn create(&self, spec: AuctionSpec, now: UnixMicros) -> Result<()>;
    /// Runs `bidding`, with whatever must drain the sink meanwhile.
    fn drain_during<R: Send>(&self, bidding: impl FnOnce() -> R + Send) -> R;
    /// Checks the bidders' run once they joined.
    fn after_bidding(&self) -> Result<()>;
    /// Closes every auction due at `close_at`; their settlements are final when it returns.
    fn close_all(&self, close_at: UnixMicros) -> Result<()>;
}

/// The day both modes share: create the auctions, bid from `options.threads` desks, close
/// everything, read the settlements. The report lacks what only a mode knows (the event
/// count, the replay check, the durable part), and the tallies are returned for it.
fn simulate<V: Venue>(options: &Options, venue: &V, day: Day) -> Result<(Report, Vec<Tally>)> {
    let zipf =
        Zipf::new(options.auctions as f64, options.zipf.max(0.0)).context("bad --zipf exponent")?;
    let mut kinds = Vec::new();
    for i in day.first_auction..day.first_auction + options.auctions {
        let spec = demo_rules(i, day.epoch)?;
        kinds.push(spec.rules().kind.clone());
        venue.create(spec, UnixMicros(day.epoch))?;
    }
    let bidders: Vec<BidderId> = (0..BIDDERS)
        .map(|b| BidderId::new(&format!("sim-bidder-{b:02}")))
        .collect::<Result<_, _>>()?;
    let desks = Desks {
        zipf: &zipf,
        kinds: &kinds,
        bidders: &bidders,
        day,
    };
    let (tallies, elapsed) = venue.drain_during(|| bid_all(options, venue, &desks));
    venue.after_bidding()?;

    // The day is over: the timer closes everything, soft-close extensions included.
    let close_at = UnixMicros(day.epoch + DAY_US + 10 * DAY_US);
    venue.close_all(close_at)?;
    let engine = venue.engine();
    let settlements = settlements_of(engine, day.first_auction, options.auctions, close_at);
    ensure!(
        settlements.len() as u64 == options.auctions,
        "{} of {} auctions settled",
        settlements.len(),
        options.auctions
    );
    let mut report = Report {
        decisions: 0,
        elapsed,
        accepted: 0,
        rejected: BTreeMap::new(),
        events: 0,
        settlements,
        state_hash: engine.state_hash(),
        replay_verified: None,
        durable: None,
        show: options.show,
    };
    for tally in &tallies {
        report.decisions += tally.decisions;
        report.accepted += tally.accepted;
        for (reason, n) in &tally.rejected {
            *report.rejected.entry(reason).or_default() += n;
        }
    }
    Ok((report, tallies))
}

/// What every desk of a run shares.
struct Desks<'a> {
    zipf: &'a Zipf<f64>,
    /// The kinds of this run's auctions, by id − `first_auction`.
    kinds: &'a [AuctionKind],
    bidders: &'a [BidderId],
    day: Day,
}

/// Runs `options.threads` desks from one start line; returns their tallies and the time from
/// the start to the last one's end.
fn bid_all<V: Venue>(options: &Options, venue: &V, desks: &Desks<'_>) -> (Vec<Tally>, Duration) {
    let threads = options.threads;
    let start_line = Barrier::new(threads + 1);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let share = options.bids / threads as u64
                    + u64::from((t as u64) < options.bids % threads as u64);
                let seed = options.seed.wrapping_add(t as u64);
                let desk = Desk {
                    engine: venue.engine(),
                    durability: Durability { node: venue.node() },
                    ack_log: venue.ack_log(),
                    zipf: desks.zipf,
                    kinds: desks.kinds,
                    bidders: desks.bidders,
                    first_auction: desks.day.first_auction,
                    epoch: desks.day.epoch,
                    thread_index: t,
                };
                let start_line = &start_line;
                scope.spawn(move || {
                    start_line.wait();
                    bid_loop(&desk, venue.sink(), share, seed)
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        let tallies: Vec<Tally> = workers
            .into_iter()
            .map(|w| w.join().expect("a bidder thread panicked"))
            .collect();
        (tallies, started.elapsed())
    })
}

/// What a bidder thread bids on.
struct Desk<'a> {
    engine: &'a Engine,
    durability: Durability<'a>,
    /// `--ack-log`, if given (durable mode only).
    ack_log: Option<&'a AckLog>,
    zipf: &'a Zipf<f64>,
    /// The kinds of this run's auctions, by id − `first_auction`.
    kinds: &'a [AuctionKind],
    bidders: &'a [BidderId],
    first_auction: u64,
    /// Engine time at which this run's day starts.
    epoch: u64,
    thread_index: usize,
}

/// One simulated trading desk: `share` bids on Zipf-chosen auctions.
fn bid_loop<S: EventSink>(desk: &Desk<'_>, sink: &S, share: u64, seed: u64) -> Tally {
    let Desk {
        engine,
        durability,
        ack_log,
        zipf,
        kinds,
        bidders,
        first_auction,
        epoch,
        thread_index,
    } = *desk;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tally = Tally {
        acks: durability.node.map(|_| Acks::new()),
        ..Tally::default()
    };
    let increments = IncrementTable::default();
    let mut last_accepted: Option<Bid> = None;
    for i in 0..share {
        // Simulated time sweeps the day, spread evenly over all threads' bids.
        let now = UnixMicros(epoch + i * DAY_US / share);
        // Zipf samples are 1..=n; this run's auction ids are first..first + n.
        let index = zipf.sample(&mut rng) as u64 - 1;
        let id = AuctionId(first_auction + index);
        let bidder = bidders[rng.random_range(0..bidders.len())];
        let bid_id = BidId((thread_index as u128) << 64 | u128::from(i));
        // Kind index is the auction's index in this run, by construction of the demo.
        let kind = &kinds[usize::try_from(index).expect("auction indexes index kinds")];
        let (amount, max) = amount_for(kind, engine.price(id), &increments, &mut rng);
        // 1 % of bids are retries of this desk's last accepted bid.
        let bid = match last_accepted {
            Some(previous) if rng.random_bool(0.01) => previous,
            _ => match Bid::new(id, bidder, bid_id, amount, max, now) {
                Ok(bid) => bid,
                Err(_) => continue,
            },
        };
        let placed = place(engine, sink, durability, &bid, now, &mut tally);
        if placed.is_none() || !keep_up_with_acks(&mut tally, durability, ack_log) {
            tally.stopped = true;
            return tally;
        }
        if placed == Some(true) {
            last_accepted = Some(bid);
        }
    }
    // The end of the desk's day: wait for its last acks.
    if let (Some(acks), Some(node)) = (&mut tally.acks, durability.node)
        && let Some(last) = acks.pending.back().map(|p| p.lsn)
        && (node.wait_durable(Receipt(last), DURABLE_WAIT_MAX).is_err()
            || !acks.observe(node.wal().durable_lsn(), ack_log))
    {
        tally.stopped = true;
    }
    tally
}

/// A desk's amount (and proxy maximum) for an auction of `kind` whose price word reads
/// `price`: for English auctions mostly one to three increments over the price (a fifth too
/// low, a tenth with a maximum), for the others anywhere in their range.
fn amount_for(
    kind: &AuctionKind,
    price: Option<(Option<u64>, bool)>,
    increments: &IncrementTable,
    rng: &mut SmallRng,
) -> (u64, Option<u64>) {
    match kind {
        AuctionKind::English { start_price, .. } => {
            let base = price.and_then(|(p, _)| p).unwrap_or(*start_price);
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
        AuctionKind::SealedFirstPrice { min_bid } | AuctionKind::SealedSecondPrice { min_bid } => {
            (rng.random_range(*min_bid..*min_bid * 20), None)
        }
        AuctionKind::Dutch {
            start_price,
            floor_price,
            ..
        } => (rng.random_range(*floor_price..*start_price), None),
    }
}

/// Places `bid` until the engine decides it (an overloaded queue is waited out) and tallies
/// the outcome; an accepted bid's durable ack becomes pending. Returns whether it was
/// accepted, or `None` if the log failed.
fn place<S: EventSink>(
    engine: &Engine,
    sink: &S,
    durability: Durability<'_>,
    bid: &Bid,
    now: UnixMicros,
    tally: &mut Tally,
) -> Option<bool> {
    loop {
        tally.decisions += 1;
        let decision = engine.place_bid(bid, now, sink);
        match decision.outcome {
            BidOutcome::Accepted(accepted) => {
                tally.accepted += 1;
                if let (Some(acks), Some(Receipt(lsn))) = (&mut tally.acks, decision.receipt) {
                    acks.pending.push_back(PendingAck {
                        lsn,
                        at: Instant::now(),
                        bid: *bid,
                        seq: accepted.seq,
                    });
                }
                return Some(true);
            }
            BidOutcome::Rejected(Rejection::Overloaded { .. }) => {
                *tally.rejected.entry("overloaded").or_default() += 1;
                if durability.failed() {
                    return None;
                }
                // The queue is full: let the consumer (or the log writer) catch up.
                match durability.node {
                    Some(_) => thread::sleep(OVERLOADED_SLEEP),
                    None => thread::yield_now(),
                }
            }
            BidOutcome::Rejected(r) => {
                *tally.rejected.entry(r.name()).or_default() += 1;
                return Some(false);
            }
        }
    }
}

/// Durable mode: releases the acks the log's durable LSN reached, and waits for the oldest
/// when `ACKS_PENDING_MAX` are pending. `false` if the log or the ack log failed.
fn keep_up_with_acks(
    tally: &mut Tally,
    durability: Durability<'_>,
    ack_log: Option<&AckLog>,
) -> bool {
    let (Some(acks), Some(node)) = (&mut tally.acks, durability.node) else {
        return true;
    };
    if !acks.observe(node.wal().durable_lsn(), ack_log) {
        return false;
    }
    if acks.pending.len() >= ACKS_PENDING_MAX {
        let oldest = acks.pending.front().map_or(0, |p| p.lsn);
        if node
            .wait_durable(Receipt(oldest), DURABLE_WAIT_MAX)
            .is_err()
        {
            return false;
        }
        return acks.observe(node.wal().durable_lsn(), ack_log);
    }
    true
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
            data_dir: PathBuf::new(),
            in_memory: true,
            snapshot_every_records: 0,
            ack_log: None,
            kafka_brokers: None,
            kafka_topic: String::new(),
            kafka_writer_lease_ms: 10_000,
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
