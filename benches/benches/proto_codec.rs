//! Protobuf (prost) encode and decode of the two hottest wire messages: `PlaceBid` (every
//! bid, client → node) and `PriceUpdate` (every accepted bid, node → each watcher).
//!
//! Encoding writes into a reused buffer, as a transport does; decoding reads from a slice
//! and, for `PlaceBid`, also parses the message into an engine `Bid` (`to_bid`), the edge
//! check every bid passes before the engine sees it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use gavel_benches::{START_PRICE, bidder};
use gavel_proto::pb;
use prost::Message;

/// Encode buffer capacity: larger than either message.
const BUFFER_BYTES: usize = 256;

fn place_bid() -> pb::PlaceBid {
    pb::PlaceBid {
        auction_id: 4_711,
        amount: START_PRICE + 12_300,
        max: None,
        bid_id_hi: 0x0123_4567_89ab_cdef,
        bid_id_lo: 0xfedc_ba98_7654_3210,
        client_sent_at_us: 1_764_237_600_000_000,
    }
}

fn price_update() -> pb::PriceUpdate {
    pb::PriceUpdate {
        auction_id: 4_711,
        topic: "energy.eu.de.block-42".to_owned(),
        epoch: 1,
        seq: 12_345,
        price: Some(START_PRICE + 12_300),
        leader: Some("acme-trading.eu_1".to_owned()),
        ends_at_us: 1_764_241_200_000_000,
        bids_accepted: 12_343,
        accepted_at_us: 1_764_237_600_000_123,
        watchers: 1_250,
        bidders_connected: 16,
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto_codec");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let mut buffer = Vec::with_capacity(BUFFER_BYTES);

    let bid = place_bid();
    group.bench_function("place_bid/encode", |b| {
        b.iter(|| {
            buffer.clear();
            // Invariant: the buffer is a growable Vec; encoding into it cannot run out.
            black_box(&bid).encode(&mut buffer).expect("a Vec has room");
            black_box(buffer.len())
        })
    });
    let bid_bytes = bid.encode_to_vec();
    let who = bidder(7);
    group.bench_function("place_bid/decode", |b| {
        b.iter(|| pb::PlaceBid::decode(black_box(bid_bytes.as_slice())).expect("valid bytes"))
    });
    group.bench_function("place_bid/decode_to_bid", |b| {
        b.iter(|| {
            pb::PlaceBid::decode(black_box(bid_bytes.as_slice()))
                .expect("valid bytes")
                .to_bid(who)
                .expect("a valid bid")
        })
    });

    let update = price_update();
    group.bench_function("price_update/encode", |b| {
        b.iter(|| {
            buffer.clear();
            black_box(&update)
                .encode(&mut buffer)
                .expect("a Vec has room");
            black_box(buffer.len())
        })
    });
    let update_bytes = update.encode_to_vec();
    group.bench_function("price_update/decode", |b| {
        b.iter(|| pb::PriceUpdate::decode(black_box(update_bytes.as_slice())).expect("valid bytes"))
    });
    group.finish();
    eprintln!(
        "encoded sizes: PlaceBid {} bytes, PriceUpdate {} bytes",
        bid_bytes.len(),
        update_bytes.len()
    );
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented
    // `pub fn` (the workspace warns on missing docs).
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
