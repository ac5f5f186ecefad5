#!/usr/bin/env bash
# seed_etcd.sh: scenario 06's webhook and connection entries, written with etcdctl.
# The values name secrets ({$vault:PATH#FIELD}) and an environment variable, never
# the secrets themselves. Running it again re-publishes the same values (the
# rotation step does). Docker mode (the default): etcdctl runs in the etcd
# container; run_test.sh --local sets SCENARIO_MODE=local and ETCD_ENDPOINT.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"
MODE="${SCENARIO_MODE:-docker}"  # read by lib.sh's etcdctl

put() {
    etcdctl put "$1" "$2" >/dev/null
    echo "etcd: put $1"
}

put /cwm/default/webhooks/vault_auth \
    '{"data_type":"json","module":"log","authorization":"Bearer {$vault:app/auth#webhook_token}"}'
put /cwm/default/webhooks/vault_hmac \
    '{"data_type":"json","module":"log","hmac":{"secret":"{$vault:app/auth#hmac_secret}","header":"X-HMAC-Signature","algorithm":"sha256"}}'
put /cwm/default/webhooks/legacy_env \
    '{"data_type":"json","module":"log","authorization":"Bearer {$LEGACY_ENV_TOKEN}"}'
put /cwm/global/connections/redis_main \
    '{"type":"redis-rq","host":"redis","port":6379,"password":"{$vault:app/connections#redis_password}"}'
