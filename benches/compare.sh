#!/usr/bin/env bash
# Compares roost with Mosquitto and rumqttd on this machine, scenario by
# scenario, and writes the tables to BENCHMARKS.md at the repository root.
#
#   benches/compare.sh            # default run, under ~10 minutes
#   benches/compare.sh --full     # longer runs, and 100k idle connections
#   benches/compare.sh --brokers roost,mosquitto --out /tmp/b.md
#   benches/compare.sh --only 'fan-out --qos 0' --out /tmp/b.md   # scenarios whose
#                                  # loadgen arguments contain the text
#   benches/compare.sh --baseline /tmp/roost-old --out /tmp/b.md  # also runs an
#                                  # older roost binary right after roost in every
#                                  # scenario, as "roost-before" (before/after a change)
#
# Installs what is missing: Mosquitto through apt-get, rumqttd through
# `cargo install` (a few minutes of compiling; skipped with a note if it
# fails). Every broker listens on its own 127.0.0.1 port and is restarted for
# every scenario, so one run's leftovers (allocator caches, sessions) do not
# colour the next. Results are ratios first: the machine may be shared.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

FULL=0
BROKERS="roost,mosquitto,rumqttd"
ONLY=""
BASELINE=""
OUT="$ROOT/BENCHMARKS.md"
ARGS_TEXT="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1 ;;
        --brokers) BROKERS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --baseline) BASELINE="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

# Ports, one per broker (rumqttd needs a second one for MQTT 5.0).
PORT_ROOST=${PORT_ROOST:-18831}
PORT_MOSQ=${PORT_MOSQ:-18832}
PORT_RUMQ=${PORT_RUMQ:-18833}
PORT_RUMQ5=${PORT_RUMQ5:-18834}

# Idle-connection scenarios need a descriptor per connection in the broker
# and in loadgen; both inherit this limit.
ulimit -Hn 400000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 200000 2>/dev/null || true

NOTES=()
note() { NOTES+=("$1"); echo "note: $1" >&2; }

# --- Installing -------------------------------------------------------------
want() { case ",$BROKERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || { echo "compare.sh: --baseline $BASELINE is not an executable" >&2; exit 2; }
    BROKERS="$BROKERS,roost-before"
fi

if want mosquitto && ! command -v mosquitto >/dev/null; then
    echo "installing mosquitto (apt-get)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; } >&2; then
        note "mosquitto could not be installed; skipped"
    fi
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || { want mosquitto && note "mosquitto not found; skipped"; BROKERS=${BROKERS//mosquitto/}; }

RUMQTTD=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")
if want rumqttd && [ ! -x "$RUMQTTD" ]; then
    echo "installing rumqttd (cargo install; several minutes of compiling)" >&2
    t0=$(date +%s)
    # rumqttd 0.20's lock file pins metrics 0.22.1, which newer compilers
    # reject; without --locked cargo takes a fixed 0.22.x.
    if cargo install rumqttd --locked >&2 || cargo install rumqttd >&2; then
        note "rumqttd installed by this run in $(( $(date +%s) - t0 )) s"
    else
        note "rumqttd failed to install (see the log above); skipped"
    fi
fi
if want rumqttd && [ ! -x "$RUMQTTD" ]; then BROKERS=${BROKERS//rumqttd/}; fi

# --- Building ---------------------------------------------------------------
echo "building roost (with sled) and loadgen in release" >&2
cargo build --release --features sled -p roost --bin roost >&2
cargo build --release -p roost-loadgen >&2
ROOST="$ROOT/target/release/roost"
LOADGEN="$ROOT/target/release/loadgen"

TMP=$(mktemp -d /tmp/roost-compare.XXXXXX)
RESULTS="$TMP/results.tsv"
: > "$RESULTS"
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/mosquitto.conf" <<EOF
# Written by benches/compare.sh.
listener $PORT_MOSQ 127.0.0.1
allow_anonymous true
persistence false
# As roost's defaults: 1024 in flight per client, a large queue.
max_inflight_messages 1024
max_queued_messages 1000000
max_connections -1
log_dest none
EOF

cat > "$TMP/rumqttd.toml" <<EOF
# Written by benches/compare.sh.
id = 0

[router]
id = 0
max_connections = 200000
max_outgoing_packet_count = 1024
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT_RUMQ"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 1024
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:$PORT_RUMQ5"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 1024
EOF

# --- Running ----------------------------------------------------------------
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 200); do
        if port_taken "$1"; then return 0; fi
        sleep 0.05
    done
    return 1
}

# start_broker NAME [STORE]: sets BROKER_PID and BROKER_PORT.
start_broker() {
    local name=$1 store=${2:-memory}
    BROKER_PORT=$PORT_ROOST
    case "$name" in
        mosquitto) BROKER_PORT=$PORT_MOSQ ;;
        rumqttd) BROKER_PORT=$PORT_RUMQ; if [ "${MQTT:-3.1.1}" = 5 ]; then BROKER_PORT=$PORT_RUMQ5; fi ;;
    esac
    # Something already listening there (a broker left over from an
    # interrupted run) would answer in place of the one started below, and
    # be measured under its name.
    if port_taken "$BROKER_PORT"; then
        echo "port $BROKER_PORT is taken by another process; not starting $name" >&2
        return 1
    fi
    case "$name" in
        roost|roost-before)
            local bin=$ROOST
            if [ "$name" = roost-before ]; then bin=$BASELINE; fi
            rm -rf "$TMP/data"
            RUST_LOG=warn "$bin" --tcp "127.0.0.1:$PORT_ROOST" --store "$store" \
                --data-dir "$TMP/data" >/dev/null 2>>"$TMP/roost.log" &
            ;;
        mosquitto)
            "$MOSQUITTO" -c "$TMP/mosquitto.conf" >/dev/null 2>>"$TMP/mosquitto.log" &
            ;;
        rumqttd)
            "$RUMQTTD" --config "$TMP/rumqttd.toml" >/dev/null 2>>"$TMP/rumqttd.log" &
            ;;
    esac
    BROKER_PID=$!
    wait_port "$BROKER_PORT" || { echo "$name did not start" >&2; stop_broker; return 1; }
}

stop_broker() {
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# scenario BROKER LABEL STORE -- LOADGEN ARGS...: one run against a fresh broker.
scenario() {
    local broker=$1 label=$2 store=$3
    shift 4
    case " $* " in *"$ONLY"*) ;; *) return 0 ;; esac
    start_broker "$broker" "$store" || { note "$label failed to start for: $*"; return 0; }
    local mqtt=()
    if [ "${MQTT:-3.1.1}" = 5 ]; then mqtt=(--mqtt 5); fi
    if ! timeout 300 "$LOADGEN" --broker "127.0.0.1:$BROKER_PORT" --pid "$BROKER_PID" \
        --label "$label" --record "$RESULTS" "${mqtt[@]}" "$@"; then
        note "$label: loadgen $* failed"
    fi
    stop_broker
}

# every_broker LOADGEN ARGS...: the same scenario against each broker.
every_broker() {
    for b in roost roost-before mosquitto rumqttd; do
        want "$b" || continue
        scenario "$b" "$b" memory -- "$@"
    done
}

if [ "$FULL" = 1 ]; then
    N_IN=2000000; N_OUT=50000; N_PAIRS=2000000; RATE_SECS=10; IDLE="10000 100000"; N_CONN=50000; N_DUR=1000000
else
    N_IN=200000; N_OUT=5000; N_PAIRS=200000; RATE_SECS=2; IDLE="10000"; N_CONN=5000; N_DUR=100000
fi
RATE=5000
START=$(date +%s)

for qos in 0 1; do
    for size in 64 1024; do
        every_broker fan-in --qos "$qos" --size "$size" --messages "$N_IN"
        every_broker fan-out --qos "$qos" --size "$size" --messages "$N_OUT"
        every_broker pairs --qos "$qos" --size "$size" --messages "$N_PAIRS"
    done
done
for qos in 0 1; do
    for size in 64 1024; do
        every_broker fan-in --qos "$qos" --size "$size" --rate "$RATE" --messages $((RATE * RATE_SECS))
        every_broker fan-out --qos "$qos" --size "$size" --rate "$RATE" --messages $((RATE * RATE_SECS / 100))
        every_broker pairs --qos "$qos" --size "$size" --rate "$RATE" --messages $((RATE * RATE_SECS))
    done
done
# MQTT 5.0, two representative flows.
MQTT=5 every_broker fan-in --qos 1 --size 64 --messages "$N_IN"
MQTT=5 every_broker fan-out --qos 0 --size 64 --messages "$N_OUT"
for n in $IDLE; do
    # One source address per 20,000 connections (about 28,000 ports each).
    every_broker idle --connections "$n" --sources $(( n / 20000 + 1 )) --duration 300
done
every_broker connrate --connections "$N_CONN" --concurrency 16
# Durable QoS 1: persistent sessions; roost commits every message to its
# store before the PUBACK. Mosquitto runs with persistence false (its
# persistence is a periodic snapshot anyway) and rumqttd has none.
for store in memory sled redb; do
    for b in roost roost-before; do
        want "$b" || continue
        scenario "$b" "$b" "$store" -- fan-in --qos 1 --size 64 --persistent \
            --messages "$N_DUR" --name "durable fan-in q1 64B store=$store"
    done
done
for b in mosquitto rumqttd; do
    want "$b" || continue
    scenario "$b" "$b" memory -- fan-in --qos 1 --size 64 --persistent --messages "$N_DUR" \
        --name "durable fan-in q1 64B (in memory)"
done
ELAPSED=$(( $(date +%s) - START ))

# --- Writing ----------------------------------------------------------------
{
    echo "# Benchmarks"
    echo
    echo "roost against Mosquitto and rumqttd, each broker restarted for every scenario, all"
    echo "on one machine over 127.0.0.1. The load generator shares the machine's CPUs with"
    echo "the broker, so absolute numbers are low and noisy: read the ratios."
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- brokers: roost $("$ROOST" --version 2>/dev/null | awk '{print $2}'),$( [ -n "$BASELINE" ] && echo " roost-before ($BASELINE),")$(want mosquitto && echo " mosquitto $("$MOSQUITTO" -h 2>/dev/null | awk '/version/ {print $3; exit}'),")$(want rumqttd && echo " rumqttd $("$RUMQTTD" --version 2>/dev/null | awk '{print $2}')")"
    echo "- rerun: \`benches/compare.sh${ARGS_TEXT:+ $ARGS_TEXT}\` ($( [ "$FULL" = 1 ] && echo full || echo default) run, ${ELAPSED} s of scenarios)"
    echo
    echo "Scenarios: fan-in is 10 publishers to 1 subscriber, fan-out 1 publisher to 100"
    echo "subscribers, pairs 50 publisher/subscriber pairs. Without @rate they run at full"
    echo "speed (QoS 1 publishers keep 64 messages in flight); @5000/s paces the total"
    echo "deliveries, for latency, with the publishers' schedules spread evenly (a steady"
    echo "rate, not every publisher at once; a fan-out publish still reaches its 100"
    echo "subscribers at once). Throughput is distinct deliveries per second, from the"
    echo "first publish to the last delivery. Latency is publish to delivery, with a"
    echo "timestamp in the payload. Idle: broker RSS growth per connection (lower is"
    echo "better). Connect rate: TCP connect + CONNECT/CONNACK + DISCONNECT, 16 at a time;"
    echo "the broker closes each connection, so the load generator keeps no TIME_WAIT."
    echo "Durable: persistent sessions, QoS 1; for roost each store, for the others in"
    echo "memory. CPU and peak RSS are the broker's, during the run."
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo
        echo "Notes from this run:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
    echo
    echo "## Summary"
    echo
    "$LOADGEN" table --input "$RESULTS"
} > "$TMP/BENCHMARKS.md"
sed -i 's/^| scenario | broker | value/\n## Details\n\n| scenario | broker | value/' "$TMP/BENCHMARKS.md"
# Hand-written sections (micro-benchmarks, restore figures) below this
# marker in the existing file are kept.
MARKER="<!-- compare.sh keeps everything below this line -->"
if [ -f "$OUT" ] && grep -qF "$MARKER" "$OUT"; then
    { echo; sed -n "/$MARKER/,\$p" "$OUT"; } >> "$TMP/BENCHMARKS.md"
fi
mv "$TMP/BENCHMARKS.md" "$OUT"
echo "wrote $OUT" >&2
