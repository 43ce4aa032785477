//! The simulation passes a block of seeds on the code as it is, and a seed replays
//! identically (the same trace, step for step).

use gavel_sim::{STEPS_DEFAULT, run_seed};

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
        let first = run_seed(seed, STEPS_DEFAULT, false).expect("the seed passes");
        let second = run_seed(seed, STEPS_DEFAULT, false).expect("the seed passes");
        assert_eq!(first, second, "seed {seed} ran differently twice");
        assert!(first.last_lsn > 0, "seed {seed} logged nothing");
    }
}
