#!/usr/bin/env bash
# Scenario 06: webhook entries in etcd whose credentials come from Vault.
#   run_test.sh [bearer|hmac|legacy-env|rotation|no-leak|all] [--local|--docker]
# Every step starts from the seeded state (Vault: token v1; etcd: seed_etcd.sh);
# `all` runs the five in order.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"

TOKEN_V1=vault_auth_token_v1
TOKEN_V2=vault_auth_token_v2
HMAC_SECRET=vault_hmac_secret_123
REDIS_PASSWORD=vault_redis_password_123
LEGACY_TOKEN=legacy_env_token_789
# What must never be printed by the receiver or shown by /health (name=value).
SECRETS=("token v1=$TOKEN_V1" "token v2=$TOKEN_V2" "HMAC key=$HMAC_SECRET"
    "Redis password=$REDIS_PASSWORD" "LEGACY_ENV_TOKEN=$LEGACY_TOKEN")

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
local_etcd() { start_etcd etcd "$ETCD_PORT"; }
local_vault() { start_vault_standin vault "$VAULT_PORT" "$SCENARIO_DIR/config/vault-standin.json"; }
local_redis() { start_redis redis "$REDIS_PORT"; }
local_webhook_receiver() {
    start_cwm webhook-receiver "$RECEIVER_PORT" "$WORK_DIR/webhook-receiver" \
        "$WORK_DIR/unused-webhooks.json" "$WORK_DIR/unused-connections.json" \
        CONFIG_BACKEND=etcd ETCD_HOST=127.0.0.1 ETCD_PORT="$ETCD_PORT" ETCD_PREFIX=/cwm/ \
        ETCD_NAMESPACE=default SECRETS_BACKEND=vault VAULT_ADDR="$VAULT_ADDR" VAULT_TOKEN=root \
        VAULT_MOUNT_POINT=webhooks VAULT_KV_VERSION=2 VAULT_CACHE_TTL_SECONDS=1 \
        LEGACY_ENV_TOKEN="$LEGACY_TOKEN" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}

scenario_init "$@"
if [ "$MODE" = docker ]; then
    RECEIVER_URL=http://localhost:18000
    VAULT_ADDR=""
else
    ETCD_PORT="$(free_port)" VAULT_PORT="$(free_port)" REDIS_PORT="$(free_port)" RECEIVER_PORT="$(free_port)"
    ETCD_ENDPOINT="http://127.0.0.1:$ETCD_PORT"
    VAULT_ADDR="http://127.0.0.1:$VAULT_PORT"
    RECEIVER_URL="http://127.0.0.1:$RECEIVER_PORT"
fi
LIVE=10  # seconds a change may take at most to be served (etcd watch, then a Vault read)

seed_vault() { SCENARIO_MODE="$MODE" VAULT_ADDR="$VAULT_ADDR" VAULT_TOKEN=root "$SCENARIO_DIR/seed_vault.sh" "$@"; }
seed_etcd() { SCENARIO_MODE="$MODE" ETCD_ENDPOINT="${ETCD_ENDPOINT:-}" "$SCENARIO_DIR/seed_etcd.sh"; }

# post ID BODY [curl args...]: POST BODY to /webhook/ID; prints the status code.
post() {
    local id="$1" body="$2"
    shift 2
    post_json "$RECEIVER_URL/webhook/$id" "$body" "$@"
}

# hmac_hex KEY BODY: hex HMAC-SHA256 of BODY's exact bytes.
hmac_hex() {
    "$PYTHON" -c 'import hashlib, hmac, sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' "$1" "$2"
}

# health_state: "WEBHOOKS CONNECTIONS REJECTED UNAVAILABLE" as /health reports them.
health_state() {
    get_json "$RECEIVER_URL/health" "$WORK_DIR/health.json" >/dev/null
    json_get "$WORK_DIR/health.json" \
        '"%d %d %d %d" % (d["config"]["webhooks"], d["config"]["connections"], len(d["config"]["rejected"]), len(d["config"]["secrets_unavailable"]))'
}

setup() {
    up etcd vault redis webhook-receiver
    wait_http "$RECEIVER_URL/health" 120 || { fail "the receiver never answered /health"; scenario_finish; }
    seed_vault "$TOKEN_V1" "$HMAC_SECRET" "$REDIS_PASSWORD"
    seed_etcd
    expect_within "$LIVE" "seeded: /health counts 3 webhooks, 1 connection, none rejected or waiting for a secret" \
        "3 1 0 0" health_state
}

test_bearer() {
    log "== bearer: the Authorization token is a Vault secret"
    expect "POST /webhook/vault_auth without Authorization" 401 "$(post vault_auth '{"event":"no_auth"}')"
    expect "POST /webhook/vault_auth with a wrong token" 401 \
        "$(post vault_auth '{"event":"wrong_token"}' -H 'Authorization: Bearer wrong_token')"
    expect "POST /webhook/vault_auth with the token from Vault" 200 \
        "$(post vault_auth '{"event":"vault_token"}' -H "Authorization: Bearer $TOKEN_V1")"
}

test_hmac() {
    log "== hmac: the signing key is a Vault secret"
    local body='{"event":"good_hmac"}'
    expect "POST /webhook/vault_hmac with a wrong signature" 401 \
        "$(post vault_hmac "$body" -H 'X-HMAC-Signature: deadbeef')"
    expect "POST /webhook/vault_hmac signed with the key from Vault" 200 \
        "$(post vault_hmac "$body" -H "X-HMAC-Signature: $(hmac_hex "$HMAC_SECRET" "$body")")"
    expect "POST /webhook/vault_hmac: that signature over another body" 401 \
        "$(post vault_hmac '{"event":"tampered"}' -H "X-HMAC-Signature: $(hmac_hex "$HMAC_SECRET" "$body")")"
    expect "POST /webhook/vault_hmac signed with another key" 401 \
        "$(post vault_hmac "$body" -H "X-HMAC-Signature: $(hmac_hex not_the_secret "$body")")"
}

test_legacy_env() {
    log "== legacy-env: {\$LEGACY_ENV_TOKEN} beside Vault references"
    expect "POST /webhook/legacy_env with \$LEGACY_ENV_TOKEN" 200 \
        "$(post legacy_env '{"event":"legacy"}' -H "Authorization: Bearer $LEGACY_TOKEN")"
    expect "POST /webhook/legacy_env with a wrong token" 401 \
        "$(post legacy_env '{"event":"legacy_wrong"}' -H 'Authorization: Bearer wrong_token')"
}

test_rotation() {
    log "== rotation: a new token in Vault, the etcd entries re-published"
    expect "POST /webhook/vault_auth with token v1 before the rotation" 200 \
        "$(post vault_auth '{"event":"before_rotation"}' -H "Authorization: Bearer $TOKEN_V1")"
    seed_vault "$TOKEN_V2" "$HMAC_SECRET" "$REDIS_PASSWORD"
    seed_etcd
    expect_within "$LIVE" "POST /webhook/vault_auth with token v2 after the rotation" 200 \
        post vault_auth '{"event":"rotated_v2"}' -H "Authorization: Bearer $TOKEN_V2"
    expect "POST /webhook/vault_auth with token v1 after the rotation" 401 \
        "$(post vault_auth '{"event":"rotated_v1"}' -H "Authorization: Bearer $TOKEN_V1")"
    local body='{"event":"hmac_after_rotation"}'
    expect "POST /webhook/vault_hmac after the rotation (its key unchanged)" 200 \
        "$(post vault_hmac "$body" -H "X-HMAC-Signature: $(hmac_hex "$HMAC_SECRET" "$body")")"
    expect "/health after the rotation: 3 webhooks, 1 connection, none rejected or waiting" \
        "3 1 0 0" "$(health_state)"
}

test_no_leak() {
    log "== no-leak: no secret in the receiver's output or in /health"
    # Use every secret at least once, so there was something to leak.
    post vault_auth '{"event":"leak_check"}' -H "Authorization: Bearer $TOKEN_V1" >/dev/null
    post legacy_env '{"event":"leak_check"}' -H "Authorization: Bearer $LEGACY_TOKEN" >/dev/null
    expect "GET /health" 200 "$(get_json "$RECEIVER_URL/health" "$WORK_DIR/health.json")"
    service_output webhook-receiver >"$WORK_DIR/receiver-output.txt"
    local lines item name secret
    lines="$(wc -l <"$WORK_DIR/receiver-output.txt" | tr -d ' ')"
    if [ "$lines" -gt 5 ]; then pass "the receiver's output was read ($lines lines)"; else fail "the receiver's output is missing ($lines lines)"; fi
    for item in "${SECRETS[@]}"; do
        name="${item%%=*}" secret="${item#*=}"
        if grep -qF -- "$secret" "$WORK_DIR/health.json"; then
            fail "/health shows the $name"
        else
            pass "/health does not show the $name"
        fi
        if grep -qF -- "$secret" "$WORK_DIR/receiver-output.txt"; then
            fail "the receiver printed the $name"
        else
            pass "the receiver's output does not hold the $name"
        fi
    done
}

which="$(scenario_args "$@" | head -n 1)"
case "${which:-all}" in
    bearer|hmac|legacy-env|rotation|no-leak)
        setup
        "test_${which//-/_}" ;;
    all)
        setup
        test_bearer; test_hmac; test_legacy_env; test_rotation; test_no_leak ;;
    *) echo "usage: $0 [bearer|hmac|legacy-env|rotation|no-leak|all] [--local|--docker]"; exit 2 ;;
esac
scenario_finish
