#!/usr/bin/env bash
# Scenario 02: cloud -> connector -> local.
#   run_test.sh [basic|resilience|all] [--local|--docker]
# basic: 1 webhook first, then the connector starts, then 9 more: 10/10 delivered, once each.
# resilience: 10 sent while the local side and the connector are down: all 10 delivered once they start.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
local_redis() { start_redis redis "$REDIS_PORT"; }
local_cloud_receiver() {
    start_cwm cloud-receiver "$CLOUD_PORT" "$WORK_DIR/cloud" \
        "$SCENARIO_DIR/config/cloud-webhooks.json" "$SCENARIO_DIR/config/cloud-connections.json" \
        WEBHOOK_CONNECT_ENABLED=true WEBHOOK_CONNECT_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" WEBHOOK_CONNECT_ADMIN_TOKEN=admin_secret_123
}
local_local_processor() {
    start_cwm local-processor "$LOCAL_PORT" "$WORK_DIR/local" \
        "$SCENARIO_DIR/config/local-webhooks.json" "$SCENARIO_DIR/config/local-connections.json"
}
local_connector() {
    start_connector connector "$WORK_DIR/connector" \
        CONNECTOR_CLOUD_URL="$CLOUD_URL" CONNECTOR_CHANNEL=test-channel \
        CONNECTOR_TOKEN=channel_secret_token_123 \
        CONNECTOR_TARGET_URL="$LOCAL_URL/webhook/local-receiver" \
        CONNECTOR_PROTOCOL="${CONNECTOR_PROTOCOL:-sse}" CONNECTOR_LOG_LEVEL=INFO
}

scenario_init "$@"
if [ "$MODE" = docker ]; then
    CLOUD_URL=http://localhost:8010
    DELIVERED="$SCENARIO_DIR/logs/local/webhooks.log"
else
    REDIS_PORT="$(free_port)" CLOUD_PORT="$(free_port)" LOCAL_PORT="$(free_port)"
    CLOUD_URL="http://127.0.0.1:$CLOUD_PORT" LOCAL_URL="http://127.0.0.1:$LOCAL_PORT"
    DELIVERED="$WORK_DIR/local/logs/webhooks.log"
fi
export CLOUD_URL

fresh() {  # every test starts from nothing
    if [ "$MODE" = docker ]; then
        compose_all down -v >/dev/null 2>&1 || true
        rm -rf "$SCENARIO_DIR/logs"
        # Made here, writable by the image's unprivileged user (Docker would create it for root).
        mkdir -p "$SCENARIO_DIR/logs/local" && chmod 0777 "$SCENARIO_DIR/logs/local"
    else
        down connector local-processor cloud-receiver redis
        rm -rf "$WORK_DIR/local/logs"
    fi
}

test_basic() {
    log "== basic"
    fresh
    up redis cloud-receiver local-processor
    "$SCENARIO_DIR/send_webhooks.sh" 1 100 1
    up connector
    "$SCENARIO_DIR/send_webhooks.sh" 9 100 2
    if "$SCENARIO_DIR/verify_results.sh" 10 "$DELIVERED" 60; then pass "basic: 10/10 delivered"; else fail "basic"; fi
}

test_resilience() {
    log "== resilience"
    fresh
    up redis cloud-receiver
    "$SCENARIO_DIR/send_webhooks.sh" 10 100 1
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/channels/test-channel/stats" "$WORK_DIR/stats.json" \
        -H "Authorization: Bearer admin_secret_123")
    expect "channel stats" 200 "$code"
    expect "queued while nothing is connected" 10 "$(json_get "$WORK_DIR/stats.json" 'd["messages_queued"]')"
    up local-processor connector
    if "$SCENARIO_DIR/verify_results.sh" 10 "$DELIVERED" 60; then pass "resilience: 10/10 delivered"; else fail "resilience"; fi
}

which="$(scenario_args "$@" | head -n 1)"
case "${which:-basic}" in
    basic) test_basic ;;
    resilience) test_resilience ;;
    all) test_basic; test_resilience ;;
    *) echo "usage: $0 [basic|resilience|all] [--local|--docker]"; exit 2 ;;
esac
scenario_finish
