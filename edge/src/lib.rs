//! `gavel-edge-proto`: the compact edge stream (`docs/edge-stream.md`), sans-IO: the node's
//! stream messages in, bounded binary frames out, and back to full auction states.
//!
//! Inside:
//! - [`EdgeEncoder`] (`encode.rs`): one per subscriber stream; turns the `ServerMessage`s the
//!   fan-out hands a connection (price updates, snapshots, closes, settlements) into frames
//!   of at most `frame_bytes_max` bytes, keeping per auction only what it last sent;
//! - [`EdgeDecoder`] (`decode.rs`): one per stream; checks each frame (length, version,
//!   checksum, frame number) and yields the full [`AuctionState`] of every auction a frame
//!   touched, or says which auction needs a keyframe;
//! - [`frame_len`]: where a frame ends in a byte stream (for a QUIC stream reader);
//! - `wire.rs`: the byte layout — header, TLV types, varints and zigzag.
//!
//! Why a crate of its own and not a module of `gavel-proto`: the edge agent needs this codec
//! and nothing of prost's generated JSON or the engine conversions beyond the message types,
//! and the node's protobuf crate stays free of a second wire format's state machines. It
//! depends on `gavel-proto` only for the message types it reads.
//!
//! Architecture invariant: no I/O, no clock, no async runtime; a decoder never panics on
//! any bytes and never yields a state the encoder did not send.

mod decode;
mod encode;
#[cfg(test)]
mod tests;
mod wire;

use std::sync::Arc;

pub use decode::{Decoded, EdgeDecoder, frame_len};
pub use encode::{EdgeEncoder, Encoded};
pub use wire::{FRAME_BYTES_MIN, FRAME_HEADER_BYTES, VERSION};

/// The largest frame, in bytes, the header's 16-bit body length allows (header included).
pub const FRAME_BYTES_LIMIT: usize = FRAME_HEADER_BYTES + u16::MAX as usize;

/// Longest topic the encoder sends, in bytes (the node's topic limit).
pub const TOPIC_BYTES_MAX: usize = 256;

/// Longest bidder id (leader, winner) the encoder sends, in bytes (the node's bidder limit).
pub const BIDDER_BYTES_MAX: usize = 32;

/// The public state of one auction as the edge stream carries it: everything a
/// `PriceUpdate` carries, and the close and settlement once announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuctionState {
    /// The auction.
    pub auction_id: u64,
    /// Its topic.
    pub topic: Arc<str>,
    /// Epoch of the latest change included.
    pub epoch: u64,
    /// Sequence number of the latest change included.
    pub seq: u64,
    /// Visible price, in ticks; `None` for sealed auctions until they settle.
    pub price: Option<u64>,
    /// Visible leader's bidder id (English only).
    pub leader: Option<Arc<str>>,
    /// Current end after extensions, microseconds since the Unix epoch.
    pub ends_at_us: u64,
    /// Accepted bids so far.
    pub bids_accepted: u64,
    /// When the latest price change was decided (`PriceUpdate.accepted_at_us`,
    /// `AuctionSnapshot.changed_at_us`), microseconds since the Unix epoch.
    pub changed_at_us: u64,
    /// Presence: connections watching the auction.
    pub watchers: u32,
    /// Presence: bidder connections open on the node.
    pub bidders_connected: u32,
    /// The close, once announced.
    pub closed: Option<Closed>,
    /// The settlement, once announced.
    pub settled: Option<Settled>,
}

/// An auction stopped taking bids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Why: the `gavel.v1.CloseReason` number (0 when a snapshot did not say).
    pub reason: u8,
    /// When, microseconds since the Unix epoch (0 when only a snapshot said it closed).
    pub closed_at_us: u64,
}

/// An auction's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// When, microseconds since the Unix epoch (0 when only a snapshot said it settled).
    pub settled_at_us: u64,
    /// The winner; `None` when nobody won.
    pub winner: Option<Winner>,
}

/// Who won, with which bid, at which price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Winner {
    /// The winning bidder's id.
    pub bidder_id: Arc<str>,
    /// High 64 bits of the winning bid id.
    pub bid_id_hi: u64,
    /// Low 64 bits of the winning bid id.
    pub bid_id_lo: u64,
    /// Clearing price, in ticks.
    pub price: u64,
}

/// Why bytes are not a valid edge frame, or why one auction's state cannot be trusted.
///
/// Frame-level errors (everything but the last three) reject the whole frame and drop every
/// auction's state: the stream must be restarted (re-subscribe) to get keyframes. The last
/// three concern one auction, come as [`Decoded::KeyframeNeeded`], and drop that auction
/// only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// Fewer bytes than the header or its declared body length.
    #[error("truncated frame: {got} of {needed} bytes")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes there are.
        got: usize,
    },
    /// The version byte is not one this decoder speaks.
    #[error("unknown edge stream version {0}")]
    UnknownVersion(u8),
    /// A declared length beyond what is allowed or present: a frame above the decoder's
    /// limit, bytes after the declared end, or a TLV running past its frame.
    #[error("forged length: {declared} bytes declared, {limit} allowed")]
    ForgedLength {
        /// The declared length, in bytes.
        declared: usize,
        /// What was allowed or present, in bytes.
        limit: usize,
    },
    /// The checksum does not match the bytes: the frame was damaged.
    #[error("corrupt frame: checksum {sent:#010x}, computed {computed:#010x}")]
    Corrupt {
        /// The checksum in the header.
        sent: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// The frame number is not the next one: frames were lost, so deltas cannot be applied.
    #[error("frame gap: expected frame {expected}, got {got}")]
    FrameGap {
        /// The next frame number.
        expected: u16,
        /// The frame number received.
        got: u16,
    },
    /// A checksummed frame whose contents break the format (a bad varint, a reserved flag,
    /// a TLV too short for its fields): the encoder is faulty.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// An update for an auction this stream sent no keyframe for (or whose state was
    /// dropped).
    #[error("auction {auction}: no keyframe to apply an update to")]
    NoKeyframe {
        /// The auction.
        auction: u64,
    },
    /// A close or settlement that does not follow the auction's state: an older or equal
    /// sequence number, or another epoch.
    #[error("auction {auction}: seq gap, held ({epoch}, {seq}), got ({got_epoch}, {got_seq})")]
    SeqGap {
        /// The auction.
        auction: u64,
        /// Epoch held.
        epoch: u64,
        /// Sequence number held.
        seq: u64,
        /// Epoch received.
        got_epoch: u64,
        /// Sequence number received.
        got_seq: u64,
    },
    /// A keyframe for a new auction beyond the decoder's bound on auctions.
    #[error("auction {auction}: more auctions than the decoder holds ({max})")]
    TooManyAuctions {
        /// The auction.
        auction: u64,
        /// The bound.
        max: usize,
    },
}

impl EdgeError {
    /// Whether the error concerns one auction only (the rest of the frame was applied).
    pub fn is_per_auction(&self) -> bool {
        matches!(
            self,
            EdgeError::NoKeyframe { .. }
                | EdgeError::SeqGap { .. }
                | EdgeError::TooManyAuctions { .. }
        )
    }
}
