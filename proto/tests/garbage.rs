//! Nothing a peer or a corrupt log sends makes decoding or conversion panic.

mod common;

use gavel_engine::{AuctionSpec, AuctionView, BidOutcome, BidderId, Event};
use gavel_proto::pb;
use proptest::prelude::*;
use prost::Message;

/// Decodes `bytes` as every message a node reads and runs every conversion on what decodes.
/// Errors are fine; a panic fails the test.
fn decode_everything(bytes: &[u8]) {
    let bidder = BidderId::new("peer").expect("valid id");
    if let Ok(message) = pb::ClientMessage::decode(bytes)
        && let Some(pb::client_message::Body::PlaceBid(place)) = message.body
    {
        let _ = place.to_bid(bidder);
    }
    if let Ok(message) = pb::ServerMessage::decode(bytes) {
        match message.body {
            Some(pb::server_message::Body::BidOutcome(outcome)) => {
                let _ = BidOutcome::try_from(outcome);
            }
            Some(pb::server_message::Body::AuctionSnapshot(snapshot)) => {
                let _ = AuctionView::try_from(snapshot);
            }
            _ => {}
        }
    }
    if let Ok(record) = pb::Record::decode(bytes) {
        let _ = Event::try_from(record);
    }
    let _ = gavel_proto::convert::wal::decode_record(bytes);
    if let Ok(request) = pb::CreateAuction::decode(bytes) {
        let _ = AuctionSpec::try_from(request);
    }
    if let Ok(snapshot) = pb::AuctionSnapshot::decode(bytes) {
        let _ = AuctionView::try_from(snapshot);
    }
    let _ = pb::ListAuctions::decode(bytes);
    let _ = gavel_proto::convert::state::decode_snapshot(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Random bytes.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Valid records with a few bytes overwritten: these get past the decoder far more often
    /// than random bytes, so they exercise the conversions' validation.
    #[test]
    fn corrupted_records_never_panic(
        event in common::event(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = pb::Record::from(&event).encode_to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        decode_everything(&bytes);
        // A torn tail, as a crash mid-write leaves it.
        decode_everything(&bytes[..cut.index(bytes.len() + 1)]);
    }
}
