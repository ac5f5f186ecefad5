#!/usr/bin/env bash
# Scenario 04: the connector, advanced (upstream's sub-tests, with real assertions, and two more).
#   run_test.sh [NAME|all] [--local|--docker]
# NAME: admin-api long-poll token-rotation queue-overflow multi-channel websocket
#       target-routing retry-delivery module-mode flaky-retry   (all: every one, in this order)
# Each sub-test starts from nothing (every service down, Redis empty, delivered files wiped).
# Exit 0 when every check passed.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"

SUBTESTS=(admin-api long-poll token-rotation queue-overflow multi-channel websocket
          target-routing retry-delivery module-mode flaky-retry)
ALL_SERVICES=(connector-sse connector-ws connector-module connector-routing connector-flaky
              flaky-target local-processor-a local-processor-b cloud-receiver redis)
ADMIN=(-H "Authorization: Bearer admin_secret_123")
ALPHA_TOKEN_CONFIGURED=alpha_secret_token_123
SEND_DELAY_MS="${SEND_DELAY_MS:-20}"

# ---- the compose services as local processes (docker mode uses docker-compose.yaml) ----

local_redis() { start_redis redis "$REDIS_PORT"; }
local_cloud_receiver() {
    start_cwm cloud-receiver "$CLOUD_PORT" "$WORK_DIR/cloud" \
        "$SCENARIO_DIR/config/cloud-webhooks.json" "$SCENARIO_DIR/config/cloud-connections.json" \
        WEBHOOK_CONNECT_ENABLED=true WEBHOOK_CONNECT_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" WEBHOOK_CONNECT_ADMIN_TOKEN=admin_secret_123
}
local_local_processor_a() {
    start_cwm local-processor-a "$LOCAL_A_PORT" "$WORK_DIR/local-a" \
        "$SCENARIO_DIR/config/local-a-webhooks.json" "$SCENARIO_DIR/config/local-connections.json"
}
local_local_processor_b() {
    start_cwm local-processor-b "$LOCAL_B_PORT" "$WORK_DIR/local-b" \
        "$SCENARIO_DIR/config/local-b-webhooks.json" "$SCENARIO_DIR/config/local-connections.json"
}
local_connector_sse() {
    start_connector connector-sse "$WORK_DIR/connector-sse" \
        CONNECTOR_CLOUD_URL="$CLOUD_URL" CONNECTOR_CHANNEL=channel-alpha \
        CONNECTOR_TOKEN="${ALPHA_TOKEN:-$ALPHA_TOKEN_CONFIGURED}" \
        CONNECTOR_TARGET_URL="$LOCAL_A_URL/webhook/local-receiver-a" \
        CONNECTOR_PROTOCOL=sse CONNECTOR_ID=local-connector-sse CONNECTOR_LOG_LEVEL=debug
}
local_connector_ws() {
    start_connector connector-ws "$WORK_DIR/connector-ws" \
        CONNECTOR_CLOUD_URL="$CLOUD_URL" CONNECTOR_CHANNEL=channel-beta CONNECTOR_TOKEN=beta_secret_token_456 \
        CONNECTOR_TARGET_URL="$LOCAL_B_URL/webhook/local-receiver-b" \
        CONNECTOR_PROTOCOL=websocket CONNECTOR_ID=local-connector-ws CONNECTOR_LOG_LEVEL=info
}
# The file-configured connectors read the very files docker mounts, with the compose
# service URLs and /app/ paths rewritten to the local ones.
local_config() {
    sed -e "s#http://cloud-receiver:8000#$CLOUD_URL#g" \
        -e "s#http://local-processor-a:8000#$LOCAL_A_URL#g" \
        -e "s#http://local-processor-b:8000#$LOCAL_B_URL#g" \
        -e "s#http://flaky-target:8000#$FLAKY_URL#g" \
        -e "s#\"/app/#\"$SCENARIO_DIR/config/#g" \
        "$SCENARIO_DIR/config/$1" >"$WORK_DIR/$1"
    echo "$WORK_DIR/$1"
}
local_connector_module() {
    start_connector connector-module "$WORK_DIR/connector-module" -- --config "$(local_config connector.json)"
}
local_connector_routing() {
    start_connector connector-routing "$WORK_DIR/connector-routing" -- --config "$(local_config connector-routing.json)"
}
local_connector_flaky() {
    start_connector connector-flaky "$WORK_DIR/connector-flaky" -- --config "$(local_config connector-flaky.json)"
}
local_flaky_target() {
    start_process flaky-target "$WORK_DIR/flaky-target" -- "$PYTHON" "$SCENARIO_DIR/flaky_target.py" \
        --host 127.0.0.1 --port "$FLAKY_PORT" --fail-first 4 --record logs/received.jsonl
    wait_http "$FLAKY_URL/health" 30
}

scenario_init "$@"
if [ "$MODE" = docker ]; then
    CLOUD_URL=http://localhost:8010
    DATA_DIR="$SCENARIO_DIR/logs"
    LOCAL_A_FILES="$DATA_DIR/local-a/webhooks.log" LOCAL_B_FILES="$DATA_DIR/local-b/webhooks.log"
    MODULE_FILES="$DATA_DIR/module/webhooks.log" FLAKY_RECORD="$DATA_DIR/flaky/received.jsonl"
else
    REDIS_PORT="$(free_port)" CLOUD_PORT="$(free_port)" LOCAL_A_PORT="$(free_port)"
    LOCAL_B_PORT="$(free_port)" FLAKY_PORT="$(free_port)"
    CLOUD_URL="http://127.0.0.1:$CLOUD_PORT" LOCAL_A_URL="http://127.0.0.1:$LOCAL_A_PORT"
    LOCAL_B_URL="http://127.0.0.1:$LOCAL_B_PORT" FLAKY_URL="http://127.0.0.1:$FLAKY_PORT"
    LOCAL_A_FILES="$WORK_DIR/local-a/logs/webhooks.log" LOCAL_B_FILES="$WORK_DIR/local-b/logs/webhooks.log"
    MODULE_FILES="$WORK_DIR/connector-module/logs/webhooks.log"
    FLAKY_RECORD="$WORK_DIR/flaky-target/logs/received.jsonl"
fi
export CLOUD_URL

# ---- steps shared by the sub-tests ------------------------------------------------------

fresh() {  # upstream's cleanup: everything down, queues gone, delivered files wiped
    unset ALPHA_TOKEN
    if [ "$MODE" = docker ]; then
        compose_all down -v >/dev/null 2>&1 || true
        # What the containers wrote belongs to their user: if this one may not delete it,
        # a container of the same image does.
        if [ -d "$DATA_DIR" ] && ! rm -rf "$DATA_DIR" 2>/dev/null; then
            docker run --rm -v "$DATA_DIR:/wipe" --entrypoint sh cwm:local -c 'rm -rf /wipe/*/*' || true
            rm -rf "$DATA_DIR"
        fi
        # The containers run as an unprivileged user: let them write the bind-mounted folders.
        mkdir -p "$DATA_DIR/local-a" "$DATA_DIR/local-b" "$DATA_DIR/module" "$DATA_DIR/flaky"
        chmod a+rwx "$DATA_DIR/local-a" "$DATA_DIR/local-b" "$DATA_DIR/module" "$DATA_DIR/flaky"
    else
        down "${ALL_SERVICES[@]}"
        rm -rf "$WORK_DIR/local-a/logs" "$WORK_DIR/local-b/logs" "$WORK_DIR/connector-module/logs" \
            "$WORK_DIR/flaky-target/logs"
    fi
}

# send ENDPOINT FIRST [COUNT=1]: upstream's send_webhooks.sh; every one must be accepted.
send() {
    local endpoint="$1" first="$2" count="${3:-1}"
    if ! "$SCENARIO_DIR/send_webhooks.sh" "$count" "$SEND_DELAY_MS" "$endpoint" "$first" >"$WORK_DIR/send.out" 2>&1; then
        cat "$WORK_DIR/send.out"
        fail "sending $endpoint $first..$((first + count - 1))"
    fi
}

# verify WHAT EXPECTED DIR FIRST ENDPOINT: exactly the sequences FIRST..FIRST+EXPECTED-1 from ENDPOINT.
verify() {
    if "$SCENARIO_DIR/verify_results.sh" "$2" "$3" 30 "$4" "$5"; then pass "$1"; else fail "$1"; fi
}

# py EXPR FILE: evaluate Python EXPR on the JSON document `d` in FILE ('' if it cannot).
py() {
    "$PYTHON" -c 'import json, sys
try:
    d = json.load(open(sys.argv[2]))
    print(eval(sys.argv[1]))
except Exception as e:
    print(f"<{type(e).__name__}: {e}>")' "$1" "$2"
}

# stats CHANNEL FIELD...: the channel's messages_FIELD counters, space separated.
stats() {
    local channel="$1"
    shift
    get_json "$CLOUD_URL/admin/webhook-connect/channels/$channel/stats" "$WORK_DIR/stats.json" "${ADMIN[@]}" >/dev/null || true
    py "' '.join(str(d['messages_' + f]) for f in '$*'.split())" "$WORK_DIR/stats.json"
}

# eventually WHAT EXPECTED COMMAND...: COMMAND prints EXPECTED within 30 s (checked every 0.2 s).
eventually() {
    local what="$1" expected="$2" actual=""
    shift 2
    _prints_expected() { actual="$("$@")"; [ "$actual" = "$expected" ]; }
    wait_until 30 _prints_expected "$@" || true
    expect "$what" "$expected" "$actual"
}

# clients CHANNEL: the channel's connected clients as protocol:connector_id, sorted.
clients() {
    get_json "$CLOUD_URL/admin/webhook-connect/channels/$1" "$WORK_DIR/channel.json" "${ADMIN[@]}" >/dev/null || true
    py "' '.join(sorted(c['protocol'] + ':' + str(c['connector_id']) for c in d['connected_clients']))" \
        "$WORK_DIR/channel.json"
}

# poll CHANNEL TOKEN TIMEOUT: one long-poll into $WORK_DIR/poll.json; prints "status seconds".
poll() {
    curl -s -o "$WORK_DIR/poll.json" -w '%{http_code} %{time_total}' -H "Authorization: Bearer $2" \
        "$CLOUD_URL/connect/stream/$1/poll?timeout=$3&max_messages=5" || true
}

# ack_polled TOKEN: ack every message of the last poll; prints the ack statuses.
ack_polled() {
    local token="$1" connection message codes=()
    connection="$(py "d['connection_id']" "$WORK_DIR/poll.json")"
    for message in $(py "' '.join(m['message_id'] for m in d['messages'])" "$WORK_DIR/poll.json"); do
        codes+=("$(status_of POST "$CLOUD_URL/connect/ack?message_id=$message&status=ack" \
            -H "X-Connection-ID: $connection" -H "Authorization: Bearer $token")")
    done
    echo "${codes[*]}"
}

polled_sequences() { py "[m['payload']['sequence'] for m in d['messages']]" "$WORK_DIR/poll.json"; }

# ---- the sub-tests ------------------------------------------------------------------

test_admin_api() {
    up redis cloud-receiver
    send cloud-webhook-alpha 1
    send cloud-webhook-beta 1
    local f="$WORK_DIR/admin.json" code
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/health" "$f")
    expect "health, no token needed" "200 healthy" "$code $(py "d['status']" "$f")"
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/channels" "$f" "${ADMIN[@]}")
    expect "channels lists alpha and beta" "200 True" \
        "$code $(py "len(d) >= 2 and {'channel-alpha', 'channel-beta'} <= {c['name'] for c in d}" "$f")"
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/channels/channel-alpha" "$f" "${ADMIN[@]}")
    expect "channel-alpha details" "200 channel-alpha" "$code $(py "d['name']" "$f")"
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/channels/channel-alpha/stats" "$f" "${ADMIN[@]}")
    expect "channel-alpha stats: 1 queued" "200 1" "$code $(py "d['messages_queued']" "$f")"
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/channels/channel-alpha/dead-letters" "$f" "${ADMIN[@]}")
    expect "channel-alpha dead letters: none" "200 []" "$code $(py "d['messages']" "$f")"
    code=$(get_json "$CLOUD_URL/admin/webhook-connect/overview" "$f" "${ADMIN[@]}")
    expect "overview: at least 2 channels" "200 True" "$code $(py "d['total_channels'] >= 2" "$f")"
    expect "channels without a token" 401 "$(status_of GET "$CLOUD_URL/admin/webhook-connect/channels")"
    expect "channels with a wrong token" 401 "$(status_of GET "$CLOUD_URL/admin/webhook-connect/channels" \
        -H "Authorization: Bearer not_the_admin_token")"
}

test_long_poll() {
    up redis cloud-receiver
    send cloud-webhook-alpha 1
    local answer first second
    answer=$(poll channel-alpha alpha_secret_token_123 2)
    # Upstream's script expected 204 here although the first webhook was queued.
    expect "poll with a message queued" 200 "${answer%% *}"
    expect "it hands out sequence 1 from cloud-webhook-alpha" "[1] cloud-webhook-alpha" \
        "$(polled_sequences) $(py "d['messages'][0]['webhook_id']" "$WORK_DIR/poll.json")"
    cp "$WORK_DIR/poll.json" "$WORK_DIR/poll-1.json"
    send cloud-webhook-alpha 2
    answer=$(poll channel-alpha alpha_secret_token_123 5)
    expect "second poll" 200 "${answer%% *}"
    expect "it hands out only sequence 2 (1 is in flight)" "[2]" "$(polled_sequences)"
    expect "ack of the second poll's message" 200 "$(ack_polled alpha_secret_token_123)"
    cp "$WORK_DIR/poll-1.json" "$WORK_DIR/poll.json"
    expect "ack of the first poll's message" 200 "$(ack_polled alpha_secret_token_123)"
    answer=$(poll channel-alpha alpha_secret_token_123 1)
    expect "empty poll" 204 "${answer%% *}"
    expect "the empty poll waited for its 1 s timeout" True \
        "$("$PYTHON" -c "print(float('${answer#* }') >= 0.9)")"
    eventually "channel-alpha delivered queued in_flight" "2 0 0" stats channel-alpha delivered queued in_flight
}

test_token_rotation() {
    up redis cloud-receiver
    send cloud-webhook-alpha 1
    local code new answer
    code=$(post_json "$CLOUD_URL/admin/webhook-connect/channels/channel-alpha/rotate-token" \
        '{"grace_period_seconds":3600}' "${ADMIN[@]}")
    expect "rotate-token" 200 "$code"
    new="$(py "d['new_token']" "$WORK_DIR/last_body")"
    expect "a new, different token" True "$([ -n "$new" ] && [ "$new" != "$ALPHA_TOKEN_CONFIGURED" ] \
        && [ "${new#<}" = "$new" ] && echo True || echo False)"
    answer=$(poll channel-alpha "$ALPHA_TOKEN_CONFIGURED" 1)
    expect "poll with the old token (grace period) gets sequence 1" "200 [1]" "${answer%% *} $(polled_sequences)"
    expect "ack with the old token" 200 "$(ack_polled "$ALPHA_TOKEN_CONFIGURED")"
    answer=$(poll channel-alpha "$new" 1)
    expect "poll with the new token (nothing left)" 204 "${answer%% *}"
    answer=$(poll channel-alpha totally_wrong_token 1)
    expect "poll with a wrong token" 401 "${answer%% *}"
    # Webhooks sent after the rotation do not bring the configured token back (upstream's
    # did): a connector holding the new one gets them.
    up local-processor-a
    export ALPHA_TOKEN="$new"
    up connector-sse
    unset ALPHA_TOKEN
    eventually "channel-alpha clients" "sse:local-connector-sse" clients channel-alpha
    send cloud-webhook-alpha 2 3
    verify "the connector with the new token delivered 2..4" 3 "$LOCAL_A_FILES" 2 cloud-webhook-alpha
    eventually "channel-alpha delivered queued in_flight" "4 0 0" stats channel-alpha delivered queued in_flight
}

test_queue_overflow() {
    up redis cloud-receiver
    local i code codes=() answer sequences="" round
    for i in 1 2 3 4 5 6 7; do  # upstream's first webhook, then its 6 overflow posts
        code=$(post_json "$CLOUD_URL/webhook/cloud-webhook-overflow" "{\"event\":\"overflow_test\",\"sequence\":$i}" \
            -D "$WORK_DIR/headers")
        codes+=("$code")
        if [ "$i" -gt 3 ]; then
            expect "refusal $i says why and when to retry" "queue is full, Retry-After > 0" "$(
                "$PYTHON" - "$WORK_DIR/headers" "$WORK_DIR/last_body" <<'PY'
import json, sys
headers = dict(line.split(":", 1) for line in open(sys.argv[1]).read().replace("\r", "").splitlines() if ":" in line)
retry = {k.lower(): v.strip() for k, v in headers.items()}.get("retry-after", "")
detail = json.load(open(sys.argv[2])).get("detail", "")
print(("queue is full" if "queue is full" in detail else repr(detail)) + ", "
      + ("Retry-After > 0" if retry.isdigit() and int(retry) > 0 else f"Retry-After {retry!r}"))
PY
            )"
        fi
    done
    # Upstream answered 200 to all seven and dropped four silently.
    expect "max_queue_size 3: the 4th post on is refused" "200 200 200 503 503 503 503" "${codes[*]}"
    expect "channel-overflow queued" 3 "$(stats channel-overflow queued)"
    for round in 1 2 3 4; do  # drain by long-poll: exactly the 3 stored
        answer=$(poll channel-overflow overflow_token_789 1)
        [ "${answer%% *}" = 200 ] || break
        sequences="$sequences $(py "' '.join(str(m['payload']['sequence']) for m in d['messages'])" "$WORK_DIR/poll.json")"
        ack_polled overflow_token_789 >/dev/null
    done
    expect "the stored webhooks, drained" "1 2 3" "$(echo $sequences)"
    expect "the drained queue takes webhooks again" 200 \
        "$(post_json "$CLOUD_URL/webhook/cloud-webhook-overflow" '{"event":"overflow_test","sequence":8}')"
    eventually "channel-overflow delivered queued" "3 1" stats channel-overflow delivered queued
}

test_multi_channel() {
    up redis cloud-receiver
    send cloud-webhook-alpha 1
    send cloud-webhook-beta 1
    up local-processor-a local-processor-b connector-sse connector-ws
    eventually "channel-alpha clients" "sse:local-connector-sse" clients channel-alpha
    eventually "channel-beta clients" "websocket:local-connector-ws" clients channel-beta
    send cloud-webhook-alpha 2 5
    send cloud-webhook-beta 2 5
    verify "local-a got alpha's 1..6 and nothing else" 6 "$LOCAL_A_FILES" 1 cloud-webhook-alpha
    verify "local-b got beta's 1..6 and nothing else" 6 "$LOCAL_B_FILES" 1 cloud-webhook-beta
    eventually "channel-alpha delivered queued in_flight" "6 0 0" stats channel-alpha delivered queued in_flight
    eventually "channel-beta delivered queued in_flight" "6 0 0" stats channel-beta delivered queued in_flight
}

test_websocket() {
    up redis cloud-receiver
    send cloud-webhook-beta 1
    up local-processor-b connector-ws
    eventually "channel-beta clients" "websocket:local-connector-ws" clients channel-beta
    send cloud-webhook-beta 2 5
    verify "local-b got 1..6 over WebSocket" 6 "$LOCAL_B_FILES" 1 cloud-webhook-beta
    eventually "channel-beta delivered queued in_flight" "6 0 0" stats channel-beta delivered queued in_flight
}

test_target_routing() {
    up redis cloud-receiver local-processor-a local-processor-b
    send cloud-webhook-alpha 1
    send cloud-webhook-alpha-2 101
    up connector-routing
    eventually "channel-alpha clients" "sse:local-connector-routing" clients channel-alpha
    send cloud-webhook-alpha 2 5
    send cloud-webhook-alpha-2 102 3
    send cloud-webhook-alpha-3 201  # no target, no default: a dead letter
    verify "cloud-webhook-alpha's 1..6 went to local-a" 6 "$LOCAL_A_FILES" 1 cloud-webhook-alpha
    verify "cloud-webhook-alpha-2's 101..104 went to local-b" 4 "$LOCAL_B_FILES" 101 cloud-webhook-alpha-2
    eventually "channel-alpha delivered dead_lettered queued in_flight" "10 1 0 0" \
        stats channel-alpha delivered dead_lettered queued in_flight
    get_json "$CLOUD_URL/admin/webhook-connect/channels/channel-alpha/dead-letters" "$WORK_DIR/dead.json" \
        "${ADMIN[@]}" >/dev/null
    expect "the dead letter is cloud-webhook-alpha-3's 201" "cloud-webhook-alpha-3 [201]" \
        "$(py "' '.join(sorted({m['webhook_id'] for m in d['messages']})) + ' ' + str([m['payload']['sequence'] for m in d['messages']])" "$WORK_DIR/dead.json")"
}

test_retry_delivery() {
    up redis cloud-receiver
    send cloud-webhook-alpha 1
    send cloud-webhook-alpha 2 5  # the connector and the local side are down
    expect "queued while nothing is connected" 6 "$(stats channel-alpha queued)"
    up local-processor-a connector-sse
    verify "local-a got all 6 once they started" 6 "$LOCAL_A_FILES" 1 cloud-webhook-alpha
    eventually "channel-alpha delivered queued in_flight" "6 0 0" stats channel-alpha delivered queued in_flight
}

test_module_mode() {
    up redis cloud-receiver
    send cloud-webhook-module-mode 1
    up connector-module
    eventually "channel-module clients" "websocket:local-connector-module" clients channel-module
    send cloud-webhook-module-mode 2 5
    verify "module-webhooks.json's save_to_disk, run by the connector, wrote 1..6" 6 "$MODULE_FILES" 1 \
        cloud-webhook-module-mode
    eventually "channel-module delivered queued in_flight" "6 0 0" stats channel-module delivered queued in_flight
}

# flaky SEQUENCE: "status/attempt ..." of every request the flaky target got for SEQUENCE.
flaky() {
    "$PYTHON" - "$FLAKY_RECORD" "$1" <<'PY'
import json, pathlib, sys
record = pathlib.Path(sys.argv[1])
lines = record.read_text().splitlines() if record.exists() else []
seen = [json.loads(line) for line in lines if line.strip()]
mine = [e for e in seen if isinstance(e["body"], dict) and e["body"].get("sequence") == int(sys.argv[2])]
print(" ".join(f"{e['status']}/{e['attempt']}" for e in mine))
PY
}

flaky_summary() {
    "$PYTHON" - "$FLAKY_RECORD" <<'PY'
import json, pathlib, sys
seen = [json.loads(line) for line in pathlib.Path(sys.argv[1]).read_text().splitlines() if line.strip()]
ok = sorted(e["body"]["sequence"] for e in seen if e["status"] == 200)
failed = sum(1 for e in seen if e["status"] != 200)
ids = {e["message_id"] for e in seen if e["body"]["sequence"] == 1}
print(f"200 for {ok}, {failed} failed, {len(ids)} message id for sequence 1")
PY
}

test_flaky_retry() {
    up redis cloud-receiver flaky-target connector-flaky
    send cloud-webhook-beta 1
    # 3 attempts (500, 500, 500), a nack with retry, the cloud hands it out again: 500, 200.
    eventually "the flaky target's answers to sequence 1" "500/1 500/2 500/3 500/1 200/2" flaky 1
    send cloud-webhook-beta 2 4
    local i
    for i in 2 3 4 5; do
        eventually "the flaky target's answer to sequence $i" "200/1" flaky "$i"
    done
    expect "the flaky target's record" "200 for [1, 2, 3, 4, 5], 4 failed, 1 message id for sequence 1" \
        "$(flaky_summary)"
    eventually "channel-beta delivered dead_lettered queued in_flight" "5 0 0 0" \
        stats channel-beta delivered dead_lettered queued in_flight
}

run_subtest() {
    log "== $1"
    fresh
    "test_${1//-/_}"
}

which="$(scenario_args "$@" | head -n 1)"
case "${which:-all}" in
    all) for name in "${SUBTESTS[@]}"; do run_subtest "$name"; done ;;
    *)
        if [[ " ${SUBTESTS[*]} " == *" $which "* ]]; then
            run_subtest "$which"
        else
            (IFS='|'; echo "usage: $0 [${SUBTESTS[*]}|all] [--local|--docker]")
            exit 2
        fi
        ;;
esac
# Connectors first, Redis last (the exit trap would stop them in start order).
[ "$MODE" = local ] && down "${ALL_SERVICES[@]}"
scenario_finish
