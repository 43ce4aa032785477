//! A snapshot's payload, as a node's start restores it: `decode_snapshot_with_position`
//! (refused with a `SnapshotError`), then every state through `Engine::restore` (refused
//! with a `RestoreError`).
//!
//! A decoded snapshot encodes back to bytes that decode to the same snapshot. States the
//! engine restored are driven (`exercise`) without a panic, and the restored engine's own
//! snapshot restores into a fresh engine with the same state hash.
#![no_main]

use gavel_fuzz::{exercise, small_engine};
use gavel_proto::convert::state::{
    decode_snapshot_with_position, encode_snapshot, encode_snapshot_position,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((lsn, taken_at, states, position)) = decode_snapshot_with_position(data) else {
        return;
    };
    let mut bytes = encode_snapshot(lsn, taken_at, &states);
    if let Some(position) = position.clone() {
        encode_snapshot_position(position, &mut bytes);
    }
    let again = decode_snapshot_with_position(&bytes).expect("our own snapshot decodes");
    assert_eq!(
        again,
        (lsn, taken_at, states.clone(), position),
        "snapshot round trip"
    );

    let engine = small_engine();
    let restored: Vec<_> = states
        .into_iter()
        .filter(|state| engine.restore(state.clone()).is_ok())
        .collect();
    let copy = small_engine();
    for state in engine.snapshot() {
        copy.restore(state)
            .expect("a restored engine's snapshot restores");
    }
    assert_eq!(copy.state_hash(), engine.state_hash());
    for state in &restored {
        exercise(&engine, &state.spec);
    }
});
