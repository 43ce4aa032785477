#!/usr/bin/env bash
# A local Gavel cluster on loopback, to try the operations kit on one machine: a Kafka-protocol
# broker (tansu, in memory), N nodes sharing one Kafka write-ahead log topic, and Prometheus
# scraping them with ops/prometheus/prometheus.yml and the alert rules. No container engine.
#
#   ops/cluster.sh [NODES]        # default 3; Ctrl-C (or SIGTERM) stops everything it started
#
# Scale-out with a static assignment (PRODUCT.md §8, docs/cluster.md): the topic has
# max(8, N) partitions; partition p belongs to node (p mod N) + 1, and node i is the standby of
# node i-1's partitions (node 1 of node N's). Every node writes its own partitions under a
# writer lease per partition and follows the others' leases (GET /v1/cluster shows the map).
# Kill a node (its pid is printed): once its leases lapse (10 s after its last renewal; at once
# after a graceful SIGTERM, which releases them) its standby takes its partitions over and
# serves their auctions. A node answers a bid for another node's auction MISDIRECTED naming
# the owner's advertised addresses (its bound ones here), which the SDK follows: a bidder may
# connect to any node (docs/quic.md, "Several nodes").
#
# Environment: GAVEL_BIN (default target/release/gavel, built if missing), CLUSTER_DIR (default
# a new temporary directory; logs and data stay there), PORT_BASE (default 17000: the broker
# on PORT_BASE+92, Prometheus on PORT_BASE+90, node i on PORT_BASE+100*i + 43 (QUIC),
# + 44 (HTTPS), + 64 (metrics)).
# Needs tansu (ops/test.sh installs it) and Debian's prometheus package.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${1:-3}
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] || { echo "usage: $0 [NODES 1-99]" >&2; exit 2; }
base=${PORT_BASE:-17000}
bin=${GAVEL_BIN:-target/release/gavel}
dir=${CLUSTER_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gavel-cluster.XXXXXX")}
broker="127.0.0.1:$((base + 92))"
prometheus_addr="127.0.0.1:$((base + 90))"
mkdir -p "$dir"

if [ ! -x "$bin" ]; then
    cargo build --release -p gavel
fi
tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
[ -x "$tansu" ] || { echo "tansu is needed (ops/test.sh installs it)" >&2; exit 1; }
command -v prometheus >/dev/null || { echo "prometheus is needed (apt-get install prometheus)" >&2; exit 1; }

# Every process this script starts, by pid; stopped on exit. A standby's loop writes its
# current node's pid to node<i>.pid.
started=()
stop_all() {
    # The loops first, so that none starts a node again; then the nodes. A node stops on
    # SIGTERM within its shutdown deadline (10 s), also while it still waits for the broker
    # or the lease (that wait is interrupted at once; a standby has written nothing).
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    local nodes=()
    for pidfile in "$dir"/node*.pid; do
        [ -f "$pidfile" ] && nodes+=("$(cat "$pidfile")")
    done
    for pid in "${nodes[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Then until they are gone (at most 20 s: a node past its deadline exits by itself).
    local alive=()
    for _ in $(seq 200); do
        alive=()
        for pid in "${nodes[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ "${#alive[@]}" = 0 ] && break
        sleep 0.1
    done
    wait 2>/dev/null || true
    if [ "${#alive[@]}" != 0 ]; then
        echo "node(s) ${alive[*]} still running 20 s after SIGTERM (see $dir/*.log)" >&2
        exit 1
    fi
}
trap stop_all EXIT
trap 'exit 0' INT TERM

# Waits (at most 30 s) until something listens on host:port.
wait_for_port() {
    local host=${1%:*} port=${1##*:}
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1 after 30 s (see $dir/*.log)" >&2
    return 1
}

"$tansu" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
started+=($!)
wait_for_port "$broker"

# One CA for the whole cluster: every node serves the same certificate (localhost,
# 127.0.0.1) and trusts the same client certificates.
"$bin" cert --dir "$dir/certs" >"$dir/cert.log" 2>&1

partitions=$(( nodes > 8 ? nodes : 8 ))
# Comma-separated partitions of node $1 (1-based): p with p mod N = $1 - 1.
partitions_of() {
    local list="" p
    for p in $(seq 0 $((partitions - 1))); do
        [ $((p % nodes)) = $(($1 - 1)) ] && list+="${list:+,}$p"
    done
    echo "$list"
}

# `gavel serve` for node $1; its output goes to node<i>.log.
serve_node() {
    local i=$1 port=$((base + 100 * $1)) own=()
    if [ "$nodes" -gt 1 ]; then
        own=(--kafka-owned-partitions "$(partitions_of "$i")"
             --kafka-standby-partitions "$(partitions_of $(( (i + nodes - 2) % nodes + 1 )))")
    fi
    "$bin" --log-format json serve --data-dir "$dir/node$i" \
        --tls-cert "$dir/certs/server.pem" --tls-key "$dir/certs/server.key" \
        --tls-client-ca "$dir/certs/ca.pem" --tls-crl "$dir/certs/crl.pem" \
        --anonymous-watchers \
        --quic-listen "127.0.0.1:$((port + 43))" --https-listen "127.0.0.1:$((port + 44))" \
        --metrics-listen "127.0.0.1:$((port + 64))" \
        --wal kafka --kafka-brokers "$broker" --kafka-topic gavel-wal \
        --kafka-partitions "$partitions" --kafka-owner "node$i" "${own[@]}" \
        --kafka-connect-timeout-ms 30000 >>"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
    wait "$(cat "$dir/node$i.pid")"
}

# Every node at once: each owns its own partitions (a standby takes over only partitions that
# were owned once and lapsed, so no start races another's first claim).
targets=""
for i in $(seq 1 "$nodes"); do
    targets+="${targets:+, }\"127.0.0.1:$((base + 100 * i + 64))\""
    serve_node "$i" &
    started+=($!)
done
for i in $(seq 1 "$nodes"); do
    wait_for_port "127.0.0.1:$((base + 100 * i + 64))"
done

# The shipped scrape configuration, its `# templated` lines filled in.
rules=$(pwd)/ops/prometheus/gavel.rules.yml
sed -e 's|scrape_interval: 15s # templated|scrape_interval: 5s|' \
    -e 's|evaluation_interval: 15s # templated|evaluation_interval: 5s|' \
    -e "s|- gavel.rules.yml # templated|- $rules|" \
    -e "s|- targets: \[\"127.0.0.1:9464\"\] # templated|- targets: [$targets]|" \
    ops/prometheus/prometheus.yml >"$dir/prometheus.yml"
if grep -v '^#' "$dir/prometheus.yml" | grep -q '# templated'; then
    echo "ops/prometheus/prometheus.yml has a templated line this script does not know" >&2
    exit 1
fi
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
    --web.listen-address="$prometheus_addr" >"$dir/prometheus.log" 2>&1 &
started+=($!)
wait_for_port "$prometheus_addr"

cat <<EOF
cluster up in $dir ($nodes node(s), logs: $dir/*.log)
  broker      $broker (tansu, in memory)
  prometheus  http://$prometheus_addr/alerts  (targets: http://$prometheus_addr/targets)
EOF
for i in $(seq 1 "$nodes"); do
    port=$((base + 100 * i))
    echo "  node $i      quic 127.0.0.1:$((port + 43))  https https://127.0.0.1:$((port + 44))  metrics http://127.0.0.1:$((port + 64))/metrics  pid $(cat "$dir/node$i.pid")  partitions $(partitions_of "$i")"
done
echo "  CA $dir/certs/ca.pem, client certificates in $dir/certs/clients/"
echo "  the partition map: curl --cacert $dir/certs/ca.pem https://127.0.0.1:$((base + 144))/v1/cluster"
if [ "$nodes" -gt 1 ]; then
    echo "try: kill -9 $(cat "$dir/node1.pid")   # GavelDown fires for node 1; node 2 takes its partitions over"
fi
echo "ready"
wait
