//! The edge stream as the agent reads it (`docs/edge-stream.md`; issue 13 item 7): the bytes
//! of one stream cut into frames by `frame_len` and decoded by one `EdgeDecoder`, as
//! `edge-agent`'s reader does. Beyond "no panic": a refused frame leaves the decoder holding
//! no auction (nothing derived from a broken chain is ever shown); after an accepted frame
//! the decoder holds, for each auction the frame touched, exactly the last state it
//! reported (or nothing, if the auction then needed a keyframe); it never holds more
//! auctions than its bound.
#![no_main]

use std::collections::HashMap;

use gavel_edge_proto::{AuctionState, Decoded, EdgeDecoder, frame_len};
use libfuzzer_sys::fuzz_target;

/// The decoder's frame bound (the node's stream writes at most 16 KiB frames).
const FRAME_BYTES_MAX: usize = 16_384;
/// The decoder's bound on auctions held.
const AUCTIONS_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut decoder = EdgeDecoder::new(FRAME_BYTES_MAX, AUCTIONS_MAX);
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(Some(len)) = frame_len(rest, FRAME_BYTES_MAX) {
        // A frame cut short by the end of the input is decoded as it is (Truncated).
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        out.clear();
        match decoder.decode_frame(frame, &mut out) {
            Ok(()) => {
                let mut last: HashMap<u64, Option<&AuctionState>> = HashMap::new();
                for decoded in &out {
                    match decoded {
                        Decoded::State(state) => last.insert(state.auction_id, Some(state)),
                        Decoded::KeyframeNeeded { auction, .. } => last.insert(*auction, None),
                    };
                }
                for (auction, state) in last {
                    assert_eq!(decoder.state(auction), state, "auction {auction}");
                }
            }
            Err(_) => assert_eq!(decoder.auctions(), 0, "a refused frame drops every auction"),
        }
        assert!(decoder.auctions() <= AUCTIONS_MAX);
        if tail.len() == rest.len() {
            break;
        }
        rest = tail;
    }
});
