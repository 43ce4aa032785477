//! Length-delimited framing of protobuf messages on a byte stream (a QUIC stream), shared by
//! the node and the bidder SDK; sans-IO: bytes in, whole messages out.
//!
//! A frame is the standard protobuf "delimited" format: the message length as a varint, then
//! the message (what `prost::Message::encode_length_delimited` writes). Inside:
//! - [`encode`]: appends one frame to a buffer;
//! - [`FrameDecoder`]: takes bytes as they arrive and yields whole frames or messages,
//!   refusing a declared length above its maximum *before* buffering any of it;
//! - [`FrameError`]: why a stream's bytes are not frames;
//! - [`ALPN`]: the protocol name a QUIC connection negotiates for this framing.

use prost::Message;

/// The TLS application protocol (ALPN) of Gavel's QUIC streams: `gavel.v1` messages in these
/// frames.
pub const ALPN: &[u8] = b"gavel/1";

/// Longest varint length prefix, in bytes (a `u64` in 7-bit groups).
pub const LENGTH_PREFIX_BYTES_MAX: usize = 10;

/// Appends `message` to `out` as one frame (varint length, then the message).
pub fn encode<M: Message>(message: &M, out: &mut Vec<u8>) {
    let len = message.encoded_len();
    out.reserve(prost::length_delimiter_len(len) + len);
    message
        .encode_length_delimited(out)
        .expect("a Vec grows as needed, so encoding into it cannot run out of room");
}

/// Why bytes on a stream are not valid frames.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame declared more bytes than the limit; nothing of it was buffered. The stream's
    /// framing cannot be trusted past this point: the decoder refuses everything after it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared length, in bytes.
        len: u64,
        /// The limit, in bytes.
        max: usize,
    },
    /// The length prefix is not a varint (over ten bytes, or above `u64::MAX`). Fatal to the
    /// stream, like [`FrameError::TooLarge`].
    #[error("malformed frame length prefix")]
    BadLength,
    /// A whole frame arrived, but its bytes are not the expected message. The framing is
    /// intact: the next frame can still be read.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl FrameError {
    /// Whether the stream must be closed: no frame can be read after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Malformed(_))
    }
}

/// Buffered bytes above which consumed bytes are moved out before appending more.
const COMPACT_BYTES_MIN: usize = 4096;

/// Splits a byte stream into frames of at most `frame_bytes_max` bytes each.
///
/// Memory is bounded: the buffer holds at most one partial frame (its declared length was
/// checked) plus the last chunk given to [`FrameDecoder::push`], as long as the caller
/// takes every available frame after each push.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    frame_bytes_max: usize,
    /// Set by a fatal error; returned again on every later call.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `frame_bytes_max` bytes (prefix excluded).
    pub fn new(frame_bytes_max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            frame_bytes_max,
            failed: None,
        }
    }

    /// The frame size limit, in bytes.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && (self.start == self.buf.len() || self.start >= COMPACT_BYTES_MIN) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's payload, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let pending = &self.buf[self.start..];
        let (len, prefix_len) = match read_varint(pending) {
            Varint::Value(len, prefix_len) => (len, prefix_len),
            Varint::Incomplete => return Ok(None),
            Varint::Invalid => return Err(self.fail(FrameError::BadLength)),
        };
        let too_large = FrameError::TooLarge {
            len,
            max: self.frame_bytes_max,
        };
        let Ok(len) = usize::try_from(len) else {
            return Err(self.fail(too_large));
        };
        if len > self.frame_bytes_max {
            return Err(self.fail(too_large));
        }
        if pending.len() - prefix_len < len {
            return Ok(None);
        }
        let from = self.start + prefix_len;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// The next whole frame decoded as `M`, `None` if more bytes are needed. A frame that is
    /// not an `M` is consumed and reported as [`FrameError::Malformed`].
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(frame) => M::decode(frame)
                .map(Some)
                .map_err(|e| FrameError::Malformed(e.to_string())),
        }
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.failed = Some(error.clone());
        self.buf = Vec::new();
        self.start = 0;
        error
    }
}

enum Varint {
    /// The value and the prefix length in bytes.
    Value(u64, usize),
    Incomplete,
    Invalid,
}

fn read_varint(bytes: &[u8]) -> Varint {
    let mut value = 0_u64;
    for (i, &byte) in bytes.iter().take(LENGTH_PREFIX_BYTES_MAX).enumerate() {
        let group = u64::from(byte & 0x7f);
        // The tenth byte holds only the top bit of a u64.
        if i == LENGTH_PREFIX_BYTES_MAX - 1 && byte > 1 {
            return Varint::Invalid;
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Varint::Value(value, i + 1);
        }
    }
    if bytes.len() >= LENGTH_PREFIX_BYTES_MAX {
        Varint::Invalid
    } else {
        Varint::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc_example::documented_hex;
    use crate::pb;
    use crate::pb::client_message::Body;
    use proptest::prelude::*;

    fn bid(request_id: u64, amount: u64) -> pb::ClientMessage {
        pb::ClientMessage {
            request_id,
            body: Some(Body::PlaceBid(pb::PlaceBid {
                auction_id: 7,
                amount,
                max: None,
                bid_id_hi: 1,
                bid_id_lo: request_id,
                client_sent_at_us: 0,
            })),
        }
    }

    fn drain(decoder: &mut FrameDecoder) -> Result<Vec<pb::ClientMessage>, FrameError> {
        let mut messages = Vec::new();
        while let Some(message) = decoder.next_message()? {
            messages.push(message);
        }
        Ok(messages)
    }

    #[test]
    fn frames_are_standard_delimited_protobuf() {
        let message = bid(3, 150);
        let mut out = Vec::new();
        encode(&message, &mut out);
        assert_eq!(out, message.encode_length_delimited_to_vec());
        assert_eq!(
            pb::ClientMessage::decode_length_delimited(out.as_slice()).unwrap(),
            message
        );
    }

    /// docs/quic.md's worked example is what this module writes, byte for byte, and its
    /// varint is protobuf's (not QUIC's): the doc cannot drift from the code.
    #[test]
    fn docs_quic_md_framed_place_bid_example_is_what_encode_writes() {
        let doc = include_str!("../../docs/quic.md");
        let documented = documented_hex(doc, "A framed `PlaceBid`");
        let message = pb::ClientMessage {
            request_id: 1,
            body: Some(Body::PlaceBid(pb::PlaceBid {
                auction_id: 7,
                amount: 150,
                max: None,
                bid_id_hi: 0,
                bid_id_lo: 42,
                client_sent_at_us: 0,
            })),
        };
        let mut framed = Vec::new();
        encode(&message, &mut framed);
        assert_eq!(
            documented, framed,
            "docs/quic.md's hex differs from encode()"
        );
        // The doc's 300-byte prefix: protobuf's varint `ac 02` (QUIC's would be `41 2c`).
        assert!(doc.contains("prefixed `ac 02`, not `41 2c`"));
        let mut prefix = Vec::new();
        prost::encode_length_delimiter(300, &mut prefix).unwrap();
        assert_eq!(prefix, [0xac, 0x02]);
    }

    #[test]
    fn a_frame_arriving_byte_by_byte_comes_out_once_whole() {
        let mut bytes = Vec::new();
        encode(&bid(1, 100), &mut bytes);
        encode(&bid(2, 200), &mut bytes);
        let mut decoder = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for byte in &bytes {
            decoder.push(std::slice::from_ref(byte));
            got.extend(drain(&mut decoder).unwrap());
        }
        assert_eq!(got, vec![bid(1, 100), bid(2, 200)]);
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_bytes_arrive() {
        let mut decoder = FrameDecoder::new(256);
        let mut prefix = Vec::new();
        prost::encode_length_delimiter(257, &mut prefix).unwrap();
        decoder.push(&prefix);
        let error = FrameError::TooLarge { len: 257, max: 256 };
        assert_eq!(decoder.next_frame(), Err(error.clone()));
        assert!(error.is_fatal());
        // Sticky: what follows is never taken as a frame, and nothing more is buffered.
        decoder.push(&[0; 64]);
        assert_eq!(decoder.next_frame(), Err(error));
        assert_eq!(decoder.buffered_bytes(), 0);
        // A frame of exactly the limit is fine.
        let mut decoder = FrameDecoder::new(256);
        let mut frame = Vec::new();
        prost::encode_length_delimiter(256, &mut frame).unwrap();
        frame.extend([0; 256]);
        decoder.push(&frame);
        assert_eq!(decoder.next_frame().unwrap().map(<[u8]>::len), Some(256));
    }

    #[test]
    fn huge_and_invalid_varints_are_refused() {
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { len: u64::MAX, .. })
        ));
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&[0x80; 10]);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadLength));
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadLength));
        // Nine continuation bytes may still become a valid length.
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&[0x80; 9]);
        assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn a_malformed_message_is_skipped_and_the_stream_goes_on() {
        let mut bytes = vec![3, 0xff, 0xff, 0xff];
        encode(&bid(9, 900), &mut bytes);
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&bytes);
        let error = decoder.next_message::<pb::ClientMessage>().unwrap_err();
        assert!(matches!(error, FrameError::Malformed(_)), "{error:?}");
        assert!(!error.is_fatal());
        assert_eq!(drain(&mut decoder).unwrap(), vec![bid(9, 900)]);
    }

    proptest! {
        #[test]
        fn round_trip_in_any_chunking(
            messages in prop::collection::vec((any::<u64>(), 1..u64::MAX >> 2), 0..20),
            cuts in prop::collection::vec(1..64_usize, 1..20),
        ) {
            let messages: Vec<_> = messages.iter().map(|&(r, a)| bid(r, a)).collect();
            let mut bytes = Vec::new();
            for message in &messages {
                encode(message, &mut bytes);
            }
            let mut decoder = FrameDecoder::new(256);
            let mut got = Vec::new();
            let mut rest = bytes.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                rest = tail;
                decoder.push(chunk);
                got.extend(drain(&mut decoder).unwrap());
            }
            prop_assert_eq!(got, messages);
            prop_assert_eq!(decoder.buffered_bytes(), 0);
        }

        #[test]
        fn garbage_never_panics_and_stays_bounded(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..30),
        ) {
            const MAX: usize = 300;
            let mut decoder = FrameDecoder::new(MAX);
            for chunk in &chunks {
                decoder.push(chunk);
                loop {
                    match decoder.next_message::<pb::ClientMessage>() {
                        Ok(Some(_)) | Err(FrameError::Malformed(_)) => {}
                        Ok(None) => break,
                        Err(error) => {
                            prop_assert!(error.is_fatal());
                            break;
                        }
                    }
                }
                prop_assert!(
                    decoder.buffered_bytes() <= MAX + LENGTH_PREFIX_BYTES_MAX
                );
            }
        }
    }
}
