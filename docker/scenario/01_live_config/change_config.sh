#!/usr/bin/env bash
# change_config.sh FILE VARIANT METHOD: write one variant of webhooks.json to FILE.
# change_config.sh --loop FILE INTERVAL STOP_FILE: every INTERVAL seconds write the
#   next variant (1, 2, 3, 0, 1...) with the next method (atomic, inplace, torn...),
#   until STOP_FILE exists (or the script that started it is gone); a write in
#   progress is finished first.
#
# Variants (every entry keeps "Bearer test_token_123"; paths are relative to cwm's
# working directory, /app in the image):
#   0: test_webhook -> logs                 2: test_webhook -> logs/variant2
#   1: test_webhook -> logs/variant1        3: test_webhook -> logs, test_webhook_2 -> logs/secondary
# Methods:
#   atomic   write a temporary file beside FILE, then mv it over FILE;
#   inplace  `echo ... > FILE`, as upstream's script did (truncate, then write);
#   torn     the first half, a pause of TORN_PAUSE seconds (default 2, longer than
#            the 1 s reload debounce, so cwm reads the half file), then the rest.
set -euo pipefail

entry() {  # entry ID PATH
    printf '"%s": {"data_type": "json", "module": "save_to_disk", "authorization": "Bearer test_token_123", "module-config": {"path": "%s"}}' "$1" "$2"
}

variant() {
    case "$1" in
        0) printf '{%s}\n' "$(entry test_webhook logs)" ;;
        1) printf '{%s}\n' "$(entry test_webhook logs/variant1)" ;;
        2) printf '{%s}\n' "$(entry test_webhook logs/variant2)" ;;
        3) printf '{%s, %s}\n' "$(entry test_webhook logs)" "$(entry test_webhook_2 logs/secondary)" ;;
        *) echo "no variant $1" >&2; return 2 ;;
    esac
}

write() {  # write FILE VARIANT METHOD
    local file="$1" json method="$3"
    json="$(variant "$2")"
    case "$method" in
        atomic)
            local tmp
            tmp="$(dirname "$file")/.$(basename "$file").$$.tmp"
            printf '%s\n' "$json" >"$tmp"
            mv -f "$tmp" "$file" ;;
        inplace)
            echo "$json" >"$file" ;;
        torn)
            local half=$((${#json} / 2))
            printf '%s' "${json:0:half}" >"$file"
            sleep "${TORN_PAUSE:-2}"
            printf '%s\n' "${json:half}" >>"$file" ;;
        *) echo "no method $method" >&2; return 2 ;;
    esac
    echo "$(date +%H:%M:%S.%N | cut -c1-12) variant $2 written ($method)"
}

if [ "${1:-}" = --loop ]; then
    file="$2" interval="$3" stop_file="$4"
    methods=(atomic inplace torn)
    ticks="$(awk -v s="$interval" 'BEGIN { printf "%d", s * 10 }')"
    k=0 parent=$PPID
    while kill -0 "$parent" 2>/dev/null; do
        # Sleep INTERVAL, watching for the stop file.
        for ((t = 0; t < ticks; t++)); do
            [ -e "$stop_file" ] && exit 0
            sleep 0.1
        done
        k=$((k + 1))
        write "$file" $((k % 4)) "${methods[$(((k - 1) % 3))]}"
    done
    exit 0
fi
[ "$#" -eq 3 ] || { echo "usage: $0 FILE VARIANT METHOD | --loop FILE INTERVAL STOP_FILE"; exit 2; }
write "$@"
