//! The replay's fast path for the commonest log record, an accepted bid: decoded straight
//! from the payload's bytes, its bidder ids read in place (no `pb::Record` with its two
//! `String`s built and dropped per record).
//!
//! It takes only the layout `encode_record` writes — the record's fields in tag order, each
//! at most once, only `auction_id`, `seq`, `at_us` and `bid_accepted`, and the same for the
//! bid's fields — and only records that convert cleanly. Anything else (another kind, an
//! unknown or repeated field, an invalid value) gives `None`, and the caller decodes the
//! payload with prost and `Event::try_from` as before, which then says what is wrong. So
//! whenever this returns an event, it is the event the full decoder returns (tests check it
//! on generated and mutated records).

use gavel_engine::{AuctionId, Bid, BidderId, Event, EventKind, PRICE_MAX, UnixMicros};
use prost::encoding::{WireType, decode_key, decode_varint};

use super::bid_id;

/// Reads the next field's key, which must come after the field `last` (updated); `None`
/// on a malformed key or a field out of tag order.
fn key(buf: &mut &[u8], last: &mut u32) -> Option<(u32, WireType)> {
    let (tag, wire) = decode_key(buf).ok()?;
    if tag <= *last {
        return None;
    }
    *last = tag;
    Some((tag, wire))
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    decode_varint(buf).ok()
}

fn fixed64(buf: &mut &[u8]) -> Option<u64> {
    let (bytes, rest) = buf.split_first_chunk::<8>()?;
    *buf = rest;
    Some(u64::from_le_bytes(*bytes))
}

fn bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(field)
}

fn bidder(buf: &mut &[u8]) -> Option<BidderId> {
    BidderId::new(std::str::from_utf8(bytes(buf)?).ok()?).ok()
}

/// The accepted bid of `payload`, or `None` (see the module docs).
pub(super) fn decode_bid_accepted(payload: &[u8]) -> Option<Event> {
    let mut buf = payload;
    let (mut auction, mut seq, mut at) = (0, 0, 0);
    let mut body = None;
    let mut last = 0;
    while !buf.is_empty() {
        match key(&mut buf, &mut last)? {
            (1, WireType::Varint) => auction = varint(&mut buf)?,
            (2, WireType::Varint) => seq = varint(&mut buf)?,
            (3, WireType::Varint) => at = varint(&mut buf)?,
            (5, WireType::LengthDelimited) => body = Some(bytes(&mut buf)?),
            _ => return None,
        }
    }
    if seq == 0 {
        return None;
    }
    let auction = AuctionId(auction);
    Some(Event {
        auction,
        seq,
        at: UnixMicros(at),
        kind: bid_accepted(auction, body?)?,
    })
}

/// The fields of one `BidAccepted` message, as read.
#[derive(Default)]
struct Fields {
    bidder: Option<BidderId>,
    hi: u64,
    lo: u64,
    amount: u64,
    max: Option<u64>,
    client_sent_at: u64,
    price: u64,
    leader: Option<BidderId>,
    ends_at: u64,
}

fn bid_accepted(auction: AuctionId, mut buf: &[u8]) -> Option<EventKind> {
    let mut f = Fields::default();
    let mut last = 0;
    while !buf.is_empty() {
        let b = &mut buf;
        match key(b, &mut last)? {
            (1, WireType::LengthDelimited) => f.bidder = Some(bidder(b)?),
            (2, WireType::SixtyFourBit) => f.hi = fixed64(b)?,
            (3, WireType::SixtyFourBit) => f.lo = fixed64(b)?,
            (4, WireType::Varint) => f.amount = varint(b)?,
            (5, WireType::Varint) => f.max = Some(varint(b)?),
            (6, WireType::Varint) => f.client_sent_at = varint(b)?,
            (7, WireType::Varint) => f.price = varint(b)?,
            (8, WireType::LengthDelimited) => f.leader = Some(bidder(b)?),
            (9, WireType::Varint) => f.ends_at = varint(b)?,
            _ => return None,
        }
    }
    if f.price > PRICE_MAX {
        return None;
    }
    let bid = Bid::new(
        auction,
        f.bidder?,
        bid_id(f.hi, f.lo),
        f.amount,
        f.max,
        UnixMicros(f.client_sent_at),
    )
    .ok()?;
    Some(EventKind::BidAccepted {
        bid,
        price: f.price,
        leader: f.leader,
        ends_at: UnixMicros(f.ends_at),
    })
}

#[cfg(test)]
mod tests {
    use gavel_engine::BidId;
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::convert::wal::encode_record;
    use crate::pb;

    /// The full decoder: prost, then `Event::try_from`; errors as text.
    fn full(payload: &[u8]) -> Result<Event, String> {
        let record = pb::Record::decode(payload).map_err(|e| e.to_string())?;
        Event::try_from(record).map_err(|e| e.to_string())
    }

    fn name(seed: u64, len: usize) -> BidderId {
        let text: String = (0..len.max(1))
            .map(|i| char::from(b'a' + ((seed >> (i % 60)) % 26) as u8))
            .collect();
        BidderId::new(&text).unwrap()
    }

    prop_compose! {
        fn accepted()(
            auction in any::<u64>(), seq in 1u64.., at in any::<u64>(), id in any::<u128>(),
            bidder in (any::<u64>(), 1usize..=32), amount in 1u64..=PRICE_MAX,
            max in proptest::option::of(any::<u64>()), sent in any::<u64>(),
            price in 0u64..=PRICE_MAX, leader in proptest::option::of((any::<u64>(), 1usize..=32)),
            ends_at in any::<u64>(),
        ) -> Option<Event> {
            let bid = Bid::new(AuctionId(auction), name(bidder.0, bidder.1), BidId(id), amount,
                max.map(|m| m.max(amount).min(PRICE_MAX)), UnixMicros(sent)).ok()?;
            Some(Event {
                auction: AuctionId(auction),
                seq,
                at: UnixMicros(at),
                kind: EventKind::BidAccepted {
                    bid,
                    price,
                    leader: leader.map(|(s, len)| name(s, len)),
                    ends_at: UnixMicros(ends_at),
                },
            })
        }
    }

    proptest! {
        #[test]
        fn every_accepted_bid_takes_the_fast_path_and_equals_the_full_decode(event in accepted()) {
            let Some(event) = event else { return Ok(()) };
            let mut payload = Vec::new();
            encode_record(&event, &mut payload);
            prop_assert_eq!(decode_bid_accepted(&payload), Some(event.clone()));
            prop_assert_eq!(full(&payload), Ok(event));
        }

        #[test]
        fn a_mutated_record_decodes_as_the_full_decoder_says(
            event in accepted(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let Some(event) = event else { return Ok(()) };
            let mut payload = Vec::new();
            encode_record(&event, &mut payload);
            for (at, byte) in edits {
                let at = at.index(payload.len());
                payload[at] = byte;
            }
            for end in [payload.len(), cut.index(payload.len() + 1)] {
                let bytes = &payload[..end];
                if let Some(fast) = decode_bid_accepted(bytes) {
                    prop_assert_eq!(Ok(fast), full(bytes));
                }
                prop_assert_eq!(
                    crate::convert::wal::decode_record(bytes).map_err(|_| ()),
                    full(bytes).map_err(|_| ())
                );
            }
        }
    }

    #[test]
    fn other_kinds_and_unusual_layouts_take_the_full_path() {
        let bidder = BidderId::new("acme").unwrap();
        let bid = Bid::new(AuctionId(5), bidder, BidId(7), 20, None, UnixMicros(3)).unwrap();
        let event = Event {
            auction: AuctionId(5),
            seq: 2,
            at: UnixMicros(9),
            kind: EventKind::BidAccepted {
                bid,
                price: 20,
                leader: Some(bidder),
                ends_at: UnixMicros(100),
            },
        };
        let mut payload = Vec::new();
        encode_record(&event, &mut payload);
        assert_eq!(decode_bid_accepted(&payload), Some(event.clone()));
        // An unknown field after the record's fields: prost skips it, the fast path does not.
        let mut unknown = payload.clone();
        unknown.extend_from_slice(&[(15 << 3), 1]);
        assert_eq!(decode_bid_accepted(&unknown), None);
        assert_eq!(full(&unknown), Ok(event.clone()));
        assert_eq!(crate::convert::wal::decode_record(&unknown).unwrap(), event);
        // A repeated field (`seq` again, later): prost takes the last value.
        let mut repeated = payload.clone();
        repeated.extend_from_slice(&[(2 << 3), 3]);
        assert_eq!(decode_bid_accepted(&repeated), None);
        assert_eq!(full(&repeated).unwrap().seq, 3);
        // Another kind.
        let extended = Event {
            kind: EventKind::Extended {
                ends_at: UnixMicros(200),
                extensions: 1,
            },
            ..event
        };
        let mut payload = Vec::new();
        encode_record(&extended, &mut payload);
        assert_eq!(decode_bid_accepted(&payload), None);
        assert_eq!(
            crate::convert::wal::decode_record(&payload).unwrap(),
            extended
        );
    }
}
