#!/usr/bin/env bash
# verify_results.sh EXPECTED DIR [MAX_WAIT=60]: wait until DIR holds EXPECTED JSON files
# (save_to_disk writes one per webhook), then check the sequence numbers 1..EXPECTED,
# each exactly once.
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
source "$SCENARIO_DIR/../lib.sh"  # set -euo pipefail, PYTHON, wait_files, count_json_files
expected="$1" dir="$2" max_wait="${3:-60}"
if ! wait_files "$dir" "$expected" "$max_wait"; then
    echo "only $(count_json_files "$dir") of $expected webhooks arrived in $dir within ${max_wait}s"
    exit 1
fi
"$PYTHON" - "$dir" "$expected" <<'PY'
import json, pathlib, sys
folder, expected = pathlib.Path(sys.argv[1]), int(sys.argv[2])
found = sorted(json.loads(p.read_text())["sequence"] for p in folder.glob("*.json"))
print(f"{len(found)} webhooks delivered; sequences {found}")
if found != list(range(1, expected + 1)):
    print(f"expected each of 1..{expected} exactly once")
    sys.exit(1)
PY
