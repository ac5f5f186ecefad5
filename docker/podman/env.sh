# shellcheck shell=bash
# Sourced by the scripts of docker/podman/: a private podman for this checkout.
#
# Everything podman keeps (images, containers, volumes, networks) lives under
# $CWM_CONTAINERS_DIR (.cache/containers in the checkout unless set), with
# podman's runtime state in a folder of /run named after it, so the machine's
# own podman storage and configuration are never touched. The settings are
# the ones that work on a machine without systemd or a Docker engine, as root:
# the runc runtime, cgroupfs, overlay storage, and ulimits within the calling
# shell's hard limits (podman's defaults ask for more than such a machine allows).
#
# After sourcing: CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and DOCKER_HOST are
# exported, so `podman`, `docker` and `docker-compose` all talk to this podman
# (the last two through `engine.sh start`'s API socket).

PODMAN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$PODMAN_DIR/../.." && pwd)"
CWM_CONTAINERS_DIR="${CWM_CONTAINERS_DIR:-$REPO_DIR/.cache/containers}"
mkdir -p "$CWM_CONTAINERS_DIR"
CWM_CONTAINERS_DIR="$(cd "$CWM_CONTAINERS_DIR" && pwd)"
CWM_CONTAINERS_RUN="/run/cwm-containers/$(printf '%s' "$CWM_CONTAINERS_DIR" | sha256sum | cut -c1-12)"
PODMAN_SOCKET="$CWM_CONTAINERS_RUN/podman.sock"

# The hard limits of this shell, capped: a container may not ask for more.
_hard_nofile="$(ulimit -Hn)"
[ "$_hard_nofile" = unlimited ] && _hard_nofile=1048576
[ "$_hard_nofile" -gt 65536 ] && _hard_nofile=65536
_hard_nproc="$(ulimit -Hu)"
[ "$_hard_nproc" = unlimited ] && _hard_nproc=1048576
[ "$_hard_nproc" -gt 8192 ] && _hard_nproc=8192

mkdir -p "$CWM_CONTAINERS_RUN" "$CWM_CONTAINERS_DIR/networks"

# _write_conf FILE: FILE := stdin, replaced in one rename and only when it changed
# (a podman reading a half-written file would fall back to the machine's settings).
_write_conf() {
    local part="$1.$$.part"
    cat >"$part"
    if cmp -s "$part" "$1"; then rm -f "$part"; else mv -f "$part" "$1"; fi
}

_write_conf "$CWM_CONTAINERS_DIR/containers.conf" <<CONF
# Written by docker/podman/env.sh on every use: edit that file, not this one.
[containers]
default_ulimits = ["nofile=$_hard_nofile:$_hard_nofile", "nproc=$_hard_nproc:$_hard_nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$CWM_CONTAINERS_RUN/libpod"

[network]
network_backend = "netavark"
network_config_dir = "$CWM_CONTAINERS_DIR/networks"
CONF
_write_conf "$CWM_CONTAINERS_DIR/storage.conf" <<CONF
# Written by docker/podman/env.sh on every use: edit that file, not this one.
[storage]
driver = "overlay"
graphroot = "$CWM_CONTAINERS_DIR/storage"
runroot = "$CWM_CONTAINERS_RUN/storage"
CONF
unset _hard_nofile _hard_nproc

export CONTAINERS_CONF="$CWM_CONTAINERS_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$CWM_CONTAINERS_DIR/storage.conf"
export DOCKER_HOST="unix://$PODMAN_SOCKET"
export CWM_CONTAINERS_DIR CWM_CONTAINERS_RUN PODMAN_SOCKET

# podman_check: one line on stderr and status 1 unless podman can run a container here.
podman_check() {
    local tool
    for tool in podman runc mmdebstrap docker-compose iptables curl; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "containers: $tool is not installed (make container-tools installs it)" >&2
            return 1
        }
    done
    # netavark makes the compose networks, aardvark-dns resolves service names in them.
    for tool in netavark aardvark-dns; do
        [ -x "/usr/lib/podman/$tool" ] || {
            echo "containers: $tool is not installed (make container-tools installs it)" >&2
            return 1
        }
    done
    # The scripts' docker mode uses the Docker CLI too (docker inspect, cp, run).
    command -v docker >/dev/null 2>&1 || {
        echo "containers: the docker command (Docker's CLI, no engine needed) is not installed" >&2
        return 1
    }
    if ! podman info >/dev/null 2>"$CWM_CONTAINERS_RUN/podman-info.err"; then
        echo "containers: podman cannot run here: $(tail -n 1 "$CWM_CONTAINERS_RUN/podman-info.err")" >&2
        return 1
    fi
}
