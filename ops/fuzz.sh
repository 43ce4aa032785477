#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time (issue 16 item 1); called by ops/test.sh.
#
# The targets (fuzz/fuzz_targets/, one per decoder of bytes from outside the node) are built
# once, then each runs for FUZZ_SECONDS (default 20) from its checked-in seeds
# (fuzz/seeds/<target>/) plus what earlier runs found (fuzz/corpus/<target>/, not checked
# in). A crash stops the script: the input is in fuzz/artifacts/<target>/ and replays with
# the command printed.
#
# Toolchain: nightly when rustup has it (AddressSanitizer, cargo-fuzz's default); on stable
# `--sanitizer none`, which needs no unstable flag. Both build with debug assertions (`-a`)
# so an arithmetic overflow is a crash, not a silent wrap. cargo-fuzz is installed when
# missing (`cargo install cargo-fuzz --locked`, about 2 minutes, once).
#
# A longer run, e.g. an hour per target:  FUZZ_SECONDS=3600 ops/fuzz.sh
# One target only:                        FUZZ_TARGETS=wal_segment ops/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

if ! cargo fuzz --version >/dev/null 2>&1 && [ ! -x "$cargo_home/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --locked
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    flags=(-O -a)
    echo "fuzzing with nightly (AddressSanitizer)"
else
    fuzz=(cargo fuzz)
    flags=(-O -a --sanitizer none)
    echo "no nightly toolchain: fuzzing on stable without a sanitizer"
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <("${fuzz[@]}" list)
fi

started=$SECONDS
"${fuzz[@]}" build "${flags[@]}"
echo "built ${#targets[@]} targets in $((SECONDS - started)) s"

# The file-based targets write under TMPDIR: a directory of this run, removed after; on
# tmpfs when there is one (they test parsing, not the disk, and an fsync there is free).
scratch="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="$scratch/$target.log"
    echo "==> fuzz $target for ${seconds} s"
    corpora=("fuzz/corpus/$target")
    [ -d "fuzz/seeds/$target" ] && corpora+=("fuzz/seeds/$target")
    if ! TMPDIR="$scratch" "${fuzz[@]}" run "${flags[@]}" "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "error: fuzz target $target failed; replay the input with:" >&2
        echo "  ${fuzz[*]} run ${flags[*]} $target fuzz/artifacts/$target/<file>" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    summary+=("$(printf '%-16s %10s runs %8s exec/s' "$target" "$runs" "$rate")")
done

echo
echo "fuzzing: ${#targets[@]} targets, ${seconds} s each, $((SECONDS - started)) s in all"
printf '  %s\n' "${summary[@]}"
