#!/usr/bin/env bash
# Scenario 01: live reload of webhooks.json under load, save_to_disk writing JSON.
#   run_test.sh [load|reload|all] [--local|--docker]
# load:   DURATION seconds (default 8; upstream ran 60) of webhooks to test_webhook
#         while change_config.sh rewrites the config every CHANGE_INTERVAL seconds
#         (default 2), cycling atomic, in-place (`echo >`) and torn writes: every
#         POST gets 200, every accepted webhook is in exactly one file.
# reload: each variant in turn, written atomically, in place and torn: the next
#         webhooks land in the new variant's directory; while the file is half
#         written the last good config keeps serving; test_webhook_2 comes and goes.
# Every step starts from config/ (variant 0) and ends by checking every sequence.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"

DURATION="${DURATION:-8}"
CHANGE_INTERVAL="${CHANGE_INTERVAL:-2}"
SEND_INTERVAL="${SEND_INTERVAL:-0.05}"
export TORN_PAUSE=2  # longer than the 1 s reload debounce (docker-compose.yaml) so cwm reads the half file
LIVE=10              # seconds a rewrite may take at most to be served (debounce 1 s + polling)

# ---- the compose service as a local process (docker mode uses docker-compose.yaml) ----
local_webhook() {
    start_cwm webhook "$WEBHOOK_PORT" "$WORK_DIR/webhook" "$CONFIG_DIR/webhooks.json" "$CONFIG_DIR/connections.json" \
        CONFIG_FILE_WATCHING_ENABLED=true CONFIG_RELOAD_DEBOUNCE_SECONDS=1.0
}

scenario_init "$@"
if [ "$MODE" = docker ]; then
    WEBHOOK_URL=http://localhost:8000
    CONFIG_DIR="$SCENARIO_DIR/live/config"
else
    WEBHOOK_PORT="$(free_port)"
    WEBHOOK_URL="http://127.0.0.1:$WEBHOOK_PORT"
    CONFIG_DIR="$WORK_DIR/config"
fi
WEBHOOKS_FILE="$CONFIG_DIR/webhooks.json"
RECORD="$WORK_DIR/sent.txt"      # "SEQUENCE STATUS WEBHOOK" for every POST
LISTING="$WORK_DIR/saved.txt"    # "DIR SEQUENCE" for every saved file
CHANGES="$WORK_DIR/logs/change_config.log"
NEXT_SEQ=100001                  # the reload step's sequences (the load step counts from 1)

# list_saved: LISTING := the files save_to_disk wrote, wherever cwm runs.
list_saved() {
    if [ "$MODE" = docker ]; then
        compose exec -T webhook python - /app/logs <"$SCENARIO_DIR/list_saved.py" >"$LISTING"
    else
        "$PYTHON" "$SCENARIO_DIR/list_saved.py" "$WORK_DIR/webhook/logs" >"$LISTING"
    fi
}

# dir_of SEQUENCE: the directory of the file holding SEQUENCE (empty if none).
dir_of() {
    list_saved
    awk -v s="$1" '$2 == s { print $1 }' "$LISTING"
}

# post_next WEBHOOK: POST the next sequence as upstream's sender did, record it;
# sets SEQ and CODE.
post_next() {
    SEQ=$NEXT_SEQ
    NEXT_SEQ=$((NEXT_SEQ + 1))
    CODE=$(post_json "$WEBHOOK_URL/webhook/$1" \
        "{\"webhook_number\":$SEQ,\"message\":\"Webhook payload number $SEQ\",\"test_data\":{\"counter\":$SEQ,\"sequence\":$SEQ,\"source\":\"live_reload_test\"}}" \
        -H 'Authorization: Bearer test_token_123')
    echo "$SEQ $CODE $1" >>"$RECORD"
}

# post_until WEBHOOK CODE WHAT: post_next WEBHOOK until it answers CODE (at most LIVE seconds).
post_until() {
    local deadline=$((SECONDS + LIVE))
    while :; do
        post_next "$1"
        [ "$CODE" = "$2" ] || [ "$SECONDS" -ge "$deadline" ] && break
        sleep 0.1
    done
    expect "$3" "$2" "$CODE"
}

# rejected_reads: how often cwm has said a config file did not parse.
rejected_reads() { service_output webhook | grep -c 'is not valid JSON' || true; }

setup() {
    if [ "$MODE" = docker ]; then
        compose down -v >/dev/null 2>&1 || true
    fi
    rm -rf "$CONFIG_DIR"
    mkdir -p "$CONFIG_DIR"
    cp "$SCENARIO_DIR/config/webhooks.json" "$SCENARIO_DIR/config/connections.json" "$CONFIG_DIR/"
    : >"$RECORD"
    up webhook
    wait_http "$WEBHOOK_URL/health" 60 || { fail "cwm never answered /health"; scenario_finish; }
}

# verify WHAT [DIR...]: every POST so far against every saved file.
verify() {
    local what="$1"
    shift
    list_saved
    if PYTHON="$PYTHON" "$SCENARIO_DIR/verify_results.sh" "$RECORD" "$LISTING" "$@"; then
        pass "$what: every accepted webhook saved exactly once, as JSON, in an expected directory"
    else
        fail "$what: see the problems above"
    fi
}

test_load() {
    log "== load: ${DURATION}s of webhooks, the config rewritten every ${CHANGE_INTERVAL}s"
    local stop="$WORK_DIR/stop-load" sender changer
    rm -f "$stop"
    "$SCENARIO_DIR/send_webhooks.sh" "$WEBHOOK_URL" 1 "$RECORD" "$stop" "$SEND_INTERVAL" \
        >"$WORK_DIR/logs/send_webhooks.log" 2>&1 &
    sender=$!
    "$SCENARIO_DIR/change_config.sh" --loop "$WEBHOOKS_FILE" "$CHANGE_INTERVAL" "$stop" >>"$CHANGES" 2>&1 &
    changer=$!
    sleep "$DURATION"
    touch "$stop"
    wait "$sender" || fail "send_webhooks.sh failed"
    wait "$changer" || fail "change_config.sh failed"
    local sent changes dirs
    sent=$(wc -l <"$RECORD" | tr -d ' ')
    changes=$(grep -c written "$CHANGES" || true)
    log "$sent webhooks sent, $changes config rewrites: $(tr '\n' ';' <"$CHANGES")"
    if awk -v n="$sent" -v d="$DURATION" 'BEGIN { exit !(n >= d) }'; then pass "load: $sent webhooks in ${DURATION}s"; else fail "load: only $sent webhooks in ${DURATION}s"; fi
    expect "load: POSTs not answered 200" 0 "$(awk '$2 != 200' "$RECORD" | wc -l | tr -d ' ')"
    verify "load" logs logs/variant1 logs/variant2
    if awk -v d="$DURATION" -v i="$CHANGE_INTERVAL" 'BEGIN { exit !(d >= 2 * i) }'; then
        dirs=$(awk '{ print $1 }' "$LISTING" | sort -u | tr '\n' ' ')
        if [ "$(wc -w <<<"$dirs")" -ge 2 ]; then
            pass "load: the rewrites took effect under load (files in: $dirs)"
        else
            fail "load: every file is in one directory ($dirs): no rewrite took effect"
        fi
    fi
}

# switch_to VARIANT METHOD DIR: rewrite the config, then POST to test_webhook
# until a webhook is saved in DIR (each answer must be 200).
switch_to() {
    local variant="$1" method="$2" dir="$3" deadline=$((SECONDS + LIVE)) landed=""
    "$SCENARIO_DIR/change_config.sh" "$WEBHOOKS_FILE" "$variant" "$method" >>"$CHANGES"
    while [ "$SECONDS" -lt "$deadline" ]; do
        post_next test_webhook
        landed="$(dir_of "$SEQ")"
        [ "$landed" = "$dir" ] && break
        sleep 0.1
    done
    expect "variant $variant written $method: test_webhook saves in" "$dir" "$landed"
}

test_reload() {
    log "== reload: each variant, each way of writing the file"
    local before after writer posts=0 wrong=0
    switch_to 1 atomic logs/variant1
    switch_to 2 inplace logs/variant2
    # Torn: while the file holds half a JSON document (for longer than the
    # debounce, so cwm reads it), variant 2 must keep serving.
    before=$(rejected_reads)
    "$SCENARIO_DIR/change_config.sh" "$WEBHOOKS_FILE" 3 torn >>"$CHANGES" &
    writer=$!
    while kill -0 "$writer" 2>/dev/null; do
        post_next test_webhook
        posts=$((posts + 1))
        if [ "$CODE" != 200 ] || [ "$(dir_of "$SEQ")" != logs/variant2 ]; then wrong=$((wrong + 1)); fi
        sleep 0.1
    done
    wait "$writer"
    expect "while half written: POSTs answered 200 and saved by the last good config (logs/variant2)" \
        "$posts of $posts" "$((posts - wrong)) of $posts"
    post_until test_webhook_2 200 "variant 3 complete: test_webhook_2 is served"
    after=$(rejected_reads)
    if [ "$after" -gt "$before" ]; then
        pass "cwm read the half-written file, refused it and kept serving ($before -> $after refusals logged)"
    else
        fail "cwm never logged reading the half-written file ($before -> $after refusals)"
    fi
    post_next test_webhook_2
    expect "variant 3: test_webhook_2 saves in" "200 logs/secondary" "$CODE $(dir_of "$SEQ")"
    post_next test_webhook
    expect "variant 3: test_webhook saves in" "200 logs" "$CODE $(dir_of "$SEQ")"
    # Back to variant 0: test_webhook_2 goes away, test_webhook stays in logs.
    "$SCENARIO_DIR/change_config.sh" "$WEBHOOKS_FILE" 0 atomic >>"$CHANGES"
    post_until test_webhook_2 404 "variant 0 written atomic: test_webhook_2 is gone"
    post_next test_webhook
    expect "variant 0: test_webhook saves in" "200 logs" "$CODE $(dir_of "$SEQ")"
}

which="$(scenario_args "$@" | head -n 1)"
case "${which:-all}" in
    load) setup; test_load ;;
    reload) setup; test_reload; verify "reload" logs logs/variant1 logs/variant2 logs/secondary ;;
    all)
        setup
        test_load
        test_reload
        verify "all steps" logs logs/variant1 logs/variant2 logs/secondary ;;
    *) echo "usage: $0 [load|reload|all] [--local|--docker]"; exit 2 ;;
esac
scenario_finish
