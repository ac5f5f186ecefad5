"""A delivery target that fails on purpose: the first N requests get 500, the rest 200.

Scenario 04's retry test points a connector at it; a cwm cannot be told to fail on demand.
Every request (failed or not) is appended to a JSON-lines file, one object per line:
``{"n", "status", "path", "attempt", "message_id", "webhook_id", "body"}``, written before
the answer is sent, so a delivery the connector saw succeed is already on disk.
``GET /health`` answers 200 and is not counted.

    python flaky_target.py [--host 0.0.0.0] [--port 8000] [--fail-first 4] [--record logs/received.jsonl]

Standard library only: it runs in the cwm image (``python flaky_target.py``) or with any python3.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
from typing import Any


class FlakyTarget(http.server.ThreadingHTTPServer):
    """Counts requests and appends what it answered to the record file."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], fail_first: int, fail_status: int, record: str) -> None:
        super().__init__(address, FlakyRequest)
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.record = record
        self.requests = 0
        self._lock = threading.Lock()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """The status for this request, once it is recorded."""
        try:
            document: Any = json.loads(body)
        except ValueError:
            document = body.decode("utf-8", "replace")
        with self._lock:
            self.requests += 1
            status = self.fail_status if self.requests <= self.fail_first else 200
            entry = {
                "n": self.requests,
                "status": status,
                "path": path,
                "attempt": headers.get("x-webhook-attempt"),
                "message_id": headers.get("x-webhook-message-id"),
                "webhook_id": headers.get("x-webhook-id"),
                "body": document,
            }
            with open(self.record, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        return status


class FlakyRequest(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyTarget

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/health":
            self._reply(200, {"status": "ok", "requests": self.server.requests})
        else:
            self._reply(404, {"detail": "not found"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._reply(self.server.answer(self.path, headers, body), None)

    do_PUT = do_PATCH = do_POST

    def _reply(self, status: int, document: Any) -> None:
        payload = json.dumps(document if document is not None else {"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("flaky-target: " + (format % args) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fail-first", type=int, default=int(os.environ.get("FLAKY_FAIL_FIRST", "4")))
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--record", default="logs/received.jsonl")
    options = parser.parse_args(argv)
    if os.path.dirname(options.record):
        os.makedirs(os.path.dirname(options.record), exist_ok=True)
    server = FlakyTarget((options.host, options.port), options.fail_first, options.fail_status, options.record)
    # As PID 1 in a container, SIGTERM has no default action: leave on it explicitly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stderr.write(f"flaky-target: listening on {options.host}:{server.server_address[1]}, "
                     f"{options.fail_first} x {options.fail_status} first\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
