//! The idempotency memory of a snapshot in format version 3:
//! `AuctionStateRecord.recent_packed`, one byte string per auction instead of one message
//! with two strings per entry (formats 1 and 2, `AuctionStateRecord.recent`). An auction
//! with a full window holds 1,024 entries mostly from a few bidders, so the ids are listed
//! once and the entries refer to them: about a third of the bytes, and decoded without an
//! allocation per entry.
//!
//! Layout (every integer an unsigned LEB128 varint unless said otherwise):
//!
//! | field | meaning |
//! |---|---|
//! | `bidders` | count of the bidder table |
//! | per bidder: `len`, `len` bytes | a bidder id (UTF-8, checked as any bidder id) |
//! | `entries` | count of entries, oldest first |
//! | per entry: `bidder` | index into the table |
//! | `bid_id` | 16 bytes, little-endian |
//! | `seq` | minus the previous entry's (wrapping; the first: minus 0) |
//! | `price` | minus the previous entry's (wrapping) |
//! | `leader` | 0: none; `i + 1`: the table's bidder `i` |
//! | `ends_at` | minus the previous entry's (wrapping) |
//!
//! Deltas keep the usual entry (sequence +1, price + one increment, the same end) at a byte
//! or two per number; any values round-trip.

use std::collections::HashMap;

use gavel_engine::{Accepted, BidId, BidderId, RecentBid, UnixMicros};
use prost::encoding::{decode_varint, encode_varint};

use super::price;
use crate::ProtoError;

const FIELD: &str = "AuctionStateRecord.recent_packed";

fn invalid(reason: &'static str) -> ProtoError {
    ProtoError::Invalid {
        field: FIELD,
        reason,
    }
}

/// Packs `entries` (oldest first); empty for none.
pub(super) fn pack(entries: &[RecentBid]) -> Vec<u8> {
    if entries.is_empty() {
        return Vec::new();
    }
    let mut table: Vec<BidderId> = Vec::new();
    let mut index: HashMap<BidderId, u64> = HashMap::new();
    let mut slot = |bidder: BidderId| -> u64 {
        *index.entry(bidder).or_insert_with(|| {
            table.push(bidder);
            table.len() as u64 - 1
        })
    };
    let mut body = Vec::with_capacity(entries.len() * 24);
    let mut previous = Accepted {
        seq: 0,
        price: 0,
        leader: None,
        ends_at: UnixMicros(0),
    };
    for entry in entries {
        let a = entry.accepted;
        encode_varint(slot(entry.bidder), &mut body);
        body.extend_from_slice(&entry.bid.0.to_le_bytes());
        encode_varint(a.seq.wrapping_sub(previous.seq), &mut body);
        encode_varint(a.price.wrapping_sub(previous.price), &mut body);
        encode_varint(a.leader.map_or(0, |l| slot(l) + 1), &mut body);
        encode_varint(a.ends_at.0.wrapping_sub(previous.ends_at.0), &mut body);
        previous = a;
    }
    let mut out = Vec::with_capacity(body.len() + table.len() * 17 + 8);
    encode_varint(table.len() as u64, &mut out);
    for bidder in &table {
        let id = bidder.as_str().as_bytes();
        encode_varint(id.len() as u64, &mut out);
        out.extend_from_slice(id);
    }
    encode_varint(entries.len() as u64, &mut out);
    out.extend_from_slice(&body);
    out
}

fn varint(buf: &mut &[u8]) -> Result<u64, ProtoError> {
    decode_varint(buf).map_err(|_| invalid("a number is cut short or too long"))
}

/// A count that cannot exceed what `buf` could hold at `min_bytes` per item (so a corrupt
/// count allocates nothing large).
fn count(buf: &mut &[u8], min_bytes: usize) -> Result<usize, ProtoError> {
    let n = usize::try_from(varint(buf)?).map_err(|_| invalid("a count out of range"))?;
    if n.saturating_mul(min_bytes) > buf.len() {
        return Err(invalid("a count larger than the bytes that follow"));
    }
    Ok(n)
}

fn table(buf: &mut &[u8]) -> Result<Vec<BidderId>, ProtoError> {
    let n = count(buf, 2)?;
    let mut table = Vec::with_capacity(n);
    for _ in 0..n {
        let len = count(buf, 1)?;
        let (id, rest) = buf.split_at(len);
        *buf = rest;
        let text = std::str::from_utf8(id).map_err(|_| invalid("a bidder id is not UTF-8"))?;
        let bidder = BidderId::new(text).map_err(|error| ProtoError::Name {
            field: FIELD,
            error,
        })?;
        table.push(bidder);
    }
    Ok(table)
}

/// The entries of a packed memory (see the module docs); every value is checked as the
/// list form's conversion checks it.
pub(super) fn unpack(mut buf: &[u8]) -> Result<Vec<RecentBid>, ProtoError> {
    let buf = &mut buf;
    let table = table(buf)?;
    let bidder = |i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| table.get(i).copied())
            .ok_or_else(|| invalid("a bidder index past the table"))
    };
    // Each entry takes at least 21 bytes: five varints and the 16-byte bid id.
    let n = count(buf, 21)?;
    let mut entries = Vec::with_capacity(n);
    let (mut seq, mut amount, mut ends_at) = (0u64, 0u64, 0u64);
    for _ in 0..n {
        let who = bidder(varint(buf)?)?;
        let (id, rest) = buf
            .split_first_chunk::<16>()
            .ok_or_else(|| invalid("a bid id is cut short"))?;
        *buf = rest;
        seq = seq.wrapping_add(varint(buf)?);
        amount = amount.wrapping_add(varint(buf)?);
        let leader = match varint(buf)? {
            0 => None,
            i => Some(bidder(i - 1)?),
        };
        ends_at = ends_at.wrapping_add(varint(buf)?);
        entries.push(RecentBid {
            bidder: who,
            bid: BidId(u128::from_le_bytes(*id)),
            accepted: Accepted {
                seq,
                price: price("AuctionStateRecord.recent_packed.price", amount)?,
                leader,
                ends_at: UnixMicros(ends_at),
            },
        });
    }
    if !buf.is_empty() {
        return Err(invalid("bytes after the last entry"));
    }
    Ok(entries)
}
