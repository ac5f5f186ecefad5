#!/usr/bin/env bash
# verify_results.sh RECORD LISTING [DIR...]
# RECORD: "SEQUENCE STATUS WEBHOOK" per POST (send_webhooks.sh); LISTING: "DIR SEQUENCE"
# per saved file (list_saved.py). Exits 1 unless every POST to test_webhook got 200
# (it is in every variant of the config), every sequence that got 200 is in exactly
# one file, no file holds anything else, and (when DIRs are given) every file is in
# one of them. test_webhook_2 exists only in variant 3: 404 is a fine answer for it.
set -euo pipefail
python="${PYTHON:-python3}"
"$python" - "$@" <<'PY'
import collections, sys

record, listing, allowed = sys.argv[1], sys.argv[2], set(sys.argv[3:])
sent = [line.split() for line in open(record) if line.strip()]
saved = [line.split() for line in open(listing) if line.strip()]
problems = []

refused = [s for s in sent if s[1] != "200" and not (s[2] == "test_webhook_2" and s[1] == "404")]
if refused:
    problems.append(f"{len(refused)} of {len(sent)} POSTs did not get 200, e.g. "
                    + ", ".join(f"#{s[0]} {s[2]} -> {s[1]}" for s in refused[:10]))
accepted = {int(s[0]) for s in sent if s[1] == "200"}
unreadable = [d for d, seq in saved if seq == "?"]
if unreadable:
    problems.append(f"{len(unreadable)} saved files are not the JSON that was sent")
count = collections.Counter(int(seq) for _, seq in saved if seq != "?")
missing = sorted(accepted - count.keys())
if missing:
    problems.append(f"{len(missing)} accepted webhooks have no file: {missing[:20]}")
twice = sorted(seq for seq, n in count.items() if n > 1)
if twice:
    problems.append(f"{len(twice)} webhooks were saved more than once: {twice[:20]}")
unexpected = sorted(count.keys() - accepted)
if unexpected:
    problems.append(f"{len(unexpected)} files hold webhooks that did not get 200: {unexpected[:20]}")
if allowed:
    elsewhere = sorted({d for d, _ in saved} - allowed)
    if elsewhere:
        problems.append(f"files in unexpected directories: {elsewhere}")

per_dir = collections.Counter(d for d, _ in saved)
print(f"{len(sent)} POSTs, {len(accepted)} got 200; {len(saved)} files: "
      + ", ".join(f"{d} {n}" for d, n in sorted(per_dir.items())))
for problem in problems:
    print("problem:", problem)
sys.exit(1 if problems else 0)
PY
