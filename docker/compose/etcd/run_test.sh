#!/usr/bin/env bash
# compose/etcd: a receiver configured from etcd, seeded with etcdctl, watched live.
#   run_test.sh [all] [--local|--docker]
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../../scenario/lib.sh"
source "$SCENARIO_DIR/seed_etcd.sh"
TOKEN=test_token_123 STAGING_TOKEN=staging_token_456

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
local_etcd() { start_etcd etcd "$ETCD_PORT"; }
local_webhook() {
    # With CONFIG_BACKEND=etcd the two file arguments are not read.
    start_cwm webhook "$PORT" "$WORK_DIR/webhook" "$WORK_DIR/unused.json" "$WORK_DIR/unused.json" \
        CONFIG_BACKEND=etcd ETCD_HOST=127.0.0.1 ETCD_PORT="$ETCD_PORT" ETCD_PREFIX=/cwm/ ETCD_NAMESPACE=default
}

compose_init "$@"
if [ "$MODE" = local ]; then
    ETCD_PORT="$(free_port)" PORT="$(free_port)"
    ETCD_ENDPOINT="http://127.0.0.1:$ETCD_PORT"
    URL="http://127.0.0.1:$PORT"
fi

BODY='{"test":"data","source":"etcd_integration_test"}'
post() {  # post WEBHOOK_PATH TOKEN [JSON]: the status code
    post_json "$URL/webhook/$1" "${3:-$BODY}" -H "Authorization: Bearer $2"
}
health_field() {  # health_field EXPR: a value of GET /health (EXPR is Python on d)
    get_json "$URL/health" "$WORK_DIR/health.json" >/dev/null
    json_get "$WORK_DIR/health.json" "$1"
}

log "== etcd, seeded before the receiver starts"
up etcd
seed_etcd >/dev/null
expect "keys seeded" 3 "$(etcdctl get --prefix /cwm/ --keys-only | grep -c '^/cwm/')"
up webhook
expect "GET /" 200 "$(status_of GET "$URL/")"
expect_within 10 "health: etcd component" healthy health_field 'd["components"]["etcd"]'

log "== the seeded webhooks"
expect "default/test_log with its token" 200 "$(post test_log "$TOKEN")"
expect "default/test_log without a token" 401 "$(post_json "$URL/webhook/test_log" '{"test":"no_auth"}')"
expect "default/test_save" 200 "$(post test_save "$TOKEN" '{"test":"save_data","sequence":1}')"
expect "test_save wrote one file" 1 "$(count_json_files "$(saved_webhook_files)")"
expect "the file is the JSON sent" '{"test": "save_data", "sequence": 1}' \
    "$("$PYTHON" -c 'import json,pathlib,sys; print(json.dumps(json.loads(next(pathlib.Path(sys.argv[1]).glob("webhook_*.json")).read_text())))' "$(saved_webhook_files)")"
expect "staging/test_log_staging with its token" 200 "$(post staging/test_log_staging "$STAGING_TOKEN")"
expect "staging/test_log_staging with the default namespace's token" 401 "$(post staging/test_log_staging "$TOKEN")"
expect "test_log_staging is not in the default namespace" 404 "$(post test_log_staging "$STAGING_TOKEN")"
expect "test_log is not in the staging namespace" 404 "$(post staging/test_log "$TOKEN")"

log "== live changes through the watch"
etcdctl put /cwm/default/webhooks/new_hook \
    '{"data_type":"json","module":"log","authorization":"Bearer test_token_123"}' >/dev/null
expect_within 10 "new_hook added" 200 post new_hook "$TOKEN"
etcdctl put /cwm/default/webhooks/test_log \
    '{"data_type":"json","module":"log","authorization":"Bearer rotated_token_789"}' >/dev/null
expect_within 10 "test_log changed: its new token" 200 post test_log rotated_token_789
expect "test_log changed: its old token" 401 "$(post test_log "$TOKEN")"
etcdctl del /cwm/default/webhooks/new_hook >/dev/null
expect_within 10 "new_hook deleted" 404 post new_hook "$TOKEN"

log "== etcd down: the cache keeps serving; back up: the watch catches up"
down etcd
expect_within 20 "health: etcd component" disconnected health_field 'd["components"]["etcd"]'
expect "GET /health while etcd is down" 200 "$(status_of GET "$URL/health")"
expect "test_log while etcd is down" 200 "$(post test_log rotated_token_789)"
up etcd
etcdctl put /cwm/staging/webhooks/after_outage \
    '{"data_type":"json","module":"log","authorization":"Bearer staging_token_456"}' >/dev/null
expect_within 60 "a webhook added after the outage" 200 post staging/after_outage "$STAGING_TOKEN"
expect_within 10 "health: etcd component" healthy health_field 'd["components"]["etcd"]'

scenario_finish
