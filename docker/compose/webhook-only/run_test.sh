#!/usr/bin/env bash
# compose/webhook-only: one receiver, file configuration, a log and a save_to_disk webhook
# behind a bearer token taken from the environment.
#   run_test.sh [all] [--local|--docker]
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../../scenario/lib.sh"
TOKEN=test_token_123

# ---- the compose service as a local process (docker mode uses docker-compose.yaml) ----
local_webhook() {
    start_cwm webhook "$PORT" "$WORK_DIR/webhook" \
        "$SCENARIO_DIR/config/webhooks.json" "$SCENARIO_DIR/config/connections.json" \
        WEBHOOK_TOKEN="$TOKEN"
}

compose_init "$@"
if [ "$MODE" = local ]; then
    PORT="$(free_port)"
    URL="http://127.0.0.1:$PORT"
fi


up webhook

log "== the receiver answers"
expect "GET /" 200 "$(status_of GET "$URL/")"
expect "GET /health" 200 "$(get_json "$URL/health" "$WORK_DIR/health.json")"
expect "both webhooks loaded ({\$WEBHOOK_TOKEN} substituted)" 2 \
    "$(json_get "$WORK_DIR/health.json" 'd["config"]["webhooks"]')"

log "== bearer authorization (log module)"
expect "log_webhook without a token" 401 "$(post_json "$URL/webhook/log_webhook" '{"event":"no_auth"}')"
expect "log_webhook with a wrong token" 401 \
    "$(post_json "$URL/webhook/log_webhook" '{"event":"wrong"}' -H 'Authorization: Bearer wrong_token')"
expect "log_webhook with the token" 200 \
    "$(post_json "$URL/webhook/log_webhook" '{"event":"ok"}' -H "Authorization: Bearer $TOKEN")"
expect "a body that is not JSON" 400 \
    "$(post_json "$URL/webhook/log_webhook" '{"event":' -H "Authorization: Bearer $TOKEN")"
expect "an unknown webhook" 404 \
    "$(post_json "$URL/webhook/no_such_webhook" '{}' -H "Authorization: Bearer $TOKEN")"

log "== save_to_disk: one JSON file per webhook"
BODY='{"event":"saved","sequence":1,"nested":{"list":[1,2.5,null,true],"text":"h\u00e9llo \"quoted\""}}'
expect "save_webhook without a token" 401 "$(post_json "$URL/webhook/save_webhook" "$BODY")"
expect "save_webhook with the token" 200 \
    "$(post_json "$URL/webhook/save_webhook" "$BODY" -H "Authorization: Bearer $TOKEN")"
expect "files saved (the refused one wrote nothing)" 1 "$(count_json_files "$(saved_webhook_files)")"
saved="$(find "$(saved_webhook_files)" -maxdepth 1 -name '*.json' | head -n 1)"
if [ -n "$saved" ] && "$PYTHON" - "$saved" "$BODY" <<'EOF'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    saved = json.load(f)
sys.exit(0 if saved == json.loads(sys.argv[2]) else 1)
EOF
then
    pass "the saved file is the JSON that was sent"
else
    fail "the saved file is not the JSON that was sent: $(cat "$saved" 2>/dev/null)"
fi

scenario_finish
