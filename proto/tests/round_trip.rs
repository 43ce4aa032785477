//! Property tests: engine values survive a trip through the wire types and their bytes.

mod common;

use gavel_engine::{Accepted, AuctionId, AuctionSpec, BidOutcome, Event, Rejection, UnixMicros};
use gavel_proto::convert::wal::{decode_record, encode_record};
use gavel_proto::pb;
use proptest::prelude::*;
use prost::Message;

/// Encodes `message`, decodes it back and checks nothing changed on the way.
fn through_bytes<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) -> M {
    let decoded = M::decode(message.encode_to_vec().as_slice()).expect("own encoding decodes");
    assert_eq!(&decoded, message);
    decoded
}

fn accepted() -> impl Strategy<Value = Accepted> {
    (
        any::<u64>(),
        common::price(),
        prop::option::of(common::bidder()),
        any::<u64>(),
    )
        .prop_map(|(seq, price, leader, ends_at)| Accepted {
            seq,
            price,
            leader,
            ends_at: UnixMicros(ends_at),
        })
}

fn outcome() -> impl Strategy<Value = BidOutcome> {
    prop_oneof![
        accepted().prop_map(BidOutcome::Accepted),
        any::<u64>().prop_map(|min_next| BidOutcome::Rejected(Rejection::TooLow { min_next })),
        Just(BidOutcome::Rejected(Rejection::NotOpen)),
        Just(BidOutcome::Rejected(Rejection::Closed)),
        Just(BidOutcome::Rejected(Rejection::UnknownAuction)),
        accepted().prop_map(|original| BidOutcome::Rejected(Rejection::Duplicate { original })),
        Just(BidOutcome::Rejected(Rejection::RateLimited)),
        any::<u64>().prop_map(
            |retry_after_us| BidOutcome::Rejected(Rejection::Overloaded { retry_after_us })
        ),
        Just(BidOutcome::Rejected(Rejection::Invalid)),
        Just(BidOutcome::Rejected(Rejection::Forbidden)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Event → Record → bytes → Record → Event is the identity, for every event kind.
    #[test]
    fn events_round_trip_through_wal_records(event in common::event()) {
        let record = through_bytes(&pb::Record::from(&event));
        prop_assert_eq!(Event::try_from(record), Ok(event));
    }

    /// `decode_record(encode_record(event))` is the event: the node's log codec, both halves
    /// in this crate.
    #[test]
    fn events_round_trip_through_the_record_codec(event in common::event()) {
        let mut payload = Vec::new();
        encode_record(&event, &mut payload);
        prop_assert_eq!(decode_record(&payload), Ok(event));
    }

    /// AuctionSpec → AuctionRules → bytes → AuctionSpec is the identity, also through the
    /// admin request.
    #[test]
    fn specs_round_trip_through_rules(spec in common::spec()) {
        let rules = through_bytes(&pb::AuctionRules::from(&spec));
        prop_assert_eq!(AuctionSpec::try_from(rules), Ok(spec.clone()));
        let request = through_bytes(&pb::CreateAuction::from(&spec));
        prop_assert_eq!(AuctionSpec::try_from(request), Ok(spec));
    }

    /// A bid a client sends arrives as the same bid, with the bidder the node attaches.
    #[test]
    fn bids_round_trip_through_place_bid(
        bid in any::<u64>().prop_flat_map(|a| common::bid(AuctionId(a))),
        bidder in common::bidder(),
    ) {
        prop_assume!(bid.id().0 != 0);
        let message = pb::ClientMessage {
            request_id: 1,
            body: Some(pb::client_message::Body::PlaceBid(pb::PlaceBid::from(&bid))),
        };
        let Some(pb::client_message::Body::PlaceBid(place)) = through_bytes(&message).body else {
            panic!("body lost");
        };
        let parsed = place.to_bid(bidder).unwrap();
        prop_assert_eq!(parsed.bidder(), bidder);
        prop_assert_eq!(parsed.id(), bid.id());
        prop_assert_eq!(parsed.auction(), bid.auction());
        prop_assert_eq!(parsed.amount(), bid.amount());
        prop_assert_eq!(parsed.max(), bid.max());
        prop_assert_eq!(parsed.client_sent_at(), bid.client_sent_at());
    }

    /// Every outcome reaches the client as sent, inside the server envelope.
    #[test]
    fn outcomes_round_trip(outcome in outcome(), request_id in any::<u64>()) {
        let message = pb::ServerMessage {
            request_id,
            body: Some(pb::server_message::Body::BidOutcome(outcome.into())),
        };
        let decoded = through_bytes(&message);
        prop_assert_eq!(decoded.request_id, request_id);
        let Some(pb::server_message::Body::BidOutcome(wire)) = decoded.body else {
            panic!("body lost");
        };
        prop_assert_eq!(BidOutcome::try_from(wire), Ok(outcome));
    }

    /// The JSON form (pbjson, canonical proto3 JSON) carries the same message as the binary form.
    #[test]
    fn records_round_trip_through_json(event in common::event()) {
        let record = pb::Record::from(&event);
        let json = serde_json::to_string(&record).unwrap();
        let back: pb::Record = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &record);
        prop_assert_eq!(Event::try_from(back), Ok(event));
    }
}

#[test]
fn json_follows_the_canonical_proto3_mapping() {
    let message = pb::ClientMessage {
        request_id: 7,
        body: Some(pb::client_message::Body::PlaceBid(pb::PlaceBid {
            auction_id: 1,
            amount: u64::MAX,
            max: None,
            bid_id_hi: 0,
            bid_id_lo: 5,
            client_sent_at_us: 9,
        })),
    };
    let json = serde_json::to_value(&message).unwrap();
    // lowerCamelCase names, 64-bit integers as strings, oneof members as plain fields,
    // default values (0, absent optionals) left out.
    assert_eq!(
        json,
        serde_json::json!({
            "requestId": "7",
            "placeBid": {
                "auctionId": "1",
                "amount": "18446744073709551615",
                "bidIdLo": "5",
                "clientSentAtUs": "9",
            },
        })
    );
    let back: pb::ClientMessage = serde_json::from_value(json).unwrap();
    assert_eq!(back, message);

    // The proto field names and plain numbers are accepted too; fields left out take their
    // proto3 defaults.
    let sparse: pb::ClientMessage =
        serde_json::from_str(r#"{"place_bid": {"auction_id": 1, "amount": "3"}}"#).unwrap();
    assert_eq!(sparse.request_id, 0);
    let Some(pb::client_message::Body::PlaceBid(place)) = sparse.body else {
        panic!("body lost");
    };
    assert_eq!((place.auction_id, place.amount, place.max), (1, 3, None));

    // Enums travel by name.
    let rejected = pb::ServerMessage {
        request_id: 2,
        body: Some(pb::server_message::Body::BidOutcome(pb::BidOutcome {
            outcome: Some(pb::bid_outcome::Outcome::Rejected(pb::Rejected {
                reason: pb::RejectReason::TooLow as i32,
                min_next: Some(105),
                retry_after_us: None,
                original: None,
                owner: None,
            })),
        })),
    };
    assert_eq!(
        serde_json::to_value(&rejected).unwrap(),
        serde_json::json!({
            "requestId": "2",
            "bidOutcome": {"rejected": {"reason": "REJECT_REASON_TOO_LOW", "minNext": "105"}},
        })
    );

    // Unknown fields and two members of one oneof are refused.
    assert!(
        serde_json::from_str::<pb::ClientMessage>(r#"{"requestId": "1", "bogus": 1}"#).is_err()
    );
    assert!(serde_json::from_str::<pb::ClientMessage>(r#"{"ping": {}, "placeBid": {}}"#).is_err());
}
