#!/usr/bin/env bash
# engine.sh start|stop|status: this checkout's podman as a Docker engine.
#
# start: `podman system service` on a unix socket (the Docker API that `docker`
# and `docker-compose` use: source env.sh for DOCKER_HOST), and healthchecks.py,
# which runs the containers' HEALTHCHECKs as Docker's engine would (no systemd
# here to do it for podman). stop: both end, and every container of this
# podman is removed. Logs go to $CWM_CONTAINERS_RUN/*.log.
set -euo pipefail
source "$(dirname "$0")/env.sh"

service_pid="$CWM_CONTAINERS_RUN/service.pid"
checks_pid="$CWM_CONTAINERS_RUN/healthchecks.pid"

# alive PIDFILE: its process runs and is ours (a pid the system gave to another program is not).
alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null \
        && grep -qaE 'podman|healthchecks' "/proc/$(cat "$1")/cmdline" 2>/dev/null
}

stop_pid() {
    local pidfile="$1" pid deadline
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
        sleep 0.1
    done
    rm -f "$pidfile"
}

start() {
    podman_check
    if ! alive "$service_pid"; then
        rm -f "$PODMAN_SOCKET"
        podman system service --time=0 "unix://$PODMAN_SOCKET" >>"$CWM_CONTAINERS_RUN/service.log" 2>&1 &
        echo $! >"$service_pid"
    fi
    if ! alive "$checks_pid"; then
        python3 "$PODMAN_DIR/healthchecks.py" >>"$CWM_CONTAINERS_RUN/healthchecks.log" 2>&1 &
        echo $! >"$checks_pid"
    fi
    local deadline=$((SECONDS + 30))
    until curl -sf --unix-socket "$PODMAN_SOCKET" -o /dev/null http://d/_ping; do
        if [ "$SECONDS" -ge "$deadline" ] || ! alive "$service_pid"; then
            echo "containers: podman's API did not answer on $PODMAN_SOCKET: $(tail -n 1 "$CWM_CONTAINERS_RUN/service.log" 2>/dev/null)" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "engine: DOCKER_HOST=$DOCKER_HOST"
}

stop() {
    stop_pid "$checks_pid"
    podman rm --all --force --time 5 >/dev/null 2>&1 || true
    stop_pid "$service_pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) alive "$service_pid" && alive "$checks_pid" && echo "engine: running ($DOCKER_HOST)" ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
