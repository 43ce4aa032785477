//! Property tests: the engine against a small reference model of `docs/auction-rules.md`.
//!
//! The model below is written from the rules document alone: plain structs and `Vec`s, one
//! thread, no atomics, filters or locks. Random auction specs (every kind, with random
//! reserve, buy-now and soft close, over small price ranges so that ties and collisions
//! happen) and random operation sequences (bids from four bidders with optional proxy
//! maxima, retries, time advancing past the end, timer closes, manual closes, cancels and a
//! sink that sometimes refuses) drive the engine and the model side by side. Every outcome,
//! every published event, every view and the final settlement must agree; the event log must
//! keep the invariants of PRODUCT.md §3; and replaying the log (whole, or cut anywhere) must
//! rebuild the same state.
//!
//! Idempotency memory: the rules promise that the last `dedup_window_bids` accepted bids
//! of an auction are always remembered and that at most twice as many are. The model
//! therefore demands `Duplicate` for a key accepted fewer than `N` acceptances ago, forbids
//! it for one accepted `2N` or more ago, and in between accepts either answer, following
//! the engine's choice (a `Duplicate` must still carry the original outcome).

mod common;

use std::sync::Arc;

use gavel_engine::{
    Accepted, AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    CloseReason, Engine, EngineConfig, Event, EventKind, IncrementBand, IncrementTable,
    ManageError, PRICE_MAX, Phase, Price, Rejection, Replayer, Settlement, SoftClose, Topic,
    UnixMicros, Winner,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

use common::{BatchSink, RETRY_AFTER_US, bidder, check_log_invariants, check_replay};

// ---------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------

/// The idempotency key.
type Key = (BidderId, BidId);

/// What the model knows of a key's earlier acceptance.
enum Memory {
    /// Accepted within the last `N` acceptances: must be answered `Duplicate`.
    Always(Accepted),
    /// Accepted `N..2N` acceptances ago: the engine may or may not remember it.
    Maybe(Accepted),
    /// Never accepted, or `2N` or more acceptances ago: decided afresh.
    Forgotten,
}

/// The English leader.
#[derive(Clone, Copy, Debug)]
struct Lead {
    bidder: BidderId,
    /// The leader's latest accepted bid id.
    bid: BidId,
    /// The leader's hidden maximum `M`.
    max: Price,
}

/// A bidder's standing sealed bid.
#[derive(Clone, Copy, Debug)]
struct Standing {
    bidder: BidderId,
    bid: BidId,
    amount: Price,
    seq: u64,
}

#[derive(Clone, Debug)]
enum Book {
    /// `price` means nothing while `lead` is `None` (no bid yet).
    English {
        price: Price,
        lead: Option<Lead>,
    },
    Sealed {
        standing: Vec<Standing>,
    },
    /// A sale closes at once, so an open Dutch auction has no state beyond the clock.
    Dutch,
}

/// What one accepted bid does, computed before anything changes.
struct Plan {
    accepted: Accepted,
    events: Vec<Event>,
    book: Book,
    extensions: u32,
    settlement: Option<Settlement>,
}

struct ModelAuction {
    rules: AuctionRules,
    dedup_window: usize,
    sealed_bidders_max: usize,
    seq: u64,
    ends_at: u64,
    extensions: u32,
    bids_accepted: u64,
    /// Every acceptance in order (the idempotency memory is a suffix of it).
    accepted: Vec<(Key, Accepted)>,
    book: Book,
    settled: Option<Settlement>,
}

fn increment(table: &IncrementTable, price: Price) -> Price {
    // "first band whose `below` is greater than the price, else `above`"
    for band in table.bands() {
        if band.below > price {
            return band.increment;
        }
    }
    table.above()
}

impl ModelAuction {
    fn new(rules: AuctionRules, config: &EngineConfig) -> ModelAuction {
        let book = match rules.kind {
            AuctionKind::English { .. } => Book::English {
                price: 0,
                lead: None,
            },
            AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. } => {
                Book::Sealed {
                    standing: Vec::new(),
                }
            }
            AuctionKind::Dutch { .. } => Book::Dutch,
        };
        ModelAuction {
            ends_at: rules.ends_at.0,
            rules,
            dedup_window: config.dedup_window_bids,
            sealed_bidders_max: config.sealed_bidders_max,
            seq: 1,
            extensions: 0,
            bids_accepted: 0,
            accepted: Vec::new(),
            book,
            settled: None,
        }
    }

    fn id(&self) -> AuctionId {
        self.rules.id
    }

    fn event(&self, seq: u64, now: u64, kind: EventKind) -> Event {
        Event {
            auction: self.id(),
            seq,
            at: UnixMicros(now),
            kind,
        }
    }

    fn memory(&self, key: Key) -> Memory {
        let Some(position) = self.accepted.iter().rposition(|(k, _)| *k == key) else {
            return Memory::Forgotten;
        };
        let original = self.accepted[position].1;
        let age = self.accepted.len() - 1 - position;
        if age < self.dedup_window {
            Memory::Always(original)
        } else if age < 2 * self.dedup_window {
            Memory::Maybe(original)
        } else {
            Memory::Forgotten
        }
    }

    fn dutch_clock(&self, now: u64) -> Price {
        let AuctionKind::Dutch {
            start_price,
            floor_price,
            step,
            step_interval_us,
        } = self.rules.kind
        else {
            unreachable!("dutch_clock of a non-Dutch auction")
        };
        let steps = u128::from(now - self.rules.starts_at.0) / u128::from(step_interval_us);
        let fall = u128::from(step) * steps;
        let clock = u128::from(start_price).saturating_sub(fall);
        // Cast: clock <= start_price, a u64.
        (clock as u64).max(floor_price)
    }

    fn min_next(&self, now: u64) -> Price {
        match (&self.rules.kind, &self.book) {
            (
                AuctionKind::English {
                    start_price,
                    increments,
                },
                Book::English { price, lead },
            ) => {
                let raw = match lead {
                    None => *start_price,
                    Some(_) => price + increment(increments, *price),
                };
                match self.rules.buy_now {
                    Some(buy_now) if lead.is_none() || *price < buy_now => raw.min(buy_now),
                    _ => raw,
                }
            }
            (
                AuctionKind::SealedFirstPrice { min_bid }
                | AuctionKind::SealedSecondPrice { min_bid },
                _,
            ) => *min_bid,
            (AuctionKind::Dutch { .. }, _) => self.dutch_clock(now),
            _ => unreachable!("book does not match kind"),
        }
    }

    /// Decides a bid the memory does not answer.
    fn decide(&self, bid: &Bid, now: u64) -> Result<Plan, Rejection> {
        if self.settled.is_some() || now >= self.ends_at {
            return Err(Rejection::Closed);
        }
        if now < self.rules.starts_at.0 {
            return Err(Rejection::NotOpen);
        }
        let min_next = self.min_next(now);
        if bid.amount() < min_next {
            return Err(Rejection::TooLow { min_next });
        }
        let seq = self.seq + 1;
        let amount = bid.amount();
        let me = bid.bidder();
        // (visible price, visible leader, new book, close reason and settlement if it closes)
        let (price, leader, book, close) = match (&self.rules.kind, &self.book) {
            (AuctionKind::English { increments, .. }, Book::English { price, lead }) => {
                let m = bid.max().unwrap_or(amount);
                let buy_now = self
                    .rules
                    .buy_now
                    .filter(|bn| (lead.is_none() || price < bn) && amount >= *bn);
                if let Some(buy_now) = buy_now {
                    let lead = Lead {
                        bidder: me,
                        bid: bid.id(),
                        max: m.max(buy_now),
                    };
                    let winner = Winner {
                        bidder: me,
                        bid: bid.id(),
                        price: buy_now,
                    };
                    (
                        buy_now,
                        Some(me),
                        Book::English {
                            price: buy_now,
                            lead: Some(lead),
                        },
                        Some((CloseReason::BuyNow, winner)),
                    )
                } else {
                    let mine = Lead {
                        bidder: me,
                        bid: bid.id(),
                        max: m,
                    };
                    let (mut new_price, new_lead) = match lead {
                        None => (amount, mine),
                        Some(l) if l.bidder == me => (
                            amount,
                            Lead {
                                max: l.max.max(m),
                                ..mine
                            },
                        ),
                        Some(l) if m > l.max => (
                            m.min(amount.max(l.max + increment(increments, l.max))),
                            mine,
                        ),
                        Some(l) => (l.max.min(amount.max(m + increment(increments, m))), *l),
                    };
                    if let Some(reserve) = self.rules.reserve
                        && new_price < reserve
                        && reserve <= new_lead.max
                    {
                        new_price = reserve;
                    }
                    (
                        new_price,
                        Some(new_lead.bidder),
                        Book::English {
                            price: new_price,
                            lead: Some(new_lead),
                        },
                        None,
                    )
                }
            }
            (
                AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. },
                Book::Sealed { standing },
            ) => {
                if bid.max().is_some() {
                    return Err(Rejection::Invalid);
                }
                let mine = Standing {
                    bidder: me,
                    bid: bid.id(),
                    amount,
                    seq,
                };
                let mut standing = standing.clone();
                match standing.iter().position(|s| s.bidder == me) {
                    Some(old) => standing[old] = mine,
                    None if standing.len() >= self.sealed_bidders_max => {
                        return Err(Rejection::Forbidden);
                    }
                    None => standing.push(mine),
                }
                let close = self.rules.buy_now.filter(|bn| amount >= *bn).map(|bn| {
                    let winner = Winner {
                        bidder: me,
                        bid: bid.id(),
                        price: bn,
                    };
                    (CloseReason::BuyNow, winner)
                });
                (amount, None, Book::Sealed { standing }, close)
            }
            (AuctionKind::Dutch { .. }, Book::Dutch) => {
                if bid.max().is_some() {
                    return Err(Rejection::Invalid);
                }
                let clock = self.dutch_clock(now);
                let winner = Winner {
                    bidder: me,
                    bid: bid.id(),
                    price: clock,
                };
                (
                    clock,
                    Some(me),
                    Book::Dutch,
                    Some((CloseReason::Sold, winner)),
                )
            }
            _ => unreachable!("book does not match kind"),
        };

        let mut ends_at = self.ends_at;
        let mut extensions = self.extensions;
        let mut extended = false;
        if let (Some(sc), None) = (self.rules.soft_close, &close)
            && ends_at - now < sc.window_us
            && extensions < sc.extensions_max
        {
            ends_at += sc.extension_us;
            extensions += 1;
            extended = true;
        }
        let accepted = Accepted {
            seq,
            price,
            leader,
            ends_at: UnixMicros(ends_at),
        };
        let mut events = vec![self.event(
            seq,
            now,
            EventKind::BidAccepted {
                bid: *bid,
                price,
                leader,
                ends_at: UnixMicros(ends_at),
            },
        )];
        if extended {
            events.push(self.event(
                seq + 1,
                now,
                EventKind::Extended {
                    ends_at: UnixMicros(ends_at),
                    extensions,
                },
            ));
        }
        let mut settlement = None;
        if let Some((reason, winner)) = close {
            let s = Settlement {
                winner: Some(winner),
            };
            events.push(self.event(seq + 1, now, EventKind::Closed { reason }));
            events.push(self.event(seq + 2, now, EventKind::Settled(s)));
            settlement = Some(s);
        }
        Ok(Plan {
            accepted,
            events,
            book,
            extensions,
            settlement,
        })
    }

    fn apply(&mut self, bid: &Bid, plan: Plan) {
        self.seq += plan.events.len() as u64;
        self.ends_at = plan.accepted.ends_at.0;
        self.extensions = plan.extensions;
        self.bids_accepted += 1;
        self.accepted
            .push(((bid.bidder(), bid.id()), plan.accepted));
        self.book = plan.book;
        self.settled = plan.settlement;
    }

    /// The settlement of a close by time.
    fn settlement_at_end(&self) -> Settlement {
        let reserve = self.rules.reserve.unwrap_or(0);
        let winner = match (&self.rules.kind, &self.book) {
            (_, Book::English { price, lead }) => {
                lead.filter(|_| *price >= reserve).map(|lead| Winner {
                    bidder: lead.bidder,
                    bid: lead.bid,
                    price: *price,
                })
            }
            (kind, Book::Sealed { standing }) => {
                let mut ranked = standing.clone();
                ranked.sort_by(|a, b| b.amount.cmp(&a.amount).then(a.seq.cmp(&b.seq)));
                ranked
                    .first()
                    .filter(|best| best.amount >= reserve)
                    .map(|best| {
                        let price = match kind {
                            AuctionKind::SealedFirstPrice { .. } => best.amount,
                            AuctionKind::SealedSecondPrice { min_bid } => {
                                let second = ranked.get(1).map_or(*min_bid, |s| s.amount);
                                best.amount.min(second.max(reserve))
                            }
                            _ => unreachable!("sealed book of a non-sealed kind"),
                        };
                        Winner {
                            bidder: best.bidder,
                            bid: best.bid,
                            price,
                        }
                    })
            }
            (_, Book::Dutch) => None,
        };
        Settlement { winner }
    }

    /// The events closing now, with `settlement`.
    fn close_events(&self, now: u64, reason: CloseReason, settlement: Settlement) -> Vec<Event> {
        vec![
            self.event(self.seq + 1, now, EventKind::Closed { reason }),
            self.event(self.seq + 2, now, EventKind::Settled(settlement)),
        ]
    }

    fn apply_close(&mut self, settlement: Settlement) {
        self.seq += 2;
        self.settled = Some(settlement);
    }

    fn is_due(&self, now: u64) -> bool {
        self.settled.is_none() && now >= self.ends_at
    }

    /// Whether the generator placed this auction's prices near `PRICE_MAX`.
    fn is_high(&self) -> bool {
        let lowest = match self.rules.kind {
            AuctionKind::English { start_price, .. } => start_price,
            AuctionKind::SealedFirstPrice { min_bid }
            | AuctionKind::SealedSecondPrice { min_bid } => min_bid,
            AuctionKind::Dutch { floor_price, .. } => floor_price,
        };
        lowest >= HIGH_BASE
    }

    fn visible_english(&self) -> Option<(Price, BidderId)> {
        match &self.book {
            Book::English { price, lead } => lead.map(|l| (*price, l.bidder)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Generated inputs.
// ---------------------------------------------------------------------------------------

/// Granularity of generated times, so that edges (`now == ends_at`, `ends_at - now ==
/// window_us`) are hit often.
const TICK_US: u64 = 10;

/// Time the engine is created at; auctions start a little later.
const T0: u64 = 990;
const START_MIN: u64 = 1_000;
/// Where the prices of "high" auctions start: close enough to `PRICE_MAX` that bidding
/// runs past it.
const HIGH_BASE: Price = PRICE_MAX - 150;
/// An auction id no test creates.
const UNKNOWN_AUCTION: AuctionId = AuctionId(9_999);

/// How a generated bid picks its proxy maximum.
#[derive(Clone, Copy, Debug)]
enum Max {
    /// The amount plus this.
    Extra(Price),
    /// The reserve plus `delta` (at least the amount), to reach the reserve-lift edge.
    AtReserve(i64),
}

/// How a generated bid picks its amount.
#[derive(Clone, Copy, Debug)]
enum Amount {
    /// This much above (or below, if negative) the minimum the rules demand at that moment,
    /// so that most bids are in play; falls back to `Absolute(1 + delta.abs())` while the
    /// minimum is undefined (not open yet, or closed).
    AboveMin(i64),
    /// Exactly this.
    Absolute(Price),
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Bid {
        auction: Index,
        bidder: usize,
        id: u128,
        amount: Amount,
        max: Option<Max>,
    },
    /// Sends an earlier bid again (same bidder, id, amount and maximum).
    Retry(Index),
    BidUnknownAuction,
    CloseDue,
    Close(Index),
    Cancel(Index),
    Refuse(bool),
}

#[derive(Clone, Debug)]
struct Case {
    config: EngineConfig,
    auctions: Vec<AuctionRules>,
    ops: Vec<Op>,
    /// Where to cut the log for the prefix-replay check.
    cut: Index,
}

fn increments_strategy() -> impl Strategy<Value = IncrementTable> {
    (prop::collection::vec((1..30u64, 1..6u64), 0..3), 1..10u64).prop_map(|(bands, above)| {
        let mut below = 0;
        let bands = bands
            .into_iter()
            .map(|(gap, increment)| {
                below += gap;
                IncrementBand { below, increment }
            })
            .collect();
        IncrementTable::new(bands, above).expect("generated table is valid")
    })
}

fn kind_strategy() -> impl Strategy<Value = AuctionKind> {
    prop_oneof![
        3 => (1..30u64, increments_strategy()).prop_map(|(start_price, increments)| {
            AuctionKind::English { start_price, increments }
        }),
        1 => (1..30u64).prop_map(|min_bid| AuctionKind::SealedFirstPrice { min_bid }),
        1 => (1..30u64).prop_map(|min_bid| AuctionKind::SealedSecondPrice { min_bid }),
        1 => (1..30u64, 1..40u64, 1..8u64, 1..40u64).prop_map(
            |(floor_price, above_floor, step, step_interval_us)| AuctionKind::Dutch {
                start_price: floor_price + above_floor,
                floor_price,
                step,
                step_interval_us,
            }
        ),
    ]
}

/// Rules with auction id 0; the case numbers its auctions.
fn rules_strategy() -> impl Strategy<Value = AuctionRules> {
    (
        kind_strategy(),
        prop::option::weighted(0.4, 1..70u64),
        prop::option::weighted(0.3, 0..40u64),
        (0..3u64).prop_map(|t| t * TICK_US),
        (10..200u64).prop_map(|t| t * TICK_US),
        prop::bool::weighted(0.15),
        prop::option::weighted(
            0.5,
            (1..100u64, 1..30u64, 0..5u32).prop_map(|(window, extension, extensions_max)| {
                SoftClose {
                    window_us: window * TICK_US,
                    extension_us: extension * TICK_US,
                    extensions_max,
                }
            }),
        ),
    )
        .prop_map(
            |(mut kind, mut reserve, buy_now_above, start, duration, high, soft_close)| {
                if high {
                    // Every price near `PRICE_MAX`, where sums overflow the price range.
                    match &mut kind {
                        AuctionKind::English { start_price: p, .. }
                        | AuctionKind::SealedFirstPrice { min_bid: p }
                        | AuctionKind::SealedSecondPrice { min_bid: p } => *p += HIGH_BASE,
                        AuctionKind::Dutch {
                            start_price,
                            floor_price,
                            ..
                        } => {
                            *start_price += HIGH_BASE;
                            *floor_price += HIGH_BASE;
                        }
                    }
                    reserve = reserve.map(|r| r + HIGH_BASE);
                }
                let (reserve, buy_now) = match kind {
                    // A Dutch reserve may not exceed the floor, and buy-now is refused.
                    AuctionKind::Dutch { floor_price, .. } => {
                        (reserve.map(|r| r.min(floor_price)), None)
                    }
                    AuctionKind::English {
                        start_price: low, ..
                    }
                    | AuctionKind::SealedFirstPrice { min_bid: low }
                    | AuctionKind::SealedSecondPrice { min_bid: low } => {
                        let lowest = low.max(reserve.unwrap_or(0));
                        let buy_now = buy_now_above.map(|above| (lowest + above).min(PRICE_MAX));
                        (reserve, buy_now)
                    }
                };
                AuctionRules {
                    id: AuctionId(0),
                    topic: Topic::new("model.auction").expect("valid topic"),
                    kind,
                    reserve,
                    buy_now,
                    starts_at: UnixMicros(START_MIN + start),
                    ends_at: UnixMicros(START_MIN + start + duration),
                    soft_close,
                }
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => (
            any::<Index>(),
            0..4usize,
            0..10u128,
            prop_oneof![
                4 => (-3..25i64).prop_map(Amount::AboveMin),
                1 => (1..120u64).prop_map(Amount::Absolute),
            ],
            prop::option::weighted(0.35, prop_oneof![
                3 => (0..40u64).prop_map(Max::Extra),
                1 => (-1..=1i64).prop_map(Max::AtReserve),
            ]),
        )
            .prop_map(|(auction, bidder, id, amount, max)| Op::Bid {
                auction,
                bidder,
                id,
                amount,
                max,
            }),
        12 => any::<Index>().prop_map(Op::Retry),
        // Time moves in ticks so that it lands exactly on ends and soft-close windows;
        // Dutch steps are finer and see every offset.
        10 => (1..3u64).prop_map(|t| Op::Advance(t * TICK_US)),
        2 => (3..40u64).prop_map(|t| Op::Advance(t * TICK_US)),
        1 => (1..TICK_US).prop_map(Op::Advance),
        6 => Just(Op::CloseDue),
        2 => any::<Index>().prop_map(Op::Close),
        1 => any::<Index>().prop_map(Op::Cancel),
        1 => Just(Op::BidUnknownAuction),
        2 => any::<bool>().prop_map(Op::Refuse),
    ]
}

fn config_strategy() -> impl Strategy<Value = EngineConfig> {
    (
        prop::sample::select(vec![1usize, 4, 64]),
        prop::sample::select(vec![1usize, 2, 4, 1024]),
        prop::sample::select(vec![2usize, 3, 100]),
    )
        .prop_map(
            |(shards, dedup_window_bids, sealed_bidders_max)| EngineConfig {
                shards,
                dedup_window_bids,
                sealed_bidders_max,
                ..EngineConfig::default()
            },
        )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        config_strategy(),
        prop::collection::vec(rules_strategy(), 1..4),
        prop::collection::vec(op_strategy(), 1..100),
        any::<Index>(),
    )
        .prop_map(|(config, mut auctions, ops, cut)| {
            for (i, rules) in auctions.iter_mut().enumerate() {
                rules.id = AuctionId(i as u64 + 1);
            }
            Case {
                config,
                auctions,
                ops,
                cut,
            }
        })
}

// ---------------------------------------------------------------------------------------
// Running a case against engine and model.
// ---------------------------------------------------------------------------------------

/// The live run: every published batch, and the state hash after the op whose last batch
/// each one is (`None` when the op published more batches after it).
struct Run {
    batches: Vec<Vec<Event>>,
    hash_after_batch: Vec<Option<[u8; 32]>>,
    final_hash: [u8; 32],
}

struct Harness {
    engine: Engine,
    sink: BatchSink,
    models: Vec<ModelAuction>,
    now: u64,
    refuse: bool,
    /// Every bid sent, for retries.
    sent: Vec<Bid>,
    hash_after_batch: Vec<Option<[u8; 32]>>,
    hash: [u8; 32],
}

impl Harness {
    fn new(case: &Case) -> Result<Harness, TestCaseError> {
        let engine = Engine::new(case.config);
        let sink = BatchSink::default();
        let mut models = Vec::new();
        let mut hash_after_batch = Vec::new();
        for rules in &case.auctions {
            let spec = AuctionSpec::try_from(rules.clone())
                .map_err(|e| TestCaseError::fail(format!("generated rules invalid: {e:?}")))?;
            engine
                .create_auction(spec.clone(), UnixMicros(T0), &sink)
                .map_err(|e| TestCaseError::fail(format!("create failed: {e:?}")))?;
            let expected = Event {
                auction: rules.id,
                seq: 1,
                at: UnixMicros(T0),
                kind: EventKind::Created(Arc::new(spec)),
            };
            prop_assert_eq!(
                sink.batches_from(hash_after_batch.len()),
                vec![vec![expected]]
            );
            hash_after_batch.push(Some(engine.state_hash()));
            models.push(ModelAuction::new(rules.clone(), &case.config));
        }
        let hash = engine.state_hash();
        Ok(Harness {
            engine,
            sink,
            models,
            now: T0,
            refuse: false,
            sent: Vec::new(),
            hash_after_batch,
            hash,
        })
    }

    fn set_refuse(&mut self, refuse: bool) {
        self.refuse = refuse;
        self.sink.set_refuse(refuse);
    }

    fn step(&mut self, op: &Op, op_index: usize) -> Result<(), TestCaseError> {
        let before = self.sink.batch_count();
        let mut expected_batches: Vec<Vec<Event>> = Vec::new();
        match op {
            Op::Advance(dt) => self.now += dt,
            Op::Refuse(refuse) => self.set_refuse(*refuse),
            Op::Bid {
                auction,
                bidder: who,
                id,
                amount,
                max,
            } => {
                let model = &self.models[auction.index(self.models.len())];
                let amount = match *amount {
                    Amount::AboveMin(delta) => {
                        let open = model.settled.is_none()
                            && (model.rules.starts_at.0..model.ends_at).contains(&self.now);
                        let base = if open { model.min_next(self.now) } else { 1 };
                        base.saturating_add_signed(delta).max(1)
                    }
                    Amount::Absolute(amount) if model.is_high() => HIGH_BASE + amount,
                    Amount::Absolute(amount) => amount,
                }
                .min(PRICE_MAX);
                let bid = Bid::new(
                    model.id(),
                    bidder(*who),
                    BidId(*id),
                    amount,
                    max.map(|max| match max {
                        Max::Extra(extra) => (amount + extra).min(PRICE_MAX),
                        Max::AtReserve(delta) => model
                            .rules
                            .reserve
                            .map_or(amount, |r| r.saturating_add_signed(delta))
                            .clamp(amount, PRICE_MAX),
                    }),
                    UnixMicros((op_index as u64).wrapping_mul(7_919)),
                )
                .expect("generated bid is valid");
                self.sent.push(bid);
                expected_batches = self.bid(&bid)?;
            }
            Op::Retry(pick) => {
                if !self.sent.is_empty() {
                    let original = self.sent[pick.index(self.sent.len())];
                    // A retry carries a new send time; the key is (bidder, bid id) only.
                    let bid = Bid::new(
                        original.auction(),
                        original.bidder(),
                        original.id(),
                        original.amount(),
                        original.max(),
                        UnixMicros(op_index as u64),
                    )
                    .expect("a copy of a valid bid is valid");
                    expected_batches = self.bid(&bid)?;
                }
            }
            Op::BidUnknownAuction => {
                let bid = Bid::new(UNKNOWN_AUCTION, bidder(0), BidId(1), 1, None, UnixMicros(0))
                    .expect("valid bid");
                let outcome = self
                    .engine
                    .place_bid(&bid, UnixMicros(self.now), &self.sink)
                    .outcome;
                prop_assert_eq!(outcome, BidOutcome::Rejected(Rejection::UnknownAuction));
            }
            Op::CloseDue => {
                let mut closed: Vec<_> = self
                    .engine
                    .close_due(UnixMicros(self.now), usize::MAX, &self.sink)
                    .into_iter()
                    .map(|c| (c.id, c.settlement))
                    .collect();
                closed.sort_by_key(|(id, _)| *id);
                let mut expected = Vec::new();
                for model in &mut self.models {
                    if model.is_due(self.now) && !self.refuse {
                        let settlement = model.settlement_at_end();
                        expected_batches.push(model.close_events(
                            self.now,
                            CloseReason::EndReached,
                            settlement,
                        ));
                        model.apply_close(settlement);
                        expected.push((model.id(), settlement));
                    }
                }
                prop_assert_eq!(closed, expected, "close_due at {}", self.now);
            }
            Op::Close(pick) => {
                let index = pick.index(self.models.len());
                let model = &mut self.models[index];
                let id = model.id();
                let result = self
                    .engine
                    .close_auction(id, UnixMicros(self.now), &self.sink)
                    .map(|c| c.settlement);
                let expected = if model.settled.is_some() {
                    Err(ManageError::AlreadyClosed(id))
                } else if self.now < model.ends_at {
                    Err(ManageError::NotDue {
                        id,
                        ends_at: UnixMicros(model.ends_at),
                    })
                } else if self.refuse {
                    Err(ManageError::Overloaded {
                        retry_after_us: RETRY_AFTER_US,
                    })
                } else {
                    let settlement = model.settlement_at_end();
                    expected_batches.push(model.close_events(
                        self.now,
                        CloseReason::EndReached,
                        settlement,
                    ));
                    model.apply_close(settlement);
                    Ok(settlement)
                };
                prop_assert_eq!(result, expected, "close of auction {} at {}", id, self.now);
            }
            Op::Cancel(pick) => {
                let index = pick.index(self.models.len());
                let model = &mut self.models[index];
                let id = model.id();
                let result = self
                    .engine
                    .cancel_auction(id, UnixMicros(self.now), &self.sink)
                    .map(|c| c.settlement);
                let expected = if model.settled.is_some() {
                    Err(ManageError::AlreadyClosed(id))
                } else if self.refuse {
                    Err(ManageError::Overloaded {
                        retry_after_us: RETRY_AFTER_US,
                    })
                } else {
                    let settlement = Settlement { winner: None };
                    expected_batches.push(model.close_events(
                        self.now,
                        CloseReason::Cancelled,
                        settlement,
                    ));
                    model.apply_close(settlement);
                    Ok(settlement)
                };
                prop_assert_eq!(result, expected, "cancel of auction {} at {}", id, self.now);
            }
        }

        let mut published = self.sink.batches_from(before);
        // `close_due` visits shards in an order of its own; compare by auction.
        published.sort_by_key(|batch| batch[0].auction);
        prop_assert_eq!(&published, &expected_batches, "events of op {:?}", op);

        let hash = self.engine.state_hash();
        if published.is_empty() {
            prop_assert_eq!(
                hash,
                self.hash,
                "op {:?} published nothing but changed state",
                op
            );
        }
        for i in 0..published.len() {
            let last = i + 1 == published.len();
            self.hash_after_batch.push(last.then_some(hash));
        }
        self.hash = hash;
        self.check_views()
    }

    /// Decides `bid` in engine and model; returns the batch the model expects published.
    fn bid(&mut self, bid: &Bid) -> Result<Vec<Vec<Event>>, TestCaseError> {
        let now = self.now;
        let decision = self.engine.place_bid(bid, UnixMicros(now), &self.sink);
        let outcome = decision.outcome;
        if !matches!(outcome, BidOutcome::Accepted(_)) {
            prop_assert_eq!(decision.closed, None, "a rejection closes nothing");
        }
        let Some(model) = self.models.iter_mut().find(|m| m.id() == bid.auction()) else {
            unreachable!("bids go to created auctions");
        };
        let fresh = match model.memory((bid.bidder(), bid.id())) {
            Memory::Always(original) => {
                prop_assert_eq!(
                    outcome,
                    BidOutcome::Rejected(Rejection::Duplicate { original }),
                    "retry of {:?} at {} within the guaranteed window",
                    bid,
                    now
                );
                return Ok(Vec::new());
            }
            Memory::Maybe(original)
                if outcome == BidOutcome::Rejected(Rejection::Duplicate { original }) =>
            {
                return Ok(Vec::new());
            }
            Memory::Maybe(_) | Memory::Forgotten => model.decide(bid, now),
        };
        match fresh {
            Err(rejection) => {
                prop_assert_eq!(
                    outcome,
                    BidOutcome::Rejected(rejection),
                    "bid {:?} at {}",
                    bid,
                    now
                );
                Ok(Vec::new())
            }
            Ok(_) if self.refuse => {
                prop_assert_eq!(
                    outcome,
                    BidOutcome::Rejected(Rejection::Overloaded {
                        retry_after_us: RETRY_AFTER_US
                    }),
                    "bid {:?} at {} with a full sink",
                    bid,
                    now
                );
                Ok(Vec::new())
            }
            Ok(plan) => {
                prop_assert_eq!(
                    outcome,
                    BidOutcome::Accepted(plan.accepted),
                    "bid {:?} at {}",
                    bid,
                    now
                );
                // The decision says whether the bid closed the auction, as the model does.
                prop_assert_eq!(
                    decision
                        .closed
                        .map(|c| (c.id, c.settlement, Some(c.receipt))),
                    plan.settlement
                        .map(|s| (bid.auction(), s, decision.receipt)),
                    "the close of bid {:?} at {}",
                    bid,
                    now
                );
                let events = plan.events.clone();
                model.apply(bid, plan);
                Ok(vec![events])
            }
        }
    }

    /// Views and lock-free prices agree with the model.
    fn check_views(&self) -> Result<(), TestCaseError> {
        let now = self.now;
        for model in &self.models {
            let id = model.id();
            let view = self
                .engine
                .view(id, UnixMicros(now))
                .ok_or_else(|| TestCaseError::fail("created auction has no view"))?;
            prop_assert_eq!(view.seq, model.seq, "view seq of {}", id);
            prop_assert_eq!(
                view.ends_at,
                UnixMicros(model.ends_at),
                "view end of {}",
                id
            );
            prop_assert_eq!(
                view.extensions,
                model.extensions,
                "view extensions of {}",
                id
            );
            prop_assert_eq!(view.bids_accepted, model.bids_accepted, "bids of {}", id);
            prop_assert_eq!(view.settlement, model.settled, "view settlement of {}", id);
            let phase = if model.settled.is_some() {
                Phase::Settled
            } else if now < model.rules.starts_at.0 {
                Phase::Scheduled
            } else {
                Phase::Open
            };
            prop_assert_eq!(view.phase, phase, "phase of {}", id);
            let (price, closed) = self
                .engine
                .price(id)
                .ok_or_else(|| TestCaseError::fail("created auction has no price"))?;
            prop_assert_eq!(closed, model.settled.is_some(), "closed flag of {}", id);
            match &model.book {
                Book::English { .. } => {
                    let visible = model.visible_english();
                    prop_assert_eq!(price, visible.map(|(p, _)| p), "price of {}", id);
                    prop_assert_eq!(view.price, visible.map(|(p, _)| p), "view price {}", id);
                    prop_assert_eq!(view.leader, visible.map(|(_, l)| l), "leader of {}", id);
                }
                Book::Sealed { .. } if model.settled.is_none() => {
                    prop_assert_eq!(price, None, "sealed price of {} is hidden", id);
                    prop_assert_eq!(view.price, None, "sealed view price of {}", id);
                    prop_assert_eq!(view.leader, None, "sealed leader of {}", id);
                }
                Book::Dutch if model.settled.is_none() && now >= model.rules.starts_at.0 => {
                    let clock = model.dutch_clock(now);
                    prop_assert_eq!(view.price, Some(clock), "Dutch clock of {}", id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Closes everything: the sink accepts again and time passes every possible end.
    fn close_everything(&mut self) -> Result<(), TestCaseError> {
        self.set_refuse(false);
        let latest_end = self
            .models
            .iter()
            .map(|m| {
                let extensions = m
                    .rules
                    .soft_close
                    .map_or(0, |sc| sc.extension_us * u64::from(sc.extensions_max));
                m.rules.ends_at.0 + extensions
            })
            .max()
            .unwrap_or(T0);
        self.step(
            &Op::Advance(latest_end.saturating_sub(self.now)),
            usize::MAX,
        )?;
        self.step(&Op::CloseDue, usize::MAX)
    }
}

/// Checks over the whole log of a run, then replays it whole and cut at `cut`.
fn check_run(
    case: &Case,
    run: &Run,
    models: &[(AuctionId, Settlement)],
) -> Result<(), TestCaseError> {
    let events: Vec<Event> = run.batches.iter().flatten().cloned().collect();
    let settlements = check_log_invariants(&events);
    let expected: std::collections::BTreeMap<_, _> = models.iter().copied().collect();
    prop_assert_eq!(
        settlements,
        expected,
        "exactly one settlement per auction, as modelled"
    );

    // A retried bid never counts twice: the same key is accepted again only after it left
    // the guaranteed memory window (more than N acceptances later).
    for (auction, log) in common::by_auction(&events) {
        let keys: Vec<Key> = log
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::BidAccepted { bid, .. } => Some((bid.bidder(), bid.id())),
                _ => None,
            })
            .collect();
        for (j, key) in keys.iter().enumerate() {
            if let Some(i) = keys[..j].iter().rposition(|k| k == key) {
                prop_assert!(
                    j - i > case.config.dedup_window_bids,
                    "auction {}: key {:?} accepted at bid positions {} and {}",
                    auction,
                    key,
                    i,
                    j
                );
            }
        }
    }

    check_replay(&events, case.config, run.final_hash);

    // A prefix cut anywhere replays; a tail is missing only when the cut splits a decision,
    // and then it is exactly the rest of that decision. The state is the one after the
    // decision (the engine re-derived the missing events).
    let cut = case.cut.index(events.len() + 1);
    let fresh = Engine::new(case.config);
    let mut replayer = Replayer::new(&fresh);
    for (i, event) in events[..cut].iter().enumerate() {
        if let Err(error) = replayer.apply(event) {
            return Err(TestCaseError::fail(format!(
                "prefix replay failed at {i}: {error}"
            )));
        }
    }
    let summary = replayer.finish();
    let mut start = 0;
    for (b, batch) in run.batches.iter().enumerate() {
        let end = start + batch.len();
        if cut > start && cut <= end {
            prop_assert_eq!(&summary.missing_tail, &batch[cut - start..].to_vec());
            if let Some(hash) = run.hash_after_batch[b] {
                prop_assert_eq!(fresh.state_hash(), hash, "state after a cut log");
            }
        }
        start = end;
    }
    if cut == 0 {
        prop_assert!(summary.missing_tail.is_empty());
    }
    Ok(())
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let mut harness = Harness::new(case)?;
    for (i, op) in case.ops.iter().enumerate() {
        harness.step(op, i)?;
    }
    harness.close_everything()?;
    let mut settlements = Vec::new();
    for model in &harness.models {
        let settlement = model
            .settled
            .ok_or_else(|| TestCaseError::fail(format!("auction {} never settled", model.id())))?;
        settlements.push((model.id(), settlement));
    }
    let run = Run {
        batches: harness.sink.batches(),
        hash_after_batch: harness.hash_after_batch,
        final_hash: harness.hash,
    };
    check_run(case, &run, &settlements)
}

// ---------------------------------------------------------------------------------------
// Creation rules (docs/auction-rules.md, "Creation").
// ---------------------------------------------------------------------------------------

/// Whether the rules document admits `rules` (the increment table is checked on its own).
fn model_admits(rules: &AuctionRules) -> bool {
    let price_ok = |p: Price| (1..=PRICE_MAX).contains(&p);
    if rules.ends_at <= rules.starts_at {
        return false;
    }
    let lowest = match rules.kind {
        AuctionKind::English { start_price, .. } => {
            if !price_ok(start_price) {
                return false;
            }
            start_price
        }
        AuctionKind::SealedFirstPrice { min_bid } | AuctionKind::SealedSecondPrice { min_bid } => {
            if !price_ok(min_bid) {
                return false;
            }
            min_bid
        }
        AuctionKind::Dutch {
            start_price,
            floor_price,
            step,
            step_interval_us,
        } => {
            if !(price_ok(start_price) && price_ok(floor_price) && price_ok(step)) {
                return false;
            }
            if floor_price >= start_price || step_interval_us == 0 {
                return false;
            }
            if rules.buy_now.is_some() || rules.reserve.is_some_and(|r| r > floor_price) {
                return false;
            }
            floor_price
        }
    };
    if let Some(buy_now) = rules.buy_now
        && (buy_now < lowest || rules.reserve.is_some_and(|r| buy_now < r))
    {
        return false;
    }
    if let Some(sc) = rules.soft_close {
        if sc.window_us == 0 || sc.extension_us == 0 || sc.extensions_max > 10_000 {
            return false;
        }
        let latest = u128::from(rules.ends_at.0)
            + u128::from(sc.extension_us) * u128::from(sc.extensions_max);
        if latest > u128::from(u64::MAX) {
            return false;
        }
    }
    true
}

/// Prices around the edges: zero, small, the largest and one past it.
fn edge_price() -> impl Strategy<Value = Price> {
    prop_oneof![
        1 => Just(0),
        6 => 1..50u64,
        1 => Just(PRICE_MAX),
        1 => Just(PRICE_MAX + 1),
    ]
}

fn raw_rules_strategy() -> impl Strategy<Value = AuctionRules> {
    let kind = prop_oneof![
        edge_price().prop_map(|start_price| AuctionKind::English {
            start_price,
            increments: IncrementTable::default(),
        }),
        edge_price().prop_map(|min_bid| AuctionKind::SealedFirstPrice { min_bid }),
        edge_price().prop_map(|min_bid| AuctionKind::SealedSecondPrice { min_bid }),
        (edge_price(), edge_price(), edge_price(), 0..3u64).prop_map(
            |(start_price, floor_price, step, step_interval_us)| AuctionKind::Dutch {
                start_price,
                floor_price,
                step,
                step_interval_us,
            }
        ),
    ];
    let soft_close = (
        prop_oneof![Just(0u64), 1..10u64],
        prop_oneof![Just(0u64), 1..10u64, Just(u64::MAX / 3)],
        prop_oneof![0..4u32, Just(10_000), Just(10_001)],
    )
        .prop_map(|(window_us, extension_us, extensions_max)| SoftClose {
            window_us,
            extension_us,
            extensions_max,
        });
    (
        kind,
        // The document does not say whether a zero or overflowing reserve or buy-now is
        // refused; only documented refusals are generated.
        prop::option::of(prop_oneof![1..60u64, Just(PRICE_MAX)]),
        prop::option::of(prop_oneof![1..60u64, Just(PRICE_MAX)]),
        0..5u64,
        prop_oneof![0..8u64, Just(u64::MAX - 2)],
        prop::option::of(soft_close),
    )
        .prop_map(
            |(kind, reserve, buy_now, starts_at, ends_at, soft_close)| AuctionRules {
                id: AuctionId(1),
                topic: Topic::new("model.creation").expect("valid topic"),
                kind,
                reserve,
                buy_now,
                starts_at: UnixMicros(starts_at),
                ends_at: UnixMicros(ends_at),
                soft_close,
            },
        )
}

/// Whether the document admits an increment table.
fn model_admits_table(bands: &[IncrementBand], above: Price) -> bool {
    bands.len() <= 16
        && above != 0
        && bands.iter().all(|b| b.increment != 0)
        && bands.windows(2).all(|w| w[0].below < w[1].below)
}

// ---------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Engine and model agree on every outcome, event, view and settlement; the log keeps
    /// the invariants and replays (whole, or cut anywhere) to the same state.
    #[test]
    fn engine_matches_the_reference_model(case in case_strategy()) {
        run_case(&case)?;
    }

    /// Creation refuses exactly what the document says it refuses.
    #[test]
    fn creation_refuses_what_the_rules_refuse(rules in raw_rules_strategy()) {
        let admitted = model_admits(&rules);
        let result = AuctionSpec::try_from(rules.clone());
        prop_assert_eq!(result.is_ok(), admitted, "rules {:?} gave {:?}", rules, result);
    }

    /// Increment tables are refused exactly as the document says.
    #[test]
    fn increment_tables_refuse_what_the_rules_refuse(
        bands in prop::collection::vec((0..40u64, 0..4u64), 0..35),
        above in 0..4u64,
    ) {
        let bands: Vec<IncrementBand> = bands
            .into_iter()
            .map(|(below, increment)| IncrementBand { below, increment })
            .collect();
        let admitted = model_admits_table(&bands, above);
        prop_assert_eq!(IncrementTable::new(bands, above).is_ok(), admitted);
    }
}

// ---------------------------------------------------------------------------------------
// Minimal cases of engine disagreements with the rules, found by the properties above.
// ---------------------------------------------------------------------------------------

/// One auction of `kind` open over `[1_000, 2_000)`, created at `T0`.
fn engine_with(kind: AuctionKind) -> (Engine, BatchSink) {
    let engine = Engine::new(EngineConfig::default());
    let sink = BatchSink::default();
    let rules = AuctionRules {
        id: AuctionId(1),
        topic: Topic::new("model.minimal").expect("valid topic"),
        kind,
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(1_000),
        ends_at: UnixMicros(2_000),
        soft_close: None,
    };
    let spec = AuctionSpec::try_from(rules).expect("valid rules");
    engine
        .create_auction(spec, UnixMicros(T0), &sink)
        .expect("created");
    (engine, sink)
}

fn low_bid(amount: Price) -> Bid {
    Bid::new(
        AuctionId(1),
        bidder(0),
        BidId(1),
        amount,
        None,
        UnixMicros(0),
    )
    .expect("valid bid")
}

fn every_kind() -> Vec<AuctionKind> {
    vec![
        AuctionKind::English {
            start_price: 10,
            increments: IncrementTable::default(),
        },
        AuctionKind::SealedFirstPrice { min_bid: 10 },
        AuctionKind::SealedSecondPrice { min_bid: 10 },
        AuctionKind::Dutch {
            start_price: 10,
            floor_price: 5,
            step: 1,
            step_interval_us: 1,
        },
    ]
}

/// Rules: "Not open: `now < starts_at` → `NotOpen`" is checked before "Too low".
#[test]
fn too_low_bid_before_the_start_is_not_open() {
    for kind in every_kind() {
        let (engine, sink) = engine_with(kind.clone());
        assert_eq!(
            engine
                .place_bid(&low_bid(1), UnixMicros(999), &sink)
                .outcome,
            BidOutcome::Rejected(Rejection::NotOpen),
            "{kind:?}"
        );
    }
}

/// Rules: "Closed: ... or `now >= ends_at`" is checked before "Too low", also before the
/// timer has closed the auction.
#[test]
fn too_low_bid_after_the_end_is_closed() {
    for kind in every_kind() {
        let (engine, sink) = engine_with(kind.clone());
        assert_eq!(
            engine
                .place_bid(&low_bid(1), UnixMicros(2_000), &sink)
                .outcome,
            BidOutcome::Rejected(Rejection::Closed),
            "{kind:?}"
        );
    }
}
