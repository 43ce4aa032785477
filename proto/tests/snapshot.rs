//! Engine snapshots through their wire encoding: a real market's snapshot survives encode →
//! bytes → decode → restore with the same state hash and the same future; a snapshot of any
//! replayed prefix of the log, encoded and restored, catches up with the live engine; and
//! every invalid field is refused with a typed error, never a panic.

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, AuctionState, Bid, BidError, BidId,
    BidOutcome, BidderId, BookState, CloseReason, Engine, EngineConfig, Event, IncrementTable,
    NameError, PRICE_MAX, RecordingSink, Rejection, Replayer, RestoreError, SoftClose, SpecError,
    Topic, UnixMicros,
};
use gavel_proto::convert::state::{
    SNAPSHOT_FORMAT_VERSION, SNAPSHOT_FORMAT_VERSION_OLDEST, decode_snapshot,
    decode_snapshot_parts, encode_snapshot, encode_snapshot_auction, encode_snapshot_header,
    encode_snapshot_pruned, recent_list,
};
use gavel_proto::pb::auction_state_record::Book;
use gavel_proto::{ProtoError, SnapshotError, pb};
use proptest::prelude::*;
use prost::Message;

/// The idempotency window of every engine here: small, so that markets wrap it.
const DEDUP_WINDOW_BIDS: usize = 4;

fn config() -> EngineConfig {
    EngineConfig {
        shards: 4,
        dedup_window_bids: DEDUP_WINDOW_BIDS,
        ..EngineConfig::default()
    }
}

fn english(start_price: u64) -> AuctionKind {
    AuctionKind::English {
        start_price,
        increments: IncrementTable::default(),
    }
}

fn dutch() -> AuctionKind {
    AuctionKind::Dutch {
        start_price: 2_000,
        floor_price: 10,
        step: 5,
        step_interval_us: 10,
    }
}

fn spec(id: u64, kind: AuctionKind, reserve: Option<u64>, buy_now: Option<u64>) -> AuctionSpec {
    AuctionSpec::try_from(AuctionRules {
        id: AuctionId(id),
        topic: Topic::new(&format!("snap.lot-{id}")).unwrap(),
        kind,
        reserve,
        buy_now,
        starts_at: UnixMicros(0),
        ends_at: UnixMicros(10_000),
        soft_close: Some(SoftClose {
            window_us: 300,
            extension_us: 100,
            extensions_max: 3,
        }),
    })
    .unwrap()
}

fn bidder(name: &str) -> BidderId {
    BidderId::new(name).unwrap()
}

/// A scripted market with every kind and every way of closing, at time 9,900 (auctions end
/// at 10,000 unless extended; auction 2 at 9,000):
/// 1. English, reserve 100, proxies: lifted to the reserve, then a proxy fight; extended.
/// 2. Sealed first-price, a bidder replaces its bid; closed at its end.
/// 3. Sealed second-price, replaced bids, still open.
/// 4. Dutch, sold.
/// 5. Dutch, unsold and open.
/// 6. English with buy-now, bought.
/// 7. English, cancelled.
/// 8. English, more bids than the dedup window, still open.
struct Market {
    engine: Engine,
    sink: RecordingSink,
    next_bid_id: u128,
    sent: Vec<Bid>,
}

impl Market {
    fn new() -> Market {
        let market = Market {
            engine: Engine::new(config()),
            sink: RecordingSink::default(),
            next_bid_id: 1,
            sent: Vec::new(),
        };
        let specs = [
            spec(1, english(10), Some(100), None),
            // Ends before the others, so that the snapshot finds it closed at its end.
            AuctionSpec::try_from(AuctionRules {
                ends_at: UnixMicros(9_000),
                ..spec(
                    2,
                    AuctionKind::SealedFirstPrice { min_bid: 10 },
                    Some(20),
                    None,
                )
                .rules()
                .clone()
            })
            .unwrap(),
            spec(
                3,
                AuctionKind::SealedSecondPrice { min_bid: 10 },
                None,
                None,
            ),
            spec(4, dutch(), None, None),
            spec(5, dutch(), None, None),
            spec(6, english(10), None, Some(500)),
            spec(7, english(10), None, None),
            spec(8, english(10), None, None),
        ];
        for spec in specs {
            market
                .engine
                .create_auction(spec, UnixMicros(0), &market.sink)
                .unwrap();
        }
        market
    }

    fn bid(
        &mut self,
        auction: u64,
        who: &str,
        amount: u64,
        max: Option<u64>,
        now: u64,
    ) -> BidOutcome {
        let bid = Bid::new(
            AuctionId(auction),
            bidder(who),
            BidId(self.next_bid_id),
            amount,
            max,
            UnixMicros(now),
        )
        .unwrap();
        self.next_bid_id += 1;
        self.sent.push(bid);
        self.engine
            .place_bid(&bid, UnixMicros(now), &self.sink)
            .outcome
    }

    fn scripted() -> Market {
        let mut m = Market::new();
        // 1: a proxy to 150 lifts the price to the reserve at once.
        let lifted = m.bid(1, "alice", 20, Some(150), 100);
        assert!(matches!(lifted, BidOutcome::Accepted(a) if a.price == 100));
        m.bid(1, "bob", 110, None, 200);
        m.bid(1, "bob", 200, Some(400), 9_800);
        // 2 and 3: bids replaced by later ones from the same bidder.
        m.bid(2, "alice", 30, None, 300);
        m.bid(2, "bob", 40, None, 310);
        m.bid(2, "alice", 55, None, 320);
        m.bid(3, "carol", 25, None, 330);
        m.bid(3, "dave", 35, None, 340);
        m.bid(3, "carol", 45, None, 350);
        // 4: meets the clock.
        let sold = m.bid(4, "erin", 2_000, None, 100);
        assert!(matches!(sold, BidOutcome::Accepted(_)), "{sold:?}");
        // 6: buy-now.
        m.bid(6, "frank", 50, None, 400);
        let bought = m.bid(6, "grace", 600, None, 410);
        assert!(matches!(bought, BidOutcome::Accepted(_)), "{bought:?}");
        // 7: cancelled after a bid.
        m.bid(7, "heidi", 20, None, 500);
        m.engine
            .cancel_auction(AuctionId(7), UnixMicros(600), &m.sink)
            .unwrap();
        // 8: ten raises wrap the window of four.
        for n in 0..10 {
            let who = if n % 2 == 0 { "ivan" } else { "judy" };
            m.bid(8, who, 20 + n * 10, None, 1_000 + n);
        }
        // A retry inside the window gets its original outcome.
        let retry = *m.sent.last().unwrap();
        assert!(matches!(
            m.engine
                .place_bid(&retry, UnixMicros(1_100), &m.sink)
                .outcome,
            BidOutcome::Rejected(Rejection::Duplicate { .. })
        ));
        // The sealed first-price auction ends at 9,000; auction 1 was extended to 10,100.
        m.bid(2, "bob", 60, None, 8_000);
        m.engine.close_due(UnixMicros(9_900), usize::MAX, &m.sink);
        m
    }
}

/// Asserts the scripted market's snapshot holds every shape of state, so that the round
/// trip below covers them all.
fn assert_covers_every_shape(states: &[AuctionState]) {
    let by_id = |id: u64| {
        states
            .iter()
            .find(|s| s.spec.id() == AuctionId(id))
            .unwrap()
    };
    let BookState::English {
        price,
        leader: Some(leader),
    } = by_id(1).book
    else {
        panic!("auction 1 has no leader");
    };
    assert!(leader.max > price, "a hidden proxy maximum above the price");
    assert!(by_id(1).extensions > 0, "soft close extended auction 1");
    let BookState::Sealed { bids } = &by_id(3).book else {
        panic!("auction 3 is not sealed");
    };
    assert!(by_id(3).bids_accepted > bids.len() as u64, "a replaced bid");
    assert!(by_id(3).closed.is_none());
    let closes: Vec<Option<CloseReason>> = (1..=8)
        .map(|id| by_id(id).closed.map(|(reason, _)| reason))
        .collect();
    assert_eq!(
        closes,
        [
            None,
            Some(CloseReason::EndReached),
            None,
            Some(CloseReason::Sold),
            None,
            Some(CloseReason::BuyNow),
            Some(CloseReason::Cancelled),
            None
        ]
    );
    assert!(matches!(by_id(4).book, BookState::Dutch { sold: Some(_) }));
    assert!(matches!(by_id(5).book, BookState::Dutch { sold: None }));
    assert_eq!(
        by_id(8).recent.len(),
        DEDUP_WINDOW_BIDS,
        "the window wrapped"
    );
    assert!(by_id(8).bids_accepted > DEDUP_WINDOW_BIDS as u64);
}

fn restored(states: Vec<AuctionState>) -> Engine {
    let engine = Engine::new(config());
    for state in states {
        engine.restore(state).unwrap();
    }
    engine
}

#[test]
fn a_market_round_trips_through_bytes_and_has_the_same_future() {
    let market = Market::scripted();
    let states = market.engine.snapshot();
    assert_covers_every_shape(&states);

    let bytes = encode_snapshot(42, UnixMicros(9_900), &states);
    let (lsn, taken_at, decoded) = decode_snapshot(&bytes).unwrap();
    assert_eq!((lsn, taken_at), (42, UnixMicros(9_900)));
    assert_eq!(decoded, states);

    let copy = restored(decoded);
    assert_eq!(copy.state_hash(), market.engine.state_hash());

    // The same future: new bids, retries inside and outside the window, the closes.
    let copy_sink = RecordingSink::default();
    let _before_the_snapshot = market.sink.take();
    let retries: Vec<Bid> = market.sent.iter().rev().take(8).copied().collect();
    let mut bids = Vec::new();
    for (n, auction) in [1u64, 3, 5, 8, 8, 2, 7, 1, 3, 5].into_iter().enumerate() {
        let n = n as u64;
        bids.push(
            Bid::new(
                AuctionId(auction),
                bidder(["alice", "bob", "carol"][(n % 3) as usize]),
                BidId(1_000 + u128::from(n)),
                400 + n * 50,
                None,
                UnixMicros(9_950 + n),
            )
            .unwrap(),
        );
    }
    bids.extend(retries);
    let (mut accepted, mut duplicates) = (0, 0);
    for bid in &bids {
        let now = UnixMicros(9_960);
        let original = market.engine.place_bid(bid, now, &market.sink).outcome;
        assert_eq!(
            copy.place_bid(bid, now, &copy_sink).outcome,
            original,
            "{bid:?}"
        );
        match original {
            BidOutcome::Accepted(_) => accepted += 1,
            BidOutcome::Rejected(Rejection::Duplicate { .. }) => duplicates += 1,
            BidOutcome::Rejected(_) => {}
        }
    }
    assert!(accepted >= 4, "new bids were accepted: {accepted}");
    assert!(
        duplicates >= 2,
        "retries got their original outcome: {duplicates}"
    );
    let end = UnixMicros(20_000);
    let closed = market.engine.close_due(end, usize::MAX, &market.sink);
    let copy_closed = copy.close_due(end, usize::MAX, &copy_sink);
    let settlements = |c: Vec<gavel_engine::ClosedAuction>| {
        let mut s: Vec<_> = c.into_iter().map(|c| (c.id, c.settlement)).collect();
        s.sort_by_key(|(id, _)| *id);
        s
    };
    assert_eq!(settlements(copy_closed), settlements(closed));
    assert_eq!(copy.state_hash(), market.engine.state_hash());
    assert_eq!(copy.snapshot(), market.engine.snapshot());
    // Per auction, the same events; `close_due` may visit auctions in another order (its
    // timer is rebuilt by the restore), which no state depends on.
    let by_auction = |mut events: Vec<Event>| {
        events.sort_by_key(|e| (e.auction, e.seq));
        events
    };
    let events = by_auction(market.sink.take());
    assert!(!events.is_empty());
    assert_eq!(
        by_auction(copy_sink.take()),
        events,
        "the same events after the snapshot"
    );
}

#[test]
fn a_snapshot_written_one_auction_at_a_time_is_the_same_message() {
    let market = Market::scripted();
    let states = market.engine.snapshot();
    let mut streamed = Vec::new();
    encode_snapshot_header(7, UnixMicros(5), &mut streamed);
    for state in &states {
        encode_snapshot_auction(state, &mut streamed);
    }
    let whole = pb::Snapshot {
        format_version: SNAPSHOT_FORMAT_VERSION,
        lsn: 7,
        taken_at_us: 5,
        auctions: states.iter().map(Into::into).collect(),
        kafka: None,
        pruned: Vec::new(),
    };
    assert_eq!(streamed, whole.encode_to_vec());
    assert_eq!(streamed, encode_snapshot(7, UnixMicros(5), &states));
    // Each record alone, length-delimited, as a streaming reader would take it.
    for state in &states {
        let bytes = pb::AuctionStateRecord::from(state).encode_length_delimited_to_vec();
        let record = pb::AuctionStateRecord::decode_length_delimited(bytes.as_slice()).unwrap();
        assert_eq!(AuctionState::try_from(record).as_ref(), Ok(state));
    }
}

/// A small deterministic generator (splitmix64), so this crate needs no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random market over 8 auctions of every kind (reserves, buy-now, soft close, proxies,
/// retries, one cancel), then the close of everything. Returns the live engine and its log.
fn random_market(seed: u64, bids: u64) -> (Engine, Vec<Event>) {
    let engine = Engine::new(config());
    let sink = RecordingSink::default();
    for i in 0..8u64 {
        let kind = match i % 4 {
            0 => english(10),
            1 => AuctionKind::SealedFirstPrice { min_bid: 10 },
            2 => AuctionKind::SealedSecondPrice { min_bid: 10 },
            _ => dutch(),
        };
        let dutch = i % 4 == 3;
        let reserve = (i % 3 == 0 && !dutch).then_some(60);
        let buy_now = (i == 4).then_some(1_500);
        engine
            .create_auction(spec(i, kind, reserve, buy_now), UnixMicros(0), &sink)
            .unwrap();
    }
    let mut rng = Rng(seed);
    let mut sent: Vec<Bid> = Vec::new();
    for n in 0..bids {
        let now = UnixMicros(n * 10_000 / bids);
        if n == bids / 2 {
            // Cancelling an auction that has closed already is refused; either is fine.
            let _ = engine.cancel_auction(AuctionId(rng.below(8)), now, &sink);
        }
        let bid = if !sent.is_empty() && rng.chance(10) {
            sent[rng.below(sent.len() as u64) as usize]
        } else {
            let auction = AuctionId(rng.below(8));
            let who = bidder(&format!("b{}", rng.below(5)));
            let price = engine.price(auction).and_then(|(p, _)| p).unwrap_or(10);
            let amount = price + rng.below(40) + if auction.0 % 4 == 3 { 1_500 } else { 0 };
            let max =
                (auction.0.is_multiple_of(4) && rng.chance(30)).then(|| amount + rng.below(200));
            Bid::new(auction, who, BidId(u128::from(n) + 1), amount, max, now).unwrap()
        };
        sent.push(bid);
        engine.place_bid(&bid, now, &sink);
        if n % 50 == 0 {
            engine.close_due(now, usize::MAX, &sink);
        }
    }
    engine.close_due(UnixMicros(20_000), usize::MAX, &sink);
    (engine, sink.take())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Cut the log anywhere, snapshot a replay of the prefix, send the snapshot through
    /// bytes, restore it, and feed it the whole log: the result equals the live engine.
    #[test]
    fn a_decoded_snapshot_of_any_prefix_catches_up_with_the_log(
        seed in any::<u64>(),
        cut in 0.0..=1.0f64,
    ) {
        let (live, events) = random_market(seed, 300);
        let cut = (events.len() as f64 * cut) as usize;
        let prefix = Engine::new(config());
        let mut replayer = Replayer::new(&prefix);
        for e in &events[..cut] {
            replayer.apply(e).unwrap();
        }
        let lsn = cut as u64;
        let bytes = encode_snapshot(lsn, UnixMicros(1), &prefix.snapshot());
        let (decoded_lsn, _, states) = decode_snapshot(&bytes).unwrap();
        prop_assert_eq!(decoded_lsn, lsn);
        let engine = restored(states);
        prop_assert_eq!(engine.state_hash(), prefix.state_hash());

        let mut replayer = Replayer::after_snapshot(&engine);
        for e in &events {
            replayer.apply(e).unwrap();
        }
        prop_assert!(replayer.finish().missing_tail.is_empty());
        prop_assert_eq!(engine.state_hash(), live.state_hash());
    }
}

// ---- Rejections -------------------------------------------------------------------------

/// The scripted market's records, by auction id.
fn record(id: u64) -> pb::AuctionStateRecord {
    let states = Market::scripted().engine.snapshot();
    let state = states
        .iter()
        .find(|s| s.spec.id() == AuctionId(id))
        .unwrap();
    let mut record = pb::AuctionStateRecord::from(state);
    // The list form of formats 1 and 2, which the refusals below corrupt entry by entry.
    record.recent = recent_list(&state.recent);
    record.recent_packed.clear();
    record
}

#[test]
fn the_idempotency_memory_reads_from_either_form_and_not_from_both() {
    let states = Market::scripted().engine.snapshot();
    let state = states.iter().find(|s| s.spec.id() == AuctionId(8)).unwrap();
    let packed = pb::AuctionStateRecord::from(state);
    assert!(packed.recent.is_empty() && !packed.recent_packed.is_empty());
    assert_eq!(AuctionState::try_from(packed.clone()).as_ref(), Ok(state));
    // A format 2 record (the list form) reads as the same state.
    assert_eq!(AuctionState::try_from(record(8)).as_ref(), Ok(state));
    let mut both = packed.clone();
    both.recent = recent_list(&state.recent);
    assert_eq!(
        AuctionState::try_from(both),
        Err(ProtoError::Invalid {
            field: "AuctionStateRecord.recent_packed",
            reason: "both forms of the idempotency memory",
        })
    );
    // Every cut and every byte changed is refused or reads as some state, never a panic;
    // a cut is always refused.
    let bytes = packed.recent_packed.clone();
    for end in 0..bytes.len() {
        let mut cut = packed.clone();
        cut.recent_packed.truncate(end);
        if end > 0 {
            assert!(AuctionState::try_from(cut).is_err(), "cut at {end}");
        }
    }
    for at in 0..bytes.len() {
        for byte in [0x00, 0x7f, 0x80, 0xff] {
            let mut changed = packed.clone();
            changed.recent_packed[at] = byte;
            let _ = AuctionState::try_from(changed);
        }
    }
}

fn refused(
    id: u64,
    corrupt: impl FnOnce(&mut pb::AuctionStateRecord),
) -> Result<AuctionState, ProtoError> {
    let mut record = record(id);
    corrupt(&mut record);
    // Through bytes, as from a file.
    let decoded = pb::AuctionStateRecord::decode(record.encode_to_vec().as_slice()).unwrap();
    AuctionState::try_from(decoded)
}

fn english_book(record: &mut pb::AuctionStateRecord) -> &mut pb::auction_state_record::EnglishBook {
    let Some(Book::English(book)) = &mut record.book else {
        panic!("not an English book");
    };
    book
}

fn sealed_book(record: &mut pb::AuctionStateRecord) -> &mut pb::auction_state_record::SealedBook {
    let Some(Book::Sealed(book)) = &mut record.book else {
        panic!("not a sealed book");
    };
    book
}

#[test]
fn required_parts_are_required() {
    assert_eq!(
        refused(1, |r| r.rules = None),
        Err(ProtoError::Missing("AuctionStateRecord.rules"))
    );
    assert_eq!(
        refused(1, |r| r.book = None),
        Err(ProtoError::Missing("AuctionStateRecord.book"))
    );
    assert_eq!(
        refused(2, |r| r.closed.as_mut().unwrap().settlement = None),
        Err(ProtoError::Missing("AuctionStateRecord.Closed.settlement"))
    );
    assert_eq!(
        refused(8, |r| r.recent[0].accepted = None),
        Err(ProtoError::Missing("AuctionStateRecord.RecentBid.accepted"))
    );
}

#[test]
fn enums_must_be_known_and_set() {
    assert_eq!(
        refused(2, |r| r.closed.as_mut().unwrap().reason = 0),
        Err(ProtoError::Missing("AuctionStateRecord.Closed.reason"))
    );
    assert_eq!(
        refused(2, |r| r.closed.as_mut().unwrap().reason = 77),
        Err(ProtoError::UnknownEnum {
            field: "AuctionStateRecord.Closed.reason",
            value: 77
        })
    );
}

#[test]
fn names_are_validated() {
    assert_eq!(
        refused(1, |r| english_book(r).leader.as_mut().unwrap().bidder_id =
            "a b".into()),
        Err(ProtoError::Name {
            field: "AuctionStateRecord.Leader.bidder_id",
            error: NameError::InvalidChar { at: 1 }
        })
    );
    assert_eq!(
        refused(3, |r| sealed_book(r).bids[0].bidder_id = String::new()),
        Err(ProtoError::Name {
            field: "AuctionStateRecord.SealedBid.bidder_id",
            error: NameError::Empty
        })
    );
    assert_eq!(
        refused(8, |r| r.recent[1].bidder_id = "x".repeat(33)),
        Err(ProtoError::Name {
            field: "AuctionStateRecord.RecentBid.bidder_id",
            error: NameError::TooLong { len_max: 32 }
        })
    );
    assert!(matches!(
        refused(8, |r| r.recent[1].accepted.as_mut().unwrap().leader =
            Some("é".into())),
        Err(ProtoError::Name {
            field: "Accepted.leader",
            ..
        })
    ));
    assert!(matches!(
        refused(4, |r| {
            let Some(Book::Dutch(dutch)) = &mut r.book else {
                panic!("not Dutch");
            };
            dutch.sold.as_mut().unwrap().bidder_id = "no/slash".into();
        }),
        Err(ProtoError::Name {
            field: "Winner.bidder_id",
            ..
        })
    ));
    assert!(matches!(
        refused(1, |r| r.rules.as_mut().unwrap().topic = "..".into()),
        Err(ProtoError::Name {
            field: "AuctionRules.topic",
            ..
        })
    ));
}

#[test]
fn amounts_stay_in_the_price_range() {
    let over = PRICE_MAX + 1;
    assert_eq!(
        refused(1, |r| english_book(r).price = over),
        Err(ProtoError::PriceOverflow {
            field: "AuctionStateRecord.EnglishBook.price",
            value: over
        })
    );
    assert_eq!(
        refused(1, |r| english_book(r).leader.as_mut().unwrap().max =
            u64::MAX),
        Err(ProtoError::PriceOverflow {
            field: "AuctionStateRecord.Leader.max",
            value: u64::MAX
        })
    );
    assert_eq!(
        refused(3, |r| sealed_book(r).bids[1].amount = over),
        Err(ProtoError::PriceOverflow {
            field: "AuctionStateRecord.SealedBid.amount",
            value: over
        })
    );
    assert_eq!(
        refused(3, |r| sealed_book(r).bids[1].amount = 0),
        Err(ProtoError::Bid(BidError::ZeroAmount))
    );
    assert_eq!(
        refused(8, |r| r.recent[0].accepted.as_mut().unwrap().price = over),
        Err(ProtoError::PriceOverflow {
            field: "Accepted.price",
            value: over
        })
    );
    assert_eq!(
        refused(6, |r| {
            let settlement = r.closed.as_mut().unwrap().settlement.as_mut().unwrap();
            settlement.winner.as_mut().unwrap().price = over;
        }),
        Err(ProtoError::PriceOverflow {
            field: "Winner.price",
            value: over
        })
    );
    assert_eq!(
        refused(1, |r| r.rules.as_mut().unwrap().ends_at_us = 0),
        Err(ProtoError::Spec(SpecError::EndsBeforeStart))
    );
}

/// The engine accepts any bid id (only the bidder-facing edge refuses zero), so a snapshot
/// carries a zero id rather than refusing a state the engine held.
#[test]
fn zero_bid_ids_are_carried() {
    let state = AuctionState::try_from(record(1)).unwrap();
    let mut zero = record(1);
    let leader = english_book(&mut zero).leader.as_mut().unwrap();
    (leader.bid_id_hi, leader.bid_id_lo) = (0, 0);
    let decoded = AuctionState::try_from(zero).unwrap();
    let BookState::English {
        leader: Some(leader),
        ..
    } = &decoded.book
    else {
        panic!("no leader");
    };
    assert_eq!(leader.bid, BidId(0));
    assert_eq!(
        AuctionState {
            book: decoded.book.clone(),
            ..state.clone()
        },
        decoded
    );
    assert_ne!(decoded, state);
}

/// Field-level checks belong here; whether the fields agree with each other is
/// `Engine::restore`'s, which refuses with `RestoreError::Inconsistent`.
#[test]
fn consistency_is_left_to_restore() {
    let mut wrong = record(1);
    wrong.book = record(3).book;
    let state = AuctionState::try_from(wrong).expect("every field is valid on its own");
    assert!(matches!(
        Engine::new(config()).restore(state),
        Err(RestoreError::Inconsistent { .. })
    ));
}

#[test]
fn whole_snapshots_are_checked() {
    let states = Market::scripted().engine.snapshot();
    let bytes = encode_snapshot(9, UnixMicros(3), &states);
    for version in [0, SNAPSHOT_FORMAT_VERSION + 1] {
        let mut snapshot = pb::Snapshot::decode(bytes.as_slice()).unwrap();
        snapshot.format_version = version;
        assert_eq!(
            decode_snapshot(&snapshot.encode_to_vec()),
            Err(SnapshotError::Version {
                found: version,
                expected: SNAPSHOT_FORMAT_VERSION
            })
        );
    }
    let mut snapshot = pb::Snapshot::decode(bytes.as_slice()).unwrap();
    snapshot.auctions[2].rules = None;
    assert_eq!(
        decode_snapshot(&snapshot.encode_to_vec()),
        Err(SnapshotError::Auction {
            index: 2,
            error: ProtoError::Missing("AuctionStateRecord.rules")
        })
    );
    // A torn write.
    assert!(matches!(
        decode_snapshot(&bytes[..bytes.len() - 3]),
        Err(SnapshotError::Decode(_))
    ));
    // An empty engine has an empty but valid snapshot.
    assert_eq!(
        decode_snapshot(&encode_snapshot(0, UnixMicros(0), &[])),
        Ok((0, UnixMicros(0), Vec::new()))
    );
}

/// Decodes `bytes` as a snapshot and restores whatever decodes. Errors are fine; a panic
/// fails the test.
fn decode_and_restore(bytes: &[u8]) {
    if let Ok((_, _, states)) = decode_snapshot(bytes) {
        let engine = Engine::new(config());
        for state in states {
            let _ = engine.restore(state);
        }
        let _ = engine.state_hash();
    }
    if let Ok(record) = pb::AuctionStateRecord::decode(bytes) {
        let _ = AuctionState::try_from(record);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Random bytes.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        decode_and_restore(&bytes);
    }

    /// A real snapshot with a few bytes overwritten, then torn: these get past the decoder
    /// far more often than random bytes, so they reach the conversions and restore.
    #[test]
    fn corrupted_snapshots_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = SNAPSHOT_BYTES.with(Clone::clone);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        decode_and_restore(&bytes);
        decode_and_restore(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

thread_local! {
    /// The scripted market's snapshot, built once per test thread.
    static SNAPSHOT_BYTES: Vec<u8> =
        encode_snapshot(1, UnixMicros(1), &Market::scripted().engine.snapshot());
}

/// Retention (issue 21 §2): a snapshot carries the pruned auctions' results after the
/// auctions (format version 2) and restores to the same state hash; a version 1 snapshot
/// (written before) still reads, with no pruned result and each closed auction's settlement
/// time taken from its end; a corrupt result is refused with its index.
#[test]
fn pruned_results_survive_a_snapshot_and_version_1_still_reads() {
    let market = Market::scripted();
    let late = UnixMicros(1 << 60);
    market.engine.close_due(late, usize::MAX, &market.sink);
    let pruned_now = market.engine.prune_due(late, 2, &market.sink);
    assert_eq!(
        pruned_now.len(),
        2,
        "the scripted market has settled auctions to prune"
    );
    let (states, pruned) = market.engine.snapshot_with_pruned();
    assert!(!states.is_empty());
    let mut bytes = encode_snapshot(11, UnixMicros(4), &states);
    encode_snapshot_pruned(&pruned, &mut bytes);
    let parts = decode_snapshot_parts(&bytes).unwrap();
    assert_eq!(
        (parts.lsn, &parts.auctions, &parts.pruned),
        (11, &states, &pruned)
    );
    let restored = Engine::new(config());
    for state in parts.auctions {
        restored.restore(state).unwrap();
    }
    for result in parts.pruned {
        restored.restore_pruned(result).unwrap();
    }
    assert_eq!(restored.state_hash(), market.engine.state_hash());

    // Version 1: no pruned results, no settlement times.
    let mut old =
        pb::Snapshot::decode(encode_snapshot(11, UnixMicros(4), &states).as_slice()).unwrap();
    old.format_version = SNAPSHOT_FORMAT_VERSION_OLDEST;
    for record in &mut old.auctions {
        if let Some(closed) = record.closed.as_mut() {
            closed.settled_at_us = 0;
        }
    }
    let parts = decode_snapshot_parts(&old.encode_to_vec()).unwrap();
    assert!(parts.pruned.is_empty());
    let closed = parts.auctions.iter().find(|s| s.closed.is_some()).unwrap();
    let engine = Engine::new(config());
    engine.restore(closed.clone()).unwrap();
    let due = UnixMicros(closed.ends_at.0 + config().settled_retention_us);
    assert_eq!(engine.next_prune_due(), Some(due), "settled at its end");

    let mut corrupt = pb::Snapshot::decode(bytes.as_slice()).unwrap();
    corrupt.pruned[1].close_reason = 0;
    assert_eq!(
        decode_snapshot_parts(&corrupt.encode_to_vec()),
        Err(SnapshotError::Pruned {
            index: 1,
            error: ProtoError::Missing("PrunedAuction.close_reason")
        })
    );
}
