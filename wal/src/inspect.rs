//! Offline tools behind `gavel wal verify` and `gavel wal dump`: a read-only check of a log
//! directory and a record iterator. Neither modifies anything (a torn tail is reported, not
//! truncated).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Lsn;
use crate::error::{SnapshotDefect, WalError};
use crate::segment::{self, Records, Scan, ScanMode, SegmentSummary, TornTail};
use crate::snapshot;
use crate::storage::OsStorage;

/// A snapshot file and whether it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// LSN from its name.
    pub lsn: Lsn,
    /// The file.
    pub path: PathBuf,
    /// `None` if it verifies.
    pub defect: Option<SnapshotDefect>,
}

/// What [`verify`] found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Segments scanned, in order (up to the first problem).
    pub segments: Vec<SegmentSummary>,
    /// Records that check out.
    pub records: u64,
    /// First LSN held, if any.
    pub first_lsn: Option<Lsn>,
    /// Last good LSN (0 for an empty log).
    pub last_lsn: Lsn,
    /// A torn tail that opening the log would truncate.
    pub torn_tail: Option<TornTail>,
    /// Every snapshot file, oldest first.
    pub snapshots: Vec<SnapshotStatus>,
    /// The LSN of the snapshot a start would restore from (0 = none), if one is usable.
    pub restore_from_lsn: Option<Lsn>,
    /// The first problem that would stop a start (its message names file and offset).
    pub problem: Option<WalError>,
}

impl VerifyReport {
    /// Whether the node could start from this directory (a torn tail is fine).
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks a log directory without changing it: every record of every segment, the
/// segment sequence, every snapshot, and the snapshot fallback rule. Errors only if the
/// directory cannot be listed; everything else is in the report.
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport, WalError> {
    let dir = dir.as_ref();
    let segments = segment::list_segments(dir)?;
    let mut scan = Scan::default();
    let mut problem = segment::scan(&OsStorage, &segments, ScanMode::ReadOnly, &mut scan).err();

    let mut snapshots = Vec::new();
    for file in snapshot::list_snapshots(dir)? {
        let defect = snapshot::read_snapshot(&file)?.err();
        snapshots.push(SnapshotStatus {
            lsn: file.lsn,
            path: file.path,
            defect,
        });
    }
    let mut restore_from_lsn = None;
    match snapshot::latest_snapshot(dir) {
        Ok(chosen) => {
            let lsn = chosen.map_or(0, |s| s.lsn);
            if problem.is_none() && lsn > scan.last_lsn {
                problem = Some(WalError::LogEndsBefore {
                    requested: lsn + 1,
                    last: scan.last_lsn,
                });
            } else {
                restore_from_lsn = Some(lsn);
            }
        }
        Err(e) => {
            problem.get_or_insert(e);
        }
    }
    Ok(VerifyReport {
        segments: scan.segments,
        records: scan.records,
        first_lsn: scan.first_lsn,
        last_lsn: scan.last_lsn,
        torn_tail: scan.torn_tail,
        snapshots,
        restore_from_lsn,
        problem,
    })
}

/// Streams every record with LSN ≥ `from_lsn` from a log directory, verifying as it goes;
/// the iterator ends with an error at the first bad record (including a torn tail).
pub fn records(dir: impl AsRef<Path>, from_lsn: Lsn) -> Result<Records, WalError> {
    Records::new(
        Arc::new(OsStorage),
        segment::list_segments(dir.as_ref())?,
        from_lsn,
        None,
    )
}
