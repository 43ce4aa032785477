//! One run: a seed drives a node (the engine and the file log on the simulated disk)
//! through random steps — creations, bids, retries, the clock and closes, snapshots,
//! crashes, a full disk, a bit flip — and checks the invariants after every step.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gavel_engine::{
    AuctionId, Backpressure, Engine, EngineConfig, Event, EventSink, Receipt, UnixMicros,
};
use gavel_proto::convert::state::encode_snapshot;
use gavel_proto::convert::wal::encode_records;
use gavel_wal::{Lsn, Wal, WalConfig, WalError};

use crate::disk::SimDisk;
use crate::model::{Answer, Model};
use crate::rng::Rng;
use crate::spec::{BIDDERS, answer, engine_bid, engine_spec, random_spec, win};

/// The log directory on the simulated disk.
pub(crate) const DIR: &str = "/sim/data";
/// The simulated clock's start (a plausible Unix time, µs).
const EPOCH_US: u64 = 1_700_000_000_000_000;
/// The disk's capacity when it is not being filled.
const CAPACITY_BYTES: u64 = 1 << 30;
/// Most auctions per run.
const AUCTIONS_MAX: u64 = 40;
/// Most auctions open at once.
const OPEN_AUCTIONS_MAX: usize = 6;
/// Farthest a bid racing a close moves the clock.
const RACE_JUMP_US_MAX: u64 = 3_000_000;
/// Most `close_due` calls in one close step.
const CLOSE_CALLS_MAX: usize = 64;
/// A real-time bound on a durability wait (the writer thread answers in microseconds;
/// this only stops a hung run).
const DURABLE_WAIT: Duration = Duration::from_secs(30);

/// Why a run failed: the step, what was violated, and the trace of steps so far.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The step (0-based) at which an invariant failed.
    pub step: usize,
    /// The invariant that failed.
    pub invariant: &'static str,
    /// The invariant and the values that broke it.
    pub what: String,
    /// One line per step up to the failure (empty unless traced).
    pub trace: Vec<String>,
}

/// What a passing run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Steps run.
    pub steps: usize,
    /// Crashes followed by recovery.
    pub crashes: usize,
    /// Torn tails recovery truncated.
    pub torn_tails: usize,
    /// Bit flips injected (segments and snapshots) and checked.
    pub bit_flips: usize,
    /// Bids accepted and acknowledged durable.
    pub durable_acks: usize,
    /// The last durable LSN at the end.
    pub last_lsn: Lsn,
    /// The engine's state hash at that LSN.
    pub state_hash: [u8; 32],
}

/// A state the log may recover to: the model and the engine's hash after the decision
/// whose last record is `lsn`.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub(crate) lsn: Lsn,
    pub(crate) model: Model,
    pub(crate) hash: [u8; 32],
}

/// The live process: the engine and its log.
pub(crate) struct Node {
    pub(crate) wal: Wal,
    pub(crate) engine: Engine,
}

/// The engine's sink: each decision's events as one all-or-none batch of records.
pub(crate) struct LogSink<'a>(pub(crate) &'a Wal);

impl EventSink for LogSink<'_> {
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        let payloads = encode_records(events);
        self.0
            .append_batch(&payloads)
            .map(Receipt)
            .map_err(|_| Backpressure { retry_after_us: 1 })
    }
}

/// A bid sent, kept for retries.
#[derive(Debug, Clone, Copy)]
struct Sent {
    auction: u64,
    bidder: u32,
    id: u128,
    amount: u64,
}

/// A run in progress.
pub(crate) struct World {
    pub(crate) rng: Rng,
    pub(crate) disk: SimDisk,
    pub(crate) config: WalConfig,
    pub(crate) node: Option<Node>,
    pub(crate) model: Model,
    /// The state as of everything acknowledged durable.
    pub(crate) durable: Point,
    /// The decision in flight (its records appended, not yet durable), if any.
    pub(crate) pending: Option<Point>,
    /// The highest LSN acknowledged durable.
    pub(crate) acked_lsn: Lsn,
    sent: Vec<Sent>,
    pub(crate) next_auction: u64,
    next_bid: u128,
    pub(crate) stats: Stats,
    pub(crate) step: usize,
    /// A snapshot was damaged (one per run: two in a row refuse, as documented).
    snapshot_flipped: bool,
    /// Steps that do nothing (a shrunk run).
    pub(crate) skip: BTreeSet<usize>,
    tracing: bool,
    trace: RefCell<Vec<String>>,
    /// The clock as the driver last read it (the trace's time).
    clock_seen: Cell<u64>,
}

/// The result of a step: go on, or stop the run early (after a bit flip's check).
pub(crate) enum Flow {
    Continue,
    Stop,
}

impl World {
    pub(crate) fn new(seed: u64, tracing: bool) -> World {
        let mut rng = Rng::new(seed);
        let disk = SimDisk::new(rng.fork(), CAPACITY_BYTES, EPOCH_US);
        let config = WalConfig {
            segment_bytes_max: rng.range(512, 8_192),
            batch_wait_us_max: 0,
            ..WalConfig::default()
        };
        World {
            rng,
            disk,
            config,
            node: None,
            model: Model::default(),
            durable: Point {
                lsn: 0,
                model: Model::default(),
                hash: Engine::new(engine_config()).state_hash(),
            },
            pending: None,
            acked_lsn: 0,
            sent: Vec::new(),
            next_auction: 1,
            next_bid: 1,
            stats: Stats::default(),
            step: 0,
            snapshot_flipped: false,
            skip: BTreeSet::new(),
            tracing,
            trace: RefCell::new(Vec::new()),
            clock_seen: Cell::new(EPOCH_US),
        }
    }

    /// Records a line of the trace (built only when tracing).
    pub(crate) fn note(&self, line: impl FnOnce() -> String) {
        if self.tracing {
            // Not `now()`: between an append and its durable wait the writer thread may be
            // moving the clock (a sync); the last time the driver read is deterministic.
            let now = self.clock_seen.get() - EPOCH_US;
            self.trace
                .borrow_mut()
                .push(format!("{:>4} t={:>10}us {}", self.step, now, line()));
        }
    }

    /// The trace so far.
    pub(crate) fn trace(&self) -> Vec<String> {
        self.trace.borrow().clone()
    }

    pub(crate) fn fail(&self, invariant: &'static str, what: String) -> Failure {
        Failure {
            step: self.step,
            invariant,
            what,
            trace: self.trace(),
        }
    }

    /// The simulated clock, read only while the writer thread is idle.
    pub(crate) fn now(&self) -> u64 {
        let now = self.disk.now_us();
        self.clock_seen.set(now);
        now
    }

    pub(crate) fn node(&self) -> &Node {
        // Invariant: a node runs between steps (`restart` recovers one or fails the run).
        self.node.as_ref().expect("a node is running")
    }

    /// Runs `steps` steps.
    pub(crate) fn run(&mut self, steps: usize) -> Result<Stats, Failure> {
        self.restart()?;
        self.stats.crashes = 0;
        for step in 0..steps {
            self.step = step;
            self.disk.advance_us(self.rng.below(100_000));
            if self.skip.contains(&step) {
                continue;
            }
            if let Flow::Stop = self.one_step()? {
                break;
            }
            if self.log_broken() {
                self.restart()?;
            }
            self.stats.steps += 1;
        }
        // Every step ends durable: the durable point is the state at the end.
        self.stats.last_lsn = self.durable.lsn;
        self.stats.state_hash = self.durable.hash;
        Ok(self.stats)
    }

    fn one_step(&mut self) -> Result<Flow, Failure> {
        match self.rng.below(100) {
            0..=9 => self.create()?,
            10..=64 => self.bid()?,
            65..=79 => self.close_due()?,
            80..=84 => self.snapshot()?,
            85..=91 => {
                let ops = self.rng.range(1, 8);
                self.note(|| format!("arm a power loss at the {ops}th disk operation from now"));
                self.disk.crash_after(ops);
            }
            92..=94 => {
                let room = self.rng.below(400);
                self.note(|| format!("disk fills: {room} bytes left"));
                self.disk.set_capacity(self.disk.used_bytes() + room);
            }
            95..=97 => {
                self.note(|| "power loss between steps".into());
                self.disk.crash_now();
            }
            _ => {
                if self.rng.chance(30) {
                    return self.bit_flip();
                }
                if !self.snapshot_flipped && self.rng.chance(30) {
                    self.snapshot_flip()?;
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Whether the process must restart: the power is gone or the log stopped.
    fn log_broken(&self) -> bool {
        self.disk.crashed() || self.node.as_ref().is_none_or(|n| n.wal.failure().is_some())
    }

    /// Remembers the state after a decision whose records end at `lsn`.
    fn decided(&mut self, lsn: Lsn) {
        self.pending = Some(Point {
            lsn,
            model: self.model.clone(),
            hash: self.node().engine.state_hash(),
        });
    }

    /// Waits for `lsn` to be durable: `true` once it is (the durable acknowledgement);
    /// `false` if the log stopped first.
    fn wait(&mut self, lsn: Lsn) -> bool {
        let durable = self.node().wal.wait_durable(lsn, DURABLE_WAIT).is_ok();
        // The writer is idle again (synced or stopped): the clock is settled.
        self.now();
        if durable {
            self.acked_lsn = self.acked_lsn.max(lsn);
            if let Some(point) = self.pending.take() {
                self.durable = point;
            }
        }
        self.note(|| format!("  lsn {lsn} durable: {durable}"));
        durable
    }

    fn create(&mut self) -> Result<(), Failure> {
        let now = self.now();
        let open = (self.model.auctions.values())
            .filter(|a| a.settled.is_none() && a.ends_at() > now)
            .count();
        if self.next_auction > AUCTIONS_MAX || open >= OPEN_AUCTIONS_MAX {
            return Ok(());
        }
        let id = self.next_auction;
        let spec = random_spec(&mut self.rng, now);
        self.note(|| format!("create auction {id}: {spec:?}"));
        let now = UnixMicros(now);
        let node = self.node();
        match node
            .engine
            .create_auction(engine_spec(id, &spec), now, &LogSink(&node.wal))
        {
            Ok(receipt) => {
                self.next_auction += 1;
                self.model.create(id, spec);
                self.decided(receipt.0);
                self.wait(receipt.0);
                Ok(())
            }
            Err(_) if self.log_broken() => Ok(()),
            Err(e) => Err(self.fail(
                "creation failed",
                format!("creating auction {id} failed: {e}"),
            )),
        }
    }

    /// A new bid (racing a close now and then) or a retry of an earlier one.
    fn next_bid(&mut self) -> Sent {
        if !self.sent.is_empty() && self.rng.chance(20) {
            return self.sent[self.rng.below(self.sent.len() as u64) as usize];
        }
        let now = self.now();
        let open: Vec<u64> = (self.model.auctions.iter())
            .filter(|(_, a)| a.settled.is_none() && a.ends_at() > now)
            .map(|(id, _)| *id)
            .collect();
        let auction = match self.rng.below(40) {
            0 => 999,
            1..=7 => self.rng.range(1, self.next_auction.max(2) - 1),
            _ if open.is_empty() => self.rng.range(1, self.next_auction.max(2) - 1),
            _ => open[self.rng.below(open.len() as u64) as usize],
        };
        if let Some(a) = self.model.auctions.get(&auction)
            && self.rng.chance(10)
        {
            // Race the close: just before, at, or just after the current end (if near).
            let target = (a.ends_at() + self.rng.below(3)).saturating_sub(1);
            if target > now && target - now <= RACE_JUMP_US_MAX {
                self.disk.advance_us(target - now);
            }
        }
        let min_next = self
            .model
            .auctions
            .get(&auction)
            .map_or(10, |a| a.min_next(self.now()));
        let amount = match self.rng.below(6) {
            0 => min_next.saturating_sub(1).max(1),
            1 | 2 => min_next,
            3 => min_next + self.rng.below(30),
            4 => min_next * 2,
            _ => min_next + self.rng.below(1_000),
        };
        self.next_bid += 1;
        let sent = Sent {
            auction,
            bidder: self.rng.range(1, u64::from(BIDDERS)) as u32,
            id: self.next_bid,
            amount,
        };
        self.sent.push(sent);
        sent
    }

    /// A bid (once, or twice as a duplicate copy), checked against the model.
    fn bid(&mut self) -> Result<(), Failure> {
        let b = self.next_bid();
        let now = self.now();
        let copies = if self.rng.chance(5) { 2 } else { 1 };
        for copy in 0..copies {
            self.note(|| {
                let dup = if copy == 1 { " (duplicate copy)" } else { "" };
                format!(
                    "bid{dup}: auction {} b{} id {} amount {}",
                    b.auction, b.bidder, b.id, b.amount
                )
            });
            if !self.send(b, now)? {
                break;
            }
        }
        Ok(())
    }

    /// Sends one bid; `false` if the log stopped (the process must restart).
    fn send(&mut self, b: Sent, now: u64) -> Result<bool, Failure> {
        let before = (self.model.auctions.get(&b.auction)).and_then(|a| a.english_price());
        let expected = self
            .model
            .bid(b.auction, b.bidder, b.id, b.amount, now, false);
        let node = self.node();
        let bid = engine_bid(b.auction, b.bidder, b.id, b.amount, now);
        let decision = node
            .engine
            .place_bid(&bid, UnixMicros(now), &LogSink(&node.wal));
        let got = answer(&decision.outcome);
        self.note(|| format!("  engine {got:?}, model {expected:?}"));
        if got.is_none() && self.log_broken() && matches!(expected, Answer::Accepted(_)) {
            return Ok(false);
        }
        if got != Some(expected) {
            return Err(self.fail(
                "answer differs from the model",
                format!(
                    "bid {b:?} at {now}: engine answered {:?}, the model says {expected:?}",
                    decision.outcome
                ),
            ));
        }
        let Answer::Accepted(acc) = expected else {
            return Ok(true);
        };
        if let Some(price) = before
            && acc.price <= price
        {
            return Err(self.fail(
                "English price not increasing",
                format!(
                    "English price not increasing: {price} then {} (auction {})",
                    acc.price, b.auction
                ),
            ));
        }
        self.model
            .bid(b.auction, b.bidder, b.id, b.amount, now, true);
        if let Some(closed) = decision.closed {
            let model_win = self.model.auctions[&b.auction].settled;
            if Some(win(&closed.settlement)) != model_win {
                return Err(self.fail(
                    "closing bid's settlement differs from the model",
                    format!(
                        "closing bid settled {:?}, the model says {model_win:?}",
                        closed.settlement
                    ),
                ));
            }
        }
        // Invariant: an accepted decision has a receipt.
        let lsn = decision.receipt.expect("accepted bids have a receipt").0;
        self.decided(lsn);
        let durable = self.wait(lsn);
        self.stats.durable_acks += usize::from(durable);
        Ok(durable)
    }

    /// Moves the clock (Dutch steps, ends) and closes what is due, one auction at a time.
    fn close_due(&mut self) -> Result<(), Failure> {
        self.disk.advance_us(self.rng.below(2_000_000));
        let now = self.now();
        // A timer entry of an extended auction is put back, not closed: call again while
        // the timer says something is due (bounded: each call moves one entry).
        for _ in 0..CLOSE_CALLS_MAX {
            let node = self.node();
            let closed = node
                .engine
                .close_due(UnixMicros(now), 1, &LogSink(&node.wal));
            let Some(closed) = closed.first() else {
                if node.engine.next_due().is_some_and(|due| due.0 <= now) {
                    continue;
                }
                break;
            };
            let AuctionId(id) = closed.id;
            self.note(|| format!("close auction {id}: {:?}", closed.settlement));
            match self.model.close(id, now) {
                Some(w) if w == win(&closed.settlement) => {}
                other => {
                    return Err(self.fail(
                        "close differs from the model",
                        format!(
                            "auction {id} closed at {now} settling {:?}; the model says {other:?} \
                         (None: not due or settled already)",
                            closed.settlement
                        ),
                    ));
                }
            }
            self.decided(closed.receipt.0);
            if !self.wait(closed.receipt.0) {
                return Ok(());
            }
        }
        if let Some(id) = self.model.any_due(now)
            && !self.log_broken()
        {
            return Err(self.fail(
                "due auction not closed",
                format!("auction {id} is due at {now} but did not close"),
            ));
        }
        Ok(())
    }

    /// Writes a snapshot of everything durable, and sometimes compacts.
    fn snapshot(&mut self) -> Result<(), Failure> {
        let compact = self.rng.chance(50);
        let node = self.node();
        let lsn = node.wal.last_appended_lsn();
        let payload = encode_snapshot(lsn, UnixMicros(self.now()), &node.engine.snapshot());
        self.note(|| format!("snapshot at lsn {lsn}, compact: {compact}"));
        let written = node.wal.write_snapshot(lsn, &payload).and_then(|_| {
            if compact {
                node.wal.compact_to_snapshots().map(|_| ())
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => Ok(()),
            Err(_) if self.disk.crashed() => Ok(()),
            // A full disk fails the snapshot, not the log: the node logs it and goes on.
            Err(WalError::Io { source, .. }) if source.kind() == ErrorKind::StorageFull => Ok(()),
            Err(e) => Err(self.fail(
                "snapshot failed",
                format!("snapshot at lsn {lsn} failed: {e}"),
            )),
        }
    }

    /// Injects a bit flip, restarts, checks the documented refusal or truncation, and ends
    /// the run (the log is then damaged or lost a synced batch, by the documented rule).
    fn bit_flip(&mut self) -> Result<Flow, Failure> {
        let Some(flip) = self.disk.flip_bit("wal") else {
            return Ok(Flow::Continue);
        };
        self.note(|| format!("bit flip: {flip:?}"));
        self.stats.bit_flips += 1;
        self.disk.crash_now();
        self.node = None;
        self.disk.reboot();
        crate::recover::check_flip(self, &flip)?;
        Ok(Flow::Stop)
    }

    /// Flips a bit in a snapshot (once per run) and restarts: by the fallback rule of
    /// `wal/src/snapshot.rs` (retention keeps the log back to the older of two valid
    /// snapshots), one corrupt snapshot never stops recovery, which must reach the same
    /// state (`restart` checks the hash).
    fn snapshot_flip(&mut self) -> Result<(), Failure> {
        let Some(flip) = self.disk.flip_bit("snap") else {
            return Ok(());
        };
        self.snapshot_flipped = true;
        self.stats.bit_flips += 1;
        self.note(|| format!("bit flip in a snapshot: {flip:?}"));
        self.restart()
    }

    /// Kills the process (if running), powers the disk down and up (with room again),
    /// and recovers a node, crashing again during recovery now and then.
    pub(crate) fn restart(&mut self) -> Result<(), Failure> {
        self.disk.crash_now();
        self.node = None;
        self.disk.set_capacity(CAPACITY_BYTES);
        for _ in 0..8 {
            let fates = self.disk.reboot();
            self.note(|| format!("reboot; unsynced writes: {fates:?}"));
            if self.rng.chance(15) {
                self.disk.crash_after(self.rng.range(1, 6));
            }
            if crate::recover::recover(self)? {
                self.stats.crashes += 1;
                return Ok(());
            }
        }
        Err(self.fail(
            "recovery never completed",
            "recovery never completed in 8 attempts".into(),
        ))
    }
}

/// The engine's configuration in a run (few shards: a run has few auctions).
pub(crate) fn engine_config() -> EngineConfig {
    EngineConfig {
        shards: 4,
        ..EngineConfig::default()
    }
}

/// The log directory.
pub(crate) fn dir() -> &'static Path {
    Path::new(DIR)
}

/// Opens the log on the disk.
pub(crate) fn open_wal(
    disk: &SimDisk,
    config: &WalConfig,
) -> Result<(Wal, gavel_wal::Recovery), gavel_wal::WalError> {
    Wal::open_on(
        Arc::new(disk.clone()),
        dir(),
        config.clone(),
        Arc::new(NoHooks),
    )
}

struct NoHooks;
impl gavel_wal::WriterHooks for NoHooks {}
