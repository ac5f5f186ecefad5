#!/usr/bin/env bash
# seed_vault.sh [BEARER_TOKEN]: the secrets of compose/vault, in KV v2 at secret/.
#   docker compose up -d vault && ./seed_vault.sh    # the vault CLI runs inside the container
# run_test.sh sources this file and calls seed_vault: in local mode vault_kv_put makes the
# HTTP call `vault kv put` makes, to the Vault stand-in at $VAULT_URL.
VAULT_ROOT_TOKEN=test-root-token

vault_kv_put() {  # vault_kv_put PATH KEY=VALUE...: a new version of secret/PATH
    local path="$1"
    shift
    if [ "${MODE:-docker}" = docker ]; then
        compose exec -T -e VAULT_ADDR=http://127.0.0.1:8200 \
            -e VAULT_TOKEN="$VAULT_ROOT_TOKEN" vault vault kv put "secret/$path" "$@" >/dev/null
    else
        "$PYTHON" -c 'import json, sys; print(json.dumps({"data": dict(a.split("=", 1) for a in sys.argv[1:])}))' "$@" |
            curl -sf -o /dev/null -X POST -H "X-Vault-Token: $VAULT_ROOT_TOKEN" -H 'Content-Type: application/json' \
                --data @- "$VAULT_URL/v1/secret/data/$path"
    fi
}

seed_vault() {
    vault_kv_put webhooks/auth bearer_token="${1:-vault_secret_token_789}" basic_user=admin basic_pass=vault_admin_pass
    vault_kv_put db/postgres password=vault_pg_password_123 username=webhook_user
    vault_kv_put integrations/api api_key=vault_api_key_abc123 api_secret=vault_api_secret_xyz789
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
    source "$SCENARIO_DIR/../../scenario/lib.sh"  # compose: Docker Compose in this folder
    MODE=docker
    seed_vault "$@"
fi
