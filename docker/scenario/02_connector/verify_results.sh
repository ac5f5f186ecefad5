#!/usr/bin/env bash
# verify_results.sh EXPECTED DIR [MAX_WAIT=60]: wait until DIR holds EXPECTED JSON files
# (save_to_disk writes one per webhook), then check the sequence numbers 1..EXPECTED,
# each exactly once.
set -euo pipefail
SCENARIO_DIR="$(cd "$(dirname "$0")" && pwd)"
expected="$1" dir="$2" max_wait="${3:-60}"
python="${CWM_VENV:-$SCENARIO_DIR/../../../.venv}/bin/python"
[ -x "$python" ] || python=python3
deadline=$((SECONDS + max_wait))
count() { if [ -d "$dir" ]; then find "$dir" -maxdepth 1 -name '*.json' | wc -l | tr -d ' '; else echo 0; fi; }
until [ "$(count)" -ge "$expected" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "only $(count) of $expected webhooks arrived in $dir within ${max_wait}s"
        exit 1
    fi
    sleep 0.2
done
"$python" - "$dir" "$expected" <<'PY'
import json, pathlib, sys
folder, expected = pathlib.Path(sys.argv[1]), int(sys.argv[2])
found = sorted(json.loads(p.read_text())["sequence"] for p in folder.glob("*.json"))
print(f"{len(found)} webhooks delivered; sequences {found}")
if found != list(range(1, expected + 1)):
    print(f"expected each of 1..{expected} exactly once")
    sys.exit(1)
PY
