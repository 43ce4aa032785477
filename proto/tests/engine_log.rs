//! A real engine's events, written as WAL records and read back, replay into the very same
//! state (invariant 5 of the product, across the protobuf codec).

mod common;

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, AuctionView, Bid, BidId, BidOutcome,
    BidderId, Engine, EngineConfig, Event, EventKind, IncrementTable, RecordingSink, Replayer,
    SoftClose, Topic, UnixMicros,
};
use gavel_proto::pb;
use prost::Message;

fn rules(id: u64, kind: AuctionKind) -> AuctionRules {
    AuctionRules {
        id: AuctionId(id),
        topic: Topic::new(&format!("test.auction-{id}")).unwrap(),
        kind,
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(1_000),
        ends_at: UnixMicros(10_000),
        soft_close: None,
    }
}

fn specs() -> Vec<AuctionSpec> {
    let english = AuctionKind::English {
        start_price: 10,
        increments: IncrementTable::default(),
    };
    let mut soft = rules(1, english.clone());
    soft.reserve = Some(40);
    soft.soft_close = Some(SoftClose {
        window_us: 2_000,
        extension_us: 1_000,
        extensions_max: 5,
    });
    let mut buy_now = rules(2, english.clone());
    buy_now.buy_now = Some(500);
    let dutch = rules(
        5,
        AuctionKind::Dutch {
            start_price: 1_000,
            floor_price: 100,
            step: 10,
            step_interval_us: 100,
        },
    );
    [
        soft,
        buy_now,
        rules(3, AuctionKind::SealedFirstPrice { min_bid: 5 }),
        rules(4, AuctionKind::SealedSecondPrice { min_bid: 5 }),
        dutch,
        rules(6, english),
    ]
    .into_iter()
    .map(|r| AuctionSpec::try_from(r).unwrap())
    .collect()
}

/// Runs a small market and returns every event it logged.
fn run_market(engine: &Engine) -> Vec<Event> {
    let sink = RecordingSink::default();
    for spec in specs() {
        engine.create_auction(spec, UnixMicros(0), &sink).unwrap();
    }
    let bidders: Vec<BidderId> = ["ann", "bob", "cy.z"]
        .iter()
        .map(|b| BidderId::new(b).unwrap())
        .collect();
    let mut accepted = 0;
    let mut id = 0u128;
    for round in 0..40u64 {
        let now = UnixMicros(1_000 + round * 220);
        for auction in 1..=5 {
            let bidder = bidders[(round as usize + auction as usize) % bidders.len()];
            id += 1;
            let amount = 10 + round * 13 + auction;
            let max = (auction == 1).then_some(amount + 25);
            let bid = Bid::new(
                AuctionId(auction),
                bidder,
                BidId(id << 64 | id),
                amount,
                max,
                UnixMicros(now.0 - 3),
            )
            .unwrap();
            if let BidOutcome::Accepted(_) = engine.place_bid(&bid, now, &sink).outcome {
                accepted += 1;
            }
        }
    }
    assert!(
        accepted > 20,
        "too few bids accepted to test anything: {accepted}"
    );
    engine
        .cancel_auction(AuctionId(6), UnixMicros(5_000), &sink)
        .unwrap();
    engine.close_due(UnixMicros(100_000), usize::MAX, &sink);
    sink.take()
}

#[test]
fn engine_events_survive_the_wal_codec_and_replay_identically() {
    let live = Engine::new(EngineConfig::default());
    let mut events = run_market(&live);
    // Retention: prune every settled auction, a day after the market.
    let sink = RecordingSink::default();
    let day_after = UnixMicros(100_000 + live.config().settled_retention_us);
    assert!(!live.prune_due(day_after, usize::MAX, &sink).is_empty());
    // And forget one result once its own retention passed.
    let week_after = UnixMicros(day_after.0 + live.config().pruned_retention_us);
    assert_eq!(live.forget_due(week_after, 1, &sink), 1);
    events.extend(sink.take());

    let mut kinds = [false; 7];
    let log: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            kinds[match e.kind {
                EventKind::Created(_) => 0,
                EventKind::BidAccepted { .. } => 1,
                EventKind::Extended { .. } => 2,
                EventKind::Closed { .. } => 3,
                EventKind::Settled(_) => 4,
                EventKind::Pruned => 5,
                EventKind::Forgotten => 6,
            }] = true;
            pb::Record::from(e).encode_to_vec()
        })
        .collect();
    assert_eq!(kinds, [true; 7], "the market must produce every event kind");

    let read: Vec<Event> = log
        .iter()
        .map(|bytes| Event::try_from(pb::Record::decode(bytes.as_slice()).unwrap()).unwrap())
        .collect();
    assert_eq!(read, events);

    let replayed = Engine::new(EngineConfig::default());
    let mut replayer = Replayer::new(&replayed);
    for event in &read {
        replayer.apply(event).unwrap();
    }
    assert!(replayer.finish().missing_tail.is_empty());
    assert_eq!(replayed.state_hash(), live.state_hash());
}

#[test]
fn engine_views_survive_the_snapshot_codec() {
    let engine = Engine::new(EngineConfig::default());
    run_market(&engine);
    let now = UnixMicros(200_000);
    let views = engine.list(None, 100, now);
    assert_eq!(views.len(), specs().len());
    for view in views {
        let snapshot = pb::AuctionSnapshot::from_view(&view, 1);
        let bytes = snapshot.encode_to_vec();
        let back = AuctionView::try_from(pb::AuctionSnapshot::decode(bytes.as_slice()).unwrap());
        assert_eq!(back, Ok(view));
    }
}
