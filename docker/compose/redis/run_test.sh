#!/usr/bin/env bash
# compose/redis: Redis (with a password, database 2) as Webhook Connect's buffer:
# cloud receiver -> Redis -> connector (WebSocket) -> local receiver.
#   run_test.sh [all] [--local|--docker]
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../../scenario/lib.sh"
export REDISCLI_AUTH=redis_secret_456
ADMIN=(-H "Authorization: Bearer admin_secret_123")

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
local_redis() { start_redis_with redis "$REDIS_PORT" --requirepass "$REDISCLI_AUTH" --appendonly yes; }
local_cloud_receiver() {
    start_cwm cloud-receiver "$PORT" "$WORK_DIR/cloud" \
        "$SCENARIO_DIR/config/cloud-webhooks.json" "$SCENARIO_DIR/config/cloud-connections.json" \
        WEBHOOK_CONNECT_ENABLED=true WEBHOOK_CONNECT_ADMIN_TOKEN=admin_secret_123 \
        WEBHOOK_CONNECT_REDIS_URL="redis://:$REDISCLI_AUTH@127.0.0.1:$REDIS_PORT/2"
}
local_local_receiver() {
    start_cwm local-receiver "$LOCAL_PORT" "$WORK_DIR/local" \
        "$SCENARIO_DIR/config/local-webhooks.json" "$SCENARIO_DIR/config/local-connections.json"
}
local_connector() {
    start_connector connector "$WORK_DIR/connector" \
        CONNECTOR_CLOUD_URL="$URL" CONNECTOR_CHANNEL=redis-channel CONNECTOR_TOKEN=redis_channel_token_123 \
        CONNECTOR_TARGET_URL="http://127.0.0.1:$LOCAL_PORT/webhook/local-receiver" CONNECTOR_PROTOCOL=websocket
}

compose_init "$@"
if [ "$MODE" = local ]; then
    REDIS_PORT="$(free_port)" PORT="$(free_port)" LOCAL_PORT="$(free_port)"
    URL="http://127.0.0.1:$PORT"
fi

delivered_dir() {  # a directory on this machine holding what the local receiver saved
    if [ "$MODE" = docker ]; then
        copy_out local-receiver /app/logs/webhooks "$WORK_DIR/delivered"
        echo "$WORK_DIR/delivered"
    else
        echo "$WORK_DIR/local/logs/webhooks"
    fi
}
stats() {  # stats EXPR: a value of the channel's stats (EXPR is Python on d)
    get_json "$URL/admin/webhook-connect/channels/redis-channel/stats" "$WORK_DIR/stats.json" "${ADMIN[@]}" >/dev/null
    json_get "$WORK_DIR/stats.json" "$1"
}
send() {  # send FIRST COUNT: POST webhooks with sequence numbers FIRST.., each must be 200
    local i code accepted=0
    for ((i = $1; i < $1 + $2; i++)); do
        code=$(post_json "$URL/webhook/relay" "{\"event\":\"redis_test\",\"sequence\":$i}")
        [ "$code" = 200 ] && accepted=$((accepted + 1))
    done
    expect "webhooks $1..$(($1 + $2 - 1)) accepted" "$2" "$accepted"
}
has_delivered() { [ "$(count_json_files "$(delivered_dir)")" -ge "$1" ]; }  # has_delivered N

log "== the cloud receiver on a password-protected Redis"
up redis cloud-receiver
expect "Webhook Connect health" 200 "$(get_json "$URL/admin/webhook-connect/health" "$WORK_DIR/wc.json")"
expect "Webhook Connect status" healthy "$(json_get "$WORK_DIR/wc.json" 'd["status"]')"

log "== queued in Redis while no connector is there"
send 1 5
expect "messages queued" 5 "$(stats 'd["messages_queued"]')"
keys="$(redis_cli -n 2 --scan --pattern 'cwm:wc:*' | grep -c . || true)"
if [ "$keys" -gt 0 ]; then pass "the channel's keys are in database 2 ($keys)"; else fail "no cwm:wc:* key in database 2"; fi
expect "nothing in database 0" 0 "$(redis_cli -n 0 dbsize | tr -d '\r')"

log "== the connector delivers them"
up local-receiver connector
wait_until 60 has_delivered 5 || true
expect "delivered" "1 2 3 4 5" "$(sequences "$(delivered_dir)")"
send 6 5
wait_until 60 has_delivered 10 || true
expect "delivered while connected" "1 2 3 4 5 6 7 8 9 10" "$(sequences "$(delivered_dir)")"
expect_within 10 "messages queued" 0 stats 'd["messages_queued"]'
expect_within 10 "messages in flight" 0 stats 'd["messages_in_flight"]'
expect "dead letters" 0 "$(stats 'd["dead_letters"]')"
expect "connected clients" 1 "$(stats 'd["connected_clients"]')"

scenario_finish
