//! A binary WebSocket message of the `gavel.v1.proto` subprotocol: `ClientMessage::decode`,
//! what `transport::http::ws` calls on it. A message that decodes passes
//! `check_client_message`; the rest is refused with prost's `DecodeError` (the node answers
//! `ERROR_CODE_MALFORMED` and keeps the socket).
#![no_main]

use gavel_fuzz::check_client_message;
use gavel_proto::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = pb::ClientMessage::decode(data) {
        check_client_message(&message);
    }
});
