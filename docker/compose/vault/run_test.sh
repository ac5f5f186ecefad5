#!/usr/bin/env bash
# compose/vault: webhook credentials read from Vault ({$vault:PATH#FIELD}), a default when
# the secret is missing, rotation within the cache TTL, and an outage of Vault.
#   run_test.sh [all] [--local|--docker]
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../../scenario/lib.sh"
source "$SCENARIO_DIR/seed_vault.sh"
TOKEN=vault_secret_token_789

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
# No Vault server can be installed here: the project's stand-in speaks its HTTP API.
local_vault() {
    start_vault_standin vault "$VAULT_PORT" "$SCENARIO_DIR/config/vault-standin.json"
    # Ready once it answers as Vault does (after a restart its log already holds "PORT").
    wait_until 30 curl -sf -o /dev/null -H "X-Vault-Token: $VAULT_ROOT_TOKEN" "$VAULT_URL/v1/auth/token/lookup-self"
}
local_webhook() {
    start_cwm webhook "$PORT" "$WORK_DIR/webhook" \
        "$SCENARIO_DIR/config/webhooks.json" "$SCENARIO_DIR/config/connections.json" \
        SECRETS_BACKEND=vault VAULT_ADDR="$VAULT_URL" VAULT_TOKEN="$VAULT_ROOT_TOKEN" VAULT_KV_VERSION=2 \
        VAULT_MOUNT_POINT=secret VAULT_CACHE_TTL_SECONDS=2 VAULT_CACHE_MAX_SIZE=1000
}

compose_init "$@"
if [ "$MODE" = local ]; then
    VAULT_PORT="$(free_port)" PORT="$(free_port)"
    VAULT_URL="http://127.0.0.1:$VAULT_PORT"
    URL="http://127.0.0.1:$PORT"
fi

post() {  # post WEBHOOK CURL_ARGS...: the status code
    local webhook="$1"
    shift
    post_json "$URL/webhook/$webhook" '{"test":"vault","source":"vault_integration_test"}' "$@"
}
bearer() { post "$1" -H "Authorization: Bearer $2"; }  # bearer WEBHOOK TOKEN

log "== Vault seeded before the receiver starts"
up vault
seed_vault "$TOKEN"
up webhook

log "== credentials from Vault"
expect "test_vault_log with the token from Vault" 200 "$(bearer test_vault_log "$TOKEN")"
expect "test_vault_log with a wrong token" 401 "$(bearer test_vault_log wrong_token)"
expect "test_vault_log without a token" 401 "$(post test_vault_log)"
expect "test_vault_save with the token from Vault" 200 "$(bearer test_vault_save "$TOKEN")"
expect "test_vault_save wrote one file" 1 "$(count_json_files "$(saved_webhook_files)")"
expect "test_vault_fallback: a missing secret takes the inline default" 200 \
    "$(bearer test_vault_fallback fallback_token_999)"
expect "test_vault_basic: user and password from Vault" 200 "$(post test_vault_basic -u admin:vault_admin_pass)"
expect "test_vault_basic with a wrong password" 401 "$(post test_vault_basic -u admin:wrong)"
get_json "$URL/health" "$WORK_DIR/health.json" >/dev/null
if grep -qE "$TOKEN|vault_admin_pass" "$WORK_DIR/health.json"; then
    fail "a secret appears in /health"
else
    pass "no secret in /health"
fi

log "== a secret rotated in Vault is used once its cache entry expires (VAULT_CACHE_TTL_SECONDS=2)"
seed_vault rotated_token_321
expect_within 15 "test_vault_log with the new token" 200 bearer test_vault_log rotated_token_321
expect "test_vault_log with the old token" 401 "$(bearer test_vault_log "$TOKEN")"

log "== Vault down: the entries that need it are held back (503), the others keep working"
down vault
expect_within 15 "test_vault_log while Vault is down" 503 bearer test_vault_log rotated_token_321
expect "test_vault_fallback while Vault is down (its default)" 200 "$(bearer test_vault_fallback fallback_token_999)"
expect "GET / while Vault is down" 200 "$(status_of GET "$URL/")"
# Dev mode (and the stand-in) keep secrets in memory: a restarted Vault is seeded again.
up vault
seed_vault rotated_token_321
expect_within 70 "test_vault_log once Vault is back" 200 bearer test_vault_log rotated_token_321

scenario_finish
