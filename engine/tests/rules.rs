//! One test per rule of docs/auction-rules.md, through the engine's public API.

use gavel_engine::{
    Accepted, AuctionId, AuctionKind, AuctionRules, AuctionSpec, Backpressure, Bid, BidId,
    BidOutcome, BidderId, BoundedSink, CloseReason, CreateError, Engine, EngineConfig, Event,
    EventKind, EventSink, IncrementTable, ManageError, Phase, Receipt, RecordingSink, Rejection,
    Replayer, SoftClose, Topic, UnixMicros, Winner,
};

const START: u64 = 1_000;
const END: u64 = 2_000;

fn english(start_price: u64) -> AuctionKind {
    AuctionKind::English {
        start_price,
        increments: IncrementTable::default(),
    }
}

fn rules(id: u64, kind: AuctionKind) -> AuctionRules {
    AuctionRules {
        id: AuctionId(id),
        topic: Topic::new("test.rules").unwrap(),
        kind,
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(START),
        ends_at: UnixMicros(END),
        soft_close: None,
    }
}

struct World {
    engine: Engine,
    sink: RecordingSink,
    next_bid: u128,
}

impl World {
    fn new(rules: AuctionRules) -> World {
        World::with_config(rules, EngineConfig::default())
    }

    fn with_config(rules: AuctionRules, config: EngineConfig) -> World {
        let engine = Engine::new(config);
        let sink = RecordingSink::default();
        engine
            .create_auction(AuctionSpec::try_from(rules).unwrap(), UnixMicros(0), &sink)
            .unwrap();
        World {
            engine,
            sink,
            next_bid: 1,
        }
    }

    fn bid_full(
        &mut self,
        who: &str,
        amount: u64,
        max: Option<u64>,
        at: u64,
    ) -> (BidId, BidOutcome) {
        let id = BidId(self.next_bid);
        self.next_bid += 1;
        (id, self.bid_with_id(who, id, amount, max, at))
    }

    fn bid_with_id(
        &self,
        who: &str,
        id: BidId,
        amount: u64,
        max: Option<u64>,
        at: u64,
    ) -> BidOutcome {
        let bid = Bid::new(
            AuctionId(1),
            BidderId::new(who).unwrap(),
            id,
            amount,
            max,
            UnixMicros(at),
        )
        .unwrap();
        self.engine
            .place_bid(&bid, UnixMicros(at), &self.sink)
            .outcome
    }

    fn bid(&mut self, who: &str, amount: u64, at: u64) -> BidOutcome {
        self.bid_full(who, amount, None, at).1
    }

    fn proxy(&mut self, who: &str, amount: u64, max: u64, at: u64) -> BidOutcome {
        self.bid_full(who, amount, Some(max), at).1
    }

    fn close(&self, at: u64) -> Option<Winner> {
        let closed = self
            .engine
            .close_due(UnixMicros(at), usize::MAX, &self.sink);
        assert_eq!(
            closed.len(),
            1,
            "expected exactly one auction to close at {at}"
        );
        closed[0].settlement.winner
    }
}

fn accepted(outcome: BidOutcome) -> Accepted {
    match outcome {
        BidOutcome::Accepted(a) => a,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn rejected(outcome: BidOutcome) -> Rejection {
    match outcome {
        BidOutcome::Rejected(r) => r,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn bidder(name: &str) -> BidderId {
    BidderId::new(name).unwrap()
}

// ---- every kind ----

#[test]
fn unknown_auction_is_rejected() {
    let w = World::new(rules(1, english(10)));
    let bid = Bid::new(
        AuctionId(9),
        bidder("a"),
        BidId(1),
        10,
        None,
        UnixMicros(START),
    )
    .unwrap();
    assert_eq!(
        w.engine.place_bid(&bid, UnixMicros(START), &w.sink).outcome,
        BidOutcome::Rejected(Rejection::UnknownAuction)
    );
}

#[test]
fn bids_before_start_are_not_open_and_at_end_are_closed() {
    let mut w = World::new(rules(1, english(10)));
    assert_eq!(rejected(w.bid("a", 10, START - 1)), Rejection::NotOpen);
    assert_eq!(rejected(w.bid("a", 10, END)), Rejection::Closed);
    assert_eq!(accepted(w.bid("a", 10, END - 1)).price, 10);
}

#[test]
fn nothing_is_accepted_after_close_and_settlement_happens_once() {
    let mut w = World::new(rules(1, english(10)));
    accepted(w.bid("a", 10, START));
    assert!(w.close(END).is_some());
    assert_eq!(rejected(w.bid("b", 1_000, END + 1)), Rejection::Closed);
    assert!(
        w.engine
            .close_due(UnixMicros(END + 5), usize::MAX, &w.sink)
            .is_empty()
    );
    assert_eq!(
        w.engine
            .close_auction(AuctionId(1), UnixMicros(END + 5), &w.sink),
        Err(ManageError::AlreadyClosed(AuctionId(1)))
    );
    let settled = w
        .sink
        .take()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Settled(_)))
        .count();
    assert_eq!(settled, 1);
}

#[test]
fn phase_counts_follow_start_and_close() {
    let w = World::new(rules(1, english(10)));
    let later = AuctionRules {
        starts_at: UnixMicros(END),
        ends_at: UnixMicros(END + 1_000),
        ..rules(2, english(10))
    };
    w.engine
        .create_auction(
            AuctionSpec::try_from(later).unwrap(),
            UnixMicros(0),
            &w.sink,
        )
        .unwrap();
    assert_eq!(w.engine.phase_counts(UnixMicros(0)), [2, 0, 0]);
    assert_eq!(w.engine.phase_counts(UnixMicros(START)), [1, 1, 0]);
    // Past its end but not yet closed by the timer: still open.
    assert_eq!(w.engine.phase_counts(UnixMicros(END + 1)), [0, 2, 0]);
    assert_eq!(w.close(END + 1), None);
    assert_eq!(w.engine.phase_counts(UnixMicros(END + 1)), [0, 1, 1]);
}

#[test]
fn sequence_numbers_are_contiguous_from_creation() {
    let mut w = World::new(rules(1, english(10)));
    assert_eq!(accepted(w.bid("a", 10, START)).seq, 2);
    rejected(w.bid("b", 10, START));
    assert_eq!(accepted(w.bid("b", 11, START)).seq, 3);
    w.close(END);
    let seqs: Vec<u64> = w.sink.take().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn retry_returns_the_original_outcome_even_after_the_price_moved_and_the_auction_closed() {
    let mut w = World::new(rules(1, english(10)));
    let (id, first) = w.bid_full("a", 10, None, START);
    let original = accepted(first);
    accepted(w.bid("b", 50, START + 1));
    // Too low now, but a retry: the original outcome, not TooLow, and no new event.
    let events_before = w.sink.take().len();
    assert_eq!(
        rejected(w.bid_with_id("a", id, 10, None, START + 2)),
        Rejection::Duplicate { original }
    );
    assert!(
        w.sink.take().is_empty(),
        "a retry must not produce events ({events_before} before)"
    );
    w.close(END);
    assert_eq!(
        rejected(w.bid_with_id("a", id, 10, None, END + 1)),
        Rejection::Duplicate { original }
    );
}

#[test]
fn bid_ids_are_scoped_by_bidder() {
    let mut w = World::new(rules(1, english(10)));
    let (id, _) = w.bid_full("a", 10, None, START);
    // Another bidder reusing the id is a fresh bid.
    assert_eq!(
        accepted(w.bid_with_id("b", id, 11, None, START)).leader,
        Some(bidder("b"))
    );
}

#[test]
fn the_idempotency_window_is_bounded_but_covers_the_configured_bids() {
    let config = EngineConfig {
        dedup_window_bids: 4,
        ..EngineConfig::default()
    };
    let mut w = World::with_config(rules(1, english(10)), config);
    let mut ids = Vec::new();
    for i in 0..20u64 {
        let (id, outcome) = w.bid_full("a", 10 + i, None, START);
        ids.push((id, accepted(outcome)));
    }
    // The last 4 are always remembered.
    for (id, original) in &ids[16..] {
        assert_eq!(
            rejected(w.bid_with_id("a", *id, original.price, None, START)),
            Rejection::Duplicate {
                original: *original
            }
        );
    }
    // The first one left the window: decided afresh (too low now).
    assert!(matches!(
        rejected(w.bid_with_id("a", ids[0].0, 10, None, START)),
        Rejection::TooLow { .. }
    ));
}

#[test]
fn a_full_sink_rejects_with_overloaded_and_changes_nothing() {
    struct Full;
    impl EventSink for Full {
        fn publish(&self, _: &[Event]) -> Result<Receipt, Backpressure> {
            Err(Backpressure {
                retry_after_us: 250,
            })
        }
    }
    let w = World::new(rules(1, english(10)));
    let hash = w.engine.state_hash();
    let bid = Bid::new(
        AuctionId(1),
        bidder("a"),
        BidId(1),
        10,
        None,
        UnixMicros(START),
    )
    .unwrap();
    assert_eq!(
        w.engine.place_bid(&bid, UnixMicros(START), &Full).outcome,
        BidOutcome::Rejected(Rejection::Overloaded {
            retry_after_us: 250
        })
    );
    assert_eq!(w.engine.state_hash(), hash);
    assert_eq!(w.engine.price(AuctionId(1)), Some((None, false)));
    // The same bid id is not remembered: it is accepted once the sink has room.
    assert!(matches!(
        w.engine.place_bid(&bid, UnixMicros(START), &w.sink).outcome,
        BidOutcome::Accepted(_)
    ));
    // A close the sink refuses stays due and happens on the next tick.
    assert!(
        w.engine
            .close_due(UnixMicros(END), usize::MAX, &Full)
            .is_empty()
    );
    assert_eq!(
        w.engine
            .close_due(UnixMicros(END), usize::MAX, &w.sink)
            .len(),
        1
    );
}

#[test]
fn bounded_sink_admits_a_decision_all_or_none() {
    // Room for 3 events in one queue.
    let sink = BoundedSink::new(3, 99);
    let engine = Engine::new(EngineConfig::default());
    let mut r = rules(1, english(10));
    r.buy_now = Some(100);
    engine
        .create_auction(AuctionSpec::try_from(r).unwrap(), UnixMicros(0), &sink)
        .unwrap();
    // A buy-now decision needs 3 events (accepted, closed, settled); 2 slots are free.
    let buy = Bid::new(
        AuctionId(1),
        bidder("a"),
        BidId(1),
        100,
        None,
        UnixMicros(START),
    )
    .unwrap();
    assert_eq!(
        engine.place_bid(&buy, UnixMicros(START), &sink).outcome,
        BidOutcome::Rejected(Rejection::Overloaded { retry_after_us: 99 })
    );
    assert_eq!(sink.len(), 1, "nothing of the refused decision was queued");
    assert_eq!(
        engine.price(AuctionId(1)),
        Some((None, false)),
        "and nothing changed"
    );
    // A one-event decision fits.
    let small = Bid::new(
        AuctionId(1),
        bidder("b"),
        BidId(2),
        10,
        None,
        UnixMicros(START),
    )
    .unwrap();
    assert!(matches!(
        engine.place_bid(&small, UnixMicros(START), &sink).outcome,
        BidOutcome::Accepted(_)
    ));
    assert!(matches!(
        engine.place_bid(&buy, UnixMicros(START), &sink).outcome,
        BidOutcome::Rejected(Rejection::Overloaded { .. })
    ));
    // Draining makes room; events come out in the auction's order.
    let seqs: Vec<u64> = std::iter::from_fn(|| sink.pop()).map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(matches!(
        engine.place_bid(&buy, UnixMicros(START), &sink).outcome,
        BidOutcome::Accepted(_)
    ));
    assert_eq!(sink.len(), 3);
}

#[test]
fn duplicate_auction_ids_and_the_auction_limit_are_refused() {
    let config = EngineConfig {
        auctions_max: 1,
        ..EngineConfig::default()
    };
    let w = World::with_config(rules(1, english(10)), config);
    let again = AuctionSpec::try_from(rules(1, english(10))).unwrap();
    assert_eq!(
        w.engine.create_auction(again, UnixMicros(0), &w.sink),
        Err(CreateError::AlreadyExists(AuctionId(1)))
    );
    let other = AuctionSpec::try_from(rules(2, english(10))).unwrap();
    assert_eq!(
        w.engine.create_auction(other, UnixMicros(0), &w.sink),
        Err(CreateError::TooManyAuctions { auctions_max: 1 })
    );
}

#[test]
fn soft_close_extends_on_accepted_bids_only_up_to_the_cap() {
    let mut r = rules(1, english(10));
    r.soft_close = Some(SoftClose {
        window_us: 100,
        extension_us: 50,
        extensions_max: 2,
    });
    let mut w = World::new(r);
    // Outside the window: no extension.
    assert_eq!(accepted(w.bid("a", 10, END - 100)).ends_at, UnixMicros(END));
    // A rejected bid inside the window never extends.
    rejected(w.bid("b", 10, END - 10));
    assert_eq!(
        w.engine
            .view(AuctionId(1), UnixMicros(END - 10))
            .unwrap()
            .ends_at,
        UnixMicros(END)
    );
    // Accepted inside the window: +50, twice, then capped.
    assert_eq!(
        accepted(w.bid("b", 11, END - 10)).ends_at,
        UnixMicros(END + 50)
    );
    assert_eq!(
        accepted(w.bid("a", 12, END + 40)).ends_at,
        UnixMicros(END + 100)
    );
    assert_eq!(
        accepted(w.bid("b", 13, END + 90)).ends_at,
        UnixMicros(END + 100)
    );
    let view = w.engine.view(AuctionId(1), UnixMicros(END + 90)).unwrap();
    assert_eq!(view.extensions, 2);
    // The timer entry at the original end does not close it early.
    assert!(
        w.engine
            .close_due(UnixMicros(END + 99), usize::MAX, &w.sink)
            .is_empty()
    );
    assert_eq!(w.close(END + 100).unwrap().bidder, bidder("b"));
    let extended: Vec<_> = w
        .sink
        .take()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Extended {
                ends_at,
                extensions,
            } => Some((ends_at.0, extensions)),
            _ => None,
        })
        .collect();
    assert_eq!(extended, vec![(END + 50, 1), (END + 100, 2)]);
}

#[test]
fn cancel_closes_with_no_winner() {
    let mut w = World::new(rules(1, english(10)));
    accepted(w.bid("a", 10, START));
    let s = w
        .engine
        .cancel_auction(AuctionId(1), UnixMicros(START + 1), &w.sink)
        .unwrap();
    assert_eq!(s.settlement.winner, None);
    assert_eq!(rejected(w.bid("b", 100, START + 2)), Rejection::Closed);
    assert_eq!(
        w.engine
            .cancel_auction(AuctionId(1), UnixMicros(START + 3), &w.sink),
        Err(ManageError::AlreadyClosed(AuctionId(1)))
    );
    let view = w.engine.view(AuctionId(1), UnixMicros(START + 3)).unwrap();
    assert_eq!(view.phase, Phase::Settled);
    assert!(w.sink.take().iter().any(|e| e.kind
        == EventKind::Closed {
            reason: CloseReason::Cancelled
        }));
}

// ---- English ----

#[test]
fn english_first_bid_needs_the_start_price_then_an_increment() {
    let mut w = World::new(rules(1, english(95)));
    assert_eq!(
        rejected(w.bid("a", 94, START)),
        Rejection::TooLow { min_next: 95 }
    );
    assert_eq!(accepted(w.bid("a", 95, START)).price, 95);
    // Below 100 the increment is 1.
    assert_eq!(
        rejected(w.bid("b", 95, START)),
        Rejection::TooLow { min_next: 96 }
    );
    assert_eq!(accepted(w.bid("b", 100, START)).price, 100);
    // From 100 it is 5.
    assert_eq!(
        rejected(w.bid("a", 104, START)),
        Rejection::TooLow { min_next: 105 }
    );
    let a = accepted(w.bid("a", 105, START));
    assert_eq!((a.price, a.leader), (105, Some(bidder("a"))));
    assert_eq!(w.engine.price(AuctionId(1)), Some((Some(105), false)));
    assert_eq!(
        w.close(END).unwrap(),
        Winner {
            bidder: bidder("a"),
            bid: BidId(6),
            price: 105
        }
    );
}

#[test]
fn english_proxy_defends_the_leader_at_one_increment_above_the_challenger() {
    let mut w = World::new(rules(1, english(10)));
    let a = accepted(w.proxy("a", 10, 60, START));
    assert_eq!((a.price, a.leader), (10, Some(bidder("a"))));
    // b bids 20 (max 20): a's proxy answers at 21, a stays leader.
    let b = accepted(w.bid("b", 20, START));
    assert_eq!((b.price, b.leader), (21, Some(bidder("a"))));
    // b bids up to exactly a's max: tie goes to the earlier bid (a), price capped at 60.
    let b = accepted(w.proxy("b", 30, 60, START));
    assert_eq!((b.price, b.leader), (60, Some(bidder("a"))));
    // c beats a's max: c leads at a's max plus one increment.
    let c = accepted(w.proxy("c", 61, 500, START));
    assert_eq!((c.price, c.leader), (61, Some(bidder("c"))));
    let d = accepted(w.proxy("d", 62, 70, START));
    assert_eq!((d.price, d.leader), (71, Some(bidder("c"))));
    // e bids 300 flat, under c's max: c answers one increment (5 below 1,000) higher.
    let e = accepted(w.bid("e", 300, START));
    assert_eq!((e.price, e.leader), (305, Some(bidder("c"))));
    assert_eq!(w.close(END).unwrap().price, 305);
}

#[test]
fn english_new_leader_price_is_capped_at_its_own_max() {
    let mut w = World::new(rules(1, english(10)));
    accepted(w.proxy("a", 10, 98, START));
    // b's max 99 beats 98; one increment above 98 is 99 = b's max.
    let b = accepted(w.proxy("b", 11, 99, START));
    assert_eq!((b.price, b.leader), (99, Some(bidder("b"))));
}

#[test]
fn english_leader_may_raise_its_own_bid_and_max() {
    let mut w = World::new(rules(1, english(10)));
    accepted(w.proxy("a", 10, 20, START));
    let a = accepted(w.proxy("a", 15, 90, START));
    assert_eq!((a.price, a.leader), (15, Some(bidder("a"))));
    // The raised max defends.
    let b = accepted(w.bid("b", 50, START));
    assert_eq!((b.price, b.leader), (51, Some(bidder("a"))));
}

#[test]
fn english_reserve_lifts_the_price_when_the_max_reaches_it_and_otherwise_no_winner() {
    let mut r = rules(1, english(10));
    r.reserve = Some(50);
    let mut w = World::new(r.clone());
    assert_eq!(accepted(w.proxy("a", 10, 80, START)).price, 50);
    assert_eq!(w.close(END).unwrap().price, 50);

    let mut w = World::new(r);
    assert_eq!(accepted(w.proxy("a", 10, 40, START)).price, 10);
    assert_eq!(w.close(END), None, "reserve not met: no winner");
}

#[test]
fn english_buy_now_ends_the_auction_at_once() {
    let mut r = rules(1, english(10));
    r.buy_now = Some(500);
    let mut w = World::new(r);
    accepted(w.bid("a", 10, START));
    let b = accepted(w.bid("b", 900, START + 1));
    assert_eq!((b.price, b.leader), (500, Some(bidder("b"))));
    assert_eq!(w.engine.price(AuctionId(1)), Some((Some(500), true)));
    assert_eq!(rejected(w.bid("c", 2_000, START + 2)), Rejection::Closed);
    let kinds: Vec<EventKind> = w.sink.take().into_iter().map(|e| e.kind).skip(2).collect();
    assert!(matches!(
        kinds[1],
        EventKind::Closed {
            reason: CloseReason::BuyNow
        }
    ));
    assert!(matches!(kinds[2], EventKind::Settled(s) if s.winner.unwrap().price == 500));
}

#[test]
fn english_buy_now_caps_the_next_minimum_while_below_it() {
    let mut r = rules(1, english(90));
    r.buy_now = Some(100);
    let mut w = World::new(r);
    accepted(w.bid("a", 99, START));
    // The regular minimum would be 100 anyway; price 99 + 1. Now at 99 a bid of 100 buys.
    let b = accepted(w.bid("b", 100, START));
    assert_eq!(b.price, 100);
    assert!(w.engine.price(AuctionId(1)).unwrap().1, "buy-now closed it");
}

// ---- sealed ----

#[test]
fn sealed_bids_are_hidden_one_per_bidder_and_first_price_pays_its_bid() {
    let mut w = World::new(rules(1, AuctionKind::SealedFirstPrice { min_bid: 10 }));
    assert_eq!(
        rejected(w.bid("a", 9, START)),
        Rejection::TooLow { min_next: 10 }
    );
    assert_eq!(rejected(w.proxy("a", 10, 20, START)), Rejection::Invalid);
    let a = accepted(w.bid("a", 70, START));
    assert_eq!((a.price, a.leader), (70, None));
    assert_eq!(
        w.engine.price(AuctionId(1)),
        Some((None, false)),
        "sealed price is hidden"
    );
    accepted(w.bid("b", 60, START));
    // a replaces its bid with a lower one.
    accepted(w.bid("a", 50, START));
    assert_eq!(
        w.close(END).unwrap(),
        Winner {
            bidder: bidder("b"),
            bid: BidId(4),
            price: 60
        }
    );
}

#[test]
fn sealed_ties_go_to_the_earlier_bid() {
    let mut w = World::new(rules(1, AuctionKind::SealedFirstPrice { min_bid: 10 }));
    accepted(w.bid("a", 40, START));
    accepted(w.bid("b", 40, START));
    assert_eq!(w.close(END).unwrap().bidder, bidder("a"));
}

#[test]
fn vickrey_pays_the_second_price_or_the_reserve() {
    let mut w = World::new(rules(1, AuctionKind::SealedSecondPrice { min_bid: 10 }));
    accepted(w.bid("a", 70, START));
    accepted(w.bid("b", 40, START));
    accepted(w.bid("c", 55, START));
    assert_eq!(
        w.close(END).unwrap(),
        Winner {
            bidder: bidder("a"),
            bid: BidId(1),
            price: 55
        }
    );

    let mut r = rules(1, AuctionKind::SealedSecondPrice { min_bid: 10 });
    r.reserve = Some(45);
    let mut w = World::new(r.clone());
    accepted(w.bid("a", 70, START));
    accepted(w.bid("b", 40, START));
    assert_eq!(w.close(END).unwrap().price, 45);

    // A single bidder pays the minimum bid (or the reserve).
    let mut w = World::new(rules(1, AuctionKind::SealedSecondPrice { min_bid: 10 }));
    accepted(w.bid("a", 70, START));
    assert_eq!(w.close(END).unwrap().price, 10);

    // Below the reserve: no winner.
    let mut w = World::new(r);
    accepted(w.bid("a", 44, START));
    assert_eq!(w.close(END), None);
}

#[test]
fn sealed_buy_now_and_the_bidder_limit() {
    let mut r = rules(1, AuctionKind::SealedSecondPrice { min_bid: 10 });
    r.buy_now = Some(100);
    let config = EngineConfig {
        sealed_bidders_max: 2,
        ..EngineConfig::default()
    };
    let mut w = World::with_config(r, config);
    accepted(w.bid("a", 20, START));
    accepted(w.bid("b", 30, START));
    assert_eq!(rejected(w.bid("c", 40, START)), Rejection::Forbidden);
    // An existing bidder may still replace its bid.
    accepted(w.bid("a", 35, START));
    let b = accepted(w.bid("b", 150, START));
    assert_eq!(b.price, 150, "the outcome shows the bidder's own bid");
    let view = w.engine.view(AuctionId(1), UnixMicros(START)).unwrap();
    assert_eq!(view.phase, Phase::Settled);
    assert_eq!(view.settlement.unwrap().winner.unwrap().price, 100);
}

// ---- Dutch ----

fn dutch() -> AuctionKind {
    AuctionKind::Dutch {
        start_price: 100,
        floor_price: 40,
        step: 10,
        step_interval_us: 100,
    }
}

#[test]
fn dutch_clock_falls_in_steps_to_the_floor_and_the_first_taker_wins() {
    let mut w = World::new(rules(1, dutch()));
    assert_eq!(
        rejected(w.bid("a", 99, START)),
        Rejection::TooLow { min_next: 100 }
    );
    assert_eq!(
        rejected(w.bid("a", 89, START + 150)),
        Rejection::TooLow { min_next: 90 }
    );
    assert_eq!(
        rejected(w.bid("a", 39, START + 900)),
        Rejection::TooLow { min_next: 40 }
    );
    assert_eq!(
        rejected(w.proxy("a", 90, 95, START + 150)),
        Rejection::Invalid
    );
    // Bids above the clock pay the clock.
    let a = accepted(w.bid("a", 95, START + 250));
    assert_eq!((a.price, a.leader), (80, Some(bidder("a"))));
    assert_eq!(rejected(w.bid("b", 100, START + 251)), Rejection::Closed);
    let view = w
        .engine
        .view(AuctionId(1), UnixMicros(START + 300))
        .unwrap();
    assert_eq!(view.settlement.unwrap().winner.unwrap().price, 80);
}

#[test]
fn dutch_without_a_taker_has_no_winner() {
    let w = World::new(rules(1, dutch()));
    assert_eq!(
        w.engine
            .view(AuctionId(1), UnixMicros(START + 450))
            .unwrap()
            .price,
        Some(60)
    );
    assert_eq!(w.close(END), None);
}

// ---- timer, views, replay ----

#[test]
fn close_due_finds_only_due_auctions_and_respects_its_bound() {
    let engine = Engine::new(EngineConfig::default());
    let sink = RecordingSink::default();
    for id in 1..=100u64 {
        let mut r = rules(id, english(10));
        r.ends_at = UnixMicros(END + id);
        engine
            .create_auction(AuctionSpec::try_from(r).unwrap(), UnixMicros(0), &sink)
            .unwrap();
    }
    assert_eq!(engine.next_due(), Some(UnixMicros(END + 1)));
    assert_eq!(engine.close_due(UnixMicros(END + 10), 3, &sink).len(), 3);
    assert_eq!(
        engine
            .close_due(UnixMicros(END + 10), usize::MAX, &sink)
            .len(),
        7
    );
    assert_eq!(engine.next_due(), Some(UnixMicros(END + 11)));
    let listed = engine.list(Some(AuctionId(95)), 10, UnixMicros(END + 10));
    assert_eq!(
        listed.iter().map(|v| v.spec.id().0).collect::<Vec<_>>(),
        vec![96, 97, 98, 99, 100]
    );
    assert_eq!(
        engine.list(None, 2, UnixMicros(END + 10))[0].phase,
        Phase::Settled
    );
}

#[test]
fn replay_reproduces_the_state_hash_and_detects_a_changed_record() {
    let mut r = rules(1, english(10));
    r.soft_close = Some(SoftClose {
        window_us: 100,
        extension_us: 100,
        extensions_max: 3,
    });
    let mut w = World::new(r);
    accepted(w.proxy("a", 10, 80, START));
    accepted(w.bid("b", 50, START + 1));
    accepted(w.bid("b", 90, END - 5));
    w.close(END + 100);
    let events = w.sink.take();

    let fresh = Engine::new(EngineConfig::default());
    let mut replayer = Replayer::new(&fresh);
    for e in &events {
        replayer.apply(e).unwrap();
    }
    assert!(replayer.finish().missing_tail.is_empty());
    assert_eq!(fresh.state_hash(), w.engine.state_hash());

    // Tamper with one accepted price: replay refuses.
    let mut bad = events.clone();
    if let EventKind::BidAccepted { price, .. } = &mut bad[2].kind {
        *price += 1;
    }
    let fresh = Engine::new(EngineConfig::default());
    let mut replayer = Replayer::new(&fresh);
    let result: Result<(), _> = bad.iter().try_for_each(|e| replayer.apply(e));
    assert!(result.is_err(), "a changed record must stop replay");
}

#[test]
fn decisions_return_the_sinks_receipt_for_their_last_event() {
    let mut r = rules(1, english(10));
    r.soft_close = Some(SoftClose {
        window_us: 100,
        extension_us: 100,
        extensions_max: 1,
    });
    let engine = Engine::new(EngineConfig::default());
    // The recording sink's receipt is the number of events recorded so far.
    let sink = RecordingSink::default();
    let created = engine
        .create_auction(AuctionSpec::try_from(r).unwrap(), UnixMicros(0), &sink)
        .unwrap();
    assert_eq!(created, Receipt(1));
    let bid = |id, amount, at| {
        Bid::new(
            AuctionId(1),
            bidder("a"),
            BidId(id),
            amount,
            None,
            UnixMicros(at),
        )
        .unwrap()
    };
    let decision = engine.place_bid(&bid(1, 10, START), UnixMicros(START), &sink);
    assert!(matches!(decision.outcome, BidOutcome::Accepted(_)));
    assert_eq!(decision.receipt, Some(Receipt(2)));
    assert_eq!(decision.closed, None, "an ordinary bid closes nothing");
    // Accepted and extended: the receipt covers both events.
    let decision = engine.place_bid(&bid(2, 11, END - 1), UnixMicros(END - 1), &sink);
    assert_eq!(decision.receipt, Some(Receipt(4)));
    assert_eq!(decision.closed, None);
    // Rejections publish nothing and have no receipt.
    let decision = engine.place_bid(&bid(3, 5, END - 1), UnixMicros(END - 1), &sink);
    assert!(matches!(
        decision.outcome,
        BidOutcome::Rejected(Rejection::TooLow { .. })
    ));
    assert_eq!(decision.receipt, None);
    assert_eq!(decision.closed, None);
    let closed = engine.close_due(UnixMicros(END + 100), usize::MAX, &sink);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].receipt, Receipt(6));
    assert_eq!(closed[0].settlement.winner.unwrap().price, 11);
}

/// A bid that ends its auction (an English or sealed buy-now, a Dutch sale) says so in its
/// decision, with the settlement and the receipt covering the close: the driver announces
/// it from that, without asking the engine again. Nothing else closes from a bid.
#[test]
fn a_bid_that_ends_its_auction_carries_the_close_in_its_decision() {
    let mut english_buy_now = rules(1, english(10));
    english_buy_now.buy_now = Some(500);
    let mut sealed_buy_now = rules(2, AuctionKind::SealedFirstPrice { min_bid: 10 });
    sealed_buy_now.buy_now = Some(500);
    let dutch_sale = rules(3, dutch());
    for (r, amount, price, reason) in [
        (english_buy_now, 600, 500, CloseReason::BuyNow),
        (sealed_buy_now, 600, 500, CloseReason::BuyNow),
        (dutch_sale, 1_000, 100, CloseReason::Sold),
    ] {
        let id = r.id;
        let w = World::new(r);
        let ordinary = Bid::new(id, bidder("a"), BidId(1), 10, None, UnixMicros(START)).unwrap();
        if id != AuctionId(3) {
            let decision = w.engine.place_bid(&ordinary, UnixMicros(START), &w.sink);
            assert!(matches!(decision.outcome, BidOutcome::Accepted(_)));
            assert_eq!(decision.closed, None, "auction {id}");
        }
        let winning = Bid::new(id, bidder("b"), BidId(2), amount, None, UnixMicros(START)).unwrap();
        let decision = w.engine.place_bid(&winning, UnixMicros(START), &w.sink);
        assert!(
            matches!(decision.outcome, BidOutcome::Accepted(_)),
            "auction {id}"
        );
        let closed = decision.closed.expect("the bid closed its auction");
        assert_eq!(closed.id, id);
        assert_eq!(
            Some(closed.receipt),
            decision.receipt,
            "one receipt covers the bid and the close"
        );
        let winner = closed.settlement.winner.expect("the bid wins");
        assert_eq!(
            (winner.bidder, winner.bid, winner.price),
            (bidder("b"), BidId(2), price)
        );
        let view = w.engine.view(id, UnixMicros(START)).unwrap();
        assert_eq!(view.close_reason, Some(reason), "auction {id}");
        assert_eq!(view.settlement, Some(closed.settlement), "auction {id}");
        // A retry of the closing bid gets its original outcome but closes nothing again.
        let retry = w.engine.place_bid(&winning, UnixMicros(START), &w.sink);
        assert!(matches!(
            retry.outcome,
            BidOutcome::Rejected(Rejection::Duplicate { .. })
        ));
        assert_eq!(retry.closed, None, "auction {id}");
        assert!(
            w.engine
                .close_due(UnixMicros(END), usize::MAX, &w.sink)
                .is_empty()
        );
    }
}
