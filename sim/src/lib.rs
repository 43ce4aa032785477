//! `gavel-sim`: a deterministic simulation of Gavel's engine and file log under faults, in
//! the manner of FoundationDB's simulator and TigerBeetle's VOPR. One seed drives
//! everything — auctions of every kind, bidders (retries, duplicate copies, bids racing
//! closes), the simulated clock (closes, soft-close extensions, Dutch steps), and a
//! simulated disk under the real `gavel_wal::Wal` (lost, torn and reordered unsynced writes
//! at a crash, bit flips, a full disk, slow fsyncs) — and every failure replays from its
//! seed. Nothing sleeps.
//!
//! After every step the run checks, against an independent model of the rules
//! (`model`, written from docs/auction-rules.md, sharing no engine code): every answer and
//! settlement; English prices strictly rise; each auction settles once; after each
//! crash, no record acknowledged durable is lost, the log recovers to a decision boundary
//! the live engine passed, and the replayed state hash equals the live one; a bit flip is
//! refused (naming file and offset) or, in the last batch, truncated as a torn tail,
//! exactly as `wal/src/segment.rs` documents.
//!
//! - `rng` — the seeded SplitMix64 source.
//! - `disk` — [`SimDisk`], the simulated disk (a `gavel_wal::Storage`).
//! - `model` — the independent model of the auction rules.
//! - `spec` — random auctions and bids, and conversion to engine types.
//! - `world` — one run: the steps and their checks.
//! - `recover` — recovery after a crash and its checks.
//! - [`bugs`] (feature `sim-bugs`) — the hand-injected bugs of the fault matrix, by name.

mod disk;
mod model;
mod recover;
mod rng;
mod spec;
mod world;

#[cfg(feature = "sim-bugs")]
pub mod bugs;

use std::collections::BTreeSet;

pub use disk::{Fate, Flip, SimDisk};
pub use rng::Rng;
pub use world::{Failure, Stats};

/// Steps in one run of a seed.
pub const STEPS_DEFAULT: usize = 200;

/// Runs `seed` for `steps` steps; with `trace`, the failure carries one line per step.
pub fn run_seed(seed: u64, steps: usize, trace: bool) -> Result<Stats, Failure> {
    world::World::new(seed, trace).run(steps)
}

/// Runs `seed` traced, the steps in `skip` doing nothing: its result and one line per
/// step, whether it passed or not.
pub fn trace_seed(
    seed: u64,
    steps: usize,
    skip: &BTreeSet<usize>,
) -> (Result<Stats, Failure>, Vec<String>) {
    let mut world = world::World::new(seed, true);
    world.skip = skip.clone();
    let result = world.run(steps);
    (result, world.trace())
}

/// Shrinks a failing seed's trace: one pass over the steps before the failure, last first,
/// keeping a step skipped (it does nothing) whenever the same invariant still fails within
/// as many steps. Returns the steps skipped and the shrunk run's failure (with its trace);
/// `None` if the seed passes.
pub fn shrink(seed: u64, steps: usize) -> Option<(BTreeSet<usize>, Failure)> {
    let first = run_seed(seed, steps, false).err()?;
    let steps = first.step + 1;
    let same = |skip: &BTreeSet<usize>| {
        let mut world = world::World::new(seed, false);
        world.skip = skip.clone();
        matches!(world.run(steps), Err(f) if f.invariant == first.invariant)
    };
    let mut skip = BTreeSet::new();
    for step in (0..first.step).rev() {
        skip.insert(step);
        if !same(&skip) {
            skip.remove(&step);
        }
    }
    let (result, _) = trace_seed(seed, steps, &skip);
    // Invariant: the last run `same` accepted (or the first one) failed this way.
    Some((skip, result.expect_err("a shrunk seed fails as it did")))
}
