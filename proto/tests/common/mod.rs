//! Proptest strategies shared by the integration tests: random valid engine values.

#![allow(dead_code)]
// Each test binary uses a different subset.
// Helpers shared by several test crates (each test file is one): `pub` is their interface.
#![allow(unreachable_pub)]

use std::sync::Arc;

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidderId, CloseReason, Event,
    EventKind, IncrementBand, IncrementTable, PRICE_MAX, Price, Settlement, SoftClose, Topic,
    UnixMicros, Winner,
};
use proptest::prelude::*;

pub fn bidder() -> impl Strategy<Value = BidderId> {
    "[A-Za-z0-9._-]{1,32}".prop_map(|s| BidderId::new(&s).expect("regex yields valid ids"))
}

pub fn topic() -> impl Strategy<Value = Topic> {
    proptest::collection::vec("[A-Za-z0-9_-]{1,12}", 1..=16)
        .prop_map(|segments| Topic::new(&segments.join(".")).expect("regex yields valid topics"))
}

/// A price anywhere in the engine's range, biased towards both ends.
pub fn price() -> impl Strategy<Value = Price> {
    prop_oneof![1..=1_000u64, 1..=PRICE_MAX, Just(PRICE_MAX)]
}

pub fn bid(auction: AuctionId) -> impl Strategy<Value = Bid> {
    (
        bidder(),
        any::<u128>(),
        price(),
        prop::option::of(0..=1_000_000u64),
        any::<u64>(),
    )
        .prop_map(move |(bidder, id, amount, raise, sent)| {
            let max = raise.map(|r| amount.saturating_add(r).min(PRICE_MAX));
            Bid::new(auction, bidder, BidId(id), amount, max, UnixMicros(sent))
                .expect("amount and max are in range and ordered")
        })
}

fn increment_table() -> impl Strategy<Value = IncrementTable> {
    (
        proptest::collection::btree_set(1..=PRICE_MAX, 0..=IncrementTable::BANDS_MAX),
        proptest::collection::vec(1..=10_000u64, IncrementTable::BANDS_MAX),
        1..=10_000u64,
    )
        .prop_map(|(belows, increments, above)| {
            let bands = belows
                .into_iter()
                .zip(increments)
                .map(|(below, increment)| IncrementBand { below, increment })
                .collect();
            IncrementTable::new(bands, above).expect("ascending non-zero bands")
        })
}

fn kind() -> impl Strategy<Value = AuctionKind> {
    prop_oneof![
        (price(), increment_table()).prop_map(|(start_price, increments)| {
            AuctionKind::English {
                start_price,
                increments,
            }
        }),
        price().prop_map(|min_bid| AuctionKind::SealedFirstPrice { min_bid }),
        price().prop_map(|min_bid| AuctionKind::SealedSecondPrice { min_bid }),
        (1..PRICE_MAX, 1..=PRICE_MAX, 1..=PRICE_MAX, 1..=u64::MAX).prop_map(
            |(floor_price, span, step, step_interval_us)| AuctionKind::Dutch {
                start_price: floor_price.saturating_add(span).min(PRICE_MAX),
                floor_price,
                step,
                step_interval_us,
            }
        ),
    ]
}

/// Valid auction rules of every kind, with and without reserve, buy-now and soft close.
pub fn spec() -> impl Strategy<Value = AuctionSpec> {
    (
        any::<u64>(),
        topic(),
        kind(),
        prop::option::of(price()),
        prop::option::of(0..=1_000_000u64),
        0..=u64::MAX / 2,
        1..=u64::MAX / 4,
        prop::option::of((1..=u64::MAX / 4, 1..=1_000_000u64, 0..=10_000u32)),
    )
        .prop_filter_map(
            "rules the engine refuses",
            |(id, topic, kind, reserve, buy_now_raise, starts_at, duration, soft_close)| {
                let lowest = match &kind {
                    AuctionKind::English { start_price, .. } => *start_price,
                    AuctionKind::SealedFirstPrice { min_bid }
                    | AuctionKind::SealedSecondPrice { min_bid } => *min_bid,
                    AuctionKind::Dutch { floor_price, .. } => *floor_price,
                };
                let dutch = matches!(kind, AuctionKind::Dutch { .. });
                let reserve = if dutch {
                    reserve.map(|r| r.min(lowest))
                } else {
                    reserve
                };
                let buy_now = buy_now_raise.filter(|_| !dutch).map(|raise| {
                    lowest
                        .max(reserve.unwrap_or(0))
                        .saturating_add(raise)
                        .min(PRICE_MAX)
                });
                let rules = AuctionRules {
                    id: AuctionId(id),
                    topic,
                    kind,
                    reserve,
                    buy_now,
                    starts_at: UnixMicros(starts_at),
                    ends_at: UnixMicros(starts_at + duration),
                    soft_close: soft_close.map(|(window_us, extension_us, extensions_max)| {
                        SoftClose {
                            window_us,
                            extension_us,
                            extensions_max,
                        }
                    }),
                };
                AuctionSpec::try_from(rules).ok()
            },
        )
}

pub fn winner() -> impl Strategy<Value = Winner> {
    (bidder(), any::<u128>(), price()).prop_map(|(bidder, bid, price)| Winner {
        bidder,
        bid: BidId(bid),
        price,
    })
}

pub fn close_reason() -> impl Strategy<Value = CloseReason> {
    prop_oneof![
        Just(CloseReason::EndReached),
        Just(CloseReason::Cancelled),
        Just(CloseReason::BuyNow),
        Just(CloseReason::Sold),
    ]
}

/// Any event the engine could log: every kind, with the invariants the engine keeps (a
/// creation's spec and a bid are for the event's auction; sequence numbers start at 1).
pub fn event() -> impl Strategy<Value = Event> {
    let auction = any::<u64>().prop_map(AuctionId);
    let head = (auction, 1..=u64::MAX, any::<u64>().prop_map(UnixMicros));
    prop_oneof![
        (spec(), 1..=u64::MAX, any::<u64>()).prop_map(|(spec, seq, at)| Event {
            auction: spec.id(),
            seq,
            at: UnixMicros(at),
            kind: EventKind::Created(Arc::new(spec)),
        }),
        head.clone().prop_flat_map(|(auction, seq, at)| {
            (
                bid(auction),
                price(),
                prop::option::of(bidder()),
                any::<u64>(),
            )
                .prop_map(move |(bid, price, leader, ends_at)| Event {
                    auction,
                    seq,
                    at,
                    kind: EventKind::BidAccepted {
                        bid,
                        price,
                        leader,
                        ends_at: UnixMicros(ends_at),
                    },
                })
        }),
        (head.clone(), any::<u64>(), 1..=u32::MAX).prop_map(
            |((auction, seq, at), ends_at, extensions)| Event {
                auction,
                seq,
                at,
                kind: EventKind::Extended {
                    ends_at: UnixMicros(ends_at),
                    extensions,
                },
            }
        ),
        (head.clone(), close_reason()).prop_map(|((auction, seq, at), reason)| Event {
            auction,
            seq,
            at,
            kind: EventKind::Closed { reason },
        }),
        (head.clone(), prop::option::of(winner())).prop_map(|((auction, seq, at), winner)| {
            Event {
                auction,
                seq,
                at,
                kind: EventKind::Settled(Settlement { winner }),
            }
        }),
        head.prop_map(|(auction, seq, at)| Event {
            auction,
            seq,
            at,
            kind: EventKind::Pruned,
        }),
    ]
}
