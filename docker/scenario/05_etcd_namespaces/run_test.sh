#!/usr/bin/env bash
# Scenario 05: etcd namespace routing, isolation, live add/delete, default-namespace fallback.
#   run_test.sh [routing|isolation|live-add|live-delete|fallback|all] [--local|--docker]
# Each step starts from an empty etcd seeded by seed_etcd.sh; `all` runs the five in order.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----
local_etcd() { start_etcd etcd "$ETCD_PORT"; }
local_redis() { start_redis redis "$REDIS_PORT"; }
local_webhook_receiver() {
    start_cwm webhook-receiver "$RECEIVER_PORT" "$WORK_DIR/webhook-receiver" \
        "$WORK_DIR/unused-webhooks.json" "$WORK_DIR/unused-connections.json" \
        CONFIG_BACKEND=etcd ETCD_HOST=127.0.0.1 ETCD_PORT="$ETCD_PORT" ETCD_PREFIX=/cwm/ \
        ETCD_NAMESPACE=default REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}

scenario_init "$@"
if [ "$MODE" = docker ]; then
    RECEIVER_URL=http://localhost:8000
else
    ETCD_PORT="$(free_port)" REDIS_PORT="$(free_port)" RECEIVER_PORT="$(free_port)"
    ETCD_ENDPOINT="http://127.0.0.1:$ETCD_PORT"
    RECEIVER_URL="http://127.0.0.1:$RECEIVER_PORT"
fi
LIVE=10  # seconds a live change may take at most (it lands within milliseconds)

# post PATH: POST a small JSON body to /webhook/PATH; prints the status code.
post() { post_json "$RECEIVER_URL/webhook/$1" "{\"scenario\":\"05\",\"to\":\"$1\"}"; }

# printed TEXT: 1 once the receiver's output holds TEXT (what the log module wrote).
printed() {
    service_output webhook-receiver >"$WORK_DIR/receiver-output.txt"
    if grep -qF -- "$1" "$WORK_DIR/receiver-output.txt"; then echo 1; else echo 0; fi
}

# health_counts: "WEBHOOKS CONNECTIONS REJECTED" as /health reports them.
health_counts() {
    get_json "$RECEIVER_URL/health" "$WORK_DIR/health.json" >/dev/null
    json_get "$WORK_DIR/health.json" '"%d %d %d" % (d["config"]["webhooks"], d["config"]["connections"], len(d["config"]["rejected"]))'
}

etcd_health() {
    get_json "$RECEIVER_URL/health" "$WORK_DIR/health.json" >/dev/null
    json_get "$WORK_DIR/health.json" 'd["components"]["etcd"]'
}

setup() {
    up etcd redis webhook-receiver
    wait_http "$RECEIVER_URL/health" 60 || { fail "the receiver never answered /health"; scenario_finish; }
    expect "GET /health with an empty etcd" 200 "$(status_of GET "$RECEIVER_URL/health")"
    expect_within "$LIVE" "etcd component of /health" healthy etcd_health
    expect "POST /webhook/ns_alpha/hook1 before seeding" 404 "$(post ns_alpha/hook1)"
    SCENARIO_MODE="$MODE" ETCD_ENDPOINT="${ETCD_ENDPOINT:-}" "$SCENARIO_DIR/seed_etcd.sh"
    # The seed's webhook keys arrive in order through the watch: the last one seen means all are.
    expect_within "$LIVE" "seeded config arrived: /health counts 3 webhooks, 1 connection, 0 rejected" \
        "3 1 0" health_counts
}

test_routing() {
    log "== routing: each namespace serves its own entries"
    expect "POST /webhook/ns_alpha/hook1" 200 "$(post ns_alpha/hook1)"
    expect "POST /webhook/ns_alpha/hook2" 200 "$(post ns_alpha/hook2)"
    expect "POST /webhook/ns_beta/hook1" 200 "$(post ns_beta/hook1)"
    # hook1 exists in both namespaces with different module-config: ns_alpha's
    # pretty-prints (a banner), ns_beta's writes one JSON line.
    expect_within "$LIVE" "ns_alpha/hook1 ran ns_alpha's entry (pretty_print banner)" 1 \
        printed "=== WEBHOOK RECEIVED: ns_alpha/hook1 ==="
    expect_within "$LIVE" "ns_beta/hook1 ran ns_beta's entry (one JSON line)" 1 \
        printed '"namespace": "ns_beta", "webhook_id": "hook1"'
    expect "ns_beta/hook1 was not pretty-printed" 0 "$(printed "=== WEBHOOK RECEIVED: ns_beta/hook1 ===")"
}

test_isolation() {
    log "== isolation: a webhook of one namespace is not found in another"
    expect "POST /webhook/ns_beta/hook2 (only ns_alpha has hook2)" 404 "$(post ns_beta/hook2)"
    expect "POST /webhook/hook1 (the default namespace has no hook1)" 404 "$(post hook1)"
    expect "POST /webhook/ns_gamma/hook1 (no such namespace)" 404 "$(post ns_gamma/hook1)"
}

test_live_add() {
    log "== live add: etcdctl put is served without a restart"
    expect "POST /webhook/ns_beta/hook_new before the put" 404 "$(post ns_beta/hook_new)"
    etcdctl put /cwm/ns_beta/webhooks/hook_new '{"data_type":"json","module":"log"}' >/dev/null
    expect_within "$LIVE" "POST /webhook/ns_beta/hook_new after the put" 200 post ns_beta/hook_new
    expect "POST /webhook/ns_alpha/hook_new (added to ns_beta only)" 404 "$(post ns_alpha/hook_new)"
}

test_live_delete() {
    log "== live delete: etcdctl del removes the webhook without a restart"
    expect "POST /webhook/ns_alpha/hook2 before the del" 200 "$(post ns_alpha/hook2)"
    etcdctl del /cwm/ns_alpha/webhooks/hook2 >/dev/null
    expect_within "$LIVE" "POST /webhook/ns_alpha/hook2 after the del" 404 post ns_alpha/hook2
    expect "POST /webhook/ns_alpha/hook1 (same namespace, untouched)" 200 "$(post ns_alpha/hook1)"
}

test_fallback() {
    log "== fallback: /webhook/{id} uses ETCD_NAMESPACE (default)"
    expect "POST /webhook/fallback_hook before the put" 404 "$(post fallback_hook)"
    etcdctl put /cwm/default/webhooks/fallback_hook '{"data_type":"json","module":"log"}' >/dev/null
    expect_within "$LIVE" "POST /webhook/fallback_hook after the put" 200 post fallback_hook
    expect "POST /webhook/default/fallback_hook (the same entry, namespaced)" 200 "$(post default/fallback_hook)"
    expect "POST /webhook/ns_alpha/fallback_hook (not in ns_alpha)" 404 "$(post ns_alpha/fallback_hook)"
}

which="$(scenario_args "$@" | head -n 1)"
case "${which:-all}" in
    routing|isolation|live-add|live-delete|fallback)
        setup
        "test_${which//-/_}" ;;
    all)
        setup
        test_routing; test_isolation; test_live_add; test_live_delete; test_fallback ;;
    *) echo "usage: $0 [routing|isolation|live-add|live-delete|fallback|all] [--local|--docker]"; exit 2 ;;
esac
scenario_finish
