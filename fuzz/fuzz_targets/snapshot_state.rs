//! A snapshot's payload, as a node's start restores it: `decode_snapshot_parts` (refused
//! with a `SnapshotError`), then every state through `Engine::restore` and every pruned
//! auction's result through `Engine::restore_pruned` (refused with a `RestoreError`).
//!
//! A decoded snapshot encodes back to bytes that decode to the same snapshot. States the
//! engine restored are driven (`exercise`) without a panic, and the restored engine's own
//! snapshot restores into a fresh engine with the same state hash.
#![no_main]

use gavel_fuzz::{exercise, small_engine};
use gavel_proto::convert::state::{
    decode_snapshot_parts, encode_snapshot, encode_snapshot_position, encode_snapshot_pruned,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parts) = decode_snapshot_parts(data) else {
        return;
    };
    let mut bytes = encode_snapshot(parts.lsn, parts.taken_at, &parts.auctions);
    encode_snapshot_pruned(&parts.pruned, &mut bytes);
    if let Some(position) = parts.kafka.clone() {
        encode_snapshot_position(position, &mut bytes);
    }
    let again = decode_snapshot_parts(&bytes).expect("our own snapshot decodes");
    assert_eq!(again, parts, "snapshot round trip");

    let engine = small_engine();
    let restored: Vec<_> = parts
        .auctions
        .into_iter()
        .filter(|state| engine.restore(state.clone()).is_ok())
        .collect();
    for result in parts.pruned {
        let _ = engine.restore_pruned(result);
    }
    let copy = small_engine();
    let (states, pruned) = engine.snapshot_with_pruned();
    for state in states {
        copy.restore(state)
            .expect("a restored engine's snapshot restores");
    }
    for result in pruned {
        copy.restore_pruned(result)
            .expect("a restored engine's pruned results restore");
    }
    assert_eq!(copy.state_hash(), engine.state_hash());
    for state in &restored {
        exercise(&engine, &state.spec);
    }
});
