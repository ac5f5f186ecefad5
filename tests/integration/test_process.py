"""The real ``twistd -n cwm`` process: routes, status codes, limits, signals and settings."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cwm_process import TWISTD, CwmProcess, start_cwm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class Target:
    """A local HTTP server for http_webhook: records bodies; answers 200 or waits for a release."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.release = threading.Event()
        self.got = threading.Condition()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with target.got:
                    target.bodies.append(body)
                    target.got.notify_all()
                if self.path == "/slow":
                    target.release.wait(30)
                self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GITHUB_SECRET = "It's a Secret to Everybody"


def webhooks_for(target: Target, closed_port: int) -> dict[str, Any]:
    forward = f"http://127.0.0.1:{target.port}"
    allowed = {"allowed_hosts": ["127.0.0.1"]}
    return {
        "logged": {"module": "log"},
        "disk": {"module": "save_to_disk", "module-config": {"path": "out"}},
        "bearer": {"module": "log", "authorization": "Bearer {$CWM_TEST_TOKEN}"},
        "github": {"module": "log", "hmac": {"provider": "github", "secret": GITHUB_SECRET}},
        "forward": {"module": "http_webhook", "module-config": {"url": forward + "/ok", **allowed}},
        "forward_slow": {
            "module": "http_webhook",
            "response_timeout": 0.5,
            "module-config": {"url": forward + "/slow", **allowed},
        },
        "forward_down": {
            "module": "http_webhook",
            "module-config": {"url": f"http://127.0.0.1:{closed_port}/", **allowed},
        },
        "forward_guarded_literal": {"module": "http_webhook", "module-config": {"url": "http://127.0.0.1:9/"}},
        # This machine's own name resolves to a loopback or private address.
        "forward_guarded": {"module": "http_webhook", "module-config": {"url": f"http://{socket.gethostname()}:9/"}},
        "limited": {"module": "log", "rate_limit": {"max_requests": 2, "window_seconds": 60}},
        "schema": {"module": "log", "json_schema": {"type": "object", "required": ["event"]}},
        "raw": {"module": "save_to_disk", "data_type": "blob", "module-config": {"path": "raw"}},
        "xml": {"module": "log", "data_type": "xml"},
        "bad_module": {"module": "nope"},
        "_comment": "upstream's files carry these",
    }


@pytest.fixture
def cwm(tmp_path: Path, target: Target) -> Iterator[CwmProcess]:
    process = start_cwm(
        tmp_path,
        webhooks_for(target, free_port()),
        {"_comment": "none"},
        env={"CWM_TEST_TOKEN": "tok-123"},
    )
    yield process
    process.stop()


def test_status_matrix(cwm: CwmProcess, target: Target, tmp_path: Path) -> None:
    """Every route and status code the receiver answers, against the real process."""
    assert cwm.request("GET", "/")[:2] == (200, {"message": "200 OK"})
    code, health, _ = cwm.request("GET", "/health")
    assert code == 200 and health["status"] == "healthy"
    assert health["components"] == {"config_manager": "healthy", "config_backend": "file"}
    rejected = {r["name"]: r["reason"] for r in health["config"]["rejected"]}
    assert set(rejected) == {"bad_module", "_comment", "forward_guarded_literal"}
    assert "not a public address" in rejected["forward_guarded_literal"]

    assert cwm.post("/webhook/logged")[:2] == (200, {"message": "200 OK"})
    assert cwm.post("/webhook/default/logged")[0] == 200
    assert cwm.post("/webhook/staging/logged")[:2] == (404, {"detail": "Webhook ID not found in namespace 'staging'"})
    assert cwm.post("/webhook/missing")[:2] == (404, {"detail": "Webhook ID not found"})
    assert cwm.post("/webhook/bad_module")[0] == 404
    assert cwm.request("GET", "/nowhere")[:2] == (404, {"detail": "Not Found"})
    code, body, response = cwm.request("GET", "/webhook/logged")
    assert code == 405 and response.getheader("Allow") == "POST"
    assert cwm.post("/webhook/bad.id")[0] == 400
    assert cwm.post("/webhook/bad.ns/logged")[0] == 400
    assert cwm.request("POST", "/webhook/logged", b"{oops", {"Content-Type": "application/json"})[0] == 400

    assert cwm.post("/webhook/bearer")[0] == 401
    assert cwm.post("/webhook/bearer", headers={"Authorization": "Bearer nope"})[0] == 401
    assert cwm.post("/webhook/bearer", headers={"Authorization": "tok-123"})[0] == 401
    assert cwm.post("/webhook/bearer", headers={"Authorization": "Bearer tok-123"})[0] == 200

    body = b'{"zen": "Keep it logically awesome."}'
    signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert cwm.request("POST", "/webhook/github", body, {"X-Hub-Signature-256": signature})[0] == 200
    code, detail, _ = cwm.request("POST", "/webhook/github", body + b" ", {"X-Hub-Signature-256": signature})
    assert code == 401 and "signature" in detail["detail"].lower()

    assert cwm.post("/webhook/limited")[0] == 200
    assert cwm.post("/webhook/limited")[0] == 200
    code, _, response = cwm.post("/webhook/limited")
    assert code == 429 and int(response.getheader("Retry-After")) >= 1

    assert cwm.post("/webhook/schema", {"other": 1})[0] == 400
    assert cwm.post("/webhook/schema", {"event": "push"})[0] == 200
    assert cwm.post("/webhook/xml")[0] == 415

    code, _, _ = cwm.post("/webhook/disk", {"saved": 1})
    assert code == 200
    saved = list((tmp_path / "out").iterdir())
    assert [json.loads(p.read_text()) for p in saved] == [{"saved": 1}]
    assert cwm.request("POST", "/webhook/raw", b"\x00\x01raw", {"Content-Type": "application/octet-stream"})[0] == 200
    assert [p.read_bytes() for p in (tmp_path / "raw").iterdir()] == [b"\x00\x01raw"]

    payload = b'{"exact": "bytes",   "kept": true}'
    assert cwm.request("POST", "/webhook/forward", payload, {"Content-Type": "application/json"})[0] == 200
    assert target.bodies[-1] == payload
    code, body, response = cwm.post("/webhook/forward_down")
    assert code == 503 and response.getheader("Retry-After") and "refused" in body["detail"]
    code, body, _ = cwm.post("/webhook/forward_guarded")
    assert code == 503 and "not allowed" in body["detail"]
    code, body, _ = cwm.post("/webhook/forward_slow")
    assert (code, body["status"]) == (202, "accepted")
    target.release.set()
    cwm.wait_for(r"background delivery done")


def test_request_line_and_header_limits(cwm: CwmProcess) -> None:
    """431 for too many headers or a huge header line; 400 JSON for a bad header value."""
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    answer = cwm.raw(b"POST /webhook/logged HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert answer.endswith(b'{"detail": "Too many request headers (max 100)"}')
    answer = cwm.raw(b"POST /webhook/logged HTTP/1.1\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and b"16384" in answer
    answer = cwm.raw(b"POST /webhook/logged HTTP/1.1\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"CR, LF or NUL" in answer


def test_12_mib_body_is_413_without_reading_it(cwm: CwmProcess) -> None:
    """The 413 comes back after the headers and 64 KiB: the server never waited for the rest."""
    size = 12 * 1024 * 1024
    head = b"POST /webhook/logged HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
    answer = cwm.raw(head + b"x" * 65536)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert rest.endswith(b'{"detail": "Payload too large: 12582912 bytes (max: 10485760)"}')


def test_chunked_body_over_limit_is_413(tmp_path: Path) -> None:
    """A chunked upload is cut with 413 as soon as it passes MAX_BODY_BYTES."""
    process = start_cwm(tmp_path, {"logged": {"module": "log"}}, env={"MAX_BODY_BYTES": "1000"})
    try:
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        answer = process.raw(b"POST /webhook/logged HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"more than 1000 bytes" in answer
    finally:
        process.stop()


def test_sighup_reloads(tmp_path: Path) -> None:
    """SIGHUP re-reads the files without watching enabled."""
    process = start_cwm(tmp_path, {"one": {"module": "log"}})
    try:
        assert process.post("/webhook/two")[0] == 404
        (tmp_path / "webhooks.json").write_text(json.dumps({"two": {"module": "log"}}))
        mark = len(process.lines)
        process.signal(signal.SIGHUP)
        process.wait_for(r"configuration loaded \(SIGHUP\)", start=mark)
        assert process.post("/webhook/two")[0] == 200
        assert process.post("/webhook/one")[0] == 404
    finally:
        process.stop()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    """SIGTERM stops the services and the reactor, then the process, without a traceback."""
    process = start_cwm(tmp_path, {"one": {"module": "log"}})
    assert process.post("/webhook/one")[0] == 200
    # twistd stops the reactor, then re-raises the signal so the exit status says why.
    assert process.stop() in (0, -signal.SIGTERM)
    assert any("Main loop terminated" in line for line in process.lines)
    assert any("Server Shut Down" in line for line in process.lines)
    assert not any("Traceback" in line for line in process.lines)


def test_log_module_output_is_redacted_json(tmp_path: Path) -> None:
    """The log module prints one JSON line per webhook with Authorization redacted."""
    process = start_cwm(tmp_path, {"one": {"module": "log", "authorization": "Bearer t0ps3cret"}})
    try:
        assert process.post("/webhook/one", {"password": "hunter2", "ok": 1}, {"Authorization": "Bearer t0ps3cret"})[0] == 200
        line = process.wait_for(r'^\{.*"webhook_id": "one"').string
        record = json.loads(line)
        assert record["payload"]["ok"] == 1 and record["payload"]["password"] != "hunter2"
        assert "t0ps3cret" not in "\n".join(process.lines)
    finally:
        process.stop()


@pytest.mark.parametrize(
    "variable, value",
    [
        ("CONFIG_RELOAD_DEBOUNCE_SECONDS", "soon"),
        ("MAX_BODY_BYTES", "-5"),
        ("CONFIG_FILE_WATCHING_ENABLED", "maybe"),
        ("CONFIG_BACKEND", "zookeeper"),
        ("PORT", "99999"),
    ],
)
def test_invalid_setting_stops_startup_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    """A bad environment value stops start-up with one line naming it and its value."""
    result = subprocess.run(
        [TWISTD, "--pidfile=", "-n", "cwm"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and repr(value) in lines[0]


def test_cli_beats_env(tmp_path: Path) -> None:
    """--webhooks wins over WEBHOOKS_CONFIG_FILE."""
    (tmp_path / "env.json").write_text(json.dumps({"from_env": {"module": "log"}}))
    process = start_cwm(tmp_path, {"from_cli": {"module": "log"}}, env={"WEBHOOKS_CONFIG_FILE": str(tmp_path / "env.json")})
    try:
        assert process.post("/webhook/from_cli")[0] == 200
        assert process.post("/webhook/from_env")[0] == 404
    finally:
        process.stop()


def test_example_config_serves_from_any_directory(tmp_path: Path) -> None:
    """The README's command works from another directory with the examples/ files."""
    process = CwmProcess(
        tmp_path,
        REPO / "examples" / "webhooks.json",
        REPO / "examples" / "connections.json",
        env={"EXAMPLE_TOKEN": "ex-token"},
    )
    try:
        assert process.post("/webhook/log_everything")[0] == 200
        assert process.post("/webhook/with_token", headers={"Authorization": "Bearer ex-token"})[0] == 200
        assert process.post("/webhook/save_to_disk")[0] == 200
        assert len(list((tmp_path / "data" / "webhooks").iterdir())) == 1
        code, health, _ = process.request("GET", "/health")
        assert health["config"]["rejected"] == [] and health["config"]["webhooks"] == 4
    finally:
        process.stop()
