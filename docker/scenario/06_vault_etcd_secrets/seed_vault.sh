#!/usr/bin/env bash
# seed_vault.sh TOKEN HMAC REDISPW: write scenario 06's secrets into Vault's KV v2
# engine at webhooks/ (enabled first if absent). The secrets are defined once,
# below; two writers put them:
#   docker (the default; `docker compose up -d` first): the vault CLI in the
#     vault container (`docker compose exec -T vault vault kv put ...`);
#   local (SCENARIO_MODE=local, VAULT_ADDR=http://127.0.0.1:PORT, VAULT_TOKEN):
#     the same KV v2 write over Vault's HTTP API, to the project's stand-in.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"
MODE="${SCENARIO_MODE:-docker}"
MOUNT=webhooks
[ "$#" -eq 3 ] || { echo "usage: $0 WEBHOOK_TOKEN HMAC_SECRET REDIS_PASSWORD"; exit 2; }

vault_cli() {
    compose exec -T -e VAULT_ADDR=http://127.0.0.1:8200 -e VAULT_TOKEN=root vault vault "$@"
}

ensure_mount() {
    if [ "$MODE" = docker ]; then
        local mounts
        mounts="$(vault_cli secrets list -format=json)"
        grep -q "\"$MOUNT/\"" <<<"$mounts" || vault_cli secrets enable -path="$MOUNT" kv-v2 >/dev/null
    fi  # the stand-in is started with the mount (config/vault-standin.json)
}

# put_secret PATH KEY=VALUE...: one KV v2 write (a new version of the secret).
put_secret() {
    local path="$1"
    shift
    if [ "$MODE" = docker ]; then
        vault_cli kv put -mount="$MOUNT" "$path" "$@" >/dev/null
    else
        "$PYTHON" -c 'import json, sys; print(json.dumps({"data": dict(a.split("=", 1) for a in sys.argv[1:])}))' "$@" \
            | curl -sf -o /dev/null -X POST -H "X-Vault-Token: ${VAULT_TOKEN:?}" -H 'Content-Type: application/json' \
                --data @- "${VAULT_ADDR:?}/v1/$MOUNT/data/$path"
    fi
    echo "vault: wrote $MOUNT/$path (fields: ${*%%=*})"
}

ensure_mount
put_secret app/auth webhook_token="$1" hmac_secret="$2"
put_secret app/connections redis_password="$3"
