#!/usr/bin/env bash
# Runs the deterministic simulation (issue 16 items 2-4); called by ops/test.sh after the
# workspace tests, whose debug build of gavel-sim it reuses.
#
#   1. the fixed block of seeds SIM_SEEDS (default 1..1001, end exclusive) plus SIM_RANDOM
#      (default 5) random seeds, printed first so a failure replays; the first failing seed
#      prints its trace and the command that replays it;
#   2. the fault matrix: sim/tests/matrix.rs turns each hand-injected bug on in turn
#      (feature `sim-bugs`, which rebuilds only engine, wal, proto and sim) and requires a
#      seed of the block 1..1001 to catch it, and that seed to pass without it.
#
# A long run in release (about 500 seeds/s on 2 cores, 6x the debug build):
#   SIM_SEEDS=1..100001 SIM_RELEASE=1 ops/sim.sh
# One seed, traced:
#   cargo run -p gavel-sim --release -- --seed 42 --trace
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${SIM_SEEDS:-1..1001}"
random="${SIM_RANDOM:-5}"
profile=()
if [ -n "${SIM_RELEASE:-}" ]; then profile=(--release); fi

cargo run "${profile[@]}" -p gavel-sim -- --seeds "$seeds" --random "$random"
cargo test "${profile[@]}" -p gavel-sim --features sim-bugs --test matrix -- --nocapture
