//! Write-ahead-log record payloads, as a node's start reads them back: each part of the input
//! (split at `PART_SEPARATOR`) through `proto::convert::wal::decode_record` (refused with a
//! `RecordError`), and the events that decode replayed in order through the engine's
//! `Replayer` (refused with a `ReplayError`), as `node::replay` does.
//!
//! A decoded event encodes back to a payload that decodes to the same event; a replay that
//! was not refused leaves an engine that can be driven (`exercise`) without a panic.
#![no_main]

use gavel_engine::{EventKind, Replayer};
use gavel_fuzz::{exercise, parts, small_engine};
use gavel_proto::convert::wal::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

/// Records per input: a short log is enough to reach every replay rule.
const RECORDS_MAX: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut events = Vec::new();
    for payload in parts(data, RECORDS_MAX) {
        let Ok(event) = decode_record(payload) else {
            continue;
        };
        let mut again = Vec::new();
        encode_record(&event, &mut again);
        assert_eq!(
            decode_record(&again).as_ref(),
            Ok(&event),
            "record round trip"
        );
        events.push(event);
    }
    let engine = small_engine();
    let mut replayer = Replayer::new(&engine);
    for event in &events {
        if replayer.apply(event).is_err() {
            return;
        }
    }
    let _ = replayer.finish();
    for event in &events {
        if let EventKind::Created(spec) = &event.kind {
            exercise(&engine, spec);
        }
    }
});
