//! The byte layout of version 1 (`docs/edge-stream.md` is the contract; this file and the
//! doc's worked example are checked against each other by a test).
//!
//! ```text
//! frame  = version:u8  frame_no:u16  body_len:u16  crc32c:u32   (9 bytes, big-endian)
//!          body: TLV*                                          (body_len bytes)
//! TLV    = type:u8  len:u16  value                              (len bytes)
//! ```
//! The checksum (CRC-32C) covers the first five header bytes, then the body.

use crate::EdgeError;

/// The version this crate writes and reads.
pub const VERSION: u8 = 1;

/// Header bytes: version, frame number, body length, checksum.
pub const FRAME_HEADER_BYTES: usize = 9;

/// TLV header bytes: type and length.
pub(crate) const TLV_HEADER_BYTES: usize = 3;

/// The smallest `frame_bytes_max` an encoder accepts: a frame must hold the largest single
/// record (a keyframe of a settled auction with the longest topic, leader and winner).
pub const FRAME_BYTES_MIN: usize = 1024;

/// The largest keyframe value, in bytes: fixed fields, topic, leader, close and settlement.
pub(crate) const KEYFRAME_BYTES_MAX: usize = KEYFRAME_FIXED_BYTES
    + 2
    + crate::TOPIC_BYTES_MAX
    + 1
    + crate::BIDDER_BYTES_MAX
    + 9
    + 8
    + 1
    + WINNER_FIXED_BYTES
    + crate::BIDDER_BYTES_MAX;

const _: () =
    assert!(FRAME_HEADER_BYTES + TLV_HEADER_BYTES + KEYFRAME_BYTES_MAX <= FRAME_BYTES_MIN);
const _: () = assert!(crate::FRAME_BYTES_LIMIT <= FRAME_HEADER_BYTES + u16::MAX as usize);

/// TLV type: the full state of one auction.
pub(crate) const TLV_KEYFRAME: u8 = 0x01;
/// TLV type: delta records of any number of auctions.
pub(crate) const TLV_DELTAS: u8 = 0x02;
/// TLV type: an auction closed.
pub(crate) const TLV_CLOSED: u8 = 0x03;
/// TLV type: an auction settled.
pub(crate) const TLV_SETTLED: u8 = 0x04;

/// Keyframe fixed part: id, epoch, seq, ends, bids, changed, price (u64 each), watchers,
/// bidders (u32 each), flags (u8).
pub(crate) const KEYFRAME_FIXED_BYTES: usize = 7 * 8 + 2 * 4 + 1;
/// Keyframe flag: a price follows the fixed part's price field (else it is absent).
pub(crate) const KEY_PRICE: u8 = 0x01;
/// Keyframe flag: a leader string follows the topic.
pub(crate) const KEY_LEADER: u8 = 0x02;
/// Keyframe flag: a close (reason u8, closed_at u64) follows.
pub(crate) const KEY_CLOSED: u8 = 0x04;
/// Keyframe flag: a settlement (settled_at u64, winner flag u8, winner) follows.
pub(crate) const KEY_SETTLED: u8 = 0x08;

/// Winner fixed part: price, bid id high, bid id low (u64 each), then the bidder's length.
pub(crate) const WINNER_FIXED_BYTES: usize = 3 * 8 + 1;

/// Delta flag: an explicit sequence gap follows (else the sequence number grows by one).
pub(crate) const D_SEQ: u8 = 0x01;
/// Delta flag: a zigzag price delta follows.
pub(crate) const D_PRICE: u8 = 0x02;
/// Delta flag: the price became absent.
pub(crate) const D_PRICE_NONE: u8 = 0x04;
/// Delta flag: a leader byte follows.
pub(crate) const D_LEADER: u8 = 0x08;
/// Delta flag: a zigzag end-time delta follows.
pub(crate) const D_ENDS: u8 = 0x10;
/// Delta flag: an explicit accepted-bids delta follows (else it grows with the sequence).
pub(crate) const D_BIDS: u8 = 0x20;
/// Delta flag: watchers and bidders connected follow, as plain varints.
pub(crate) const D_PRESENCE: u8 = 0x40;
/// The one delta flag version 1 reserves; set, the record is malformed.
pub(crate) const D_RESERVED: u8 = 0x80;

/// Leader byte: the leader is absent.
pub(crate) const LEADER_NONE: u8 = 0xff;
/// Leader byte bit: define the slot in the low six bits (a length and the bytes follow).
pub(crate) const LEADER_DEFINE: u8 = 0x80;
/// Slots of the per-stream leader table.
pub(crate) const LEADER_SLOTS: usize = 64;
/// Mask of a slot in a leader byte.
pub(crate) const LEADER_SLOT_MASK: u8 = 0x3f;
const _: () = assert!(LEADER_SLOTS == LEADER_SLOT_MASK as usize + 1);

/// Longest varint (a `u64` in 7-bit groups), in bytes.
const VARINT_BYTES_MAX: usize = 10;

/// Appends `value` as an unsigned LEB128 varint (7-bit groups, least significant first).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Maps a signed value to an unsigned one, small magnitudes to small numbers:
/// 0 → 0, -1 → 1, 1 → 2, -2 → 3, …
pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The checksum of a frame: its first five header bytes, then its body.
pub(crate) fn checksum(head: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(head), body)
}

/// Reads fields from a byte slice; every read checks the bytes left and fails with
/// `error`, never panics.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    error: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`; running out is `Malformed(error)`.
    pub(crate) fn new(bytes: &'a [u8], error: &'static str) -> Reader<'a> {
        Reader { bytes, error }
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], EdgeError> {
        if self.bytes.len() < n {
            return Err(EdgeError::Malformed(self.error));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, EdgeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, EdgeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, EdgeError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, EdgeError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    /// A LEB128 varint of at most ten bytes whose value fits a `u64`.
    pub(crate) fn varint(&mut self) -> Result<u64, EdgeError> {
        let mut value = 0_u64;
        for i in 0..VARINT_BYTES_MAX {
            let byte = self.u8()?;
            // The tenth byte holds only the top bit of a u64.
            if i == VARINT_BYTES_MAX - 1 && byte > 1 {
                return Err(EdgeError::Malformed("varint above u64"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(EdgeError::Malformed("varint longer than ten bytes"))
    }

    /// A zigzag varint.
    pub(crate) fn zigzag(&mut self) -> Result<i64, EdgeError> {
        Ok(unzigzag(self.varint()?))
    }

    /// `len` bytes of UTF-8.
    pub(crate) fn str(&mut self, len: usize) -> Result<&'a str, EdgeError> {
        std::str::from_utf8(self.take(len)?).map_err(|_| EdgeError::Malformed("string not UTF-8"))
    }
}

/// Appends a string with a one-byte length. Invariant: the encoder checked the length.
pub(crate) fn put_str8(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= usize::from(u8::MAX));
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_numbers() {
        for (signed, unsigned) in [(0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4)] {
            assert_eq!(zigzag(signed), unsigned);
            assert_eq!(unzigzag(unsigned), signed);
        }
        assert_eq!(zigzag(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
        assert_eq!(unzigzag(u64::MAX), i64::MIN);
    }

    #[test]
    fn varints_round_trip_and_refuse_overflow() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut reader = Reader::new(&out, "short");
            assert_eq!(reader.varint(), Ok(value));
            assert!(reader.is_empty());
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Reader::new(&over, "short").varint(),
            Err(EdgeError::Malformed("varint above u64"))
        );
        assert_eq!(
            Reader::new(&[0x80, 0x80], "short").varint(),
            Err(EdgeError::Malformed("short"))
        );
    }
}
