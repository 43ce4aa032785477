//! Record framing: the fixed header in front of every payload, its encoder and decoder.
//!
//! A record is `header ‖ payload`. The header (all integers little-endian):
//!
//! | offset | bytes | field         | meaning                                                    |
//! |-------:|------:|---------------|------------------------------------------------------------|
//! | 0      | 4     | `payload_len` | payload bytes that follow the header (≤ [`PAYLOAD_BYTES_MAX`]) |
//! | 4      | 1     | `version`     | frame format version, [`VERSION`]                          |
//! | 5      | 8     | `lsn`         | log sequence number of this record                          |
//! | 13     | 8     | `batch_start` | segment offset where this record's write batch begins       |
//! | 21     | 4     | `crc`         | CRC32C (Castagnoli) of bytes 0..21 ‖ `offset` (u64 LE) ‖ payload |
//! | 25     | n     | payload       | opaque bytes                                                |
//!
//! `offset` is the record's own byte position in its segment. It is not stored — the reader
//! knows where it is reading — but it is inside the checksum, so a record copied to another
//! offset, a swapped record, or a bit flip in any header field or the payload fails the CRC.
//! `batch_start` lets recovery tell a torn last batch from corruption in synced data (see
//! `segment`).

use thiserror::Error;

use crate::Lsn;

/// Bytes in a record header.
pub const HEADER_BYTES: usize = 25;
/// The frame format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Largest payload a record may carry (1 MiB).
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Largest encoded record (header plus the largest payload).
pub const RECORD_BYTES_MAX: usize = HEADER_BYTES + PAYLOAD_BYTES_MAX;

/// Bytes of the header covered by the CRC (everything before the CRC field).
const CRC_COVERED_HEADER_BYTES: usize = 21;

const _: () = assert!(CRC_COVERED_HEADER_BYTES + 4 == HEADER_BYTES);
const _: () = assert!(PAYLOAD_BYTES_MAX <= u32::MAX as usize);

/// Why bytes could not be decoded as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Fewer bytes remain than the header or the declared payload needs.
    #[error("incomplete record: {needed} bytes needed, {available} available")]
    Incomplete {
        /// Bytes the record needs (header, or header plus payload).
        needed: u64,
        /// Bytes that remain.
        available: u64,
    },
    /// The version byte is not one this code reads.
    #[error("unknown record format version {version}")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The declared payload length exceeds [`PAYLOAD_BYTES_MAX`].
    #[error("record payload length {len} exceeds the maximum {PAYLOAD_BYTES_MAX}")]
    TooLarge {
        /// The declared payload length.
        len: u64,
    },
    /// The stored CRC does not match the header, offset and payload.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC computed over what was read.
        computed: u32,
    },
}

/// A decoded, not yet checksum-verified record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload bytes that follow the header.
    pub payload_len: u32,
    /// Log sequence number.
    pub lsn: Lsn,
    /// Segment offset where the record's write batch begins.
    pub batch_start: u64,
    /// Stored CRC32C.
    pub crc: u32,
    /// The raw header bytes (the CRC covers the first 21).
    raw: [u8; HEADER_BYTES],
}

impl Header {
    /// Encoded size of the whole record (header plus payload).
    pub fn record_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.payload_len)
    }

    /// Decodes a header and checks its version and length; the CRC is checked by
    /// [`Header::verify`] once the payload has been read.
    pub fn decode(raw: &[u8; HEADER_BYTES]) -> Result<Self, FrameError> {
        let payload_len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let version = raw[4];
        if version != VERSION {
            return Err(FrameError::UnknownVersion { version });
        }
        if payload_len as usize > PAYLOAD_BYTES_MAX {
            return Err(FrameError::TooLarge {
                len: u64::from(payload_len),
            });
        }
        Ok(Self {
            payload_len,
            lsn: u64_at(raw, 5),
            batch_start: u64_at(raw, 13),
            crc: u32::from_le_bytes([raw[21], raw[22], raw[23], raw[24]]),
            raw: *raw,
        })
    }

    /// Checks the CRC of this header read at `offset` with `payload`.
    pub fn verify(&self, offset: u64, payload: &[u8]) -> Result<(), FrameError> {
        let computed = checksum(&self.raw[..CRC_COVERED_HEADER_BYTES], offset, payload);
        if computed == self.crc {
            Ok(())
        } else {
            Err(FrameError::Checksum {
                stored: self.crc,
                computed,
            })
        }
    }
}

fn u64_at(raw: &[u8; HEADER_BYTES], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&raw[at..at + 8]);
    u64::from_le_bytes(word)
}

fn checksum(covered_header: &[u8], offset: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(covered_header);
    let crc = crc32c::crc32c_append(crc, &offset.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends the record `(lsn, payload)` to `out`, framed for segment position `offset` in a
/// write batch that starts at `batch_start`.
///
/// # Panics
/// If `payload` is longer than [`PAYLOAD_BYTES_MAX`]: callers check the length at the edge
/// (`Wal::append` refuses such payloads), so a longer one here is a programmer error.
pub fn encode(out: &mut Vec<u8>, lsn: Lsn, offset: u64, batch_start: u64, payload: &[u8]) {
    assert!(
        payload.len() <= PAYLOAD_BYTES_MAX,
        "payload over the maximum"
    );
    let len = payload.len() as u32; // cannot truncate: checked just above
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4] = VERSION;
    header[5..13].copy_from_slice(&lsn.to_le_bytes());
    header[13..21].copy_from_slice(&batch_start.to_le_bytes());
    let crc = checksum(&header[..CRC_COVERED_HEADER_BYTES], offset, payload);
    header[21..25].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Decodes and verifies the record at the start of `bytes`, which sit at segment position
/// `offset`. Returns the header and the payload.
pub fn decode(bytes: &[u8], offset: u64) -> Result<(Header, &[u8]), FrameError> {
    let Some(raw) = bytes.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Incomplete {
            needed: HEADER_BYTES as u64,
            available: bytes.len() as u64,
        });
    };
    let header = Header::decode(raw)?;
    let end = HEADER_BYTES + header.payload_len as usize;
    let Some(payload) = bytes.get(HEADER_BYTES..end) else {
        return Err(FrameError::Incomplete {
            needed: end as u64,
            available: bytes.len() as u64,
        });
    };
    header.verify(offset, payload)?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 100, 90, b"hello");
        assert_eq!(buf.len(), HEADER_BYTES + 5);
        let (h, p) = decode(&buf, 100).unwrap();
        assert_eq!(h.lsn, 7);
        assert_eq!(h.batch_start, 90);
        assert_eq!(p, b"hello");
    }

    #[test]
    fn wrong_offset_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 0, 0, b"x");
        assert!(matches!(decode(&buf, 25), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 4096, 4000, b"payload bytes");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad, 4096).is_err(), "bit {bit} flip not detected");
        }
    }

    #[test]
    fn zeros_are_not_a_record() {
        assert_eq!(
            decode(&[0u8; 64], 0),
            Err(FrameError::UnknownVersion { version: 0 })
        );
    }

    #[test]
    fn oversize_length_is_refused_before_reading() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 0, 0, b"x");
        buf[0..4].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(decode(&buf, 0), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn short_input_is_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 0, 0, b"abc");
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut], 0), Err(FrameError::Incomplete { .. })),
                "cut {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(lsn: u64, offset: u64, batch_start: u64, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = Vec::new();
            encode(&mut buf, lsn, offset, batch_start, &payload);
            let (h, p) = decode(&buf, offset).unwrap();
            prop_assert_eq!(h.lsn, lsn);
            prop_assert_eq!(h.batch_start, batch_start);
            prop_assert_eq!(p, &payload[..]);
            prop_assert_eq!(h.record_bytes() as usize, buf.len());
        }
    }
}
