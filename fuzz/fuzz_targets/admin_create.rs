//! The admin API's `POST /v1/auctions` body, as `transport::http::admin::create` reads it:
//! `serde_json::from_slice` into a `CreateAuction` (refused: 400 `bad_json`), then
//! `AuctionSpec::try_from` (refused with a `ProtoError`: 400 `invalid_argument`).
//!
//! Accepted rules round-trip (spec → `CreateAuction` → JSON → spec is the same spec), and an
//! engine holding the auction is driven through views, bids, closes and a cancel at the
//! auction's edge times: rules the edge accepts must never panic the engine.
#![no_main]

use gavel_engine::{AuctionSpec, DiscardSink, UnixMicros};
use gavel_fuzz::{exercise, small_engine};
use gavel_proto::pb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = serde_json::from_slice::<pb::CreateAuction>(data) else {
        return;
    };
    let Ok(spec) = AuctionSpec::try_from(message) else {
        return;
    };
    let back = pb::CreateAuction::from(&spec);
    let json = serde_json::to_vec(&back).expect("rules encode to JSON");
    let reread: pb::CreateAuction = serde_json::from_slice(&json).expect("our JSON decodes");
    assert_eq!(reread, back);
    assert_eq!(AuctionSpec::try_from(reread).as_ref(), Ok(&spec));

    let engine = small_engine();
    let now = UnixMicros(spec.rules().starts_at.0);
    engine
        .create_auction(spec.clone(), now, &DiscardSink)
        .expect("an empty engine takes one auction");
    exercise(&engine, &spec);
});
