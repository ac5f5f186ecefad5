#!/usr/bin/env bash
# verify_results.sh EXPECTED DIR [MAX_WAIT=60] [FIRST=1] [ENDPOINT]
# Wait until DIR holds EXPECTED JSON files (save_to_disk writes one per webhook), then check
# that their sequence numbers are exactly FIRST..FIRST+EXPECTED-1, each once, and (with
# ENDPOINT) that every one was posted to that cloud endpoint.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"  # set -euo pipefail, PYTHON, wait_files, count_json_files
expected="$1" dir="$2" max_wait="${3:-60}" first="${4:-1}" endpoint="${5:-}"
if ! wait_files "$dir" "$expected" "$max_wait"; then
    echo "only $(count_json_files "$dir") of $expected webhooks arrived in $dir within ${max_wait}s"
    exit 1
fi
"$PYTHON" - "$dir" "$expected" "$first" "$endpoint" <<'PY'
import json, pathlib, sys
folder, expected, first, endpoint = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
saved = [json.loads(p.read_text()) for p in folder.glob("*.json")]
found = sorted(item["sequence"] for item in saved)
print(f"{len(found)} webhooks delivered to {'/'.join(folder.parts[-3:])}; sequences {found}")
ok = True
if found != list(range(first, first + expected)):
    print(f"expected each of {first}..{first + expected - 1} exactly once")
    ok = False
endpoints = sorted({item.get("channel_endpoint") for item in saved}, key=str)
if endpoint and endpoints != [endpoint]:
    print(f"expected every webhook from {endpoint}, found {endpoints}")
    ok = False
sys.exit(0 if ok else 1)
PY
