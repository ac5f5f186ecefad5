#!/usr/bin/env bash
# send_webhooks.sh URL FIRST RECORD STOP_FILE [INTERVAL=0.05] [WEBHOOK=test_webhook]
# POST webhooks with sequence numbers FIRST, FIRST+1, ... to URL/webhook/WEBHOOK
# until STOP_FILE exists, and append "SEQUENCE STATUS WEBHOOK" to RECORD for each
# (the request in flight is finished first, so every POST is recorded).
# Upstream's body: webhook_number, timestamp, message, test_data {counter, sequence, source}.
# It also stops when the script that started it is gone.
set -euo pipefail
url="$1" n="$2" record="$3" stop_file="$4" interval="${5:-0.05}" webhook="${6:-test_webhook}"
parent=$PPID
while [ ! -e "$stop_file" ] && kill -0 "$parent" 2>/dev/null; do
    body=$(printf '{"webhook_number":%d,"timestamp":"%s","message":"Webhook payload number %d","test_data":{"counter":%d,"sequence":%d,"source":"live_reload_test"}}' \
        "$n" "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" "$n" "$n" "$n")
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST \
        -H 'Authorization: Bearer test_token_123' -H 'Content-Type: application/json' \
        --data "$body" "$url/webhook/$webhook" || true)
    echo "$n $code $webhook" >>"$record"
    n=$((n + 1))
    sleep "$interval"
done
