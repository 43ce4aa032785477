//! What Gavel's fuzz targets share: the checks a decoded value must pass beyond "no panic"
//! (round trips, the edge's conversions), how one input is split into several files or
//! messages, and the scratch directory of the targets that need files.
//!
//! The targets themselves are in `fuzz_targets/`, one per decoder of outside bytes; their
//! seed inputs are in `seeds/<target>/` (written by `tests/seeds.rs`). `ops/fuzz.sh` runs
//! them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gavel_engine::{
    AuctionKind, AuctionSpec, Bid, BidId, BidderId, DiscardSink, Engine, UnixMicros,
};
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body;
use gavel_transport::fanout::Pattern;
use prost::Message as _;

/// Separates the parts of an input that several files or messages are made of.
pub const PART_SEPARATOR: &[u8] = b"\n%%\n";

/// At most `n` parts of `data`, split at [`PART_SEPARATOR`] (the last part keeps the rest).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest
            .windows(PART_SEPARATOR.len())
            .position(|w| w == PART_SEPARATOR)
        {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + PART_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

/// Joins `parts` with [`PART_SEPARATOR`]: the inverse of [`parts`], for writing seeds.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(PART_SEPARATOR)
}

/// A directory private to this process for the targets that need files (under `TMPDIR`,
/// which `ops/fuzz.sh` points at a directory it removes).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gavel-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the scratch directory can be created");
        dir
    })
}

/// An empty directory named `name` inside [`scratch_dir`].
pub fn empty_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(name);
    // Not there yet on the first run.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch directory is writable");
    dir
}

/// The bidder a fuzzed bid is parsed for (the certificate's identity, in the node).
pub fn fuzz_bidder() -> BidderId {
    BidderId::new("fuzz").expect("a valid bidder id")
}

/// Checks a `ClientMessage` that decoded (from protobuf or JSON), as the node's edge takes
/// it: protobuf re-encoding decodes to the same message; JSON, when it encodes, too; a bid
/// parses for a bidder or is refused with a `ProtoError`, and a parsed bid encodes back to a
/// `PlaceBid` that parses to the same bid; subscription topics and patterns parse or are
/// refused, and an exact topic matches itself.
pub fn check_client_message(message: &pb::ClientMessage) {
    let bytes = message.encode_to_vec();
    let again = pb::ClientMessage::decode(bytes.as_slice()).expect("our own encoding decodes");
    assert_eq!(&again, message, "protobuf round trip changed the message");
    if let Ok(json) = serde_json::to_string(message) {
        let again: pb::ClientMessage = serde_json::from_str(&json).expect("our own JSON decodes");
        assert_eq!(
            &again, message,
            "JSON round trip changed the message: {json}"
        );
    }
    match &message.body {
        Some(Body::PlaceBid(place)) => check_place_bid(place),
        Some(Body::Subscribe(sub)) => check_topics(&sub.topics, &sub.patterns),
        Some(Body::Unsubscribe(unsub)) => check_topics(&unsub.topics, &unsub.patterns),
        Some(Body::Ping(_) | Body::Resume(_)) | None => {}
    }
}

fn check_place_bid(place: &pb::PlaceBid) {
    let bidder = fuzz_bidder();
    if let Ok(bid) = place.to_bid(bidder) {
        let back = pb::PlaceBid::from(&bid);
        assert_eq!(
            back.to_bid(bidder),
            Ok(bid),
            "a parsed bid did not round-trip"
        );
    }
}

fn check_topics(topics: &[String], patterns: &[String]) {
    // As the hub parses a subscription: topics as exact patterns, then the patterns.
    let parsed = topics
        .iter()
        .map(|t| Pattern::exact(t))
        .chain(patterns.iter().map(|p| Pattern::parse(p)));
    for pattern in parsed.flatten() {
        if pattern.is_exact() {
            assert!(
                pattern.matches(pattern.as_str()),
                "{pattern:?} does not match its own topic"
            );
        } else {
            let again = Pattern::parse(pattern.as_str()).expect("a parsed pattern reparses");
            assert_eq!(again, pattern, "a pattern changed when reparsed");
        }
    }
}

/// The times an auction with `spec` is looked at and bid on: before, at and after its start
/// and end, and the ends of the clock.
pub fn times_of(spec: &AuctionSpec) -> [UnixMicros; 7] {
    let rules = spec.rules();
    let (start, end) = (rules.starts_at.0, rules.ends_at.0);
    [
        0,
        start,
        start / 2 + end / 2,
        end.saturating_sub(1),
        end,
        end.saturating_add(1),
        u64::MAX,
    ]
    .map(UnixMicros)
}

/// Drives `engine`'s auction `id` (created or restored from outside bytes) through every
/// path that does arithmetic on its rules: views, bids at several amounts, closing when due
/// and cancelling, at each of [`times_of`]. Nothing may panic; the answers are the engine's.
pub fn exercise(engine: &Engine, spec: &AuctionSpec) {
    let id = spec.id();
    let bidder = fuzz_bidder();
    let amounts = amounts_of(spec);
    for (n, now) in times_of(spec).into_iter().enumerate() {
        let _ = engine.view(id, now);
        let _ = engine.price(id);
        for (k, amount) in amounts.iter().copied().enumerate() {
            let bid_id = BidId(((n as u128) << 8) | k as u128 | 1 << 64);
            if let Ok(bid) = Bid::new(id, bidder, bid_id, amount, None, now) {
                let _ = engine.place_bid(&bid, now, &DiscardSink);
            }
        }
        let _ = engine.close_due(now, 16, &DiscardSink);
    }
    let _ = engine.cancel_auction(id, UnixMicros(u64::MAX), &DiscardSink);
    let _ = engine.view(id, UnixMicros(u64::MAX));
    let _ = engine.state_hash();
    let _ = engine.snapshot();
    // Retention: the settled auction pruned, then asked for and bid on.
    let _ = engine.prune_due(UnixMicros(u64::MAX), 16, &DiscardSink);
    let _ = engine.prune_auction(id, UnixMicros(u64::MAX), &DiscardSink);
    let _ = engine.pruned(id);
    if let Some(bid) = amounts
        .first()
        .and_then(|&amount| Bid::new(id, bidder, BidId(1), amount, None, UnixMicros(u64::MAX)).ok())
    {
        let _ = engine.place_bid(&bid, UnixMicros(u64::MAX), &DiscardSink);
    }
    let _ = engine.state_hash();
    let _ = engine.snapshot_with_pruned();
}

/// Amounts worth bidding on an auction of `spec`: its own prices and their neighbours.
fn amounts_of(spec: &AuctionSpec) -> Vec<u64> {
    let rules = spec.rules();
    let mut prices = vec![1, gavel_engine::PRICE_MAX];
    match &rules.kind {
        AuctionKind::English { start_price, .. } => prices.push(*start_price),
        AuctionKind::SealedFirstPrice { min_bid } | AuctionKind::SealedSecondPrice { min_bid } => {
            prices.push(*min_bid)
        }
        AuctionKind::Dutch {
            start_price,
            floor_price,
            ..
        } => prices.extend([*start_price, *floor_price]),
    }
    prices.extend(rules.reserve);
    prices.extend(rules.buy_now);
    let near: Vec<u64> = prices
        .iter()
        .flat_map(|&p| [p.saturating_sub(1), p.saturating_add(1)])
        .collect();
    prices.extend(near);
    prices.sort_unstable();
    prices.dedup();
    prices
}

/// An engine sized for one fuzz input.
pub fn small_engine() -> Engine {
    Engine::new(gavel_engine::EngineConfig {
        shards: 1,
        auctions_max: 64,
        dedup_window_bids: 8,
        sealed_bidders_max: 8,
        settled_retention_us: 1_000,
        pruned_retention_us: 2_000,
    })
}
