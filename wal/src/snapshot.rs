//! Snapshots: opaque state as of an LSN, written atomically beside the segments; choosing the
//! snapshot to restore from, and the retention rule that keeps a fallback possible.
//!
//! A snapshot file `snapshot-<lsn, 20 digits>.snap` (all integers little-endian):
//!
//! | offset | bytes | field         | meaning                                              |
//! |-------:|------:|---------------|------------------------------------------------------|
//! | 0      | 8     | magic         | `GAVELSNP`                                           |
//! | 8      | 1     | `version`     | [`SNAPSHOT_VERSION`]                                 |
//! | 9      | 8     | `lsn`         | the state includes every record ≤ `lsn`              |
//! | 17     | 8     | `payload_len` | payload bytes; the file is exactly 29 + this long    |
//! | 25     | 4     | `crc`         | CRC32C of bytes 0..25 ‖ payload                      |
//! | 29     | n     | payload       | opaque state                                         |
//!
//! Writing: temp file `snapshot-<lsn>.snap.tmp` in the same directory, write, fsync, rename
//! over the final name, fsync the directory. A crash leaves at most a stale `.tmp` file, which
//! is never read and is removed by the next write or [`Wal::open`](crate::Wal::open).
//!
//! # Which snapshot is restored (the fallback rule)
//!
//! [`latest_snapshot`] tries snapshots newest first and takes the first that verifies. If it
//! had to skip a corrupt newer one, it falls back to the older snapshot **only if the log
//! still holds every record after the older snapshot's LSN** (the first segment starts at or
//! before that LSN + 1); "no snapshot" counts as a snapshot at LSN 0. Otherwise it refuses
//! with [`WalError::SnapshotUnusable`] naming the corrupt file.
//!
//! Retention makes the fallback possible: [`Wal::compact_to_snapshots`](crate::Wal::compact_to_snapshots)
//! keeps the two newest valid snapshots and compacts the log only up to the *older* of them,
//! so one corrupt newest snapshot can always be recovered from. Two corrupt snapshots in a
//! row refuse to start.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Lsn;
use crate::error::{SnapshotDefect, WalError};
use crate::segment::{self, sync_dir};
use crate::storage::{OsStorage, Storage};

/// Snapshot file magic.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"GAVELSNP";
/// The snapshot format version this code writes and reads.
pub const SNAPSHOT_VERSION: u8 = 1;
/// Bytes before the payload.
pub const SNAPSHOT_HEADER_BYTES: usize = 29;
/// Largest snapshot payload (16 GiB): a bound checked before anything is allocated.
pub const SNAPSHOT_PAYLOAD_BYTES_MAX: u64 = 16 << 30;

const PREFIX: &str = "snapshot-";
const EXTENSION: &str = ".snap";
const TEMP_EXTENSION: &str = ".snap.tmp";

/// A snapshot file found in a directory (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// LSN from its name.
    pub lsn: Lsn,
    /// Its path.
    pub path: PathBuf,
}

/// A verified snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The state includes every record ≤ this LSN; replay from `lsn + 1`.
    pub lsn: Lsn,
    /// The file.
    pub path: PathBuf,
    /// The state.
    pub payload: Vec<u8>,
    /// Newer snapshot files that were corrupt and skipped (the node logs them).
    pub skipped: Vec<(PathBuf, SnapshotDefect)>,
}

/// The file name of the snapshot at `lsn`.
pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("{PREFIX}{lsn:020}{EXTENSION}")
}

/// Encodes a snapshot file's bytes.
fn encode(lsn: Lsn, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes the snapshot of state as of `lsn` atomically into `dir` and returns its path. The
/// caller must only snapshot state whose records are durable (see
/// [`Wal::write_snapshot`](crate::Wal::write_snapshot), which checks).
pub fn write_snapshot(dir: &Path, lsn: Lsn, payload: &[u8]) -> Result<PathBuf, WalError> {
    write_snapshot_in(&OsStorage, dir, lsn, payload)
}

/// [`write_snapshot`] on `storage`.
pub(crate) fn write_snapshot_in(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    payload: &[u8],
) -> Result<PathBuf, WalError> {
    if payload.len() as u64 > SNAPSHOT_PAYLOAD_BYTES_MAX {
        return Err(WalError::Config(
            "snapshot payload exceeds SNAPSHOT_PAYLOAD_BYTES_MAX",
        ));
    }
    remove_stale_temp_files_in(storage, dir)?;
    let name = snapshot_file_name(lsn);
    let path = dir.join(&name);
    let temp = dir.join(format!("{name}.tmp"));
    let bytes = encode(lsn, payload);
    let mut file = storage
        .create_truncate(&temp)
        .map_err(WalError::io("create", &temp))?;
    file.write_all(&bytes)
        .map_err(WalError::io("write", &temp))?;
    file.sync_all().map_err(WalError::io("fsync", &temp))?;
    drop(file);
    storage
        .rename(&temp, &path)
        .map_err(WalError::io("rename", &temp))?;
    sync_dir(storage, dir)?;
    Ok(path)
}

/// Removes `*.snap.tmp` files left by a crash during a snapshot write.
pub fn remove_stale_temp_files(dir: &Path) -> Result<(), WalError> {
    remove_stale_temp_files_in(&OsStorage, dir)
}

/// [`remove_stale_temp_files`] on `storage`.
pub(crate) fn remove_stale_temp_files_in(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<(), WalError> {
    let mut removed = false;
    for path in storage.list(dir).map_err(WalError::io("list", dir))? {
        let is_temp = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(TEMP_EXTENSION));
        if is_temp {
            storage
                .remove(&path)
                .map_err(WalError::io("remove", &path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(storage, dir)?;
    }
    Ok(())
}

/// Lists the snapshot files of `dir`, oldest first. Temp files and other names are ignored.
pub fn list_snapshots(dir: &Path) -> Result<Vec<SnapshotFile>, WalError> {
    list_snapshots_in(&OsStorage, dir)
}

/// [`list_snapshots`] on `storage`.
pub(crate) fn list_snapshots_in(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<SnapshotFile>, WalError> {
    let mut snapshots = Vec::new();
    for path in storage.list(dir).map_err(WalError::io("list", dir))? {
        let lsn = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(EXTENSION))
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<Lsn>().ok());
        if let Some(lsn) = lsn {
            snapshots.push(SnapshotFile { lsn, path });
        }
    }
    snapshots.sort_by_key(|s| s.lsn);
    Ok(snapshots)
}

/// Reads and verifies one snapshot file. The outer error is I/O, the inner a defect.
pub fn read_snapshot(file: &SnapshotFile) -> Result<Result<Snapshot, SnapshotDefect>, WalError> {
    read_snapshot_in(&OsStorage, file)
}

/// [`read_snapshot`] on `storage`.
fn read_snapshot_in(
    storage: &dyn Storage,
    file: &SnapshotFile,
) -> Result<Result<Snapshot, SnapshotDefect>, WalError> {
    let path = &file.path;
    let opened = storage
        .open_read(path, 0)
        .map_err(WalError::io("open", path))?;
    let (mut f, len) = (opened.reader, opened.len);
    if len < SNAPSHOT_HEADER_BYTES as u64 {
        return Ok(Err(SnapshotDefect::TooShort));
    }
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    f.read_exact(&mut header)
        .map_err(WalError::io("read", path))?;
    if header[0..8] != SNAPSHOT_MAGIC {
        return Ok(Err(SnapshotDefect::BadMagic));
    }
    if header[8] != SNAPSHOT_VERSION {
        return Ok(Err(SnapshotDefect::UnknownVersion(header[8])));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let (lsn, declared) = (word(9), word(17));
    let actual = len - SNAPSHOT_HEADER_BYTES as u64;
    // Checked before allocating: a corrupt length must not allocate gigabytes.
    if declared != actual || declared > SNAPSHOT_PAYLOAD_BYTES_MAX {
        return Ok(Err(SnapshotDefect::LengthMismatch { declared, actual }));
    }
    let mut payload = vec![0u8; declared as usize];
    f.read_exact(&mut payload)
        .map_err(WalError::io("read", path))?;
    let stored = u32::from_le_bytes([header[25], header[26], header[27], header[28]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header[..25]), &payload);
    #[cfg(feature = "sim-bugs")]
    let computed = if crate::sim_bugs::on(&crate::sim_bugs::SNAPSHOT_SKIP_CRC) {
        stored
    } else {
        computed
    };
    if stored != computed {
        return Ok(Err(SnapshotDefect::Checksum { stored, computed }));
    }
    if lsn != file.lsn {
        return Ok(Err(SnapshotDefect::NameMismatch {
            named: file.lsn,
            stored: lsn,
        }));
    }
    Ok(Ok(Snapshot {
        lsn,
        path: path.clone(),
        payload,
        skipped: Vec::new(),
    }))
}

/// The snapshot to restore from, under the fallback rule of this module; `None` if there is
/// no snapshot and the log holds every record from LSN 1.
pub fn latest_snapshot(dir: &Path) -> Result<Option<Snapshot>, WalError> {
    latest_snapshot_in(&OsStorage, dir)
}

/// [`latest_snapshot`] on `storage`.
pub fn latest_snapshot_in(storage: &dyn Storage, dir: &Path) -> Result<Option<Snapshot>, WalError> {
    let log_first_lsn = segment::list_segments_in(storage, dir)?
        .first()
        .map(|s| s.first_lsn);
    let mut skipped = Vec::new();
    let mut chosen = None;
    for file in list_snapshots_in(storage, dir)?.iter().rev() {
        match read_snapshot_in(storage, file)? {
            Ok(snapshot) => {
                chosen = Some(snapshot);
                break;
            }
            Err(defect) => skipped.push((file.path.clone(), defect)),
        }
    }
    let base_lsn = chosen.as_ref().map_or(0, |s| s.lsn);
    let log_covers = match log_first_lsn {
        Some(first) => first <= base_lsn + 1,
        // No segment: the log holds nothing, which only a snapshot we trust can stand for.
        None => skipped.is_empty(),
    };
    if !log_covers {
        if let Some((corrupt, defect)) = skipped.first() {
            return Err(WalError::SnapshotUnusable {
                corrupt: corrupt.clone(),
                defect: *defect,
                fallback_lsn: base_lsn,
                log_first_lsn: log_first_lsn.unwrap_or(0),
            });
        }
        return Err(WalError::LogStartsAfter {
            requested: base_lsn + 1,
            first: log_first_lsn.unwrap_or(0),
        });
    }
    Ok(chosen.map(|mut s| {
        s.skipped = skipped;
        s
    }))
}

/// The retention rule: if at least two snapshots verify, returns the LSN of the second newest
/// valid one (the log may be compacted up to it) and the snapshot files older than it (which
/// may be deleted). `None` with fewer than two valid snapshots.
pub(crate) fn retention(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<(Lsn, Vec<PathBuf>)>, WalError> {
    let files = list_snapshots_in(storage, dir)?;
    let mut valid = 0;
    for (index, file) in files.iter().enumerate().rev() {
        if read_snapshot_in(storage, file)?.is_ok() {
            valid += 1;
            if valid == 2 {
                let older = files[..index].iter().map(|f| f.path.clone()).collect();
                return Ok(Some((file.lsn, older)));
            }
        }
    }
    Ok(None)
}

/// Keeps the two newest valid snapshots of `dir` and deletes the older snapshot files (the
/// retention rule without a log to compact: a Kafka node's snapshot directory). Returns what
/// it deleted.
pub fn remove_old_snapshots(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let Some((_, older)) = retention(&OsStorage, dir)? else {
        return Ok(Vec::new());
    };
    for path in &older {
        std::fs::remove_file(path).map_err(WalError::io("remove", path))?;
    }
    if !older.is_empty() {
        sync_dir(&OsStorage, dir)?;
    }
    Ok(older)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), 42, b"state").unwrap();
        let file = SnapshotFile {
            lsn: 42,
            path: path.clone(),
        };
        let snap = read_snapshot(&file).unwrap().unwrap();
        assert_eq!((snap.lsn, snap.payload.as_slice()), (42, &b"state"[..]));
        let good = fs::read(&path).unwrap();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            fs::write(&path, &bad).unwrap();
            assert!(read_snapshot(&file).unwrap().is_err(), "bit {bit}");
        }
    }

    #[test]
    fn renamed_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), 5, b"s").unwrap();
        let other = dir.path().join(snapshot_file_name(6));
        fs::rename(&path, &other).unwrap();
        let file = SnapshotFile {
            lsn: 6,
            path: other,
        };
        assert_eq!(
            read_snapshot(&file).unwrap(),
            Err(SnapshotDefect::NameMismatch {
                named: 6,
                stored: 5
            })
        );
    }
}
