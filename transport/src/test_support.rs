//! What the crate's unit tests share.

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, IncrementTable, Topic, UnixMicros,
};

/// An English auction `id` on `topic` starting at 100 ticks, open from time 0 until
/// `ends_at`.
pub(crate) fn english(id: u64, topic: &str, ends_at: UnixMicros) -> AuctionSpec {
    AuctionSpec::try_from(AuctionRules {
        id: AuctionId(id),
        topic: Topic::new(topic).unwrap(),
        kind: AuctionKind::English {
            start_price: 100,
            increments: IncrementTable::default(),
        },
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(0),
        ends_at,
        soft_close: None,
    })
    .unwrap()
}
