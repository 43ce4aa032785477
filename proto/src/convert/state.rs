//! Engine snapshots (auction states) ↔ the WAL's snapshot messages, lossless.
//!
//! - `&AuctionState` → [`pb::AuctionStateRecord`] (`From`), and back with
//!   `AuctionState::try_from(pb::AuctionStateRecord)`, which parses every field a corrupt
//!   snapshot could get wrong (missing parts, unknown enums, malformed names, prices above
//!   `PRICE_MAX`, rules the engine would refuse) into a [`ProtoError`] and never panics.
//!   Whether the parts agree with each other (the book matches the kind, the sequence number
//!   is not 0, …) is checked by `Engine::restore`, which owns those invariants and answers
//!   with a `RestoreError`.
//! - [`encode_snapshot`] / [`decode_snapshot`]: a whole [`pb::Snapshot`] in one buffer.
//! - [`encode_snapshot_position`] / [`decode_snapshot_with_position`]: a Kafka log node's
//!   snapshot also records where its states stand in the topic.
//! - [`encode_snapshot_header`] and [`encode_snapshot_auction`]: the same bytes written piece
//!   by piece, one auction at a time, so that the log can stream a large snapshot instead of
//!   building every record first (a snapshot of a million auctions is large). A reader that
//!   wants to stream too decodes each entry with prost's
//!   `pb::AuctionStateRecord::decode_length_delimited` after the entry's key byte and
//!   converts it with `AuctionState::try_from`.
//!
//! For every state the engine produces, `AuctionState::try_from(pb::AuctionStateRecord::from(
//! &state))` equals the state.
//!
//! Bid ids of zero are carried, not refused: the engine itself accepts any `BidId` (only
//! the bidder-facing edge, `PlaceBid::to_bid`, refuses zero), so a snapshot must be able to
//! hold whatever the engine held, just as a log record does.

use std::sync::Arc;

use gavel_engine::{
    Accepted, AuctionSpec, AuctionState, BidError, BookState, CloseReason, LeaderState, RecentBid,
    SealedBidState, Settlement, UnixMicros, Winner,
};
use prost::Message;

use super::rules::close_reason;
use super::{bid_id, bid_id_halves, bidder, price};
use crate::pb;
use crate::pb::auction_state_record::{self as record, Book};
use crate::{ProtoError, SnapshotError};

/// The [`pb::Snapshot::format_version`] this code writes, and the only one it reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// The key of one `Snapshot.auctions` entry: field 4, wire type 2 (length-delimited), as
/// `(4 << 3) | 2`. One byte, because the field number is below 16.
const AUCTIONS_ENTRY_KEY: u8 = (4 << 3) | 2;

impl From<&AuctionState> for pb::AuctionStateRecord {
    fn from(state: &AuctionState) -> Self {
        let book = match &state.book {
            BookState::English { price, leader } => Book::English(record::EnglishBook {
                price: *price,
                leader: leader.map(|l| {
                    let (bid_id_hi, bid_id_lo) = bid_id_halves(l.bid);
                    record::Leader {
                        bidder_id: l.bidder.as_str().to_owned(),
                        bid_id_hi,
                        bid_id_lo,
                        max: l.max,
                    }
                }),
            }),
            BookState::Sealed { bids } => Book::Sealed(record::SealedBook {
                bids: bids
                    .iter()
                    .map(|b| {
                        let (bid_id_hi, bid_id_lo) = bid_id_halves(b.bid);
                        record::SealedBid {
                            bidder_id: b.bidder.as_str().to_owned(),
                            bid_id_hi,
                            bid_id_lo,
                            amount: b.amount,
                            seq: b.seq,
                        }
                    })
                    .collect(),
            }),
            BookState::Dutch { sold } => Book::Dutch(record::DutchBook {
                sold: sold.map(Into::into),
            }),
        };
        pb::AuctionStateRecord {
            rules: Some(state.spec.as_ref().into()),
            seq: state.seq,
            ends_at_us: state.ends_at.0,
            extensions: state.extensions,
            bids_accepted: state.bids_accepted,
            closed: state.closed.map(|(reason, settlement)| record::Closed {
                reason: pb::CloseReason::from(reason).into(),
                settlement: Some(settlement.into()),
            }),
            book: Some(book),
            recent: state
                .recent
                .iter()
                .map(|r| {
                    let (bid_id_hi, bid_id_lo) = bid_id_halves(r.bid);
                    record::RecentBid {
                        bidder_id: r.bidder.as_str().to_owned(),
                        bid_id_hi,
                        bid_id_lo,
                        accepted: Some(r.accepted.into()),
                    }
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::AuctionStateRecord> for AuctionState {
    type Error = ProtoError;

    fn try_from(state: pb::AuctionStateRecord) -> Result<Self, ProtoError> {
        let spec = AuctionSpec::try_from(
            state
                .rules
                .ok_or(ProtoError::Missing("AuctionStateRecord.rules"))?,
        )?;
        let closed = state.closed.map(closed).transpose()?;
        let book = match state
            .book
            .ok_or(ProtoError::Missing("AuctionStateRecord.book"))?
        {
            Book::English(english) => BookState::English {
                price: price("AuctionStateRecord.EnglishBook.price", english.price)?,
                leader: english.leader.map(leader).transpose()?,
            },
            Book::Sealed(sealed) => BookState::Sealed {
                bids: sealed
                    .bids
                    .into_iter()
                    .map(sealed_bid)
                    .collect::<Result<_, _>>()?,
            },
            Book::Dutch(dutch) => BookState::Dutch {
                sold: dutch.sold.map(Winner::try_from).transpose()?,
            },
        };
        Ok(AuctionState {
            spec: Arc::new(spec),
            seq: state.seq,
            ends_at: UnixMicros(state.ends_at_us),
            extensions: state.extensions,
            bids_accepted: state.bids_accepted,
            closed,
            book,
            recent: state
                .recent
                .into_iter()
                .map(recent_bid)
                .collect::<Result<_, _>>()?,
        })
    }
}

fn closed(closed: record::Closed) -> Result<(CloseReason, Settlement), ProtoError> {
    let reason = close_reason("AuctionStateRecord.Closed.reason", closed.reason)?;
    let settlement = closed
        .settlement
        .ok_or(ProtoError::Missing("AuctionStateRecord.Closed.settlement"))?;
    Ok((reason, Settlement::try_from(settlement)?))
}

fn leader(leader: record::Leader) -> Result<LeaderState, ProtoError> {
    Ok(LeaderState {
        bidder: bidder("AuctionStateRecord.Leader.bidder_id", &leader.bidder_id)?,
        bid: bid_id(leader.bid_id_hi, leader.bid_id_lo),
        max: price("AuctionStateRecord.Leader.max", leader.max)?,
    })
}

fn sealed_bid(bid: record::SealedBid) -> Result<SealedBidState, ProtoError> {
    // A standing bid passed `Bid::new`, so its amount is at least 1 tick.
    if bid.amount == 0 {
        return Err(ProtoError::Bid(BidError::ZeroAmount));
    }
    Ok(SealedBidState {
        bidder: bidder("AuctionStateRecord.SealedBid.bidder_id", &bid.bidder_id)?,
        bid: bid_id(bid.bid_id_hi, bid.bid_id_lo),
        amount: price("AuctionStateRecord.SealedBid.amount", bid.amount)?,
        seq: bid.seq,
    })
}

fn recent_bid(recent: record::RecentBid) -> Result<RecentBid, ProtoError> {
    Ok(RecentBid {
        bidder: bidder("AuctionStateRecord.RecentBid.bidder_id", &recent.bidder_id)?,
        bid: bid_id(recent.bid_id_hi, recent.bid_id_lo),
        accepted: Accepted::try_from(
            recent
                .accepted
                .ok_or(ProtoError::Missing("AuctionStateRecord.RecentBid.accepted"))?,
        )?,
    })
}

/// Appends the header fields of a [`pb::Snapshot`] (format version, `lsn`, `taken_at`) to
/// `buf`. Follow it with [`encode_snapshot_auction`] once per auction, ascending by id.
pub fn encode_snapshot_header(lsn: u64, taken_at: UnixMicros, buf: &mut Vec<u8>) {
    let header = pb::Snapshot {
        format_version: SNAPSHOT_FORMAT_VERSION,
        lsn,
        taken_at_us: taken_at.0,
        auctions: Vec::new(),
        kafka: None,
    };
    header
        .encode(buf)
        .expect("invariant: a Vec grows as needed, so encoding into it never runs out of room");
}

/// Appends one auction to a snapshot being written after [`encode_snapshot_header`]: one
/// `Snapshot.auctions` entry (key, varint length, the record). Only this record is built in
/// memory, whatever the size of the snapshot.
pub fn encode_snapshot_auction(state: &AuctionState, buf: &mut Vec<u8>) {
    buf.push(AUCTIONS_ENTRY_KEY);
    pb::AuctionStateRecord::from(state)
        .encode_length_delimited(buf)
        .expect("invariant: a Vec grows as needed, so encoding into it never runs out of room");
}

/// Encodes a whole snapshot: the states `auctions` (as [`gavel_engine::Engine::snapshot`]
/// returns them, ascending by id), covering the log up to and including `lsn`, taken at
/// `taken_at`. The bytes are one [`pb::Snapshot`].
pub fn encode_snapshot(lsn: u64, taken_at: UnixMicros, auctions: &[AuctionState]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_snapshot_header(lsn, taken_at, &mut buf);
    for state in auctions {
        encode_snapshot_auction(state, &mut buf);
    }
    buf
}

/// Decodes a snapshot written by [`encode_snapshot`] (or piece by piece): its `lsn`, when it
/// was taken, and every auction's state, in the order written. Refuses bytes that are not a
/// [`pb::Snapshot`], an unknown format version, and the first invalid auction (with its
/// index). The states still have to pass `Engine::restore`.
pub fn decode_snapshot(
    bytes: &[u8],
) -> Result<(u64, UnixMicros, Vec<AuctionState>), SnapshotError> {
    let (lsn, taken_at, auctions, _) = decode_snapshot_with_position(bytes)?;
    Ok((lsn, taken_at, auctions))
}

/// Appends a Kafka log's position to a snapshot being written (after its auctions or
/// before: protobuf merges the fields of concatenated messages).
pub fn encode_snapshot_position(position: pb::KafkaPosition, buf: &mut Vec<u8>) {
    pb::Snapshot {
        kafka: Some(position),
        ..pb::Snapshot::default()
    }
    .encode(buf)
    .expect("invariant: a Vec grows as needed, so encoding into it never runs out of room");
}

/// [`decode_snapshot`], and the Kafka position the snapshot records, if any.
#[allow(clippy::type_complexity)] // the tuple of `decode_snapshot` plus one field
pub fn decode_snapshot_with_position(
    bytes: &[u8],
) -> Result<
    (
        u64,
        UnixMicros,
        Vec<AuctionState>,
        Option<pb::KafkaPosition>,
    ),
    SnapshotError,
> {
    let snapshot = pb::Snapshot::decode(bytes)?;
    if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: snapshot.format_version,
            expected: SNAPSHOT_FORMAT_VERSION,
        });
    }
    let auctions = snapshot
        .auctions
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            AuctionState::try_from(record).map_err(|error| SnapshotError::Auction { index, error })
        })
        .collect::<Result<_, _>>()?;
    Ok((
        snapshot.lsn,
        UnixMicros(snapshot.taken_at_us),
        auctions,
        snapshot.kafka,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_key_is_the_one_prost_writes() {
        let one_empty_auction = pb::Snapshot {
            auctions: vec![pb::AuctionStateRecord::default()],
            ..pb::Snapshot::default()
        };
        assert_eq!(one_empty_auction.encode_to_vec(), [AUCTIONS_ENTRY_KEY, 0]);
    }

    #[test]
    fn a_header_alone_is_an_empty_snapshot() {
        let mut buf = Vec::new();
        encode_snapshot_header(3, UnixMicros(4), &mut buf);
        assert_eq!(decode_snapshot(&buf), Ok((3, UnixMicros(4), Vec::new())));
        let position = pb::KafkaPosition {
            topic: "t".into(),
            next_offsets: vec![-1, 7],
            epochs: vec![0, 3],
        };
        encode_snapshot_position(position.clone(), &mut buf);
        assert_eq!(
            decode_snapshot_with_position(&buf),
            Ok((3, UnixMicros(4), Vec::new(), Some(position)))
        );
        assert_eq!(
            pb::Snapshot::decode(buf.as_slice()).map(|s| s.format_version),
            Ok(SNAPSHOT_FORMAT_VERSION)
        );
    }
}
