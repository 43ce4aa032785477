//! Conversions between the generated wire types ([`crate::pb`]) and the engine's types.
//!
//! Engine → wire conversions are infallible `From` impls. Wire → engine conversions are
//! `TryFrom` impls (or methods, where the engine value needs more than the message, such as
//! the bidder's certificate identity) that return a [`ProtoError`] for every bad input and
//! never panic on anything a peer sends.
//!
//! - [`bid`]: bids and bid outcomes.
//! - [`rules`]: auction rules, settlements, phases and close reasons.
//! - [`snapshot`]: auction snapshots and the close and settlement stream messages.
//! - [`state`]: engine snapshots (auction states) ↔ the WAL's snapshot messages.
//! - [`wal`]: events ↔ write-ahead-log records.

pub mod bid;
mod recent_packed;
mod record_fast;
pub mod rules;
pub mod snapshot;
pub mod state;
pub mod wal;

use gavel_engine::{BidId, BidderId, PRICE_MAX, Price};

use crate::ProtoError;

/// Joins the two wire halves of a 128-bit bid id.
pub fn bid_id(hi: u64, lo: u64) -> BidId {
    BidId((u128::from(hi) << 64) | u128::from(lo))
}

/// Splits a bid id into its wire halves `(hi, lo)`.
pub fn bid_id_halves(id: BidId) -> (u64, u64) {
    // Casts: deliberate truncation to the high and low 64 bits.
    ((id.0 >> 64) as u64, id.0 as u64)
}

/// Parses a bidder id field.
pub(crate) fn bidder(field: &'static str, text: &str) -> Result<BidderId, ProtoError> {
    BidderId::new(text).map_err(|error| ProtoError::Name { field, error })
}

/// Parses an optional bidder id field (a leader).
pub(crate) fn bidder_opt(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<BidderId>, ProtoError> {
    text.map(|t| bidder(field, t)).transpose()
}

/// Checks that a price read from the wire is within the engine's range.
pub(crate) fn price(field: &'static str, value: u64) -> Result<Price, ProtoError> {
    if value > PRICE_MAX {
        return Err(ProtoError::PriceOverflow { field, value });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bid_id_halves_round_trip() {
        for id in [
            0,
            1,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX,
        ] {
            let (hi, lo) = bid_id_halves(BidId(id));
            assert_eq!(bid_id(hi, lo), BidId(id));
        }
        assert_eq!(
            bid_id_halves(BidId(u128::MAX - 1)),
            (u64::MAX, u64::MAX - 1)
        );
        assert_eq!(bid_id(1, 2), BidId((1 << 64) | 2));
    }
}
