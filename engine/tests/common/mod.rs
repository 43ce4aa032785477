//! Shared helpers of the engine's model and stress tests: names, a sink that keeps each
//! decision's events as one batch (and can be told to refuse), and checks over an event log
//! that hold for every auction whatever the traffic (PRODUCT.md §3, invariants 1, 2, 5, 6).

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]
// Helpers shared by several test crates (each test file is one): `pub` is their interface.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use gavel_engine::{
    AuctionId, AuctionKind, Backpressure, BidderId, CloseReason, Engine, EngineConfig, Event,
    EventKind, EventSink, Receipt, Replayer, Settlement,
};

/// `retry_after_us` the refusing [`BatchSink`] suggests; checked in `Overloaded` outcomes.
pub const RETRY_AFTER_US: u64 = 77;

/// Bidder `b<index>`.
pub fn bidder(index: usize) -> BidderId {
    // Invariant: `b` followed by decimal digits is a valid bidder id of at most 21 bytes.
    BidderId::new(&format!("b{index}")).expect("b<digits> is a valid bidder id")
}

/// A sink that records every `publish` call as one batch, in call order, and refuses
/// (as a full WAL queue would) while `refuse` is set.
#[derive(Default)]
pub struct BatchSink {
    batches: Mutex<Vec<Vec<Event>>>,
    refuse: AtomicBool,
}

impl BatchSink {
    /// Makes the sink refuse (or accept again) from now on.
    pub fn set_refuse(&self, refuse: bool) {
        // Ordering: Relaxed; only single-threaded tests toggle it.
        self.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Batches recorded so far.
    pub fn batch_count(&self) -> usize {
        self.batches.lock().expect("batch sink lock poisoned").len()
    }

    /// A copy of the batches from index `from` on.
    pub fn batches_from(&self, from: usize) -> Vec<Vec<Event>> {
        self.batches.lock().expect("batch sink lock poisoned")[from..].to_vec()
    }

    /// Every batch, in order.
    pub fn batches(&self) -> Vec<Vec<Event>> {
        self.batches_from(0)
    }
}

impl EventSink for BatchSink {
    /// The receipt is the number of batches taken so far.
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        // Ordering: Relaxed; see `set_refuse`.
        if self.refuse.load(Ordering::Relaxed) {
            return Err(Backpressure {
                retry_after_us: RETRY_AFTER_US,
            });
        }
        assert!(!events.is_empty(), "the engine published an empty batch");
        let mut batches = self.batches.lock().expect("batch sink lock poisoned");
        batches.push(events.to_vec());
        Ok(Receipt(batches.len() as u64))
    }
}

/// Groups a log by auction, keeping log order within each auction.
pub fn by_auction(events: &[Event]) -> BTreeMap<AuctionId, Vec<&Event>> {
    let mut map: BTreeMap<AuctionId, Vec<&Event>> = BTreeMap::new();
    for event in events {
        map.entry(event.auction).or_default().push(event);
    }
    map
}

/// Checks the invariants every auction's log satisfies, whatever the traffic, and returns
/// each auction's settlement (if it settled):
/// - sequence numbers are 1, 2, 3, … in log order, and the first event is `Created`;
/// - an `Extended` follows a `BidAccepted`, a `Settled` follows a `Closed`;
/// - nothing follows the `Settled` but a `Pruned`, nothing the `Pruned` but a `Forgotten`,
///   and nothing the `Forgotten`; there is at most one `Closed` and one `Settled`;
/// - English accepted prices strictly increase.
pub fn check_log_invariants(events: &[Event]) -> BTreeMap<AuctionId, Settlement> {
    let mut settlements = BTreeMap::new();
    for (auction, log) in by_auction(events) {
        let english = match &log[0].kind {
            EventKind::Created(spec) => matches!(spec.rules().kind, AuctionKind::English { .. }),
            other => panic!("auction {auction}: first event is {other:?}, not Created"),
        };
        let mut last_price = None;
        for (i, event) in log.iter().enumerate() {
            assert_eq!(
                event.seq,
                i as u64 + 1,
                "auction {auction}: sequence gap or reorder at log position {i}"
            );
            let previous = i.checked_sub(1).map(|p| &log[p].kind);
            match &event.kind {
                EventKind::Created(_) => assert_eq!(i, 0, "auction {auction}: second Created"),
                EventKind::BidAccepted { price, .. } => {
                    if english {
                        assert!(
                            last_price < Some(*price),
                            "auction {auction}: English price {price} at seq {} does not \
                             exceed the previous accepted price {last_price:?}",
                            event.seq
                        );
                    }
                    last_price = Some(*price);
                }
                EventKind::Extended { .. } => assert!(
                    matches!(previous, Some(EventKind::BidAccepted { .. })),
                    "auction {auction}: Extended at seq {} not right after a bid",
                    event.seq
                ),
                EventKind::Closed { reason } => {
                    let after_bid = matches!(previous, Some(EventKind::BidAccepted { .. }));
                    match reason {
                        CloseReason::BuyNow | CloseReason::Sold => assert!(
                            after_bid,
                            "auction {auction}: {reason:?} close not right after a bid"
                        ),
                        CloseReason::EndReached | CloseReason::Cancelled => {}
                    }
                }
                EventKind::Settled(settlement) => {
                    assert!(
                        matches!(previous, Some(EventKind::Closed { .. })),
                        "auction {auction}: Settled at seq {} not right after Closed",
                        event.seq
                    );
                    let after = log.get(i + 1).map(|e| &e.kind);
                    assert!(
                        matches!(after, None | Some(EventKind::Pruned)),
                        "auction {auction}: events after the settlement other than its prune"
                    );
                    settlements.insert(auction, *settlement);
                }
                EventKind::Pruned => {
                    assert!(
                        matches!(previous, Some(EventKind::Settled(_))),
                        "auction {auction}: Pruned at seq {} not right after Settled",
                        event.seq
                    );
                    let after = log.get(i + 1).map(|e| &e.kind);
                    assert!(
                        matches!(after, None | Some(EventKind::Forgotten)),
                        "auction {auction}: events after the prune other than its forget"
                    );
                }
                EventKind::Forgotten => {
                    assert!(
                        matches!(previous, Some(EventKind::Pruned)),
                        "auction {auction}: Forgotten at seq {} not right after Pruned",
                        event.seq
                    );
                    assert_eq!(
                        i,
                        log.len() - 1,
                        "auction {auction}: events after the forget"
                    );
                }
            }
        }
        let closes = log
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Closed { .. }))
            .count();
        assert!(closes <= 1, "auction {auction}: closed {closes} times");
        if closes == 1 {
            assert!(
                settlements.contains_key(&auction),
                "auction {auction}: closed but never settled"
            );
        }
    }
    settlements
}

/// Replays `events` into a fresh engine with `config`; asserts the replay completes with no
/// missing tail and reproduces `expected_hash`.
pub fn check_replay(events: &[Event], config: EngineConfig, expected_hash: [u8; 32]) {
    let fresh = Engine::new(config);
    let mut replayer = Replayer::new(&fresh);
    for (i, event) in events.iter().enumerate() {
        if let Err(error) = replayer.apply(event) {
            panic!("replay failed at log position {i}: {error}");
        }
    }
    let summary = replayer.finish();
    assert_eq!(summary.events, events.len() as u64);
    assert!(
        summary.missing_tail.is_empty(),
        "a complete log left a missing tail: {:?}",
        summary.missing_tail
    );
    assert_eq!(
        fresh.state_hash(),
        expected_hash,
        "replay did not reproduce the state hash"
    );
}
