//! Model checks of the price-word and settlement-lock protocol (run under `--cfg loom`).

use std::sync::Arc;

use loom::thread;

use super::{Auction, CloseAttempt, Limits};
use crate::event::{EventKind, EventSink, RecordingSink};
use crate::types::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    IncrementTable, Price, Rejection, Topic, UnixMicros,
};

const END: u64 = 100;
const LIMITS: Limits = Limits {
    dedup_window_bids: 2,
    sealed_bidders_max: 4,
};

fn english() -> Arc<AuctionSpec> {
    let rules = AuctionRules {
        id: AuctionId(1),
        topic: Topic::new("loom").unwrap(),
        kind: AuctionKind::English {
            start_price: 10,
            increments: IncrementTable::default(),
        },
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(0),
        ends_at: UnixMicros(END),
        soft_close: None,
    };
    Arc::new(AuctionSpec::try_from(rules).unwrap())
}

fn bid(who: &str, id: u128, amount: Price, max: Option<Price>) -> Bid {
    Bid::new(
        AuctionId(1),
        BidderId::new(who).unwrap(),
        BidId(id),
        amount,
        max,
        UnixMicros(0),
    )
    .unwrap()
}

/// Two bidders race each other and the close; a watcher reads the price lock-free.
/// Nothing is accepted after the close, it settles once, the winner is the last
/// leader, every accepted outcome is in the log, and the watcher's prices never fall.
#[test]
fn bids_racing_the_close() {
    loom::model(|| {
        let (auction, created) = Auction::new(english(), UnixMicros(0));
        let auction = Arc::new(auction);
        let sink = Arc::new(RecordingSink::default());
        sink.publish(&[created]).unwrap();

        let bidders: Vec<_> = [bid("a", 1, 10, Some(30)), bid("b", 2, 11, None)]
            .into_iter()
            .map(|b| {
                let (auction, sink) = (Arc::clone(&auction), Arc::clone(&sink));
                thread::spawn(move || {
                    auction
                        .place_bid(&b, UnixMicros(END - 1), &*sink, LIMITS)
                        .outcome
                })
            })
            .collect();
        let closer = {
            let (auction, sink) = (Arc::clone(&auction), Arc::clone(&sink));
            thread::spawn(move || auction.close_if_due(UnixMicros(END), &*sink))
        };
        let watcher = {
            let auction = Arc::clone(&auction);
            thread::spawn(move || {
                let (first, first_closed) = auction.price();
                let (second, second_closed) = auction.price();
                assert!(second >= first, "a watcher saw the price fall");
                assert!(
                    !first_closed || second_closed,
                    "a watcher saw a close undone"
                );
            })
        };
        let outcomes: Vec<BidOutcome> = bidders.into_iter().map(|t| t.join().unwrap()).collect();
        let closed = closer.join().unwrap();
        watcher.join().unwrap();

        let events = sink.take();
        let close_at = events
            .iter()
            .position(|e| matches!(e.kind, EventKind::Closed { .. }))
            .expect("the close always happens: it is due");
        assert!(
            events[close_at..]
                .iter()
                .all(|e| !matches!(e.kind, EventKind::BidAccepted { .. })),
            "a bid was accepted after the close"
        );
        let settled: Vec<_> = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Settled(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(settled.len(), 1, "settles exactly once");
        let CloseAttempt::Closed(settlement, _) = closed else {
            panic!("the close was due: {closed:?}")
        };
        assert_eq!(settled[0], settlement);
        let last_leader = events[..close_at].iter().rev().find_map(|e| match &e.kind {
            EventKind::BidAccepted { leader, price, .. } => Some((*leader, *price)),
            _ => None,
        });
        assert_eq!(
            settlement.winner.map(|w| (Some(w.bidder), w.price)),
            last_leader,
            "the winner is the last leader at the last price"
        );
        for outcome in outcomes {
            match outcome {
                BidOutcome::Accepted(a) => assert!(
                    events.iter().any(|e| e.seq == a.seq
                        && matches!(e.kind, EventKind::BidAccepted { price, .. } if price == a.price)),
                    "an accepted outcome is missing from the log"
                ),
                BidOutcome::Rejected(r) => assert!(
                    matches!(r, Rejection::Closed | Rejection::TooLow { .. }),
                    "unexpected rejection {r:?}"
                ),
            }
        }
        assert!(auction.price().1, "closed in the word");
    });
}

/// Two copies of one bid race a higher bid. The copies never both count: either both
/// are too low (the higher bid came first), or one is accepted and the other gets
/// `Duplicate` with that very outcome — never `TooLow` after its twin was accepted,
/// which is what the lock-free path would say without the seen-bid filter.
#[test]
fn a_retry_racing_its_original_and_a_higher_bid() {
    loom::model(|| {
        let (auction, _) = Auction::new(english(), UnixMicros(0));
        let auction = Arc::new(auction);
        let sink = Arc::new(RecordingSink::default());
        let spawn = |b: Bid| {
            let (auction, sink) = (Arc::clone(&auction), Arc::clone(&sink));
            thread::spawn(move || auction.place_bid(&b, UnixMicros(1), &*sink, LIMITS).outcome)
        };
        let copy1 = spawn(bid("a", 7, 10, None));
        let copy2 = spawn(bid("a", 7, 10, None));
        let higher = spawn(bid("c", 9, 50, None));
        let (o1, o2) = (copy1.join().unwrap(), copy2.join().unwrap());
        assert!(matches!(higher.join().unwrap(), BidOutcome::Accepted(_)));
        match (o1, o2) {
            (
                BidOutcome::Rejected(Rejection::TooLow { .. }),
                BidOutcome::Rejected(Rejection::TooLow { .. }),
            ) => {}
            (BidOutcome::Accepted(a), BidOutcome::Rejected(Rejection::Duplicate { original }))
            | (BidOutcome::Rejected(Rejection::Duplicate { original }), BidOutcome::Accepted(a)) => {
                assert_eq!(a, original)
            }
            other => panic!("the copies of one bid got {other:?}"),
        }
        let accepted = sink
            .take()
            .iter()
            .filter(
                |e| matches!(&e.kind, EventKind::BidAccepted { bid, .. } if bid.id() == BidId(7)),
            )
            .count();
        assert!(accepted <= 1, "one bid counted twice");
    });
}
