//! The simulation passes a block of seeds on the code as it is, and a seed replays
//! identically (the same trace, step for step).

use std::collections::BTreeSet;

use gavel_sim::{STEPS_DEFAULT, run_seed, trace_seed};

#[test]
fn a_block_of_seeds_passes_every_invariant() {
    for seed in 1..=40 {
        if let Err(failure) = run_seed(seed, STEPS_DEFAULT, false) {
            panic!(
                "seed {seed} failed at step {}: {}",
                failure.step, failure.what
            );
        }
    }
}

#[test]
fn a_seed_replays_step_for_step() {
    for seed in [3, 17] {
        let (first, first_trace) = trace_seed(seed, STEPS_DEFAULT, &BTreeSet::new());
        let (second, second_trace) = trace_seed(seed, STEPS_DEFAULT, &BTreeSet::new());
        let first = first.expect("the seed passes");
        assert_eq!(
            Ok(first),
            second.map_err(|f| f.what),
            "seed {seed} ended differently"
        );
        assert_eq!(
            first_trace, second_trace,
            "seed {seed} ran differently twice"
        );
        assert!(first.last_lsn > 0, "seed {seed} logged nothing");
    }
}
