//! Retention (issue 21 §2): settled auctions older than `settled_retention_us` are pruned by
//! a logged `Pruned` event to a compact result. Claims: replaying the log prunes exactly
//! what the live engine pruned (same state hash), from empty or from a snapshot cut
//! anywhere; pruning never touches an auction that has not settled; a pruned auction
//! refuses bids as `Closed`, cannot be re-created, and still answers with its result.
//! Results older than `pruned_retention_us` are forgotten by a logged `Forgotten` event,
//! which replays exactly too; a forgotten auction is unknown.

mod common;

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, CloseReason,
    CreateError, Engine, EngineConfig, Event, EventKind, IncrementTable, ManageError,
    PrunedAuction, RecordingSink, Rejection, Replayer, Topic, UnixMicros,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use common::{BatchSink, bidder, check_log_invariants, check_replay};

/// The retention of these tests, in µs.
const RETENTION_US: u64 = 1_000;
/// The retention of pruned results in these tests, in µs.
const RESULT_RETENTION_US: u64 = 3_000;
/// Auctions of the random market that take bids; they end at staggered times before
/// `END`, except the last.
const AUCTIONS: u64 = 12;
const END: u64 = 20_000;

fn config() -> EngineConfig {
    EngineConfig {
        shards: 4,
        settled_retention_us: RETENTION_US,
        pruned_retention_us: RESULT_RETENTION_US,
        ..EngineConfig::default()
    }
}

fn spec(i: u64) -> AuctionSpec {
    let kind = match i % 3 {
        0 => AuctionKind::English {
            start_price: 10,
            increments: IncrementTable::default(),
        },
        1 => AuctionKind::SealedSecondPrice { min_bid: 10 },
        _ => AuctionKind::Dutch {
            start_price: 2_000,
            floor_price: 10,
            step: 5,
            step_interval_us: 10,
        },
    };
    AuctionSpec::try_from(AuctionRules {
        id: AuctionId(i),
        topic: Topic::new(&format!("keep.lot-{i}")).unwrap(),
        kind,
        reserve: None,
        buy_now: i.is_multiple_of(3).then_some(3_000),
        starts_at: UnixMicros(0),
        ends_at: UnixMicros(END / 2 + i * 900),
        soft_close: None,
    })
    .unwrap()
}

/// A random market over time with the retention rule running beside the close timer, as
/// the node's closer runs it (in small batches). Returns the live engine and its log.
fn market(seed: u64, bids: usize) -> (Engine, Vec<Event>) {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    // `AUCTIONS` itself takes no bid and ends long after the market: always held whole.
    for i in 0..=AUCTIONS {
        engine
            .create_auction(spec(i), UnixMicros(0), &sink)
            .unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    for n in 0..bids {
        let now = UnixMicros((n as u64 * END) / bids as u64);
        let auction = AuctionId(rng.random_range(0..AUCTIONS));
        let price = engine.price(auction).and_then(|(p, _)| p).unwrap_or(10);
        let amount = price + rng.random_range(0..600);
        let bid = Bid::new(
            auction,
            bidder(rng.random_range(0..4)),
            BidId(n as u128 + 1),
            amount,
            None,
            now,
        )
        .unwrap();
        engine.place_bid(&bid, now, &sink);
        if rng.random_bool(0.01) {
            let _ = engine.cancel_auction(auction, now, &sink);
        }
        if n % 20 == 0 {
            engine.close_due(now, usize::MAX, &sink);
            engine.prune_due(now, 2, &sink);
            engine.forget_due(now, 1, &sink);
        }
    }
    (engine, sink.take())
}

fn replay(events: &[Event]) -> Engine {
    let engine = Engine::new(config());
    let mut replayer = Replayer::new(&engine);
    for e in events {
        replayer.apply(e).unwrap();
    }
    drop(replayer);
    engine
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Prune, then replay the log from empty: the same state hash; cut the log anywhere,
    /// snapshot the prefix (auctions and results), restore and feed it the whole log: the
    /// same state hash again.
    #[test]
    fn prunes_replay_exactly_from_empty_and_from_any_snapshot(
        seed in any::<u64>(),
        cut in 0.0..1.0f64,
    ) {
        let (live, events) = market(seed, 600);
        // Most markets also forget some results: those pruned early enough.
        prop_assert!(
            events.iter().any(|e| e.kind == EventKind::Pruned),
            "the market pruned nothing"
        );
        prop_assert!(!live.is_empty(), "the market pruned everything");
        check_log_invariants(&events);
        check_replay(&events, config(), live.state_hash());

        let cut = (events.len() as f64 * cut) as usize;
        let prefix = replay(&events[..cut]);
        let (states, pruned) = prefix.snapshot_with_pruned();
        let engine = Engine::new(config());
        for state in states {
            engine.restore(state).unwrap();
        }
        for result in pruned.clone() {
            engine.restore_pruned(result).unwrap();
        }
        prop_assert_eq!(engine.state_hash(), prefix.state_hash());
        prop_assert_eq!(engine.snapshot_with_pruned().1, pruned);
        let mut replayer = Replayer::after_snapshot(&engine);
        for e in &events {
            replayer.apply(e).unwrap();
        }
        prop_assert!(replayer.finish().missing_tail.is_empty());
        prop_assert_eq!(engine.state_hash(), live.state_hash());
    }

    /// Whatever the time, `prune_due` prunes only auctions settled at least the retention
    /// before it, and every one of those (given room in the batch).
    #[test]
    fn pruning_never_touches_an_unsettled_auction(seed in any::<u64>(), at in 0..3 * END) {
        let (live, events) = market(seed, 200);
        let engine = replay(&events);
        let now = UnixMicros(at);
        let views: Vec<_> = (0..AUCTIONS).filter_map(|i| engine.view(AuctionId(i), now)).collect();
        let settled_at = |id: AuctionId| {
            events
                .iter()
                .find(|e| e.auction == id && matches!(e.kind, EventKind::Settled(_)))
                .map(|e| e.at)
        };
        let pruned = engine.prune_due(now, usize::MAX, &RecordingSink::default());
        for view in &views {
            let id = view.spec.id();
            let due = settled_at(id).is_some_and(|t| t.0 + RETENTION_US <= at);
            prop_assert_eq!(pruned.iter().any(|p| p.id == id), due, "auction {}", id);
            prop_assert_eq!(engine.view(id, now).is_none(), due);
        }
        prop_assert_eq!(engine.len() + engine.pruned_len(), live.len() + live.pruned_len());
    }
}

fn sold(engine: &Engine, sink: &RecordingSink) -> Bid {
    // Auction 0 is English with buy-now 3,000: this bid closes it at 100.
    let bid = Bid::new(
        AuctionId(0),
        bidder(1),
        BidId(7),
        3_000,
        None,
        UnixMicros(100),
    )
    .unwrap();
    let decision = engine.place_bid(&bid, UnixMicros(100), sink);
    assert!(
        decision.closed.is_some(),
        "the buy-now bid closed the auction"
    );
    bid
}

/// A pruned auction: bids are refused `Closed` (a retry of its accepted bid too: its
/// idempotency memory went with it), it cannot be created again, a cancel finds it closed,
/// and its result is kept with the `Pruned` event's sequence number.
#[test]
fn a_pruned_auction_refuses_bids_as_closed_and_keeps_its_result() {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    engine
        .create_auction(spec(0), UnixMicros(0), &sink)
        .unwrap();
    let bid = sold(&engine, &sink);
    assert_eq!(
        engine.next_prune_due(),
        Some(UnixMicros(100 + RETENTION_US))
    );
    assert!(
        engine
            .prune_due(UnixMicros(100 + RETENTION_US - 1), 10, &sink)
            .is_empty()
    );
    let pruned = engine.prune_due(UnixMicros(100 + RETENTION_US), 10, &sink);
    let events = sink.take();
    let last = events.last().unwrap();
    assert_eq!((last.kind.clone(), last.seq), (EventKind::Pruned, 5));
    let expected = PrunedAuction {
        id: AuctionId(0),
        topic: Topic::new("keep.lot-0").unwrap(),
        reason: CloseReason::BuyNow,
        settlement: match &events[3].kind {
            EventKind::Settled(settlement) => *settlement,
            other => panic!("seq 4 is {other:?}, not the settlement"),
        },
        seq: 5,
        settled_at: UnixMicros(100),
        pruned_at: UnixMicros(100 + RETENTION_US),
    };
    assert_eq!(pruned, std::slice::from_ref(&expected));
    assert_eq!(engine.pruned(AuctionId(0)), Some(expected));
    assert_eq!((engine.len(), engine.pruned_len()), (0, 1));
    assert_eq!(engine.view(AuctionId(0), UnixMicros(2_000)), None);
    assert!(engine.list(None, 10, UnixMicros(2_000)).is_empty());
    assert_eq!(engine.auction_seq(AuctionId(0)), Some(5));
    assert_eq!(engine.next_prune_due(), None);

    let later = UnixMicros(2_000);
    for retry in [
        bid,
        Bid::new(AuctionId(0), bidder(2), BidId(8), 9_000, None, later).unwrap(),
    ] {
        let decision = engine.place_bid(&retry, later, &sink);
        assert_eq!(decision.outcome, BidOutcome::Rejected(Rejection::Closed));
    }
    assert_eq!(
        engine.create_auction(spec(0), later, &sink),
        Err(CreateError::AlreadyExists(AuctionId(0)))
    );
    assert_eq!(
        engine
            .cancel_auction(AuctionId(0), later, &sink)
            .map(|_| ()),
        Err(ManageError::AlreadyClosed(AuctionId(0)))
    );
    assert_eq!(
        engine.prune_auction(AuctionId(0), later, &sink),
        Err(ManageError::AlreadyClosed(AuctionId(0)))
    );
    assert!(
        sink.take().is_empty(),
        "nothing on a pruned auction reaches the log"
    );
}

/// An open auction is refused by `prune_auction` (and a replayed prune of one stops the
/// replay); retention 0 keeps settled auctions forever.
#[test]
fn an_open_auction_is_never_pruned_and_zero_keeps_forever() {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    engine
        .create_auction(spec(1), UnixMicros(0), &sink)
        .unwrap();
    assert_eq!(
        engine.prune_auction(AuctionId(1), UnixMicros(5), &sink),
        Err(ManageError::NotSettled(AuctionId(1)))
    );
    let forged = Event {
        auction: AuctionId(1),
        seq: 2,
        at: UnixMicros(5),
        kind: EventKind::Pruned,
    };
    let fresh = Engine::new(config());
    let mut replayer = Replayer::new(&fresh);
    replayer.apply(&sink.take()[0]).unwrap();
    assert!(
        replayer.apply(&forged).is_err(),
        "a logged prune of an open auction"
    );

    let forever = Engine::new(EngineConfig {
        settled_retention_us: 0,
        ..config()
    });
    forever
        .create_auction(spec(0), UnixMicros(0), &sink)
        .unwrap();
    sold(&forever, &sink);
    assert_eq!(forever.next_prune_due(), None);
    assert!(
        forever
            .prune_due(UnixMicros(u64::MAX), 10, &sink)
            .is_empty()
    );
    assert_eq!(forever.len(), 1);
}

/// `prune_due` takes at most `max` per call; a refusing sink leaves every due auction in
/// place, to be pruned once the sink takes events again.
#[test]
fn pruning_is_batched_and_backpressure_keeps_auctions() {
    let engine = Engine::new(config());
    let sink = BatchSink::default();
    for i in 0..AUCTIONS {
        engine
            .create_auction(spec(i), UnixMicros(0), &sink)
            .unwrap();
        engine
            .cancel_auction(AuctionId(i), UnixMicros(10), &sink)
            .unwrap();
    }
    let now = UnixMicros(10 + RETENTION_US);
    sink.set_refuse(true);
    assert!(engine.prune_due(now, usize::MAX, &sink).is_empty());
    assert_eq!(engine.len(), AUCTIONS as usize);
    assert_eq!(engine.next_prune_due(), Some(now));
    sink.set_refuse(false);
    assert_eq!(engine.prune_due(now, 5, &sink).len(), 5);
    assert_eq!(engine.prune_due(now, 5, &sink).len(), 5);
    assert_eq!(engine.prune_due(now, 5, &sink).len(), 2);
    assert_eq!((engine.len(), engine.pruned_len()), (0, AUCTIONS as usize));
    // A close timer entry left by the cancels finds its auction gone: nothing happens.
    assert!(
        engine
            .close_due(UnixMicros(3 * END), usize::MAX, &sink)
            .is_empty()
    );
}

/// What a pruned auction costs: the result's inline size (reported in issue 21), plus its
/// topic's text in a shared allocation and the map's slot.
#[test]
fn a_pruned_result_is_compact() {
    let inline = std::mem::size_of::<PrunedAuction>();
    println!("PrunedAuction: {inline} bytes inline");
    assert!(inline <= 160, "PrunedAuction grew to {inline} bytes");
}

/// A pruned result is kept for `pruned_retention_us`, then forgotten by a `Forgotten` event
/// (the auction's last: the `Pruned` one's seq + 1), not before; a sink that refuses keeps
/// it for the next round. A forgotten auction is unknown (no result, no seq, bids
/// `UnknownAuction`), its id may be created again, and a replay of the log forgets it too.
#[test]
fn a_pruned_result_is_forgotten_after_its_retention_by_a_logged_event() {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    engine
        .create_auction(spec(0), UnixMicros(0), &sink)
        .unwrap();
    sold(&engine, &sink);
    let pruned_at = UnixMicros(100 + RETENTION_US);
    assert_eq!(engine.prune_due(pruned_at, 10, &sink).len(), 1);
    let due = UnixMicros(pruned_at.0 + RESULT_RETENTION_US);
    assert_eq!(engine.next_forget_due(), Some(due));
    assert_eq!(engine.forget_due(UnixMicros(due.0 - 1), 10, &sink), 0);
    let refusing = BatchSink::default();
    refusing.set_refuse(true);
    assert_eq!(engine.forget_due(due, 10, &refusing), 0, "refused: kept");
    assert_eq!(engine.next_forget_due(), Some(due));
    assert_eq!(engine.forget_due(due, 10, &sink), 1);
    let events = sink.take();
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.clone(), last.seq, last.at),
        (EventKind::Forgotten, 6, due)
    );
    check_log_invariants(&events);
    assert_eq!((engine.len(), engine.pruned_len()), (0, 0));
    assert_eq!(engine.pruned(AuctionId(0)), None);
    assert_eq!(engine.auction_seq(AuctionId(0)), None);
    assert_eq!(engine.next_forget_due(), None);
    assert_eq!(
        engine.forget_auction(AuctionId(0), due, &sink),
        Err(ManageError::UnknownAuction(AuctionId(0)))
    );
    let later = UnixMicros(due.0 + 1);
    let bid = Bid::new(AuctionId(0), bidder(2), BidId(8), 9_000, None, later).unwrap();
    assert_eq!(
        engine.place_bid(&bid, later, &sink).outcome,
        BidOutcome::Rejected(Rejection::UnknownAuction)
    );
    let replayed = replay(&events);
    assert_eq!(replayed.state_hash(), engine.state_hash());
    assert_eq!((replayed.len(), replayed.pruned_len()), (0, 0));
    assert!(engine.create_auction(spec(0), later, &sink).is_ok());
}

/// Only a pruned auction's result can be forgotten: a held auction is refused, and a
/// `forget_due` with the results' retention at 0 forgets nothing.
#[test]
fn only_pruned_results_are_forgotten_and_zero_keeps_them_forever() {
    let engine = Engine::new(EngineConfig {
        pruned_retention_us: 0,
        ..config()
    });
    let sink = RecordingSink::default();
    engine
        .create_auction(spec(0), UnixMicros(0), &sink)
        .unwrap();
    sold(&engine, &sink);
    assert_eq!(
        engine.forget_auction(AuctionId(0), UnixMicros(200), &sink),
        Err(ManageError::NotPruned(AuctionId(0)))
    );
    assert_eq!(
        engine
            .prune_due(UnixMicros(100 + RETENTION_US), 10, &sink)
            .len(),
        1
    );
    assert_eq!(engine.next_forget_due(), None);
    assert_eq!(engine.forget_due(UnixMicros(u64::MAX), 10, &sink), 0);
    assert_eq!(engine.pruned_len(), 1);
}

/// A replayed prune removes its auction from the registry at once (the registry is no
/// longer copied on change, so there is nothing to batch): after each `Pruned` event the
/// engine lists exactly what the live one did at that point, and a bid for the auction is
/// `Closed`.
#[test]
fn a_replayed_prune_leaves_the_registry_at_once() {
    const AUCTIONS: u64 = 1_100;
    let config = EngineConfig {
        shards: 1,
        ..config()
    };
    let live = Engine::new(config);
    let sink = RecordingSink::default();
    for i in 0..AUCTIONS {
        live.create_auction(spec(i), UnixMicros(0), &sink).unwrap();
        live.cancel_auction(AuctionId(i), UnixMicros(1), &sink)
            .unwrap();
    }
    assert_eq!(
        live.prune_due(UnixMicros(1 + RETENTION_US), usize::MAX, &sink)
            .len() as u64,
        AUCTIONS
    );
    let engine = Engine::new(config);
    let mut replayer = Replayer::new(&engine);
    let mut pruned = 0;
    for event in sink.take() {
        replayer.apply(&event).unwrap();
        if event.kind == EventKind::Pruned {
            pruned += 1;
            assert_eq!(
                engine.len() as u64,
                AUCTIONS - pruned,
                "listed after its prune"
            );
            assert_eq!(engine.pruned_len() as u64, pruned);
            let bid =
                Bid::new(event.auction, bidder(1), BidId(1), 50, None, UnixMicros(5)).unwrap();
            assert_eq!(
                engine.place_bid(&bid, UnixMicros(5), &sink).outcome,
                BidOutcome::Rejected(Rejection::Closed),
                "a pruned auction refuses bids as Closed"
            );
        }
    }
    assert!(replayer.finish().missing_tail.is_empty());
    assert_eq!((engine.len(), engine.pruned_len()), (0, live.pruned_len()));
    assert_eq!(engine.state_hash(), live.state_hash());
}
