//! Snapshots: an engine restored from another's states, then fed the log, reaches the same
//! state hash — wherever the snapshot was cut, and while bids were being decided.

use std::sync::Arc;
use std::thread;

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, AuctionState, Bid, BidId, BidderId,
    BookState, DECISION_EVENTS_MAX, Engine, EngineConfig, Event, IncrementTable, RecordingSink,
    Replayer, RestoreError, SealedBidState, SoftClose, Topic, UnixMicros,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const END: u64 = 10_000;

fn kind(i: u64) -> AuctionKind {
    match i % 4 {
        0 => AuctionKind::English {
            start_price: 10,
            increments: IncrementTable::default(),
        },
        1 => AuctionKind::SealedFirstPrice { min_bid: 10 },
        2 => AuctionKind::SealedSecondPrice { min_bid: 10 },
        _ => AuctionKind::Dutch {
            start_price: 2_000,
            floor_price: 10,
            step: 5,
            step_interval_us: 10,
        },
    }
}

fn spec(i: u64) -> AuctionSpec {
    AuctionSpec::try_from(AuctionRules {
        id: AuctionId(i),
        topic: Topic::new(&format!("snap.lot-{i}")).unwrap(),
        kind: kind(i),
        reserve: (i.is_multiple_of(3) && i % 4 != 3).then_some(50),
        buy_now: (i.is_multiple_of(5) && i % 4 != 3).then_some(5_000),
        starts_at: UnixMicros(0),
        ends_at: UnixMicros(END - i * 10),
        soft_close: Some(SoftClose {
            window_us: 300,
            extension_us: 100,
            extensions_max: 3,
        }),
    })
    .unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        dedup_window_bids: 8,
        ..EngineConfig::default()
    }
}

/// A random market: 8 auctions, `bids` bids (with retries) over time, then the close.
/// Returns the live engine and its log.
fn market(seed: u64, bids: usize) -> (Engine, Vec<Event>) {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    for i in 0..8 {
        engine
            .create_auction(spec(i), UnixMicros(0), &sink)
            .unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sent: Vec<Bid> = Vec::new();
    for n in 0..bids {
        let now = UnixMicros((n as u64 * END) / bids as u64);
        let bid = match sent.len() {
            len if len > 0 && rng.random_bool(0.1) => sent[rng.random_range(0..len)],
            _ => {
                let auction = AuctionId(rng.random_range(0..8));
                let bidder = BidderId::new(&format!("b{}", rng.random_range(0..5))).unwrap();
                let price = engine.price(auction).and_then(|(p, _)| p).unwrap_or(10);
                let amount = price + rng.random_range(0..40);
                let max = (auction.0.is_multiple_of(4) && rng.random_bool(0.3))
                    .then(|| amount + rng.random_range(0..200));
                Bid::new(auction, bidder, BidId(n as u128 + 1), amount, max, now).unwrap()
            }
        };
        sent.push(bid);
        engine.place_bid(&bid, now, &sink);
        if n % 50 == 0 {
            engine.close_due(now, usize::MAX, &sink);
        }
    }
    engine.close_due(UnixMicros(END * 2), usize::MAX, &sink);
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

fn restored(states: Vec<AuctionState>) -> Engine {
    let engine = Engine::new(config());
    for state in states {
        engine.restore(state).unwrap();
    }
    engine
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Cut the log anywhere, snapshot the engine replayed up to the cut, restore it, and
    /// feed it the whole log: the result equals the live engine.
    #[test]
    fn restore_then_replay_reaches_the_live_state(seed in any::<u64>(), cut in 0.0..1.0f64) {
        let (live, events) = market(seed, 400);
        let cut = (events.len() as f64 * cut) as usize;
        let prefix = replay(&events[..cut]);
        let states = prefix.snapshot();
        let engine = restored(states.clone());
        prop_assert_eq!(engine.state_hash(), prefix.state_hash());
        prop_assert_eq!(engine.snapshot(), states, "restore then snapshot round-trips");

        let mut replayer = Replayer::after_snapshot(&engine);
        for e in &events {
            replayer.apply(e).unwrap();
        }
        let summary = replayer.finish();
        prop_assert!(summary.missing_tail.is_empty());
        // A cut inside a decision: the prefix's replay already applied its derived events.
        prop_assert!(summary.skipped <= (cut + DECISION_EVENTS_MAX - 1) as u64);
        prop_assert_eq!(engine.state_hash(), live.state_hash());
    }
}

/// A snapshot taken while four threads bid is consistent per auction: restoring it and
/// replaying the whole log reaches the final live state.
#[test]
fn a_snapshot_of_a_live_engine_restores_and_catches_up() {
    for round in 0..10u64 {
        let engine = Arc::new(Engine::new(config()));
        let sink = Arc::new(RecordingSink::default());
        for i in 0..8 {
            engine
                .create_auction(spec(i), UnixMicros(0), &*sink)
                .unwrap();
        }
        let snapshot = thread::scope(|scope| {
            for t in 0..4u64 {
                let (engine, sink) = (Arc::clone(&engine), Arc::clone(&sink));
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(round * 10 + t);
                    for n in 0..2_000u64 {
                        let auction = AuctionId(rng.random_range(0..8));
                        let bidder = BidderId::new(&format!("t{t}")).unwrap();
                        let price = engine.price(auction).and_then(|(p, _)| p).unwrap_or(10);
                        let amount = price + rng.random_range(0..30);
                        let now = UnixMicros(n * 4);
                        let bid = Bid::new(
                            auction,
                            bidder,
                            BidId(u128::from(t << 32 | n)),
                            amount,
                            None,
                            now,
                        )
                        .unwrap();
                        engine.place_bid(&bid, now, &*sink);
                    }
                });
            }
            // Meanwhile, a snapshot.
            thread::yield_now();
            engine.snapshot()
        });
        let events = sink.take();
        let rebuilt = restored(snapshot);
        let mut replayer = Replayer::after_snapshot(&rebuilt);
        for e in &events {
            replayer.apply(e).unwrap();
        }
        assert!(replayer.finish().missing_tail.is_empty());
        assert_eq!(rebuilt.state_hash(), engine.state_hash(), "round {round}");
    }
}

#[test]
fn restore_refuses_duplicates_and_inconsistent_states() {
    let (live, _) = market(7, 200);
    let states = live.snapshot();
    let engine = restored(states.clone());
    assert_eq!(
        engine.restore(states[0].clone()),
        Err(RestoreError::AlreadyExists(AuctionId(0)))
    );

    let fresh = Engine::new(config());
    // A sealed book on an English auction.
    let mut wrong = states[0].clone();
    wrong.book = BookState::Sealed { bids: vec![] };
    assert!(matches!(
        fresh.restore(wrong),
        Err(RestoreError::Inconsistent { .. })
    ));
    // A bidder twice in a sealed book.
    let mut twice = states[1].clone();
    let b = SealedBidState {
        bidder: BidderId::new("x").unwrap(),
        bid: BidId(1),
        amount: 10,
        seq: 2,
    };
    twice.book = BookState::Sealed { bids: vec![b, b] };
    assert!(matches!(
        fresh.restore(twice),
        Err(RestoreError::Inconsistent { .. })
    ));
    // More extensions than the rules allow.
    let mut extended = states[2].clone();
    extended.extensions = 4;
    assert!(matches!(
        fresh.restore(extended),
        Err(RestoreError::Inconsistent { .. })
    ));
    // An end that the extensions do not explain.
    let mut moved = states[4].clone();
    moved.ends_at = UnixMicros(moved.ends_at.0 + 1);
    assert!(matches!(
        fresh.restore(moved),
        Err(RestoreError::Inconsistent { .. })
    ));
    // An English price without a leader.
    let mut leaderless = states[0].clone();
    leaderless.book = BookState::English {
        price: 10,
        leader: None,
    };
    assert!(matches!(
        fresh.restore(leaderless),
        Err(RestoreError::Inconsistent { .. })
    ));
    // Sequence number 0.
    let mut zero = states[3].clone();
    zero.seq = 0;
    assert!(matches!(
        fresh.restore(zero),
        Err(RestoreError::Inconsistent { .. })
    ));
    assert!(fresh.is_empty(), "nothing was added by refused restores");
}

#[test]
fn a_smaller_window_keeps_the_newest_remembered_bids() {
    let (live, _) = market(11, 400);
    let state = live
        .snapshot()
        .into_iter()
        .max_by_key(|s| s.recent.len())
        .unwrap();
    assert_eq!(state.recent.len(), 8, "the market fills the window of 8");
    let small = Engine::new(EngineConfig {
        dedup_window_bids: 3,
        ..config()
    });
    let id = state.spec.id();
    small.restore(state.clone()).unwrap();
    let kept = small.auction_state(id).unwrap().recent;
    assert_eq!(kept, state.recent[5..].to_vec());
}

/// A snapshot includes every auction whose `Created` event was published before it began,
/// even while that creation is still between publishing and listing the auction.
#[test]
fn a_snapshot_waits_for_a_creation_that_has_published() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use gavel_engine::{Backpressure, EventSink, Receipt};

    /// Holds the first publish until released, after saying it has been entered.
    #[derive(Default)]
    struct Pausing {
        entered: AtomicBool,
        release: AtomicBool,
    }
    impl EventSink for Pausing {
        fn publish(&self, _: &[Event]) -> Result<Receipt, Backpressure> {
            self.entered.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            Ok(Receipt(1))
        }
    }

    let engine = Engine::new(config());
    let sink = Pausing::default();
    thread::scope(|scope| {
        let creator = scope.spawn(|| engine.create_auction(spec(1), UnixMicros(0), &sink));
        while !sink.entered.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        // The `Created` event is out; the auction is not listed yet.
        let snapshotter = scope.spawn(|| engine.snapshot());
        thread::sleep(Duration::from_millis(50));
        sink.release.store(true, Ordering::SeqCst);
        creator.join().unwrap().unwrap();
        let snapshot = snapshotter.join().unwrap();
        assert_eq!(
            snapshot.iter().map(|s| s.spec.id()).collect::<Vec<_>>(),
            vec![AuctionId(1)],
            "the snapshot missed a creation whose event was already published"
        );
    });
}
