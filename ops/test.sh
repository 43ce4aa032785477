#!/usr/bin/env bash
# Runs every test of Gavel. This is the README's test command and what CI runs.
#
# On a fresh machine it needs only what the machine has (Rust, gcc): the protobuf schema is
# compiled by protox at build time (no system protoc), and librdkafka is built from the rdkafka
# crate's bundled sources. The Kafka log's tests need a Kafka-protocol broker: tansu, installed
# here with cargo when it is missing (about 17 minutes on 2 cores, once: it stays in
# ~/.cargo/bin and is never rebuilt when present). The browser page's end-to-end test needs
# Chromium, and the metrics lint, the alert rules' tests and the real-Prometheus alert test need
# promtool and prometheus (Debian's prometheus package): both installed here with apt-get when
# missing. Later issues add their tools here too.
#
# Steps:
#   1. the engine stays sans-IO: `cargo tree` of gavel-engine must not list tokio; the
#      bidder SDK (gavel-client) lists neither the node, the WAL nor the transports;
#   2. tansu (the Kafka-protocol broker), chromium (the browser test's headless browser,
#      Debian's package) and Debian's prometheus package (promtool: `check metrics` on a live
#      node's /metrics, `check rules` and `test rules` on ops/prometheus; the prometheus
#      server: node/tests/ops.rs shows the alerts firing) and systemd-analyze (the unit's
#      check) and mosquitto with mosquitto-clients (the edge agent's MQTT tests) installed
#      if missing; nats-server (Debian package)
#      too when root, for the load tester's smoke (which skips its nats phase without it);
#   3. all unit, integration, property and stress tests of the workspace, plus the benches
#      and binaries built and run once in test mode;
#   4. the loom model check of the price-word / settlement-lock protocol;
#   5. every fuzz target for FUZZ_SECONDS (20) each: ops/fuzz.sh (installs cargo-fuzz if missing);
#   6. the deterministic simulation: a fixed block of seeds plus a few random ones, and the
#      fault matrix of injected bugs each caught by a seed: ops/sim.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "engine must not depend on tokio (or any async runtime / socket crate)"
if cargo tree -p gavel-engine -e normal --prefix none --format '{p}' | grep -E '^(tokio|mio|async-std|smol|socket2) '; then
    echo "error: gavel-engine depends on an I/O runtime (see above); the engine must stay sans-IO" >&2
    exit 1
fi
echo "ok: gavel-engine's normal dependency tree has no tokio"

step "the bidder SDK must build without the server, the log or the transports"
if cargo tree -p gavel-client -e normal --prefix none --format '{p}' | grep -E '^(gavel|gavel-wal|gavel-transport) '; then
    echo "error: gavel-client depends on the node, the WAL or the transports (see above)" >&2
    exit 1
fi
echo "ok: gavel-client's normal dependency tree has none of gavel, gavel-wal, gavel-transport"

step "a Kafka-protocol broker for the Kafka log's tests (tansu)"
if command -v tansu >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
    echo "ok: tansu present"
else
    # The default features have no usable storage engine; these give memory:// and sqlite://.
    cargo install tansu --version 0.6.0 --features dynostore,libsql
fi

step "a headless browser for the browser page's end-to-end test (chromium)"
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "ok: chromium present"
else
    # Debian's package; the test (node/tests/browser.rs) fails without it, it never skips.
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
fi

step "promtool and prometheus for the metrics lint and the alert tests (Debian's prometheus package)"
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "ok: promtool and prometheus present"
else
    # node/tests/metrics_lint.rs pipes a live node's /metrics through `promtool check
    # metrics`; node/tests/ops.rs runs `promtool check rules` and `promtool test rules` on
    # ops/prometheus and starts a prometheus server. They fail without them, never skip.
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
fi

step "systemd-analyze for the systemd unit's check (Debian's systemd package)"
if command -v systemd-analyze >/dev/null 2>&1; then
    echo "ok: systemd-analyze present"
else
    # node/tests/ops.rs runs `systemd-analyze verify` on ops/systemd/gavel.service; it fails
    # without it, it never skips.
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends systemd
fi

step "mosquitto, mosquitto_sub/pub and curl for the edge agent's tests (Debian's mosquitto, mosquitto-clients, curl)"
if command -v mosquitto >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1 \
    && command -v mosquitto_pub >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then
    echo "ok: mosquitto, its clients and curl present"
else
    # edge-agent's tests start mosquitto on a free loopback port and read what the agent
    # publishes with mosquitto_sub (a client that is not the agent); the end-to-end test
    # creates auctions on a real node with curl and the admin certificate. They fail
    # without them.
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
        mosquitto mosquitto-clients curl
fi

step "nats-server for the load tester's smoke (its fan-out peer; optional)"
if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    echo "ok: nats-server present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y nats-server >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y nats-server >/dev/null 2>&1; } \
        || echo "note: nats-server could not be installed; the smoke skips its nats phase"
else
    echo "note: no nats-server (apt-get install nats-server); the smoke skips its nats phase"
fi

step "workspace tests (unit, integration, property, stress; benches in test mode)"
cargo test --workspace --all-targets
cargo test --workspace --doc

step "loom model check of the auction protocol"
# A separate target dir: RUSTFLAGS would otherwise invalidate the main build's cache.
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
    cargo test -p gavel-engine --lib --release loom

step "fuzz every decoder of outside bytes (bounded)"
./ops/fuzz.sh

step "deterministic simulation of the engine and the file log under faults (bounded)"
./ops/sim.sh

step "all tests passed"
