//! Segment files through the log's recovery scan: the input is written as one or two
//! segments (split at `PART_SEPARATOR`; the first byte of the second part names its first
//! LSN) and read by `wal::inspect::verify` (what `gavel wal verify` and a start run), then,
//! if it found nothing that stops a start but a torn tail, opened with `Wal::open`, which
//! truncates it.
//!
//! Checks, for a directory a start accepts: the streaming reader yields exactly the records
//! the scan counted, with dense LSNs, and ends with an error only at a torn tail; the torn
//! tail is cut where the last segment's good bytes end; the log opened (and repaired) holds
//! the same records, and a second scan finds no torn tail.
#![no_main]

use std::path::Path;

use gavel_fuzz::{empty_dir, parts};
use gavel_wal::segment::segment_file_name;
use gavel_wal::{Wal, WalConfig, inspect};
use libfuzzer_sys::fuzz_target;

fn write_segments(dir: &Path, data: &[u8]) {
    let segments = parts(data, 2);
    std::fs::write(dir.join(segment_file_name(1)), segments[0]).expect("write a segment");
    if let Some(second) = segments.get(1) {
        let first_lsn = u64::from(second.first().copied().unwrap_or(2).max(2));
        let bytes = second.get(1..).unwrap_or_default();
        std::fs::write(dir.join(segment_file_name(first_lsn)), bytes).expect("write a segment");
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = empty_dir("wal");
    write_segments(&dir, data);
    let report = inspect::verify(&dir).expect("the directory lists");
    if !report.is_ok() {
        return;
    }
    let mut lsns = Vec::new();
    let mut ended_with_error = false;
    for record in inspect::records(&dir, 1).expect("the segments list") {
        match record {
            Ok(record) => lsns.push(record.lsn),
            Err(_) => {
                ended_with_error = true;
                break;
            }
        }
    }
    assert_eq!(
        lsns.len() as u64,
        report.records,
        "the reader and the scan disagree"
    );
    if let Some(first) = report.first_lsn {
        assert!(
            lsns.iter().copied().eq(first..=report.last_lsn),
            "LSNs not dense"
        );
    }
    assert_eq!(ended_with_error, report.torn_tail.is_some());
    if let Some(torn) = &report.torn_tail {
        let last = report.segments.last().expect("a torn tail is in a segment");
        assert_eq!(torn.offset, last.bytes);
        assert_eq!(torn.path, last.path);
    }
    if report.torn_tail.is_none() {
        // Opening repairs only a torn tail; a log thread per input costs milliseconds.
        return;
    }
    let (wal, recovery) = Wal::open(&dir, WalConfig::default()).expect("a verified log opens");
    assert_eq!(recovery.records(), report.records);
    assert_eq!(recovery.last_lsn(), report.last_lsn);
    wal.shutdown().expect("the log shuts down");
    let again = inspect::verify(&dir).expect("the directory lists");
    assert!(
        again.is_ok() && again.torn_tail.is_none(),
        "{:?}",
        again.problem
    );
    assert_eq!(again.records, report.records);
});
