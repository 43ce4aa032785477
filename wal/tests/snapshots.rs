//! Snapshots on real files: atomic writes and stale temp files, the fallback rule for a
//! corrupt newest snapshot, and retention that keeps the fallback possible.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use gavel_wal::SnapshotDefect;
use gavel_wal::snapshot::snapshot_file_name;
use gavel_wal::{Wal, WalConfig, WalError, latest_snapshot, verify, write_snapshot};

fn corrupt(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

/// Opens a log of 100-byte segments (3 records of 30 bytes each) and appends `n` records.
fn log_with(dir: &Path, n: u64) -> Wal {
    let (wal, _) = Wal::open(dir, small_segments(100)).unwrap();
    append_each_synced(&wal, (0..n).map(|i| vec![i as u8; 5]));
    wal
}

#[test]
fn a_stale_temp_file_is_ignored_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log_with(dir.path(), 6);
    wal.write_snapshot(5, b"state at 5").unwrap();
    let temp = dir.path().join(format!("{}.tmp", snapshot_file_name(6)));
    fs::write(&temp, b"half a snapsh").unwrap();
    let chosen = latest_snapshot(dir.path()).unwrap().unwrap();
    assert_eq!(
        (chosen.lsn, chosen.payload.as_slice()),
        (5, &b"state at 5"[..])
    );
    assert!(chosen.skipped.is_empty(), "a temp file is not a snapshot");
    wal.write_snapshot(6, b"state at 6").unwrap();
    assert!(!temp.exists(), "the next write removes it");
    wal.shutdown().unwrap();

    fs::write(&temp, b"again").unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert!(!temp.exists(), "opening the log removes it");
    assert_eq!(latest_snapshot(dir.path()).unwrap().unwrap().lsn, 6);
    wal.shutdown().unwrap();
}

#[test]
fn a_snapshot_ahead_of_the_durable_lsn_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log_with(dir.path(), 2);
    assert!(matches!(
        wal.write_snapshot(3, b"x"),
        Err(WalError::SnapshotAheadOfLog { lsn: 3, durable: 2 })
    ));
    wal.shutdown().unwrap();
}

#[test]
fn corrupt_newest_falls_back_while_the_log_covers_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log_with(dir.path(), 30);
    wal.write_snapshot(10, b"s10").unwrap();
    let newest = wal.write_snapshot(20, b"s20").unwrap();
    corrupt(&newest);
    let chosen = latest_snapshot(dir.path()).unwrap().unwrap();
    assert_eq!(chosen.lsn, 10);
    assert_eq!(chosen.skipped.len(), 1);
    assert_eq!(chosen.skipped[0].0, newest);
    assert!(matches!(
        chosen.skipped[0].1,
        SnapshotDefect::Checksum { .. }
    ));
    // Both corrupt: "no snapshot" (LSN 0) is the fallback, and the log still starts at 1.
    corrupt(&dir.path().join(snapshot_file_name(10)));
    assert!(latest_snapshot(dir.path()).unwrap().is_none());
    wal.shutdown().unwrap();
}

#[test]
fn retention_keeps_what_the_fallback_needs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log_with(dir.path(), 30);
    for lsn in [10, 20, 27] {
        wal.write_snapshot(lsn, format!("s{lsn}").as_bytes())
            .unwrap();
    }
    let report = wal.compact_to_snapshots().unwrap();
    assert_eq!(
        report.removed_snapshots,
        vec![dir.path().join(snapshot_file_name(10))]
    );
    // Segments of 3 records: 1–3, …, 16–18 end at or before LSN 20; 19–21 does not.
    assert_eq!(report.removed_segments.len(), 6);
    let (recovery_first, wal) = {
        wal.shutdown().unwrap();
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        (recovery.first_lsn(), wal)
    };
    assert_eq!(recovery_first, Some(19));

    // Newest corrupt: fall back to 20, whose successors the log still holds.
    let newest = dir.path().join(snapshot_file_name(27));
    corrupt(&newest);
    let chosen = latest_snapshot(dir.path()).unwrap().unwrap();
    assert_eq!((chosen.lsn, chosen.payload.as_slice()), (20, &b"s20"[..]));
    assert_eq!(verify(dir.path()).unwrap().restore_from_lsn, Some(20));
    wal.shutdown().unwrap();
    let (_wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let lsns: Vec<u64> = recovery
        .replay(21)
        .unwrap()
        .map(|r| r.unwrap().lsn)
        .collect();
    assert_eq!(lsns, (21..=30).collect::<Vec<_>>());

    // Both kept snapshots corrupt: no snapshot covers the log's start — refuse, naming the
    // newest corrupt file.
    corrupt(&dir.path().join(snapshot_file_name(20)));
    match latest_snapshot(dir.path()) {
        Err(WalError::SnapshotUnusable {
            corrupt,
            fallback_lsn,
            log_first_lsn,
            ..
        }) => {
            assert_eq!((corrupt, fallback_lsn, log_first_lsn), (newest, 0, 19));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!verify(dir.path()).unwrap().is_ok());
}

#[test]
fn compacting_past_the_only_snapshot_makes_its_corruption_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log_with(dir.path(), 12);
    let only = wal.write_snapshot(12, b"s12").unwrap();
    assert!(
        wal.compact_to_snapshots()
            .unwrap()
            .removed_segments
            .is_empty(),
        "one snapshot: keep all"
    );
    wal.compact(12).unwrap(); // by hand, past what the rule allows
    wal.shutdown().unwrap();
    corrupt(&only);
    let err = latest_snapshot(dir.path()).unwrap_err();
    assert!(matches!(err, WalError::SnapshotUnusable { .. }));
    assert!(err.to_string().contains(&*only.to_string_lossy()), "{err}");
}

#[test]
fn free_function_write_is_atomic_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_snapshot(dir.path(), 3, b"abc").unwrap();
    assert_eq!(path, dir.path().join(snapshot_file_name(3)));
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    // No segment: a trusted snapshot stands alone.
    assert_eq!(latest_snapshot(dir.path()).unwrap().unwrap().lsn, 3);
    // But the log refuses to open on snapshots without segments.
    assert!(matches!(
        Wal::open(dir.path(), WalConfig::default()),
        Err(WalError::SegmentsMissing { .. })
    ));
}
