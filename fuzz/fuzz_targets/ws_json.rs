//! A text WebSocket message of the `gavel.v1.json` subprotocol: `serde_json::from_str` into
//! a `ClientMessage` (pbjson's canonical proto3 JSON), what `transport::http::ws` calls on
//! it. Text frames are UTF-8 (tungstenite checks), so other bytes are not inputs. A message
//! that decodes encodes back to JSON that decodes to the same message, and passes
//! `check_client_message`.
#![no_main]

use gavel_fuzz::check_client_message;
use gavel_proto::pb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = serde_json::from_str::<pb::ClientMessage>(text) {
        let json = serde_json::to_string(&message).expect("a decoded message encodes to JSON");
        let again: pb::ClientMessage = serde_json::from_str(&json).expect("our JSON decodes");
        assert_eq!(
            again, message,
            "JSON round trip changed the message: {json}"
        );
        check_client_message(&message);
    }
});
