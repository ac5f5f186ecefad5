#!/usr/bin/env bash
# Webhook Connect benchmark (one SSE client, then one WebSocket client): see
# bench/connect_bench.py and bench/README.rst.
#
#   bash bench/connect.sh
#   MESSAGES=20000 ROUNDS=5 CONCURRENCY=32 bash bench/connect.sh --keep-tmp
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x .venv/bin/python ]] || { echo "[connect-bench] no .venv: run 'make install' first" >&2; exit 1; }
exec .venv/bin/python bench/connect_bench.py "$@"
