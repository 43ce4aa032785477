//! Random auctions and bids for a run, and their conversion into the engine's types.

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
    IncrementBand, IncrementTable, Rejection, SoftClose, Topic, UnixMicros,
};

use crate::model::{Acc, Answer, INCREMENT_ABOVE, INCREMENTS, Kind, Soft, Spec};
use crate::rng::Rng;

/// Bidders of a run: `b1` ..= `b5`.
pub(crate) const BIDDERS: u32 = 5;

/// A random auction starting around `now`.
pub(crate) fn random_spec(rng: &mut Rng, now: u64) -> Spec {
    let kind = match rng.below(4) {
        0 => Kind::English {
            start: rng.range(1, 200),
        },
        1 => Kind::SealedFirst {
            min: rng.range(1, 200),
        },
        2 => Kind::SealedSecond {
            min: rng.range(1, 200),
        },
        _ => Kind::Dutch {
            start: rng.range(500, 2_000),
            floor: rng.range(50, 400),
            step: rng.range(1, 50),
            interval_us: rng.range(100_000, 2_000_000),
        },
    };
    let lowest = match kind {
        Kind::English { start } => start,
        Kind::SealedFirst { min } | Kind::SealedSecond { min } => min,
        Kind::Dutch { floor, .. } => floor,
    };
    let dutch = matches!(kind, Kind::Dutch { .. });
    let reserve = (!dutch && rng.chance(40)).then(|| lowest + rng.range(0, 300));
    let buy_now = (!dutch && rng.chance(40)).then(|| reserve.unwrap_or(lowest) + rng.range(0, 800));
    let starts_at = now + rng.range(0, 2_000_000);
    let soft = rng.chance(60).then(|| Soft {
        window_us: rng.range(100_000, 3_000_000),
        extension_us: rng.range(100_000, 2_000_000),
        extensions_max: rng.range(1, 5) as u32,
    });
    Spec {
        kind,
        reserve,
        buy_now,
        starts_at,
        ends_at: starts_at + rng.range(2_000_000, 40_000_000),
        soft,
    }
}

/// The engine's spec for auction `id`.
pub(crate) fn engine_spec(id: u64, spec: &Spec) -> AuctionSpec {
    let increments = || {
        let bands = INCREMENTS
            .iter()
            .map(|&(below, increment)| IncrementBand { below, increment })
            .collect();
        IncrementTable::new(bands, INCREMENT_ABOVE).expect("the fixed table is valid")
    };
    let kind = match spec.kind {
        Kind::English { start } => AuctionKind::English {
            start_price: start,
            increments: increments(),
        },
        Kind::SealedFirst { min } => AuctionKind::SealedFirstPrice { min_bid: min },
        Kind::SealedSecond { min } => AuctionKind::SealedSecondPrice { min_bid: min },
        Kind::Dutch {
            start,
            floor,
            step,
            interval_us,
        } => AuctionKind::Dutch {
            start_price: start,
            floor_price: floor,
            step,
            step_interval_us: interval_us,
        },
    };
    let rules = AuctionRules {
        id: AuctionId(id),
        topic: Topic::new("sim").expect("valid topic"),
        kind,
        reserve: spec.reserve,
        buy_now: spec.buy_now,
        starts_at: UnixMicros(spec.starts_at),
        ends_at: UnixMicros(spec.ends_at),
        soft_close: spec.soft.map(|s| SoftClose {
            window_us: s.window_us,
            extension_us: s.extension_us,
            extensions_max: s.extensions_max,
        }),
    };
    // Invariant: `random_spec` draws only valid rules (a refusal here is a sim bug).
    AuctionSpec::try_from(rules).expect("random_spec draws valid rules")
}

/// The bidder named `b<n>`.
pub(crate) fn bidder(n: u32) -> BidderId {
    BidderId::new(&format!("b{n}")).expect("valid bidder name")
}

fn bidder_number(id: BidderId) -> u32 {
    id.as_str()[1..].parse().expect("sim bidders are b<n>")
}

/// The engine's bid.
pub(crate) fn engine_bid(auction: u64, who: u32, id: u128, amount: u64, now: u64) -> Bid {
    Bid::new(
        AuctionId(auction),
        bidder(who),
        BidId(id),
        amount,
        None,
        UnixMicros(now),
    )
    .expect("sim bids have amounts in range")
}

fn acc(a: &gavel_engine::Accepted) -> Acc {
    Acc {
        seq: a.seq,
        price: a.price,
        leader: a.leader.map(bidder_number),
        ends_at: a.ends_at.0,
    }
}

/// The engine's outcome in the model's terms; `None` for `Overloaded` (and reasons the
/// simulation never provokes).
pub(crate) fn answer(outcome: &BidOutcome) -> Option<Answer> {
    Some(match outcome {
        BidOutcome::Accepted(a) => Answer::Accepted(acc(a)),
        BidOutcome::Rejected(r) => match r {
            Rejection::Duplicate { original } => Answer::Duplicate(acc(original)),
            Rejection::TooLow { min_next } => Answer::TooLow(*min_next),
            Rejection::NotOpen => Answer::NotOpen,
            Rejection::Closed => Answer::Closed,
            Rejection::UnknownAuction => Answer::Unknown,
            _ => return None,
        },
    })
}

/// The winner of a settlement in the model's terms.
pub(crate) fn win(settlement: &gavel_engine::Settlement) -> Option<crate::model::Win> {
    settlement.winner.map(|w| crate::model::Win {
        bidder: bidder_number(w.bidder),
        bid: w.bid.0,
        price: w.price,
    })
}
