#!/usr/bin/env bash
# send_webhooks.sh [COUNT=5] [DELAY_MS=100] [ENDPOINT=cloud-webhook-alpha] [FIRST=1]
# POST COUNT webhooks to the cloud's /webhook/ENDPOINT, sequence numbers FIRST, FIRST+1...;
# each body names the endpoint it was posted to (channel_endpoint), so the verification can
# tell which webhook a delivered file came from. The cloud is $CLOUD_URL (default
# http://localhost:8010). Exits 1 if any is not accepted (200/202): a refusal is an answer,
# not a loss (queue-overflow posts on its own to check the 503s).
set -euo pipefail
count="${1:-5}" delay_ms="${2:-100}" endpoint="${3:-cloud-webhook-alpha}" first="${4:-1}"
cloud="${CLOUD_URL:-http://localhost:8010}"
failed=0
for ((i = first; i < first + count; i++)); do
    body=$(printf '{"event":"test_event","sequence":%d,"timestamp":"%s","channel_endpoint":"%s","data":{"message":"Test webhook %d of %d","value":%d}}' \
        "$i" "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$endpoint" "$i" "$count" "$((RANDOM % 1000))")
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data "$body" "$cloud/webhook/$endpoint") || true
    if [ "$code" = 200 ] || [ "$code" = 202 ]; then
        echo "webhook $endpoint $i: $code"
    else
        echo "webhook $endpoint $i: not accepted ($code)"
        failed=$((failed + 1))
    fi
    if [ "$delay_ms" -gt 0 ]; then sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"; fi
done
[ "$failed" -eq 0 ]
