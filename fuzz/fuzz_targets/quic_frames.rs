//! The QUIC stream decoder: `proto::frame::FrameDecoder` splitting a stream into frames and
//! each frame decoded as a `ClientMessage`, as `transport::quic` reads a bidder's stream.
//!
//! The first byte picks how the rest is cut into reads. Checks: the same messages and errors
//! come out whatever the cutting (the stream read all at once is the reference); a fatal
//! error is sticky; after draining, at most one partial frame is buffered (its checked
//! length plus a prefix); every message passes `check_client_message`.
#![no_main]

use gavel_fuzz::check_client_message;
use gavel_proto::frame::{FrameDecoder, FrameError, LENGTH_PREFIX_BYTES_MAX};
use gavel_proto::pb;
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches it often.
const FRAME_BYTES_MAX: usize = 4096;

#[derive(Debug, PartialEq)]
enum Outcome {
    Message(pb::ClientMessage),
    Malformed(String),
    Fatal(FrameError),
}

fn decode(stream: &[u8], cut: usize) -> Vec<Outcome> {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut out = Vec::new();
    for chunk in stream.chunks(cut.max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_message::<pb::ClientMessage>() {
                Ok(Some(message)) => out.push(Outcome::Message(message)),
                Ok(None) => break,
                Err(FrameError::Malformed(detail)) => out.push(Outcome::Malformed(detail)),
                Err(fatal) => {
                    assert!(fatal.is_fatal());
                    decoder.push(chunk);
                    assert_eq!(decoder.next_frame(), Err(fatal.clone()), "not sticky");
                    assert_eq!(decoder.buffered_bytes(), 0);
                    out.push(Outcome::Fatal(fatal));
                    return out;
                }
            }
        }
        assert!(decoder.buffered_bytes() <= FRAME_BYTES_MAX + LENGTH_PREFIX_BYTES_MAX);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(stream, stream.len());
    let chunked = decode(stream, usize::from(cut % 64) + 1);
    assert_eq!(
        whole, chunked,
        "the cutting of the stream changed what was decoded"
    );
    for outcome in &whole {
        if let Outcome::Message(message) = outcome {
            check_client_message(message);
        }
    }
});
