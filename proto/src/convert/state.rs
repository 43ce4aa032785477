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
//! - [`encode_snapshot_pruned`]: the results of pruned auctions (format version 2), after
//!   the auctions; [`encode_snapshot_position`]: a Kafka log node's snapshot also records
//!   where its states stand in the topic; [`decode_snapshot_parts`] reads all of it back.
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
    Accepted, AuctionId, AuctionSpec, AuctionState, BidError, BookState, CloseReason, LeaderState,
    PrunedAuction, RecentBid, SealedBidState, Settlement, Topic, UnixMicros, Winner,
};
use prost::Message;

use super::recent_packed;
use super::rules::close_reason;
use super::{bid_id, bid_id_halves, bidder, price};
use crate::pb;
use crate::pb::auction_state_record::{self as record, Book};
use crate::{ProtoError, SnapshotError};

/// The [`pb::Snapshot::format_version`] this code writes, and the newest it reads: 3, the
/// idempotency memories packed (`AuctionStateRecord.recent_packed`).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// The oldest [`pb::Snapshot::format_version`] this code reads: 1, from before pruned
/// results (read as a snapshot with none).
pub const SNAPSHOT_FORMAT_VERSION_OLDEST: u32 = 1;

/// The key of one `Snapshot.auctions` entry: field 4, wire type 2 (length-delimited), as
/// `(4 << 3) | 2`. One byte, because the field number is below 16.
const AUCTIONS_ENTRY_KEY: u8 = (4 << 3) | 2;
/// The key of one `Snapshot.pruned` entry: field 6, wire type 2.
const PRUNED_ENTRY_KEY: u8 = (6 << 3) | 2;

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
                settled_at_us: state.settled_at.0,
            }),
            book: Some(book),
            recent: Vec::new(),
            recent_packed: recent_packed::pack(&state.recent),
        }
    }
}

/// The idempotency memory as formats 1 and 2 wrote it (`AuctionStateRecord.recent`, one
/// message per entry); format 3 writes `recent_packed`. Kept for tools and tests that
/// write an older snapshot; a reader takes either.
pub fn recent_list(entries: &[RecentBid]) -> Vec<record::RecentBid> {
    entries
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
        .collect()
}

impl TryFrom<pb::AuctionStateRecord> for AuctionState {
    type Error = ProtoError;

    fn try_from(state: pb::AuctionStateRecord) -> Result<Self, ProtoError> {
        let spec = AuctionSpec::try_from(
            state
                .rules
                .ok_or(ProtoError::Missing("AuctionStateRecord.rules"))?,
        )?;
        let settled_at = UnixMicros(state.closed.as_ref().map_or(0, |c| c.settled_at_us));
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
            settled_at,
            book,
            recent: recent(state.recent, &state.recent_packed)?,
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

/// A pruned auction's result: in a snapshot, and the admin API's 410 body.
impl From<&PrunedAuction> for pb::PrunedAuction {
    fn from(result: &PrunedAuction) -> Self {
        pb::PrunedAuction {
            auction_id: result.id.0,
            topic: result.topic.as_str().to_owned(),
            close_reason: pb::CloseReason::from(result.reason).into(),
            settlement: Some(result.settlement.into()),
            seq: result.seq,
            settled_at_us: result.settled_at.0,
            pruned_at_us: result.pruned_at.0,
        }
    }
}

impl TryFrom<pb::PrunedAuction> for PrunedAuction {
    type Error = ProtoError;

    /// Parses every field; whether the sequence number is plausible is
    /// `Engine::restore_pruned`'s.
    fn try_from(result: pb::PrunedAuction) -> Result<Self, ProtoError> {
        let settlement = result
            .settlement
            .ok_or(ProtoError::Missing("PrunedAuction.settlement"))?;
        Ok(PrunedAuction {
            id: AuctionId(result.auction_id),
            topic: Topic::new(&result.topic).map_err(|error| ProtoError::Name {
                field: "PrunedAuction.topic",
                error,
            })?,
            reason: close_reason("PrunedAuction.close_reason", result.close_reason)?,
            settlement: Settlement::try_from(settlement)?,
            seq: result.seq,
            settled_at: UnixMicros(result.settled_at_us),
            pruned_at: UnixMicros(result.pruned_at_us),
        })
    }
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

/// The idempotency memory from either form (see [`recent_list`]); a record with both is
/// refused.
fn recent(list: Vec<record::RecentBid>, packed: &[u8]) -> Result<Vec<RecentBid>, ProtoError> {
    match (list.is_empty(), packed.is_empty()) {
        (_, true) => list.into_iter().map(recent_bid).collect(),
        (true, false) => recent_packed::unpack(packed),
        (false, false) => Err(ProtoError::Invalid {
            field: "AuctionStateRecord.recent_packed",
            reason: "both forms of the idempotency memory",
        }),
    }
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
        pruned: Vec::new(),
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

/// Appends the pruned auctions' results to a snapshot being written (after its auctions:
/// one `Snapshot.pruned` entry each, ascending by id, as
/// [`gavel_engine::Engine::snapshot_with_pruned`] returns them).
pub fn encode_snapshot_pruned(results: &[PrunedAuction], buf: &mut Vec<u8>) {
    for result in results {
        buf.push(PRUNED_ENTRY_KEY);
        pb::PrunedAuction::from(result)
            .encode_length_delimited(buf)
            .expect("invariant: a Vec grows as needed, so encoding into it never runs out of room");
    }
}

/// A decoded snapshot: everything [`encode_snapshot`], [`encode_snapshot_pruned`] and
/// [`encode_snapshot_position`] wrote.
#[derive(Clone, PartialEq, Debug)]
pub struct SnapshotParts {
    /// The LSN it covers.
    pub lsn: u64,
    /// When it was taken.
    pub taken_at: UnixMicros,
    /// Every auction held whole, in the order written.
    pub auctions: Vec<AuctionState>,
    /// Every pruned auction's result, in the order written (none in a version 1 snapshot).
    pub pruned: Vec<PrunedAuction>,
    /// With the Kafka log: where the states stand in the topic.
    pub kafka: Option<pb::KafkaPosition>,
}

/// Decodes a whole snapshot into its parts. Refuses bytes that are not a [`pb::Snapshot`],
/// a format version outside [`SNAPSHOT_FORMAT_VERSION_OLDEST`]..=[`SNAPSHOT_FORMAT_VERSION`],
/// and the first invalid auction or pruned result (with its index). The states still have
/// to pass `Engine::restore` and `Engine::restore_pruned`.
pub fn decode_snapshot_parts(bytes: &[u8]) -> Result<SnapshotParts, SnapshotError> {
    let snapshot = pb::Snapshot::decode(bytes)?;
    if !(SNAPSHOT_FORMAT_VERSION_OLDEST..=SNAPSHOT_FORMAT_VERSION)
        .contains(&snapshot.format_version)
    {
        return Err(SnapshotError::Version {
            found: snapshot.format_version,
            expected: SNAPSHOT_FORMAT_VERSION,
        });
    }
    Ok(SnapshotParts {
        lsn: snapshot.lsn,
        taken_at: UnixMicros(snapshot.taken_at_us),
        auctions: parse_each(snapshot.auctions, |index, error| SnapshotError::Auction {
            index,
            error,
        })?,
        pruned: parse_each(snapshot.pruned, |index, error| SnapshotError::Pruned {
            index,
            error,
        })?,
        kafka: snapshot.kafka,
    })
}

/// Parses every record; the first refused one fails the whole, named by its index.
fn parse_each<R, T: TryFrom<R, Error = ProtoError>>(
    records: Vec<R>,
    refused: fn(usize, ProtoError) -> SnapshotError,
) -> Result<Vec<T>, SnapshotError> {
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| T::try_from(record).map_err(|error| refused(index, error)))
        .collect()
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

/// Decodes a snapshot's header and auctions: [`decode_snapshot_parts`] without the pruned
/// results and the Kafka position (which a restore must not drop: it uses the parts).
pub fn decode_snapshot(
    bytes: &[u8],
) -> Result<(u64, UnixMicros, Vec<AuctionState>), SnapshotError> {
    let parts = decode_snapshot_parts(bytes)?;
    Ok((parts.lsn, parts.taken_at, parts.auctions))
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
            decode_snapshot_parts(&buf),
            Ok(SnapshotParts {
                lsn: 3,
                taken_at: UnixMicros(4),
                auctions: Vec::new(),
                pruned: Vec::new(),
                kafka: Some(position)
            })
        );
        assert_eq!(
            pb::Snapshot::decode(buf.as_slice()).map(|s| s.format_version),
            Ok(SNAPSHOT_FORMAT_VERSION)
        );
    }
}
