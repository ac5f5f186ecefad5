#!/usr/bin/env bash
# compose/webhook-connect: relay resilience. Webhooks accepted by the cloud receiver are
# queued in Redis, never dead-lettered, survive a restart of the cloud receiver and of
# Redis, and reach the local receiver exactly once, across an outage of the local side.
#   run_test.sh [all] [--local|--docker]
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../../scenario/lib.sh"
TOKEN=test_token_123
ADMIN=(-H "Authorization: Bearer admin_secret_123")

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
local_redis() { start_redis_with redis "$REDIS_PORT" --appendonly yes; }
local_cloud_receiver() {
    start_cwm cloud-receiver "$PORT" "$WORK_DIR/cloud" \
        "$SCENARIO_DIR/config/cloud-webhooks.json" "$SCENARIO_DIR/config/cloud-connections.json" \
        WEBHOOK_CONNECT_ENABLED=true WEBHOOK_CONNECT_ADMIN_TOKEN=admin_secret_123 \
        WEBHOOK_CONNECT_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}
local_local_receiver() {
    start_cwm local-receiver "$LOCAL_PORT" "$WORK_DIR/local" \
        "$SCENARIO_DIR/config/local-webhooks.json" "$SCENARIO_DIR/config/local-connections.json"
}
local_connector() {
    start_connector connector "$WORK_DIR/connector" \
        CONNECTOR_CLOUD_URL="$URL" CONNECTOR_CHANNEL=webhook_connect_test \
        CONNECTOR_TOKEN=connect_channel_token_123 CONNECTOR_PROTOCOL=long_poll \
        CONNECTOR_TARGET_URL="http://127.0.0.1:$LOCAL_PORT/webhook/local-receiver"
}

compose_init "$@"
if [ "$MODE" = local ]; then
    REDIS_PORT="$(free_port)" PORT="$(free_port)" LOCAL_PORT="$(free_port)"
    URL="http://127.0.0.1:$PORT"
fi
CHANNEL_URL="$URL/admin/webhook-connect/channels/webhook_connect_test"

delivered_dir() {  # a directory on this machine holding what the local receiver saved
    if [ "$MODE" = docker ]; then
        copy_out local-receiver /app/logs/webhooks "$WORK_DIR/delivered"
        echo "$WORK_DIR/delivered"
    else
        echo "$WORK_DIR/local/logs/webhooks"
    fi
}
has_delivered() { [ "$(count_json_files "$(delivered_dir)")" -ge "$1" ]; }  # has_delivered N
stats() {  # stats EXPR: a value of the channel's stats (EXPR is Python on d)
    get_json "$CHANNEL_URL/stats" "$WORK_DIR/stats.json" "${ADMIN[@]}" >/dev/null
    json_get "$WORK_DIR/stats.json" "$1"
}
dead_letters() {  # how many dead letters the admin API lists
    get_json "$CHANNEL_URL/dead-letters" "$WORK_DIR/dlq.json" "${ADMIN[@]}" >/dev/null
    json_get "$WORK_DIR/dlq.json" 'd["count"]'
}
send() {  # send SEQUENCE MESSAGE: POST one webhook with the token; prints the status code
    post_json "$URL/webhook/test_connect" \
        "{\"test\":\"relay_resilience\",\"sequence\":$1,\"message\":\"$2\"}" -H "Authorization: Bearer $TOKEN"
}

log "== accepted webhooks are queued, not dead-lettered"
up redis cloud-receiver
expect "test_connect without a token" 401 "$(post_json "$URL/webhook/test_connect" '{"test":"no_auth"}')"
expect "test_connect with a wrong token" 401 \
    "$(post_json "$URL/webhook/test_connect" '{"test":"wrong"}' -H 'Authorization: Bearer wrong_token')"
expect "test_connect with the token" 200 "$(send 1 'Should not go to DLQ')"
expect "dead letters" 0 "$(dead_letters)"
for i in 2 3 4; do
    expect "batch message $i" 200 "$(send "$i" "Batch message $i")"
done
expect "messages queued" 4 "$(stats 'd["messages_queued"]')"
expect "dead letters after the batch" 0 "$(dead_letters)"

log "== the queue lives in Redis: the cloud receiver restarts without losing it"
down cloud-receiver
up cloud-receiver
expect "messages queued after the restart" 4 "$(stats 'd["messages_queued"]')"

log "== Redis down: 503 with Retry-After, never a 200 that drops the webhook"
down redis
code=$(curl -s -D "$WORK_DIR/headers" -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $TOKEN" --data '{"test":"relay_resilience","sequence":5}' "$URL/webhook/test_connect")
expect "test_connect while Redis is down" 503 "$code"
if grep -qi '^retry-after:' "$WORK_DIR/headers"; then pass "Retry-After sent"; else fail "no Retry-After header"; fi
up redis
# A sender retries after a 503, so webhook 5 is sent again until it is accepted.
expect_within 30 "test_connect once Redis is back" 200 send 5 'Sent again after a 503'
expect "messages queued (4 kept through the Redis restart, + 1)" 5 "$(stats 'd["messages_queued"]')"

log "== the connector (long-poll) delivers them, each once"
up local-receiver connector
wait_until 60 has_delivered 5 || true
expect "delivered" "1 2 3 4 5" "$(sequences "$(delivered_dir)")"

log "== the local receiver down: the connector keeps the webhook until it is back"
down local-receiver
expect "test_connect while the local side is down" 200 "$(send 6 'Delivered after the outage')"
expect_within 30 "taken by the connector" 1 stats 'd["messages_in_flight"]'
up local-receiver
wait_until 60 has_delivered 6 || true
expect "delivered" "1 2 3 4 5 6" "$(sequences "$(delivered_dir)")"
expect_within 10 "messages queued" 0 stats 'd["messages_queued"]'
expect_within 10 "messages in flight" 0 stats 'd["messages_in_flight"]'
expect "dead letters at the end" 0 "$(dead_letters)"

scenario_finish
