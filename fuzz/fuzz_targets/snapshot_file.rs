//! A snapshot file's framing: the input written as `snapshot-…07.snap` and read by
//! `wal::snapshot::read_snapshot` (what `latest_snapshot` and `gavel wal verify` use).
//! Refusals are `SnapshotDefect`s, never an I/O error on a readable file; a snapshot that
//! verifies carries the file's LSN and payload, and writing that payload again with
//! `write_snapshot` gives the same bytes.
#![no_main]

use gavel_fuzz::empty_dir;
use gavel_wal::snapshot::{
    SNAPSHOT_HEADER_BYTES, SnapshotFile, read_snapshot, snapshot_file_name, write_snapshot,
};
use libfuzzer_sys::fuzz_target;

/// The LSN the file is named for (the seeds use it too).
const LSN: u64 = 7;

fuzz_target!(|data: &[u8]| {
    let dir = empty_dir("snapshot");
    let path = dir.join(snapshot_file_name(LSN));
    std::fs::write(&path, data).expect("write the snapshot");
    let file = SnapshotFile { lsn: LSN, path };
    let Ok(snapshot) = read_snapshot(&file).expect("a readable file is no I/O error") else {
        return;
    };
    assert_eq!(snapshot.lsn, LSN);
    assert_eq!(snapshot.payload, data[SNAPSHOT_HEADER_BYTES..]);
    let again = empty_dir("snapshot-again");
    let written = write_snapshot(&again, LSN, &snapshot.payload).expect("write it back");
    assert_eq!(std::fs::read(written).expect("read it back"), data);
});
