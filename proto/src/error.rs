//! The errors of the wire → engine conversions: [`ProtoError`] for one message,
//! [`RecordError`] for one write-ahead-log record's bytes, [`SnapshotError`] for a whole
//! snapshot's bytes.

use gavel_engine::{BidError, NameError, SpecError};
use thiserror::Error;

/// Why a wire message could not become an engine value. Small and `Copy`, because it is
/// built on the bid path for every malformed bid.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ProtoError {
    /// A required field or oneof was absent, or a required enum was `..._UNSPECIFIED`.
    #[error("missing {0}")]
    Missing(&'static str),
    /// An enum field held a value this version of the schema does not know.
    #[error("{field}: unknown enum value {value}")]
    UnknownEnum {
        /// The field, as `Message.field`.
        field: &'static str,
        /// The value received.
        value: i32,
    },
    /// A bid's amounts were refused: zero, above the price range, or a maximum below the
    /// amount.
    #[error("bid: {0}")]
    Bid(#[from] BidError),
    /// Auction rules were refused: bad increment table, Dutch schedule, prices, times or soft
    /// close.
    #[error("auction rules: {0}")]
    Spec(#[from] SpecError),
    /// A bidder id or topic was malformed.
    #[error("{field}: {error}")]
    Name {
        /// The field, as `Message.field`.
        field: &'static str,
        /// What was wrong with it.
        error: NameError,
    },
    /// A bid id was zero, which is what a client that forgot to set it sends.
    #[error("bid id must not be zero")]
    ZeroBidId,
    /// A price outside the range the engine accepts (above `gavel_engine::PRICE_MAX`).
    #[error("{field}: {value} overflows the price range")]
    PriceOverflow {
        /// The field, as `Message.field`.
        field: &'static str,
        /// The value received.
        value: u64,
    },
    /// A field contradicted another field or the engine's invariants (corrupt content).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as `Message.field`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a write-ahead-log record's payload could not become an engine event. Built only for
/// a bad record, which stops a replay, so it may carry prost's decode error (not `Copy`),
/// like [`SnapshotError`].
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum RecordError {
    /// The bytes are not a protobuf `gavel.v1.Record` (the cause says why).
    #[error("not a gavel.v1.Record")]
    Decode(#[from] prost::DecodeError),
    /// The record decoded, but its content was refused.
    #[error(transparent)]
    Invalid(#[from] ProtoError),
}

/// Why a snapshot's bytes could not become engine states. Not on the hot path (a node reads
/// one snapshot at start), so it may carry prost's decode error, which is not `Copy`; a
/// [`ProtoError`] stays small and `Copy` for the bid path.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum SnapshotError {
    /// The bytes are not a protobuf `Snapshot` (truncated, corrupt, or not a snapshot).
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The snapshot's format version is not one this build reads.
    #[error("snapshot format version {found} is unknown (this build reads 1 to {expected})")]
    Version {
        /// The version found (0: the field is missing).
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// One auction's state was refused.
    #[error("snapshot auction #{index}: {error}")]
    Auction {
        /// Position of the auction in the snapshot, from 0.
        index: usize,
        /// Why it was refused.
        error: ProtoError,
    },
    /// One pruned auction's result was refused.
    #[error("snapshot pruned auction #{index}: {error}")]
    Pruned {
        /// Position of the result in the snapshot, from 0.
        index: usize,
        /// Why it was refused.
        error: ProtoError,
    },
}
