#!/usr/bin/env bash
# Load benchmark: cwm (`log` module, bearer check) against a bare Klein app.
#
#   make bench            # or: bash bench/run.sh
#   DURATION=10s ROUNDS=3 CONNECTIONS=50 bash bench/run.sh
#
# Method (see bench/README.rst):
# each server alone on core 0, wrk on core 1, a warm-up run per server, then
# ROUNDS interleaved measured runs; medians; the cwm/bare ratio is the result.
# Writes bench/results/receiver-<UTC date>.md. Exits non-zero if anything failed,
# including any non-2xx answer or socket error under load.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3s}
READY_TIMEOUT=${READY_TIMEOUT:-30}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
[[ $DURATION =~ ^[0-9]+$ ]] && DURATION=${DURATION}s
[[ $WARMUP =~ ^[0-9]+$ ]] && WARMUP=${WARMUP}s

PY=$ROOT/.venv/bin/python
TWISTD=$ROOT/.venv/bin/twistd
LUA=$ROOT/bench/post.lua
BODY_BYTES=408

say() { printf '[bench] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# --- prerequisites ---------------------------------------------------------
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer, got '$CONNECTIONS'"
[[ -x $TWISTD && -x $PY ]] || die "no $TWISTD: run 'make install' first"
(( $(nproc) >= 2 )) || die "needs 2 CPUs (server on one, wrk on the other); nproc says $(nproc)"
command -v taskset >/dev/null || die "taskset missing (util-linux)"
command -v curl >/dev/null || die "curl missing"
if ! command -v wrk >/dev/null; then
    say "installing wrk from Debian"
    SUDO=
    (( $(id -u) == 0 )) || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
    command -v wrk >/dev/null || die "wrk could not be installed"
fi
# `make bench` installs cwm editable first; run directly, the working tree is
# put on PYTHONPATH (twistd then finds the plugin in ./twisted/plugins).
if ! (cd / && "$PY" -c 'import cwm') 2>/dev/null; then
    say "cwm is not installed in .venv: serving it from $ROOT via PYTHONPATH"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
(cd / && "$PY" -c 'import cwm.modules.log, cwm.modules.registry') 2>/dev/null \
    || die "cwm's log module is not importable yet (cwm/modules/log.py, cwm/modules/registry.py)"
# Read the whole help first: grep -q stops reading at its match, and under
# pipefail the SIGPIPE that twistd then gets would fail the check.
plugins=$("$TWISTD" --help 2>/dev/null || true)
grep -qE '^ +cwm ' <<<"$plugins" || die "twistd does not list the cwm plugin"

RUN=$(mktemp -d -t cwm-bench.XXXXXX)
mkdir -p "$RUN/wrk"
FACTS=$RUN/facts.tsv
: >"$FACTS"
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }

declare -A PID=() PORT=()
KEEP_RUN=1
cleanup() {
    local status=$? name pid i
    for name in "${!PID[@]}"; do
        pid=${PID[$name]}
        kill -TERM "$pid" 2>/dev/null || continue
        for (( i = 0; i < 50; i++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if (( KEEP_RUN )); then
        say "raw output kept in $RUN"
    else
        rm -rf "$RUN"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The body every request sends: the long string of post.lua, checked once.
"$PY" - "$LUA" "$RUN/body.json" "$BODY_BYTES" <<'EOF' || die "bad body in bench/post.lua"
import json, re, sys
lua, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = re.search(r"wrk\.body = \[\[(.*?)\]\]", open(lua, encoding="utf-8").read(), re.S).group(1)
data = body.encode("utf-8")
json.loads(data)
if len(data) != size:
    sys.exit(f"post.lua body is {len(data)} bytes, not {size}")
open(out, "wb").write(data)
EOF

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cat >"$RUN/webhooks.json" <<'EOF'
{
  "bench": {"data_type": "json", "module": "log", "authorization": "Bearer bench-token"}
}
EOF
echo '{}' >"$RUN/connections.json"

# POST the benchmark request once; prints the HTTP status (000 if no answer).
post() {
    local port=$1 token=$2
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
        --data-binary @"$RUN/body.json" "http://127.0.0.1:$port/webhook/bench" || true
}

# Wait (bounded) until the server answers the benchmark request with 200.
wait_ready() {
    local name=$1 start=$2 log=$3 deadline code now
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    while :; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            unset "PID[$name]"
            say "$name exited during start-up; last lines of $log:"
            tail -n 30 "$log" >&2 || true
            die "$name did not start"
        fi
        code=$(post "${PORT[$name]}" bench-token)
        if [[ $code == 200 ]]; then
            now=$(date +%s.%N)
            fact "$name.first200" "$(awk -v a="$start" -v b="$now" 'BEGIN { printf "%.3f", b - a }')"
            break
        fi
        if (( $(date +%s) >= deadline )); then
            say "$name: last answer $code; last lines of $log:"
            tail -n 30 "$log" >&2 || true
            die "$name did not answer 200 within ${READY_TIMEOUT}s"
        fi
        sleep 0.05
    done
    code=$(post "${PORT[$name]}" wrong-token)
    [[ $code == 401 ]] || die "$name answered $code (not 401) to a wrong bearer token"
    say "$name ready on port ${PORT[$name]} (pid ${PID[$name]})"
}

# --- start the servers, one at a time, both on SERVER_CPU ------------------
PORT[cwm]=$(free_port)
start=$(date +%s.%N)
taskset -c "$SERVER_CPU" "$TWISTD" --pidfile= -n --logfile="$RUN/twistd.log" cwm \
    --listen "tcp:${PORT[cwm]}:interface=127.0.0.1" \
    --webhooks "$RUN/webhooks.json" --connections "$RUN/connections.json" \
    >"$RUN/cwm.stdout" 2>"$RUN/cwm.stderr" &
PID[cwm]=$!
wait_ready cwm "$start" "$RUN/twistd.log"

PORT[bare]=$(free_port)
start=$(date +%s.%N)
taskset -c "$SERVER_CPU" "$PY" "$ROOT/bench/bare_klein.py" "${PORT[bare]}" \
    >"$RUN/bare.stdout" 2>"$RUN/bare.stderr" &
PID[bare]=$!
wait_ready bare "$start" "$RUN/bare.stderr"

# --- facts -----------------------------------------------------------------
fact run.utc "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
fact param.duration "$DURATION"
fact param.warmup "$WARMUP"
fact param.rounds "$ROUNDS"
fact param.connections "$CONNECTIONS"
fact param.threads "$THREADS"
fact param.body_bytes "$BODY_BYTES"
fact machine.nproc "$(nproc)"
fact machine.cpu "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
fact machine.kernel "$(uname -sr)"
fact machine.loadavg "$(cut -d' ' -f1-3 /proc/loadavg)"
fact machine.clk_tck "$(getconf CLK_TCK)"
fact machine.python "$("$PY" -c 'import platform; print(platform.python_implementation(), platform.python_version())')"
fact machine.twisted "$("$PY" -c 'import twisted; print(twisted.__version__)')"
fact machine.klein "$("$PY" -c 'from importlib.metadata import version; print(version("klein"))')"
fact machine.wrk "$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//' || true)"
fact machine.cwm_commit "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git status --porcelain -- cwm 2>/dev/null | grep -q . && echo ' + uncommitted changes in cwm/' || true)"

# utime + stime of a process, in clock ticks.
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

run_wrk() {
    local name=$1 label=$2 duration=$3 out=$RUN/wrk/$1.$2.txt
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name is no longer running"
    say "wrk $name $label ($duration)"
    taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency \
        -s "$LUA" "http://127.0.0.1:${PORT[$name]}/webhook/bench" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed against $name"; }
}

# --- measure ---------------------------------------------------------------
for name in cwm bare; do
    run_wrk "$name" warmup "$WARMUP"
done
for (( round = 1; round <= ROUNDS; round++ )); do
    if (( round % 2 )); then order="cwm bare"; else order="bare cwm"; fi
    for name in $order; do
        before=$(cpu_ticks "${PID[$name]}")
        run_wrk "$name" "$round" "$DURATION"
        after=$(cpu_ticks "${PID[$name]}")
        fact "$name.ticks.$round" "$(( after - before ))"
    done
done
for name in cwm bare; do
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name died during the runs"
    fact "$name.rss_kb" "$(awk '/^VmRSS:/ { print $2 }' "/proc/${PID[$name]}/status")"
    fact "$name.lines" "$(wc -l <"$RUN/$name.stdout")"
done

# --- report ----------------------------------------------------------------
mkdir -p "$ROOT/bench/results"
results=$ROOT/bench/results/receiver-$(date -u +%Y-%m-%d).md
status=0
"$PY" "$ROOT/bench/report.py" "$RUN" >"$RUN/report.md" || status=$?
if (( status )); then
    results=${results%.md}-INVALID.md
fi
cp "$RUN/report.md" "$results"
cat "$RUN/report.md"
echo
say "results written to $results"
if (( status )); then
    say "twistd log (last 40 lines of $RUN/twistd.log):"
    tail -n 40 "$RUN/twistd.log" >&2 || true
    die "invalid run (see the top of the report)"
fi
KEEP_RUN=${KEEP_TMP:-0}
