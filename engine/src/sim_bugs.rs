//! Hand-injected bugs for the fault matrix of `gavel-sim` (`sim/tests/matrix.rs`): switches
//! that exist only with the `sim-bugs` feature, which nothing but the simulator's matrix
//! test enables. Each is off until that test turns it on; with the feature off this module
//! and every check of a switch are compiled out.

use std::sync::atomic::{AtomicBool, Ordering};

/// Soft close moves the end by twice `extension_us` (an extension applied twice).
pub static EXTENSION_TWICE: AtomicBool = AtomicBool::new(false);
/// A bid at exactly the end is accepted (`now > ends_at` instead of `>=`).
pub static ACCEPT_AT_END: AtomicBool = AtomicBool::new(false);
/// A snapshot leaves out the idempotency memory (a forgotten dedup entry).
pub static FORGET_DEDUP_ON_SNAPSHOT: AtomicBool = AtomicBool::new(false);

/// Whether `bug` is switched on.
pub(crate) fn on(bug: &AtomicBool) -> bool {
    // Ordering: Relaxed; a test sets it before the run on the same thread.
    bug.load(Ordering::Relaxed)
}
