"""List the webhooks save_to_disk wrote under a directory: one "DIR SEQUENCE" line per file.

DIR is relative to the parent of the directory given (so "logs", "logs/variant1");
SEQUENCE is the file's test_data.sequence, or "?" when the file is not that JSON.
Run with any Python 3 (in the container in Docker mode: `python - /app/logs`).
"""

import json
import os
import sys

root = os.path.abspath(sys.argv[1])
parent = os.path.dirname(root)
for folder, _, names in os.walk(root):
    for name in sorted(names):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                sequence = json.load(f)["test_data"]["sequence"]
        except (OSError, ValueError, KeyError, TypeError):
            sequence = "?"
        print(os.path.relpath(folder, parent), sequence)
