//! Hand-injected bugs for the fault matrix of `gavel-sim` (`sim/tests/matrix.rs`): switches
//! that exist only with the `sim-bugs` feature, which nothing but the simulator's matrix
//! test enables. Each is off until that test turns it on; with the feature off this module
//! and every check of a switch are compiled out.

use std::sync::atomic::{AtomicBool, Ordering};

/// The writer acknowledges a batch as durable without its fdatasync.
pub static ACK_WITHOUT_FSYNC: AtomicBool = AtomicBool::new(false);
/// Recovery does not check the CRC of the last record of a segment.
pub static SKIP_CRC_LAST_RECORD: AtomicBool = AtomicBool::new(false);
/// Recovery truncates corruption followed by a valid record of a later batch as if it were
/// a torn tail, instead of refusing.
pub static TRUNCATE_MIDDLE_CORRUPTION: AtomicBool = AtomicBool::new(false);
/// A snapshot is restored without checking its CRC.
pub static SNAPSHOT_SKIP_CRC: AtomicBool = AtomicBool::new(false);
/// The writer ignores a failed write (e.g. a full disk) and syncs and acknowledges anyway.
pub static IGNORE_WRITE_ERROR: AtomicBool = AtomicBool::new(false);

/// Whether `bug` is switched on.
pub(crate) fn on(bug: &AtomicBool) -> bool {
    // Ordering: Relaxed; a test sets it before the run on the same thread.
    bug.load(Ordering::Relaxed)
}
