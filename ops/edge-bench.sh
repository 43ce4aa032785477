#!/usr/bin/env bash
# The edge agent's figures of PRODUCT.md §10 (issue 13 item 8), reproducibly, on loopback:
# a `gavel serve --dev` node, mosquitto and `gavel-edge`, each a child of this script.
#
#   1. RSS: the agent subscribed to AUCTIONS English auctions (all held), then with the node
#      killed and BIDS bids queued on disk: VmRSS, RssAnon and RssFile from /proc;
#   2. forward rate: the node restarted, the time until the queue is empty (every bid must
#      be accepted: each auction's bids rise, so one out of order would be too low);
#   3. latency: bid accepted → retained MQTT state seen by a subscriber, beside its floors
#      in the same run (the node → QUIC watcher stream, mosquitto's publish → receive):
#      `cargo run --profile edge -p gavel-edge --example edge_latency`.
#
#   ./ops/edge-bench.sh                       # builds gavel (release), gavel-edge (edge)
#   AUCTIONS=1000 BIDS=10000 LATENCY_BIDS=500 ./ops/edge-bench.sh
#   GAVEL_BIN=/path/gavel EDGE_BIN=/path/gavel-edge ./ops/edge-bench.sh   # prebuilt binaries
#   ONLY=rss ./ops/edge-bench.sh              # rss (with the forward rate) or latency
#
# Bounded: every wait has a deadline; about 1–3 minutes with 1,000 auctions, 10,000 bids.
set -euo pipefail
cd "$(dirname "$0")/.."

AUCTIONS=${AUCTIONS:-1000}
BIDS=${BIDS:-10000}
LATENCY_BIDS=${LATENCY_BIDS:-500}
ONLY=${ONLY:-}
WAIT_SECONDS=${WAIT_SECONDS:-300}

# The agent as devices run it: the size-optimised `edge` profile (Cargo.toml).
[ -n "${GAVEL_BIN:-}" ] || cargo build --release -p gavel --bin gavel
[ -n "${EDGE_BIN:-}" ] || cargo build --profile edge -p gavel-edge --bin gavel-edge
GAVEL_BIN=${GAVEL_BIN:-target/release/gavel}
EDGE_BIN=${EDGE_BIN:-target/edge/gavel-edge}

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# A loopback port free for both TCP and UDP now.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! ss -Htuln | awk '{print $5}' | grep -q ":$port\$"; then echo "$port"; return; fi
    done
}

# Waits until `$2` (a command) succeeds, at most WAIT_SECONDS; `$1` names what for.
wait_for() {
    local what=$1; shift
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; exit 1; fi
        sleep 0.2
    done
}

QUIC=$(free_port); HTTPS=$(free_port); MQTT=$(free_port); AGENT_HTTP=$(free_port)
CERTS=$TMP/node/certs

start_node() {
    "$GAVEL_BIN" serve --dev --data-dir "$TMP/node" --quic-listen "127.0.0.1:$QUIC" \
        --https-listen "127.0.0.1:$HTTPS" >"$TMP/node.log" 2>&1 &
    NODE_PID=$!; PIDS+=("$NODE_PID")
    wait_for "the node" grep -q "listening quic=" "$TMP/node.log"
}

start_broker() {
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT" >"$TMP/mosquitto.conf"
    mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
    PIDS+=("$!")
    wait_for "mosquitto" bash -c "echo >/dev/tcp/127.0.0.1/$MQTT"
}

start_agent() {
    RUST_LOG=warn "$EDGE_BIN" --node "127.0.0.1:$QUIC" --cert-dir "$CERTS" \
        --mqtt-broker "127.0.0.1:$MQTT" --data-dir "$TMP/agent" --patterns 'bench.>' \
        --http-listen "127.0.0.1:$AGENT_HTTP" --queue-bids-max "$BIDS" \
        --queue-bytes-max $((BIDS * 128)) --reconnect-backoff-max-ms 2000 "$@" \
        >"$TMP/agent.log" 2>&1 &
    AGENT_PID=$!; PIDS+=("$AGENT_PID")
    wait_for "the agent" curl -sf "http://127.0.0.1:$AGENT_HTTP/healthz"
}

# One metric's value from the agent's /metrics (0 when absent).
metric() {
    curl -sf "http://127.0.0.1:$AGENT_HTTP/metrics" | awk -v name="$1" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }'
}
metric_is() { [ "$(metric "$1")" = "$2" ]; }

# Runs curl over a config file of requests, one transfer each (one process, kept-alive
# connections); checks every status is `$2`.
curl_batch() {
    local config=$1 expected=$2
    local bad
    sed -i '$ d' "$config"  # the last request's trailing `next`
    bad=$(curl -s -K "$config" | grep -cv "^$expected\$" || true)
    if [ "$bad" != 0 ]; then echo "$bad requests of $config did not answer $expected" >&2; exit 1; fi
}

create_auctions() {
    local now_us=$(($(date +%s%N) / 1000)) config=$TMP/create.curl
    : >"$config"
    for ((id = 1; id <= AUCTIONS; id++)); do
        cat >>"$config" <<EOF
url = "https://localhost:$HTTPS/v1/auctions"
resolve = "localhost:$HTTPS:127.0.0.1"
cacert = "$CERTS/ca.pem"
cert = "$CERTS/clients/admin-admin.pem"
key = "$CERTS/clients/admin-admin.key"
header = "content-type: application/json"
data = "{\"rules\": {\"auctionId\": \"$id\", \"topic\": \"bench.a$id\", \"english\": {\"startPrice\": \"100\"}, \"startsAtUs\": \"$((now_us - 1000000))\", \"endsAtUs\": \"$((now_us + 3600000000))\"}}"
output = "/dev/null"
write-out = "%{http_code}\n"
next
EOF
    done
    curl_batch "$config" 201
}

# BIDS bids in rounds over the auctions: round r bids 150 + 10 r on every auction.
queue_bids() {
    local config=$TMP/bids.curl n=0
    : >"$config"
    for ((round = 0; n < BIDS; round++)); do
        for ((id = 1; id <= AUCTIONS && n < BIDS; id++, n++)); do
            cat >>"$config" <<EOF
url = "http://127.0.0.1:$AGENT_HTTP/v1/bids"
data = "{\"auction_id\": $id, \"amount\": $((150 + 10 * round))}"
output = "/dev/null"
write-out = "%{http_code}\n"
next
EOF
        done
    done
    curl_batch "$config" 202
}

rss() { # label
    local status=/proc/$AGENT_PID/status
    printf '%-44s VmRSS %6d KiB  RssAnon %6d KiB  RssFile %6d KiB  threads %s\n' "$1" \
        "$(awk '/^VmRSS/ {print $2}' "$status")" "$(awk '/^RssAnon/ {print $2}' "$status")" \
        "$(awk '/^RssFile/ {print $2}' "$status")" "$(awk '/^Threads/ {print $2}' "$status")"
}

echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binaries: $GAVEL_BIN, $EDGE_BIN ($(stat -c %s "$EDGE_BIN") bytes)"
start_node
start_broker
create_auctions
start_agent
# Held once the count stops moving for 2 s (the node sends a keyframe of each at subscribe).
held_settled() {
    local before
    before=$(metric gavel_edge_auctions); sleep 2
    [ "$before" != 0 ] && [ "$(metric gavel_edge_auctions)" = "$before" ]
}
wait_for "the agent's subscribe keyframes" held_settled
echo "auctions held by the agent: $(metric gavel_edge_auctions) of $AUCTIONS"

if [ -z "$ONLY" ] || [ "$ONLY" = rss ]; then
    rss "$(metric gavel_edge_auctions) auctions held"
    kill -KILL "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
    started=$SECONDS
    queue_bids
    echo "queued $BIDS bids over HTTP in $((SECONDS - started)) s (one fsync each)"
    sleep 1
    rss "$(metric gavel_edge_auctions) auctions held, $BIDS bids queued"
    echo "queue file: $(stat -c %s "$TMP/agent/queue.log") bytes"
    start_node
    started_ns=$(date +%s%N)
    wait_for "the queue to drain" metric_is gavel_edge_queue_bids 0
    elapsed_ms=$((($(date +%s%N) - started_ns) / 1000000))
    accepted=$(metric 'gavel_edge_bids_forwarded_total{outcome="accepted"}')
    echo "forwarded $BIDS bids in $elapsed_ms ms after the node's restart: $((BIDS * 1000 / (elapsed_ms > 0 ? elapsed_ms : 1))) bids/s; accepted $accepted (the rest: $(curl -sf "http://127.0.0.1:$AGENT_HTTP/metrics" | grep '^gavel_edge_bids_forwarded_total' | grep -v accepted | tr '\n' ' '))"
    rss "after forwarding"
fi

if [ -z "$ONLY" ] || [ "$ONLY" = latency ]; then
    cargo run --profile edge -q -p gavel-edge --example edge_latency -- --node "127.0.0.1:$QUIC" \
        --certs "$CERTS" --mqtt-port "$MQTT" --auction 1 --bids "$LATENCY_BIDS"
fi
