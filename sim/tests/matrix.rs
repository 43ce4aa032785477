//! The fault matrix (issue 16 item 4): each hand-injected bug of `gavel_sim::bugs`, turned on
//! alone, must make a seed of the CI block fail, and that seed must pass with the bug off —
//! so each fault kind of the simulation is shown to catch a real bug, not claimed to.
//!
//! Needs `--features sim-bugs` (`ops/sim.sh` runs it); one test, because the switches are
//! process-wide and must not overlap.
#![cfg(feature = "sim-bugs")]

use gavel_sim::{STEPS_DEFAULT, bugs, run_seed};

/// The fixed block of seeds CI runs (`ops/sim.sh`, `SIM_SEEDS`).
const CI_BLOCK: std::ops::Range<u64> = 1..1001;

#[test]
fn every_injected_bug_is_caught_by_a_seed_of_the_ci_block() {
    for bug in &bugs::ALL {
        bug.set(true);
        let caught = CI_BLOCK.clone().find_map(|seed| {
            run_seed(seed, STEPS_DEFAULT, false)
                .err()
                .map(|f| (seed, f))
        });
        bug.set(false);
        let Some((seed, failure)) = caught else {
            panic!(
                "bug {} ({}) was not caught by seeds {CI_BLOCK:?}",
                bug.name, bug.fault
            );
        };
        println!(
            "bug {:<26} caught by seed {seed:>5} at step {:>3}: {}",
            bug.name, failure.step, failure.what
        );
        assert!(
            run_seed(seed, STEPS_DEFAULT, false).is_ok(),
            "seed {seed} fails without bug {} too: the failure is not the bug's",
            bug.name
        );
    }
}
