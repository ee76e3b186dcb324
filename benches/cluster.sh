#!/usr/bin/env bash
# Cluster benchmarks (issue 19), all in one run on this machine over
# 127.0.0.1, MQTT 3.1.1 throughout (NATS's gateway speaks nothing newer):
#
#   roost-cluster       two roost nodes (A, B) joined through one nats-server
#                       with JetStream; publishers on A, subscribers on B
#                       (--nodes 1: both on A; --nodes 3 or 4: more nodes,
#                       without clients, that read the stream all the same;
#                       the label says roost-cluster-Nn then)
#   roost-cluster-redb  the same with the redb store (--stores memory,redb)
#   nats-mqtt           NATS's own MQTT gateway: one nats-server, JetStream on
#   roost               one roost, no cluster
#
# Scenarios are interleaved: each one runs against every broker in turn,
# every broker (and its nats-server) started afresh in a new directory, so
# the noise of a shared machine falls on all of them alike. Full-speed
# scenarios publish for --seconds (the brokers differ a hundredfold in
# speed, so a fixed message count would be seconds for one and
# milliseconds for another); paced ones (@RATE/s) measure latency.
# Prints Markdown tables (throughput, latency, lost, the ratios, and each
# process's CPU per delivered message) to stdout and to --out. PAIRS=50,
# SUBS=100, RATE=1000 and SIZES="64 1024" (payload bytes of the full-speed
# scenarios) in the environment change the scenarios.
#
#   benches/cluster.sh                      # default run (~4 minutes)
#   benches/cluster.sh --build              # build what it needs first
#   benches/cluster.sh --stores memory,redb # also the cluster on redb (~5 min)
#   benches/cluster.sh --only '--qos 1' --rounds 3   # scenarios whose loadgen
#                                           # arguments hold the text
#   benches/cluster.sh --brokers roost-cluster,nats-mqtt --seconds 2
#   benches/cluster.sh --out /tmp/cluster.md
#   benches/cluster.sh --nodes 3 --brokers roost-cluster --only '--qos 1 --size 64 --messages'
#
# Needs, and no root: `nats-server` 2.9 or later (Debian's package puts it in
# /usr/sbin; NATS_SERVER=/path picks another), and release builds of roost
# WITH THE `cluster` FEATURE and of loadgen:
#   cargo build --release --features cluster -p roost -p roost-loadgen
# (--build runs exactly that). Listens on loopback ports PORT_BASE..+9
# (default 14220..14229); everything it writes is in a temporary directory,
# removed at the end with the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

BUILD=0
ONLY=""
ROUNDS=1
SECS=4
NODES=2
STORES="memory"
BROKERS="roost-cluster,nats-mqtt,roost"
OUT=""
ARGS_TEXT="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=1 ;;
        --only) ONLY="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --seconds) SECS="$2"; shift ;;
        --nodes) NODES="$2"; shift ;;
        --stores) STORES="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$NODES" in 1|2|3|4) ;; *) echo "cluster.sh: --nodes is 1 to 4" >&2; exit 2 ;; esac
case ",$STORES," in *",redb,"*) BROKERS="${BROKERS/roost-cluster/roost-cluster,roost-cluster-redb}" ;; esac
want() { case ",$BROKERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- What it needs ------------------------------------------------------------
NATS=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
if [ ! -x "$NATS" ]; then
    echo "cluster.sh: nats-server not found (PATH, /usr/sbin; or set NATS_SERVER)." >&2
    echo "  Debian: apt-get install nats-server" >&2
    exit 2
fi
ROOST="$ROOT/target/release/roost"
LOADGEN="$ROOT/target/release/loadgen"
BUILD_CMD=(cargo build --release --features cluster -p roost -p roost-loadgen)
if [ "$BUILD" = 1 ]; then
    echo "building: ${BUILD_CMD[*]}" >&2
    "${BUILD_CMD[@]}" >&2
fi
if [ ! -x "$ROOST" ] || [ ! -x "$LOADGEN" ] || ! "$ROOST" --help 2>/dev/null | grep -q -- '--cluster-node'; then
    echo "cluster.sh: needs release builds of roost with the cluster feature and of loadgen:" >&2
    echo "  ${BUILD_CMD[*]}   (or run with --build)" >&2
    exit 2
fi

PORT_BASE=${PORT_BASE:-14220}
PORT_NATS=$PORT_BASE                 # the cluster's nats-server, clients
PORT_NATS_HTTP=$((PORT_BASE + 1))    # its monitoring (/healthz)
PORT_A=$((PORT_BASE + 2))            # roost node A (publishers)
PORT_B=$((PORT_BASE + 3))            # roost node B (subscribers)
PORT_GW_NATS=$((PORT_BASE + 4))      # the MQTT gateway's nats-server, clients
PORT_GW_HTTP=$((PORT_BASE + 5))
PORT_GW_MQTT=$((PORT_BASE + 6))      # the MQTT gateway
PORT_SINGLE=$((PORT_BASE + 7))       # single roost
PORT_C=$((PORT_BASE + 8))            # roost nodes C and D (--nodes 3, 4)
PORT_D=$((PORT_BASE + 9))
if [ "$PORT_BASE" -lt 1024 ] || [ $((PORT_BASE + 9)) -ge 32768 ]; then
    echo "cluster.sh: PORT_BASE must leave its 10 ports in 1024..32767" >&2
    exit 2
fi

TMP=$(mktemp -d /tmp/roost-cluster-bench.XXXXXX)
RESULTS="$TMP/results.tsv"
: > "$RESULTS"
# The processes this script started, by id: only these are ever stopped.
STARTED=()
stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    STARTED=()
}
cleanup() {
    stop_all
    if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NOTES=()
note() { NOTES+=("$1"); echo "note: $1" >&2; }

# --- Starting brokers ---------------------------------------------------------
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 300); do
        if port_taken "$1"; then return 0; fi
        sleep 0.05
    done
    return 1
}

# http_ok PORT PATH: a 200 from the monitoring endpoint.
http_ok() {
    local line
    line=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3 && head -n1 <&3) 2>/dev/null) || return 1
    case "$line" in *" 200"*) return 0 ;; *) return 1 ;; esac
}

# start_nats NAME CLIENT_PORT HTTP_PORT [MQTT_PORT]: one nats-server with
# JetStream in its own directory; waits until /healthz says JetStream is up.
# Sets NATS_PID.
start_nats() {
    local name=$1 client=$2 http=$3 mqtt=${4:-} dir="$TMP/$1"
    rm -rf "$dir"
    mkdir -p "$dir/store"
    {
        echo "# Written by benches/cluster.sh."
        echo "server_name: $name"
        echo "listen: \"127.0.0.1:$client\""
        echo "http: \"127.0.0.1:$http\""
        echo "log_file: \"$dir/server.log\""
        echo "jetstream { store_dir: \"$dir/store\" }"
        if [ -n "$mqtt" ]; then echo "mqtt { listen: \"127.0.0.1:$mqtt\" }"; fi
    } > "$dir/nats.conf"
    "$NATS" -c "$dir/nats.conf" >/dev/null 2>>"$dir/stderr.log" &
    NATS_PID=$!
    STARTED+=("$NATS_PID")
    for _ in $(seq 1 300); do
        if http_ok "$http" /healthz; then
            if [ -z "$mqtt" ] || wait_port "$mqtt"; then return 0; fi
        fi
        sleep 0.05
    done
    echo "nats-server $name did not become ready; its log:" >&2
    tail -n 20 "$dir/server.log" >&2 || true
    return 1
}

# start_roost NAME PORT STORE [NODE]: a roost (a cluster node when NODE is
# given, through the cluster's nats-server); waits for its MQTT port.
# Sets ROOST_PID.
start_roost() {
    local name=$1 port=$2 store=$3 node=${4:-} dir="$TMP/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    {
        echo "# Written by benches/cluster.sh."
        if [ -n "$node" ]; then
            echo "[cluster]"
            echo "servers = [\"nats://127.0.0.1:$PORT_NATS\"]"
            echo "name = \"bench\""
            echo "node = \"$node\""
        fi
    } > "$dir/roost.toml"
    RUST_LOG=warn "$ROOST" --config "$dir/roost.toml" --tcp "127.0.0.1:$port" \
        --store "$store" --data-dir "$dir/data" >/dev/null 2>>"$dir/roost.log" &
    ROOST_PID=$!
    STARTED+=("$ROOST_PID")
    if ! wait_port "$port"; then
        echo "roost $name did not start; its log:" >&2
        tail -n 20 "$dir/roost.log" >&2 || true
        return 1
    fi
}

# start BROKER: sets PUB_PORT, SUB_PORT (empty: the same), PIDS (the
# processes whose CPU counts, in the order ROLES names them).
start() {
    local port
    for port in $PORT_NATS $PORT_A $PORT_B $PORT_GW_NATS $PORT_GW_MQTT $PORT_SINGLE $PORT_C $PORT_D; do
        if port_taken "$port"; then
            echo "port $port is taken by another process; not starting $1 (PORT_BASE=... picks others)" >&2
            return 1
        fi
    done
    SUB_PORT=""
    case "$1" in
        roost-cluster|roost-cluster-redb)
            local store=memory
            if [ "$1" = roost-cluster-redb ]; then store=redb; fi
            start_nats nats "$PORT_NATS" "$PORT_NATS_HTTP" || return 1
            local nats=$NATS_PID
            # One after the other: the first creates the stream and buckets.
            local ports=("$PORT_A" "$PORT_B" "$PORT_C" "$PORT_D") names=(a b c d) i
            PIDS=()
            for i in $(seq 0 $((NODES - 1))); do
                start_roost "node-${names[$i]}" "${ports[$i]}" "$store" "${names[$i]}" || return 1
                PIDS+=("$ROOST_PID")
            done
            PIDS+=("$nats")
            PUB_PORT=$PORT_A
            if [ "$NODES" -gt 1 ]; then SUB_PORT=$PORT_B; fi
            ;;
        nats-mqtt)
            start_nats gateway "$PORT_GW_NATS" "$PORT_GW_HTTP" "$PORT_GW_MQTT" || return 1
            PUB_PORT=$PORT_GW_MQTT PIDS=("$NATS_PID")
            ;;
        roost)
            start_roost single "$PORT_SINGLE" memory || return 1
            PUB_PORT=$PORT_SINGLE PIDS=("$ROOST_PID")
            ;;
    esac
}

# label BROKER: the name in the tables.
label() {
    case "$1" in
        roost-cluster*) if [ "$NODES" = 2 ]; then echo "$1"; else echo "$1-${NODES}n"; fi ;;
        *) echo "$1" ;;
    esac
}

roles() {
    case "$1" in
        roost-cluster*)
            case "$NODES" in
                1) echo "node A (publishers and subscribers) / nats-server" ;;
                2) echo "node A (publishers) / node B (subscribers) / nats-server" ;;
                3) echo "node A (publishers) / node B (subscribers) / node C (no clients) / nats-server" ;;
                4) echo "node A (publishers) / node B (subscribers) / nodes C, D (no clients) / nats-server" ;;
            esac ;;
        nats-mqtt) echo "nats-server" ;;
        roost) echo "roost" ;;
    esac
}

# scenario NAME -- LOADGEN ARGS...: the scenario against every broker, in
# turn, each started afresh.
scenario() {
    local name=$1 round b
    shift 2
    case " $* " in *"$ONLY"*) ;; *) return 0 ;; esac
    for round in $(seq 1 "$ROUNDS"); do
        local label_name=$name
        if [ "$ROUNDS" -gt 1 ]; then label_name="$name #$round"; fi
        for b in roost-cluster roost-cluster-redb nats-mqtt roost; do
            want "$b" || continue
            if ! start "$b"; then
                note "$b failed to start for: $label_name"
                stop_all
                continue
            fi
            local sub=()
            if [ -n "$SUB_PORT" ]; then sub=(--sub-broker "127.0.0.1:$SUB_PORT"); fi
            local pids=()
            for p in "${PIDS[@]}"; do pids+=(--pid "$p"); done
            echo "== $label_name [$(label "$b")]" >&2
            if ! timeout 300 "$LOADGEN" --broker "127.0.0.1:$PUB_PORT" "${sub[@]}" "${pids[@]}" \
                --label "$(label "$b")" --name "$label_name" --record "$RESULTS" "$@" >&2; then
                note "$b: loadgen $* failed"
            fi
            stop_all
        done
    done
}

PAIRS=${PAIRS:-50}
SUBS=${SUBS:-100}
RATE=${RATE:-1000}
SIZES=${SIZES:-64 1024}
UPTIME_BEFORE=$(uptime)
START=$(date +%s)

# Full speed: publishing stops after $SECS seconds (--duration), with more
# messages than the fastest broker gets through in that time.
for qos in 0 1; do
    for size in $SIZES; do
        sname=$size"B"
        if [ $((size % 1024)) = 0 ]; then sname=$((size / 1024))KiB; fi
        scenario "pairs q$qos $sname" -- pairs --clients "$PAIRS" --qos "$qos" --size "$size" \
            --messages 100000000 --duration "$SECS"
        scenario "fan-out q$qos $sname" -- fan-out --clients "$SUBS" --qos "$qos" --size "$size" \
            --messages 1000000 --duration "$SECS"
    done
done
# Latency at a steady rate every broker keeps up with: $RATE deliveries a
# second for $SECS seconds.
for qos in 0 1; do
    scenario "pairs q$qos 64B @$RATE/s" -- pairs --clients "$PAIRS" --qos "$qos" --size 64 \
        --rate "$RATE" --messages $((RATE * SECS)) --duration $((SECS * 2))
    scenario "fan-out q$qos 64B @$RATE/s" -- fan-out --clients "$SUBS" --qos "$qos" --size 64 \
        --rate "$RATE" --messages $((RATE * SECS / SUBS)) --duration $((SECS * 2))
done
# Connections: RSS growth per idle connection on the broker (for the
# cluster, on node A, summed over A, B and NATS), and connects per second.
scenario "idle 5k conns" -- idle --connections 5000 --settle 2 --duration 120
scenario "connect rate x16" -- connrate --connections 3000 --concurrency 16 --duration 120
ELAPSED=$(( $(date +%s) - START ))
UPTIME_AFTER=$(uptime)

# --- Tables -------------------------------------------------------------------
# The table's columns follow the brokers' first appearance: put the
# cluster's records first so the ratios read roost-cluster / the others.
SORTED="$TMP/sorted.tsv"
for b in roost-cluster roost-cluster-redb nats-mqtt roost; do
    awk -F'\t' -v b="$(label "$b")" '$2 == b' "$RESULTS"
done > "$SORTED"

report() {
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -sr)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- nats-server $("$NATS" --version 2>/dev/null | awk '{print $NF}'); roost $("$ROOST" --version 2>/dev/null | awk '{print $2}')"
    echo "- load before: \`${UPTIME_BEFORE#"${UPTIME_BEFORE%%load*}"}\`; after: \`${UPTIME_AFTER#"${UPTIME_AFTER%%load*}"}\`"
    echo "- rerun: \`benches/cluster.sh${ARGS_TEXT:+ $ARGS_TEXT}\` (${ELAPSED} s of scenarios)"
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo
        echo "Notes from this run:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
    echo
    "$LOADGEN" table --input "$SORTED"
    echo
    echo "CPU per delivered message, microseconds (user + system, from /proc/PID/stat"
    echo "over the publishing and delivery phase, divided by distinct deliveries; for"
    echo "idle and connect rate, per connection made):"
    echo
    local b
    for b in roost-cluster roost-cluster-redb nats-mqtt roost; do
        want "$b" || continue
        echo "- $(label "$b"): $(roles "$b")"
    done
    echo
    awk -F'\t' '
        BEGIN { nb = 0; ns = 0 }
        {
            s = $1; b = $2
            if (!(b in bseen)) { bseen[b] = 1; border[nb++] = b }
            if (!(s in sseen)) { sseen[s] = 1; sorder[ns++] = s }
            n = split($13, cpu, ",")
            cell = ""; total = 0
            for (i = 1; i <= n; i++) {
                us = ($14 > 0) ? cpu[i] * 1e6 / $14 : 0
                total += us
                cell = cell (i > 1 ? " / " : "") sprintf("%.1f", us)
            }
            if (n > 1) cell = cell sprintf(" = %.1f", total)
            if (n == 0 || $14 == 0) cell = "-"
            val[s, b] = cell
        }
        END {
            printf "| scenario |"
            for (j = 0; j < nb; j++) printf " %s |", border[j]
            printf "\n|---|"
            for (j = 0; j < nb; j++) printf "---:|"
            printf "\n"
            for (i = 0; i < ns; i++) {
                printf "| %s |", sorder[i]
                for (j = 0; j < nb; j++) {
                    k = sorder[i] SUBSEP border[j]
                    printf " %s |", (k in val) ? val[k] : "-"
                }
                printf "\n"
            }
        }' "$SORTED"
}

if [ -n "$OUT" ]; then
    report | tee "$OUT"
    echo "wrote $OUT" >&2
else
    report
fi
