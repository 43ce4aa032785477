//! Stress: many threads bid on one auction at once while a timer thread moves time forward
//! and closes what is due; then the log, the outcomes each thread saw and a replay are
//! checked against the rules.
//!
//! Scenarios: an English auction with plain bids, one with proxy bids, and a sealed
//! auction (first-price and second-price on alternate rounds). Each runs `ROUNDS` rounds of
//! `THREADS` bidding threads; every thread sends `BIDS_PER_THREAD` bids, some of them
//! retries of its own accepted bids and some copies of bids other threads are sending at
//! the same moment. Every loop is bounded in count, and the timer also by a deadline.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gavel_engine::{
    Accepted, AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    CloseReason, Engine, EngineConfig, Event, EventKind, IncrementBand, IncrementTable, Phase,
    Price, RecordingSink, Rejection, SoftClose, Topic, UnixMicros,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{bidder, check_log_invariants, check_replay};

const THREADS: usize = 8;
const ROUNDS: u64 = 20;
/// 8 threads × 125 bids × 20 rounds = 20,000 bids per scenario.
const BIDS_PER_THREAD: usize = 125;
const BIDS_PER_ROUND: usize = THREADS * BIDS_PER_THREAD;
/// Sealed bidders per thread (a new accepted bid replaces the bidder's old one).
const SEALED_BIDDERS_PER_THREAD: usize = 4;
/// Recent bids any thread may send again, possibly while the original is in flight.
const SHARED_RING_LEN: usize = 64;
/// The timer gives up pacing and closes the auction after this long.
const TIMER_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on the timer's loop.
const TIMER_ITERATIONS_MAX: usize = 10_000_000;

const AUCTION: AuctionId = AuctionId(7);
const STARTS_AT_US: u64 = 1_000;
const ENDS_AT_US: u64 = 1_000_000;
const SOFT_CLOSE: SoftClose = SoftClose {
    window_us: 2_000,
    extension_us: 500,
    extensions_max: 8,
};
/// Past every possible end.
const FINAL_US: u64 = ENDS_AT_US + SOFT_CLOSE.extension_us * SOFT_CLOSE.extensions_max as u64 + 1;
const MIN_BID: Price = 5;
/// Bids of a round decided far from the end; then the bidders meet and move time into the
/// soft-close window.
const OPEN_PHASE_END: usize = BIDS_PER_ROUND * 2 / 5;
/// Time the bidders move to after the open phase: inside the window of the original end.
const WINDOW_PHASE_US: u64 = ENDS_AT_US - SOFT_CLOSE.window_us / 2;
/// From here on the timer closes the auction, racing the bids in flight.
const CLOSING_PHASE_START: usize = BIDS_PER_ROUND * 4 / 5;
/// Each bidder sends its last bids only once the auction is closed.
const AFTER_CLOSE_START: usize = BIDS_PER_THREAD * 9 / 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    English,
    EnglishProxy,
    Sealed,
}

/// Why a thread sent a bid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sent {
    /// A new bid.
    New,
    /// A retry of the thread's own bid, which was accepted with this outcome.
    OwnRetry(Accepted),
    /// A copy of a bid from the shared ring (maybe still in flight in its own thread).
    Copy,
}

struct Attempt {
    bid: Bid,
    sent: Sent,
    outcome: BidOutcome,
}

fn rules(scenario: Scenario, round: u64) -> AuctionRules {
    let band = |below, increment| IncrementBand { below, increment };
    let kind = match scenario {
        Scenario::English | Scenario::EnglishProxy => AuctionKind::English {
            start_price: MIN_BID,
            increments: IncrementTable::new(vec![band(500, 1), band(2_000, 2)], 3)
                .expect("valid increment table"),
        },
        Scenario::Sealed if round.is_multiple_of(2) => {
            AuctionKind::SealedFirstPrice { min_bid: MIN_BID }
        }
        Scenario::Sealed => AuctionKind::SealedSecondPrice { min_bid: MIN_BID },
    };
    AuctionRules {
        id: AUCTION,
        topic: Topic::new("stress.hot").expect("valid topic"),
        kind,
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(STARTS_AT_US),
        ends_at: UnixMicros(ENDS_AT_US),
        soft_close: Some(SOFT_CLOSE),
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        shards: 4,
        // Larger than the bids of a round, so that every retry must be recognised.
        dedup_window_bids: 2 * BIDS_PER_ROUND,
        ..EngineConfig::default()
    }
}

/// What the bidders of a round share.
struct Shared {
    /// The time every call passes as `now`. Only ever raised (`fetch_max`).
    now: AtomicU64,
    /// Bids sent so far.
    progress: AtomicUsize,
    /// Recent bids any thread may send again.
    ring: Mutex<VecDeque<Bid>>,
    /// Bidders meet here at the end of the open phase.
    open_phase_done: Barrier,
    /// Set by the timer once the auction is closed.
    closed: Mutex<bool>,
    closed_signal: Condvar,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            now: AtomicU64::new(STARTS_AT_US),
            progress: AtomicUsize::new(0),
            ring: Mutex::new(VecDeque::with_capacity(SHARED_RING_LEN)),
            open_phase_done: Barrier::new(THREADS),
            closed: Mutex::new(false),
            closed_signal: Condvar::new(),
        }
    }

    fn now(&self) -> u64 {
        // Ordering (all `now` accesses): Relaxed; `now` is a plain input value, and a bid
        // decided with a slightly stale one is a valid decision at that time.
        self.now.load(Ordering::Relaxed)
    }

    fn raise_now(&self, to: u64) -> u64 {
        // Ordering: Relaxed; see `now`.
        self.now.fetch_max(to, Ordering::Relaxed).max(to)
    }

    fn wait_for_close(&self) {
        let closed = self.closed.lock().expect("closed lock poisoned");
        let (_closed, timeout) = self
            .closed_signal
            .wait_timeout_while(closed, 2 * TIMER_DEADLINE, |closed| !*closed)
            .expect("closed lock poisoned");
        assert!(!timeout.timed_out(), "the auction never closed");
    }
}

/// Moves time forward while bids flow: slowly and far from the end during the open phase,
/// slowly inside the soft-close window once the bidders moved time there, and from
/// `CLOSING_PHASE_START` bids on past every possible end, closing what is due at every
/// step. Signals the close to the bidders.
fn run_timer(engine: &Engine, sink: &RecordingSink, shared: &Shared) {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(0x7133);
    for _ in 0..TIMER_ITERATIONS_MAX {
        // Ordering: Relaxed; progress only paces the timer, it guards no data.
        let done = shared.progress.load(Ordering::Relaxed);
        let late = started.elapsed() > TIMER_DEADLINE;
        let t = shared.now();
        let next = if late || done >= CLOSING_PHASE_START {
            FINAL_US
        } else if t >= WINDOW_PHASE_US {
            t + rng.random_range(0..3)
        } else {
            (t + rng.random_range(0..50)).min(ENDS_AT_US - SOFT_CLOSE.window_us - 1)
        };
        let now = shared.raise_now(next);
        engine.close_due(UnixMicros(now), usize::MAX, sink);
        if closed(engine) {
            *shared.closed.lock().expect("closed lock poisoned") = true;
            shared.closed_signal.notify_all();
            return;
        }
        thread::yield_now();
    }
    panic!("the timer loop hit its bound without closing the auction");
}

fn closed(engine: &Engine) -> bool {
    matches!(engine.price(AUCTION), Some((_, true)))
}

fn run_bidder(
    scenario: Scenario,
    round: u64,
    thread_index: usize,
    engine: &Engine,
    sink: &RecordingSink,
    shared: &Shared,
) -> Vec<Attempt> {
    let mut rng = StdRng::seed_from_u64(round << 8 | thread_index as u64);
    let mut attempts = Vec::with_capacity(BIDS_PER_THREAD);
    let mut own_accepted: Vec<(Bid, Accepted)> = Vec::new();
    for n in 0..BIDS_PER_THREAD {
        if n == OPEN_PHASE_END / THREADS && shared.open_phase_done.wait().is_leader() {
            shared.raise_now(WINDOW_PHASE_US);
        }
        if n == AFTER_CLOSE_START {
            shared.wait_for_close();
        }
        let at = UnixMicros(shared.now());
        let roll = rng.random_range(0..100);
        let copy = if (10..15).contains(&roll) {
            let ring = shared.ring.lock().expect("ring lock poisoned");
            // Mostly the newest bid, which is likely still in flight in its thread.
            let back = rng.random_range(0..4).min(ring.len());
            ring.len().checked_sub(1 + back).map(|i| ring[i])
        } else {
            None
        };
        let (bid, sent) = if roll < 10 && !own_accepted.is_empty() {
            let (bid, original) = own_accepted[rng.random_range(0..own_accepted.len())];
            (bid, Sent::OwnRetry(original))
        } else if let Some(bid) = copy {
            (bid, Sent::Copy)
        } else {
            let (who, amount, max) = match scenario {
                Scenario::English | Scenario::EnglishProxy => {
                    let (price, _) = engine.price(AUCTION).expect("auction exists");
                    let amount = price.unwrap_or(MIN_BID) + rng.random_range(0..6);
                    let max = (scenario == Scenario::EnglishProxy && rng.random_bool(0.5))
                        .then(|| amount + rng.random_range(0..25));
                    (bidder(thread_index), amount, max)
                }
                Scenario::Sealed => {
                    let who = thread_index * SEALED_BIDDERS_PER_THREAD
                        + rng.random_range(0..SEALED_BIDDERS_PER_THREAD);
                    (bidder(who), rng.random_range(1..400), None)
                }
            };
            let id = BidId(u128::from(round) << 64 | (thread_index as u128) << 32 | n as u128);
            let bid = Bid::new(AUCTION, who, id, amount, max, at).expect("valid bid");
            let mut ring = shared.ring.lock().expect("ring lock poisoned");
            if ring.len() == SHARED_RING_LEN {
                ring.pop_front();
            }
            ring.push_back(bid);
            (bid, Sent::New)
        };
        let outcome = engine.place_bid(&bid, at, sink).outcome;
        if let (Sent::New, BidOutcome::Accepted(accepted)) = (sent, outcome) {
            own_accepted.push((bid, accepted));
        }
        attempts.push(Attempt { bid, sent, outcome });
        // Ordering: Relaxed; see `run_timer`.
        shared.progress.fetch_add(1, Ordering::Relaxed);
    }
    attempts
}

/// One round: bid from `THREADS` threads while the timer closes the auction, then check.
fn run_round(scenario: Scenario, round: u64) {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    let spec = AuctionSpec::try_from(rules(scenario, round)).expect("valid rules");
    engine
        .create_auction(spec, UnixMicros(0), &sink)
        .expect("created");
    let shared = Shared::new();
    let start = Barrier::new(THREADS + 1);

    let attempts: Vec<Attempt> = thread::scope(|scope| {
        let bidders: Vec<_> = (0..THREADS)
            .map(|i| {
                let (engine, sink, shared, start) = (&engine, &sink, &shared, &start);
                scope.spawn(move || {
                    start.wait();
                    run_bidder(scenario, round, i, engine, sink, shared)
                })
            })
            .collect();
        let timer = scope.spawn(|| {
            start.wait();
            run_timer(&engine, &sink, &shared);
        });
        timer.join().expect("timer thread panicked");
        bidders
            .into_iter()
            .flat_map(|b| b.join().expect("bidder thread panicked"))
            .collect()
    });

    let events = sink.take();
    check_round(scenario, round, &engine, &events, &attempts);
}

fn check_round(
    scenario: Scenario,
    round: u64,
    engine: &Engine,
    events: &[Event],
    attempts: &[Attempt],
) {
    let context = format!("{scenario:?} round {round}");
    // Contiguous seqs, English prices strictly increasing, nothing after the settlement.
    let settlements = check_log_invariants(events);
    assert_eq!(settlements.len(), 1, "{context}: exactly one settlement");
    let settlement = settlements[&AUCTION];
    let closes: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Closed { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![CloseReason::EndReached], "{context}");

    // Every accepted outcome is the event with its seq, and every accepted event is some
    // thread's accepted outcome.
    let bids_by_seq: HashMap<u64, &Event> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::BidAccepted { .. }))
        .map(|e| (e.seq, e))
        .collect();
    let mut accepted_outcomes = 0;
    for attempt in attempts {
        let BidOutcome::Accepted(accepted) = attempt.outcome else {
            continue;
        };
        accepted_outcomes += 1;
        let event = bids_by_seq
            .get(&accepted.seq)
            .unwrap_or_else(|| panic!("{context}: accepted {accepted:?} has no event"));
        assert_eq!(
            event.kind,
            EventKind::BidAccepted {
                bid: attempt.bid,
                price: accepted.price,
                leader: accepted.leader,
                ends_at: accepted.ends_at,
            },
            "{context}: event at seq {} differs from the outcome",
            accepted.seq
        );
    }
    assert_eq!(
        accepted_outcomes,
        bids_by_seq.len(),
        "{context}: accepted events without an accepted outcome"
    );

    // Retries: at most one acceptance per key; every other answer to it that is not a
    // plain rejection is `Duplicate` with that acceptance; own retries are always
    // duplicates (the memory window exceeds the round's bids).
    let mut by_key: HashMap<(BidderId, BidId), Vec<&Attempt>> = HashMap::new();
    for attempt in attempts {
        by_key
            .entry((attempt.bid.bidder(), attempt.bid.id()))
            .or_default()
            .push(attempt);
    }
    for (key, tries) in &by_key {
        let accepted: Vec<Accepted> = tries
            .iter()
            .filter_map(|a| match a.outcome {
                BidOutcome::Accepted(accepted) => Some(accepted),
                BidOutcome::Rejected(_) => None,
            })
            .collect();
        assert!(accepted.len() <= 1, "{context}: {key:?} accepted twice");
        for attempt in tries {
            if let Sent::OwnRetry(original) = attempt.sent {
                assert_eq!(
                    attempt.outcome,
                    BidOutcome::Rejected(Rejection::Duplicate { original }),
                    "{context}: retry of {key:?}"
                );
            }
            if let BidOutcome::Rejected(Rejection::Duplicate { original }) = attempt.outcome {
                assert_eq!(
                    accepted.first(),
                    Some(&original),
                    "{context}: {key:?} duplicate of something never accepted"
                );
            }
            assert!(
                !matches!(
                    attempt.outcome,
                    BidOutcome::Rejected(Rejection::Overloaded { .. } | Rejection::UnknownAuction)
                ),
                "{context}: unexpected {:?}",
                attempt.outcome
            );
        }
    }

    // The winner by the kind's rule, from the log alone.
    let accepted_bids: Vec<(u64, Bid, Price, Option<BidderId>)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::BidAccepted {
                bid, price, leader, ..
            } => Some((e.seq, *bid, *price, *leader)),
            _ => None,
        })
        .collect();
    assert!(!accepted_bids.is_empty(), "{context}: no bid was accepted");
    let winner = settlement
        .winner
        .unwrap_or_else(|| panic!("{context}: bids but no winner"));
    match scenario {
        Scenario::English | Scenario::EnglishProxy => {
            // The last accepted bid carries the highest price and the final leader.
            let (_, _, price, leader) = accepted_bids[accepted_bids.len() - 1];
            assert_eq!(Some(winner.bidder), leader, "{context}: English winner");
            assert_eq!(winner.price, price, "{context}: English clearing price");
            let latest = accepted_bids
                .iter()
                .rev()
                .find(|(_, bid, _, _)| bid.bidder() == winner.bidder)
                .map(|(_, bid, _, _)| bid.id());
            assert_eq!(Some(winner.bid), latest, "{context}: winning bid id");
        }
        Scenario::Sealed => {
            // Each bidder's standing bid is its latest accepted one.
            let mut standing: HashMap<BidderId, (u64, Bid)> = HashMap::new();
            for (seq, bid, _, _) in &accepted_bids {
                standing.insert(bid.bidder(), (*seq, *bid));
            }
            let mut ranked: Vec<(u64, Bid)> = standing.into_values().collect();
            ranked.sort_by(|(seq_a, a), (seq_b, b)| {
                b.amount().cmp(&a.amount()).then(seq_a.cmp(seq_b))
            });
            let (_, best) = ranked[0];
            let price = if round.is_multiple_of(2) {
                best.amount()
            } else {
                best.amount()
                    .min(ranked.get(1).map_or(MIN_BID, |(_, b)| b.amount()))
            };
            assert_eq!(winner.bidder, best.bidder(), "{context}: sealed winner");
            assert_eq!(winner.bid, best.id(), "{context}: sealed winning bid");
            assert_eq!(winner.price, price, "{context}: sealed clearing price");
        }
    }

    let view = engine
        .view(AUCTION, UnixMicros(FINAL_US))
        .expect("auction exists");
    assert_eq!(view.phase, Phase::Settled, "{context}");
    assert_eq!(view.settlement, Some(settlement), "{context}");
    assert_eq!(view.bids_accepted, accepted_outcomes as u64, "{context}");

    check_replay(events, config(), engine.state_hash());
}

fn run_scenario(scenario: Scenario) {
    for round in 0..ROUNDS {
        run_round(scenario, round);
    }
}

#[test]
fn english_bids_from_many_threads() {
    run_scenario(Scenario::English);
}

#[test]
fn english_proxy_bids_from_many_threads() {
    run_scenario(Scenario::EnglishProxy);
}

#[test]
fn sealed_bids_from_many_threads() {
    run_scenario(Scenario::Sealed);
}
