#!/usr/bin/env bash
# send_webhooks.sh [COUNT=10] [DELAY_MS=100] [FIRST=1]: POST COUNT webhooks to the cloud.
# Exits 1 if any is not accepted (200/202): a refusal is an answer, not a loss.
set -euo pipefail
count="${1:-10}" delay_ms="${2:-100}" first="${3:-1}"
cloud="${CLOUD_URL:-http://localhost:8010}"
failed=0
for ((i = first; i < first + count; i++)); do
    body=$(printf '{"event":"test_event","sequence":%d,"timestamp":"%s","data":{"message":"Test webhook %d of %d","value":%d}}' \
        "$i" "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$i" "$count" "$((RANDOM % 1000))")
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data "$body" "$cloud/webhook/cloud-webhook")
    if [ "$code" = 200 ] || [ "$code" = 202 ]; then
        echo "webhook $i: $code"
    else
        echo "webhook $i: FAILED ($code)"
        failed=$((failed + 1))
    fi
    if [ "$delay_ms" -gt 0 ]; then sleep "$(printf '0.%03d' "$delay_ms")"; fi
done
[ "$failed" -eq 0 ]
