//! Fault injection on real segment files: torn tails at every byte, bit flips in every header
//! field and the payload, a missing segment, zero-filled tails, garbage before a valid record,
//! a torn last batch, swapped records — and the offline verifier on the same damage.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use gavel_wal::frame::{self, FrameError, HEADER_BYTES};
use gavel_wal::{Wal, WalConfig, WalError, records, verify};

const PAYLOAD_BYTES: usize = 20;
const RECORD_BYTES: usize = HEADER_BYTES + PAYLOAD_BYTES;
const RECORDS: u64 = 15;

fn payload(lsn: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD_BYTES];
    p[..8].copy_from_slice(&lsn.to_le_bytes());
    p[8..].fill(lsn as u8);
    p
}

/// A log of 15 records of 45 bytes, each its own batch, in 300-byte segments: segments hold
/// LSNs 1–6, 7–12 and 13–15.
fn build(dir: &Path) -> Vec<PathBuf> {
    let (wal, _) = Wal::open(dir, small_segments(300)).unwrap();
    append_each_synced(&wal, (1..=RECORDS).map(payload));
    wal.shutdown().unwrap();
    let segments = segment_paths(dir);
    assert_eq!(segments.len(), 3);
    assert_eq!(
        fs::metadata(&segments[2]).unwrap().len(),
        3 * RECORD_BYTES as u64
    );
    segments
}

fn assert_records(dir: &Path, last: u64) {
    let records = reopen_and_replay(dir);
    let expected: Vec<_> = (1..=last).map(|lsn| (lsn, payload(lsn))).collect();
    assert_eq!(records, expected);
}

#[test]
fn truncating_the_last_record_at_every_byte_recovers_the_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    let last = &segments[2];
    let original = fs::read(last).unwrap();
    let record_start = 2 * RECORD_BYTES;
    for cut in record_start..original.len() {
        fs::write(last, &original[..cut]).unwrap();
        let (wal, recovery) = Wal::open(dir.path(), WalConfig::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(recovery.last_lsn(), RECORDS - 1, "cut at {cut}");
        let torn = recovery.torn_tail();
        if cut == record_start {
            assert!(torn.is_none(), "a cut on a record boundary is a clean end");
        } else {
            let torn = torn.unwrap_or_else(|| panic!("cut at {cut}: no torn tail reported"));
            assert_eq!(
                (torn.path.as_path(), torn.offset),
                (last.as_path(), record_start as u64)
            );
            assert_eq!(torn.bytes_removed, (cut - record_start) as u64);
        }
        assert_eq!(
            fs::metadata(last).unwrap().len(),
            record_start as u64,
            "truncated"
        );
        drop(wal);
        if cut == record_start + 7 {
            assert_records(dir.path(), RECORDS - 1);
        }
    }
    // The log continues at the truncated LSN.
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(wal.append(payload(RECORDS)).unwrap(), RECORDS);
    wal.shutdown().unwrap();
    assert_records(dir.path(), RECORDS);
}

/// One bit position in each header field and in the payload.
const FIELD_BITS: [(&str, usize); 6] = [
    ("payload_len", 0),
    ("version", 4 * 8 + 1),
    ("lsn", 6 * 8 + 3),
    ("batch_start", 14 * 8),
    ("crc", 22 * 8 + 5),
    ("payload", 30 * 8 + 2),
];

#[test]
fn a_bit_flip_in_a_middle_record_refuses_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    // (segment, record index in it): the 3rd record of the first segment, and the first record
    // of the last segment, which later batches follow.
    for (segment, index) in [(&segments[0], 2usize), (&segments[2], 0)] {
        let original = fs::read(segment).unwrap();
        let offset = (index * RECORD_BYTES) as u64;
        for (field, bit) in FIELD_BITS {
            let mut bad = original.clone();
            bad[index * RECORD_BYTES + bit / 8] ^= 1 << (bit % 8);
            fs::write(segment, &bad).unwrap();
            let err = Wal::open(dir.path(), WalConfig::default()).expect_err(&format!(
                "flip in {field} of {} accepted",
                segment.display()
            ));
            let (file, at) = match &err {
                WalError::Corrupt { file, offset, .. } => (file, *offset),
                WalError::CorruptBeforeValid {
                    file,
                    offset,
                    valid_offset,
                    ..
                } => {
                    assert_eq!(*valid_offset, offset + RECORD_BYTES as u64);
                    (file, *offset)
                }
                other => panic!("flip in {field}: unexpected error {other}"),
            };
            assert_eq!((file, at), (segment, offset), "flip in {field}");
            let message = err.to_string();
            assert!(message.contains(&*segment.to_string_lossy()), "{message}");
            assert!(
                message.contains(&format!("byte offset {offset}")),
                "{message}"
            );
            assert_eq!(
                fs::read(segment).unwrap(),
                bad,
                "a refused open changes nothing"
            );
            assert!(!verify(dir.path()).unwrap().is_ok());
        }
        fs::write(segment, &original).unwrap();
    }
    assert_records(dir.path(), RECORDS);
}

#[test]
fn a_missing_middle_segment_refuses_naming_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    fs::remove_file(&segments[1]).unwrap();
    match Wal::open(dir.path(), WalConfig::default()) {
        Err(WalError::MissingSegment {
            prev,
            prev_last_lsn,
            next,
            next_first_lsn,
        }) => {
            assert_eq!((prev, prev_last_lsn), (segments[0].clone(), 6));
            assert_eq!((next, next_first_lsn), (segments[2].clone(), 13));
        }
        other => panic!("expected a missing segment, got {other:?}"),
    }
}

#[test]
fn a_zero_filled_tail_is_torn_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    let mut bytes = fs::read(&segments[2]).unwrap();
    let len = bytes.len() as u64;
    bytes.resize(bytes.len() + 4096, 0);
    fs::write(&segments[2], &bytes).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let torn = recovery.torn_tail().unwrap();
    assert_eq!((torn.offset, torn.bytes_removed), (len, 4096));
    assert_eq!(torn.reason, FrameError::UnknownVersion { version: 0 });
    drop(wal);
    assert_records(dir.path(), RECORDS);
}

#[test]
fn a_valid_record_after_garbage_in_the_last_segment_is_middle_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    let mut bytes = fs::read(&segments[2]).unwrap();
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0xAB; 10]);
    let at = bytes.len() as u64;
    frame::encode(&mut bytes, RECORDS + 1, at, at, &payload(RECORDS + 1));
    fs::write(&segments[2], &bytes).unwrap();
    match Wal::open(dir.path(), WalConfig::default()) {
        Err(WalError::CorruptBeforeValid {
            file,
            offset,
            valid_offset,
            ..
        }) => {
            assert_eq!((file, offset, valid_offset), (segments[2].clone(), len, at));
        }
        other => panic!("expected corruption before a valid record, got {other:?}"),
    }
}

/// Power loss during the last batch's write: its pages may persist out of order. A hole in
/// the last batch with a later record *of the same batch* intact is still a torn tail.
#[test]
fn a_hole_inside_the_last_unsynced_batch_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    let mut bytes = fs::read(&segments[2]).unwrap();
    let batch_start = bytes.len() as u64;
    for lsn in RECORDS + 1..=RECORDS + 3 {
        let at = bytes.len() as u64;
        frame::encode(&mut bytes, lsn, at, batch_start, &payload(lsn));
    }
    let hole = batch_start as usize + RECORD_BYTES;
    bytes[hole..hole + RECORD_BYTES].fill(0);
    fs::write(&segments[2], &bytes).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovery.last_lsn(), RECORDS + 1);
    assert_eq!(recovery.torn_tail().unwrap().offset, hole as u64);
    drop(wal);
    assert_records(dir.path(), RECORDS + 1);
}

#[test]
fn swapped_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    let mut bytes = fs::read(&segments[0]).unwrap();
    let (first, rest) = bytes.split_at_mut(RECORD_BYTES);
    first.swap_with_slice(&mut rest[..RECORD_BYTES]);
    fs::write(&segments[0], &bytes).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalConfig::default()),
        Err(WalError::Corrupt {
            offset: 0,
            reason: FrameError::Checksum { .. },
            ..
        })
    ));
}

#[test]
fn verify_reports_without_changing_and_records_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build(dir.path());
    let report = verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(
        (report.records, report.first_lsn, report.last_lsn),
        (RECORDS, Some(1), RECORDS)
    );
    assert_eq!(report.segments.len(), 3);

    let dumped: Vec<u64> = records(dir.path(), 5)
        .unwrap()
        .map(|r| r.unwrap().lsn)
        .collect();
    assert_eq!(dumped, (5..=RECORDS).collect::<Vec<_>>());

    // A torn tail is reported, not truncated, and the dump ends with its error.
    let original = fs::read(&segments[2]).unwrap();
    fs::write(&segments[2], &original[..original.len() - 3]).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(report.is_ok());
    assert_eq!(report.last_lsn, RECORDS - 1);
    assert_eq!(report.torn_tail.unwrap().offset, 2 * RECORD_BYTES as u64);
    assert_eq!(
        fs::metadata(&segments[2]).unwrap().len(),
        original.len() as u64 - 3
    );
    let last = records(dir.path(), 1).unwrap().last().unwrap();
    assert!(matches!(last, Err(WalError::Corrupt { .. })));

    // Middle corruption is the report's problem.
    fs::write(&segments[2], &original).unwrap();
    let mut bytes = fs::read(&segments[1]).unwrap();
    bytes[RECORD_BYTES + 30] ^= 1;
    fs::write(&segments[1], &bytes).unwrap();
    let report = verify(dir.path()).unwrap();
    match report.problem {
        Some(WalError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (segments[1].clone(), RECORD_BYTES as u64));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(
        report.last_lsn, 7,
        "the report holds what was good before the problem"
    );
}
