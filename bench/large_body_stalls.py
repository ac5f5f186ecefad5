"""How long does a 10 MB JSON POST hold up a concurrent GET /health, and why?

Starts a real ``twistd -n cwm`` per run (one webhook with a JSON schema and
either ``save_to_disk`` or ``log``), warms it up, then sends ``GET /health``
over and over on one keep-alive connection while one 10 MB JSON body is
POSTed, and reports the worst /health latency during the POST.

With ``--trace-gc`` the twistd process also records every garbage
collection (generation, duration, objects collected, thread) through
``gc.callbacks`` and, for full collections, how many objects generation 2
held afterwards; the report lists the collections that overlap the worst
probe. Tracing costs a little itself: figures for the bound come from runs
without it.

Usage::

    .venv/bin/python bench/large_body_stalls.py --runs 5 [--trace-gc] [--env NAME=VALUE ...]
        [--results bench/results/large-body-stalls-DATE.md --label "after"]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))

# Runs inside twistd when --trace-gc is given: one entry per collection, kept
# in memory (no I/O inside the callback, which may run on any thread) and
# written to a file on SIGUSR2.
_TRACER = r"""
import gc, json, signal, sys, threading, time
_events = []
_started = [0.0]
def _trace(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    held = len(gc.get_objects(2)) if info["generation"] == 2 and _COUNT else None
    _events.append((time.time() - took, took, info["generation"], info["collected"], held,
                    threading.current_thread().name))
def _dump(signum, frame):
    with open(_out + ".tmp", "w") as f:
        json.dump(_events, f)
    import os
    os.replace(_out + ".tmp", _out)
_COUNT = bool(int(sys.argv.pop(1)))
_out = sys.argv.pop(1)
signal.signal(signal.SIGUSR2, _dump)
gc.callbacks.append(_trace)
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""


def ten_mb_json() -> bytes:
    """The body tests/integration/test_reactor_stalls.py posts (about 130,000 small records)."""
    items = []
    size = 0
    i = 0
    while size < 9_900_000:
        item = json.dumps({"id": i, "name": f"user{i}", "tags": ["a", "b", "c"], "score": i * 1.5, "on": True})
        items.append(item)
        size += len(item) + 1
        i += 1
    return ('{"event": "bulk", "items": [' + ",".join(items) + "]}").encode()


class Probe:
    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, float]] = []  # (wall time sent, latency)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            sent, started = time.time(), time.perf_counter()
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            self.samples.append((sent, time.perf_counter() - started))
        conn.close()


def one_run(module: str, body: bytes, trace: bool, count: bool, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        webhooks = {
            "bulk": {
                "module": module,
                "module-config": {"path": "out"} if module == "save_to_disk" else {},
                "json_schema": {"type": "object", "required": ["event"], "properties": {"items": {"type": "array"}}},
            }
        }
        (workdir / "webhooks.json").write_text(json.dumps(webhooks))
        (workdir / "connections.json").write_text("{}")
        trace_file = workdir / "gc.json"
        args = ["--pidfile=", "-n", "--logfile=twistd.log", "cwm", "--listen", "tcp:0:interface=127.0.0.1",
                "--webhooks", "webhooks.json", "--connections", "connections.json"]
        command = [sys.executable, "-c", _TRACER, str(int(count)), str(trace_file), *args] if trace else [TWISTD, *args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIG_", "WEBHOOK", "CONNECTOR_"))}
        environ.update(env)
        process = subprocess.Popen(command, cwd=workdir, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            log = workdir / "twistd.log"
            deadline = time.monotonic() + 30
            port = None
            while port is None:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("twistd did not start:\n" + (log.read_text() if log.exists() else ""))
                found = re.search(r"LimitedSite starting on (\d+)", log.read_text() if log.exists() else "")
                port = int(found.group(1)) if found else None
                threading.Event().wait(0.05)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/webhook/bulk", body=b'{"event": "warm"}', headers={"Content-Type": "application/json"})
            assert conn.getresponse().read() is not None
            probe = Probe(port)
            probe.thread.start()
            while len(probe.samples) < 5:
                threading.Event().wait(0.01)
            before = len(probe.samples)
            posted = time.time()
            conn.request("POST", "/webhook/bulk", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            answered = time.time()
            # What follows the answer (the log line written, the payload freed) counts
            # too; with a small body the probes run this long (about the 10 MB POST's time).
            if len(body) < 1000:
                threading.Event().wait(2.5)
            threading.Event().wait(1.0)
            probe.stop.set()
            probe.thread.join(10)
            conn.close()
            during = probe.samples[before:]
            if trace:
                process.send_signal(signal.SIGUSR2)
                deadline = time.monotonic() + 30
                while not trace_file.exists() and time.monotonic() < deadline:
                    threading.Event().wait(0.05)
        finally:
            process.terminate()
            process.wait(30)
        worst_sent, worst = max(during, key=lambda s: s[1])
        result: dict[str, Any] = {
            "module": module,
            "status": response.status,
            "post_s": answered - posted,
            "probes": len(during),
            "worst_ms": worst * 1000,
            "p99_ms": sorted(s[1] for s in during)[int(len(during) * 0.99)] * 1000,
            "slow_at_s": [[round(t - posted, 2), round(l * 1000)] for t, l in during if l > 0.02],
            "answered_at_s": round(answered - posted, 2),
        }
        if trace:
            events = json.loads(trace_file.read_text())
            window = [e for e in events if posted - 0.1 <= e[0] <= answered + 1.0]
            result["collections"] = {
                g: sum(1 for e in window if e[2] == g) for g in (0, 1, 2)
            }
            result["full"] = [
                {"ms": round(e[1] * 1000, 1), "collected": e[3], "gen2_objects": e[4], "thread": e[5]}
                for e in window if e[2] == 2
            ]
            result["young_worst_ms"] = round(max((e[1] for e in window if e[2] < 2), default=0) * 1000, 2)
            result["overlapping_worst"] = [
                {"gen": e[2], "ms": round(e[1] * 1000, 1), "thread": e[5]}
                for e in window if e[0] < worst_sent + worst and e[0] + e[1] > worst_sent and e[1] >= 0.001
            ]
            result["worst_at_s"] = round(worst_sent - posted, 2)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modules", default="save_to_disk,log")
    parser.add_argument("--trace-gc", action="store_true")
    parser.add_argument("--count-objects", action="store_true", help="with --trace-gc: objects in gen 2 after each full collection (slow)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for twistd")
    parser.add_argument("--small", action="store_true", help="POST a 20-byte body instead: the floor the machine's load sets")
    parser.add_argument("--results", help="append a table to this markdown file")
    parser.add_argument("--label", default="")
    options = parser.parse_args()
    env = dict(item.split("=", 1) for item in options.env)
    body = b'{"event": "small"}' if options.small else ten_mb_json()
    rows: dict[str, list[dict[str, Any]]] = {}
    for _ in range(options.runs):
        for module in options.modules.split(","):
            result = one_run(module, body, options.trace_gc, options.count_objects, env)
            print(json.dumps(result), flush=True)
            rows.setdefault(module, []).append(result)
    lines = [
        f"### {options.label or 'run'} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {os.getloadavg()[0]:.2f}, {options.runs} runs{', gc traced' if options.trace_gc else ''})",
        "",
        "| module | worst /health per run (ms) | max | median | probes per run | POST (s) |",
        "|---|---|---|---|---|---|",
    ]
    for module, results in rows.items():
        worst = [r["worst_ms"] for r in results]
        lines.append(
            f"| {module} | {', '.join(f'{w:.1f}' for w in worst)} | {max(worst):.1f} | {statistics.median(worst):.1f} "
            f"| {min(r['probes'] for r in results)}-{max(r['probes'] for r in results)} "
            f"| {statistics.median(r['post_s'] for r in results):.2f} |"
        )
    print("\n".join(lines))
    if options.results:
        with open(options.results, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
