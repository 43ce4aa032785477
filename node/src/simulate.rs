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
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    BoundedSink, Engine, EngineConfig, Event, EventSink, IncrementTable, Receipt, Rejection,
    Replayer, Settlement, SoftClose, Topic, UnixMicros,
};
use gavel_wal::WalMetrics;
use gavel_wal::kafka::KafkaConfig;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::durable::WalSink;
use crate::node::{Node, NodeConfig, RecoveryReport};

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

/// `--ack-log`: where durable acknowledgements are streamed, one flushed line each.
struct AckLog {
    out: Mutex<Box<dyn Write + Send>>,
    /// A write failed (the reader went away): bidders stop.
    failed: AtomicBool,
}

impl AckLog {
    fn open(path: &Path) -> Result<AckLog> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating the ack log {}", path.display()))?,
            )
        };
        Ok(AckLog {
            out: Mutex::new(out),
            failed: AtomicBool::new(false),
        })
    }

    /// Writes and flushes one line per released ack; false if the log failed.
    fn write(&self, released: &[PendingAck]) -> bool {
        if released.is_empty() {
            return true;
        }
        let mut text = String::with_capacity(released.len() * 64);
        for ack in released {
            use std::fmt::Write as _;
            let _ = writeln!(
                text,
                "ack {} {} {} {} {}",
                ack.bid.auction(),
                ack.bid.bidder(),
                ack.bid.id().0,
                ack.seq,
                ack.lsn
            );
        }
        let mut out = self
            .out
            .lock()
            .expect("ack log mutex poisoned: nothing panics while holding it");
        let ok = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        drop(out);
        match ok {
            Ok(()) => true,
            Err(_) => {
                // Ordering: a flag read after the bidders joined.
                self.failed.store(true, Ordering::Relaxed);
                false
            }
        }
    }
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
    /// What the durable mode did (`None`: in memory).
    pub durable: Option<DurableReport>,
    show: usize,
}

/// What a durable run did beyond the simulation.
#[derive(Debug)]
pub struct DurableReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// What start-up recovered.
    pub recovered: RecoveryReport,
    /// The first auction id of this run (the ones before were recovered).
    pub first_auction: u64,
    /// Accepted bids whose durable acknowledgement was observed.
    pub durable_acks: u64,
    /// Durable-ack latency, µs: accepted → durable (p50, p99, p99.9, max).
    pub ack_latency_us: Option<[u64; 4]>,
    /// The log's counters at the end.
    pub wal: WalMetrics,
    /// Durable LSN after the final flush.
    pub final_lsn: u64,
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

/// The in-memory mode: the engine's events go to a bounded queue, drained as they come and
/// kept (unless `--no-verify`) for the replay check.
struct InMemory {
    engine: Engine,
    sink: BoundedSink,
    keep: bool,
    /// Every event of the run in order (when kept) and their count.
    log: Mutex<(Vec<Event>, u64)>,
}

impl InMemory {
    fn new(options: &Options) -> Result<InMemory> {
        if !options.no_verify && options.bids > VERIFY_BIDS_MAX {
            bail!(
                "verifying replay keeps every event in memory: use --bids <= {VERIFY_BIDS_MAX} or --no-verify"
            );
        }
        Ok(InMemory {
            engine: Engine::new(EngineConfig {
                auctions_max: usize::try_from(options.auctions)?.max(1),
                ..EngineConfig::default()
            }),
            sink: BoundedSink::new(QUEUE_EVENTS_MAX, 100),
            keep: !options.no_verify,
            log: Mutex::new((Vec::new(), 0)),
        })
    }

    /// Moves what the queue holds to the log.
    fn drain(&self) {
        let mut log = self.log.lock().expect("log mutex poisoned");
        while let Some(event) = self.sink.pop() {
            log.1 += 1;
            if self.keep {
                log.0.push(event);
            }
        }
    }

    /// Replays the log into a fresh engine (unless `--no-verify`) and completes the report.
    fn verify(self, options: &Options, mut report: Report) -> Result<Report> {
        let (kept, events) = self.log.into_inner().expect("log mutex poisoned");
        report.events = events;
        if options.no_verify {
            return Ok(report);
        }
        let fresh = Engine::new(*self.engine.config());
        let mut replayer = Replayer::new(&fresh);
        for event in &kept {
            replayer
                .apply(event)
                .context("replaying the simulation's events")?;
        }
        ensure!(
            replayer.finish().missing_tail.is_empty(),
            "replay left decisions half-applied"
        );
        report.replay_verified = Some(fresh.state_hash() == report.state_hash);
        Ok(report)
    }
}

impl Venue for InMemory {
    type Sink = BoundedSink;

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn sink(&self) -> &BoundedSink {
        &self.sink
    }

    fn node(&self) -> Option<&Node> {
        None
    }

    fn ack_log(&self) -> Option<&AckLog> {
        None
    }

    fn create(&self, spec: AuctionSpec, now: UnixMicros) -> Result<()> {
        self.engine.create_auction(spec, now, &self.sink)?;
        // Nothing drains the queue yet: drain as we go.
        self.drain();
        Ok(())
    }

    fn drain_during<R: Send>(&self, bidding: impl FnOnce() -> R + Send) -> R {
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            let consumer = scope.spawn(|| {
                // Ordering: Acquire pairs with the Release store after the bidders joined:
                // every event they pushed is visible to the final drain.
                while !done.load(Ordering::Acquire) {
                    self.drain();
                    thread::yield_now();
                }
                self.drain();
            });
            let result = bidding();
            // Ordering: Release; see the consumer.
            done.store(true, Ordering::Release);
            consumer.join().expect("the consumer thread panicked");
            result
        })
    }

    fn after_bidding(&self) -> Result<()> {
        Ok(())
    }

    fn close_all(&self, close_at: UnixMicros) -> Result<()> {
        while !self
            .engine
            .close_due(close_at, 1_024, &self.sink)
            .is_empty()
        {
            self.drain();
        }
        self.drain();
        Ok(())
    }
}

/// The durable mode: the simulation on a [`Node`] over `options.data_dir`.
struct OnNode {
    node: Node,
    config: NodeConfig,
    recovered: RecoveryReport,
    ack_log: Option<AckLog>,
}

impl OnNode {
    fn open(options: &Options) -> Result<OnNode> {
        let config = NodeConfig {
            snapshot_every_records: options.snapshot_every_records,
            kafka: options.kafka_brokers.as_ref().map(|brokers| KafkaConfig {
                brokers: brokers.clone(),
                topic: options.kafka_topic.clone(),
                writer_lease_ms: options.kafka_writer_lease_ms,
                ..KafkaConfig::default()
            }),
            ..NodeConfig::default()
        };
        let ack_log = options.ack_log.as_deref().map(AckLog::open).transpose()?;
        let (node, recovered) = Node::open(&options.data_dir, config.clone())
            .with_context(|| format!("starting on {}", options.data_dir.display()))?;
        Ok(OnNode {
            node,
            config,
            recovered,
            ack_log,
        })
    }

    /// This run's day: new auction ids after the recovered ones, and engine time after the
    /// latest end among them, so the log reads in time order.
    fn day(&self, options: &Options) -> Result<Day> {
        let engine = self.node.engine();
        let auctions_max = engine.config().auctions_max as u64;
        ensure!(
            engine.len() as u64 + options.auctions <= auctions_max,
            "{} holds {} auctions; {} more would pass the limit of {auctions_max}: use another --data-dir",
            options.data_dir.display(),
            engine.len(),
            options.auctions
        );
        let mut first_auction = engine.len() as u64;
        while engine.auction_seq(AuctionId(first_auction)).is_some() {
            first_auction += 1;
        }
        let epoch = engine
            .snapshot()
            .iter()
            .map(|state| state.ends_at.0)
            .max()
            .map_or(0, |latest| latest + DAY_US);
        Ok(Day {
            first_auction,
            epoch,
        })
    }

    /// Stops the node, reopens the data directory to check the recovered state hash (unless
    /// `--no-verify`), and completes the report with the durable part.
    fn finish(
        self,
        options: &Options,
        day: Day,
        mut report: Report,
        tallies: Vec<Tally>,
    ) -> Result<Report> {
        let wal = self.node.wal().metrics();
        let final_lsn = self.node.shutdown(false)?;
        drop(self.node);
        if !options.no_verify {
            let config = NodeConfig {
                snapshot_every_records: 0,
                ..self.config
            };
            let (reopened, recovered) = Node::open(&options.data_dir, config)
                .context("reopening the data directory to verify it")?;
            reopened.shutdown(false)?;
            report.replay_verified = Some(recovered.state_hash == report.state_hash);
        }
        report.events = final_lsn - self.recovered.last_lsn;
        let (durable_acks, ack_latency_us) = ack_latencies(tallies)?;
        report.durable = Some(DurableReport {
            data_dir: options.data_dir.clone(),
            recovered: self.recovered,
            first_auction: day.first_auction,
            durable_acks,
            ack_latency_us,
            wal,
            final_lsn,
        });
        Ok(report)
    }
}

/// The durable acks the desks observed, and their latency's p50, p99, p99.9 and max in µs.
fn ack_latencies(tallies: Vec<Tally>) -> Result<(u64, Option<[u64; 4]>)> {
    let mut latency: Option<Histogram<u64>> = None;
    let mut durable_acks = 0;
    for tally in tallies {
        ensure!(!tally.stopped, "a bidder stopped early: the log failed");
        if let Some(acks) = tally.acks {
            durable_acks += acks.latency_us.len();
            match &mut latency {
                Some(all) => all
                    .add(&acks.latency_us)
                    .context("merging latency histograms")?,
                None => latency = Some(acks.latency_us),
            }
        }
    }
    let quantiles = latency.filter(|h| !h.is_empty()).map(|h| {
        [
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        ]
    });
    Ok((durable_acks, quantiles))
}

impl Venue for OnNode {
    type Sink = WalSink;

    fn engine(&self) -> &Engine {
        self.node.engine()
    }

    fn sink(&self) -> &WalSink {
        self.node.sink()
    }

    fn node(&self) -> Option<&Node> {
        Some(&self.node)
    }

    fn ack_log(&self) -> Option<&AckLog> {
        self.ack_log.as_ref()
    }

    fn create(&self, spec: AuctionSpec, now: UnixMicros) -> Result<()> {
        loop {
            match self.node.create_auction(spec.clone(), now) {
                Ok(_) => return Ok(()),
                Err(gavel_engine::CreateError::Overloaded { .. }) => {
                    if let Some(failure) = self.node.failure() {
                        bail!("the log failed: {failure}");
                    }
                    thread::sleep(OVERLOADED_SLEEP);
                }
                Err(e) => return Err(e).context("creating the demo auctions"),
            }
        }
    }

    fn drain_during<R: Send>(&self, bidding: impl FnOnce() -> R + Send) -> R {
        // The log's writer drains the sink.
        bidding()
    }

    fn after_bidding(&self) -> Result<()> {
        if let Some(failure) = self.node.failure() {
            bail!("the log failed during the run; nothing after it was acknowledged: {failure}");
        }
        // Ordering: read after the bidders joined.
        if self
            .ack_log
            .as_ref()
            .is_some_and(|l| l.failed.load(Ordering::Relaxed))
        {
            bail!("writing the ack log failed; the bidders stopped");
        }
        Ok(())
    }

    /// Settlements are final once durable: waits for the last close's receipt.
    fn close_all(&self, close_at: UnixMicros) -> Result<()> {
        let deadline = Instant::now() + DURABLE_WAIT_MAX;
        let mut last_close = Receipt::NONE;
        loop {
            let closed = self.node.close_due(close_at, 1_024);
            last_close = closed
                .iter()
                .map(|c| c.receipt)
                .fold(last_close, Receipt::max);
            if closed.is_empty() {
                // Nothing closed: done, unless the log refused some (back-pressure).
                if self.node.poll_timeout().is_none_or(|due| due > close_at) {
                    break;
                }
                if let Some(failure) = self.node.failure() {
                    bail!("the log failed while closing: {failure}");
                }
                ensure!(Instant::now() < deadline, "closing the auctions timed out");
                thread::sleep(OVERLOADED_SLEEP);
            }
        }
        self.node
            .wait_durable(last_close, DURABLE_WAIT_MAX)
            .context("waiting for the settlements to be durable")?;
        Ok(())
    }
}

/// The settlements of auctions `first..first + n`, by id.
fn settlements_of(
    engine: &Engine,
    first: u64,
    n: u64,
    at: UnixMicros,
) -> BTreeMap<AuctionId, (String, Settlement)> {
    (first..first + n)
        .filter_map(|i| {
            let id = AuctionId(i);
            let view = engine.view(id, at)?;
            let settlement = view.settlement?;
            Some((
                id,
                (view.spec.rules().topic.as_str().to_owned(), settlement),
            ))
        })
        .collect()
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

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "gavel simulate")?;
        if let Some(durable) = &self.durable {
            durable.fmt_start(f, self.settlements.len() as u64)?;
        }
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
        self.fmt_settlements(f)?;
        if let Some(durable) = &self.durable {
            durable.fmt_end(f)?;
        }
        writeln!(f, "  state hash     {}", crate::hex(&self.state_hash))?;
        let (verified, mismatch) = if self.durable.is_some() {
            (
                "data directory reopened: recovered state hash is the same",
                "MISMATCH: the reopened data directory has another state hash",
            )
        } else {
            (
                "events replayed into a fresh engine: same state hash",
                "MISMATCH: replayed state hash differs",
            )
        };
        match self.replay_verified {
            Some(true) => writeln!(f, "  replay         {verified}"),
            Some(false) => writeln!(f, "  replay         {mismatch}"),
            None => writeln!(f, "  replay         not verified (--no-verify)"),
        }
    }
}

impl Report {
    /// The settlement totals and the first `show` settlements.
    fn fmt_settlements(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(())
    }
}

impl DurableReport {
    /// What the start recovered and which auctions this run of `auctions` used.
    fn fmt_start(&self, f: &mut fmt::Formatter<'_>, auctions: u64) -> fmt::Result {
        writeln!(f, "  data dir       {}", self.data_dir.display())?;
        writeln!(f, "  start          {}", self.recovered.summary())?;
        if let Some(torn) = &self.recovered.torn_tail {
            writeln!(
                f,
                "  torn tail      truncated {} bytes of {} at byte offset {}",
                torn.bytes_removed,
                torn.path.display(),
                torn.offset
            )?;
        }
        writeln!(
            f,
            "  recovered hash {}",
            crate::hex(&self.recovered.state_hash)
        )?;
        writeln!(
            f,
            "  this run       auctions #{}..#{}",
            self.first_auction,
            self.first_auction + auctions
        )
    }

    /// The durable acks' latency and the log's work.
    fn fmt_end(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ack_latency_us {
            Some([p50, p99, p999, max]) => writeln!(
                f,
                "  durable acks   {} accepted bids acknowledged durable; latency p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs, max {max} µs",
                self.durable_acks
            )?,
            None => writeln!(f, "  durable acks   none")?,
        }
        let w = &self.wal;
        writeln!(
            f,
            "  wal            {} records in {} fdatasyncs ({:.1} records/sync, {:.0} µs/sync), {} refused by back-pressure, durable LSN {}",
            w.records_written_total,
            w.batches_synced_total,
            w.records_written_total as f64 / w.batches_synced_total.max(1) as f64,
            w.sync_latency_us_total as f64 / w.batches_synced_total.max(1) as f64,
            w.backpressure_total,
            self.final_lsn
        )
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
