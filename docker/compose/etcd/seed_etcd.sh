#!/usr/bin/env bash
# seed_etcd.sh: the webhooks of compose/etcd, written with `etcdctl put`.
#   docker compose up -d etcd && ./seed_etcd.sh    # etcdctl runs inside the etcd container
# run_test.sh sources this file and calls seed_etcd with lib.sh's etcdctl (either mode).
# Key layout: {ETCD_PREFIX}{namespace}/webhooks/{webhook_id} -> the webhook's JSON.

seed_etcd() {
    etcdctl put /cwm/default/webhooks/test_log \
        '{"data_type":"json","module":"log","authorization":"Bearer test_token_123","module-config":{"pretty_print":true}}'
    etcdctl put /cwm/default/webhooks/test_save \
        '{"data_type":"json","module":"save_to_disk","authorization":"Bearer test_token_123","module-config":{"path":"logs/webhooks","filename_template":"webhook_{timestamp}.json"}}'
    etcdctl put /cwm/staging/webhooks/test_log_staging \
        '{"data_type":"json","module":"log","authorization":"Bearer staging_token_456"}'
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
    source "$SCENARIO_DIR/../../scenario/lib.sh"  # its etcdctl runs in the etcd container
    MODE=docker
    seed_etcd
    etcdctl get --prefix /cwm/ --keys-only
fi
