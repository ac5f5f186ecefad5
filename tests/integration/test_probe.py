"""``python -m cwm.probe`` (the images' HEALTHCHECK) as a process, against real servers.

A real ``twistd -n cwm`` on a random loopback port (probed through PORT/HOST,
as in a container), a port nothing listens on, and a small HTTP server on a
UNIX socket answering 503 or 200 (probed through CONNECTOR_STATUS_LISTEN).
Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.integration.cwm_process import CwmProcess, start_cwm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0


def run_probe(which: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "CONNECTOR_STATUS_LISTEN")
    }
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cwm.probe", which],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


@pytest.fixture(scope="module")
def cwm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CwmProcess]:
    directory = tmp_path_factory.mktemp("probe-cwm")
    process = start_cwm(directory, {"hook": {"module": "log", "data_type": "json"}})
    try:
        process.wait_for(r"configuration loaded", WAIT)
        yield process
    finally:
        process.stop()


def test_exit_0_when_cwm_is_ready(cwm: CwmProcess) -> None:
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while True:  # /ready turns 200 once the configuration is in use; bounded
        done = run_probe("cwm", PORT=str(cwm.port), HOST="127.0.0.1")
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        pause.wait(0.1)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert cwm.request("GET", "/ready")[0] == 200
    # A wildcard HOST is probed on the loopback.
    assert run_probe("cwm", PORT=str(cwm.port), HOST="0.0.0.0").returncode == 0


def test_exit_1_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    done = run_probe("cwm", PORT=str(free))
    assert done.returncode == 1
    assert done.stderr.startswith(f"cwm.probe: 127.0.0.1:{free}/ready: ")
    assert done.stderr.count("\n") == 1


class _Answer(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"detail": "Not ready"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        pass  # a UNIX socket client has no address to log


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def unix_server() -> Iterator[tuple[str, type[_Answer]]]:
    directory = tempfile.mkdtemp(prefix="cwm-probe-")  # short: a socket path has ~100 bytes
    path = os.path.join(directory, "status.sock")
    handler = type("Answer", (_Answer,), {})
    server = _UnixHTTPServer(path, handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        shutil.rmtree(directory, ignore_errors=True)


def test_unix_socket_non_2xx_is_exit_1_with_one_line(unix_server: tuple[str, type[_Answer]]) -> None:
    path, handler = unix_server
    done = run_probe("connector", CONNECTOR_STATUS_LISTEN=f"unix:{path}")
    assert done.returncode == 1
    assert done.stderr == f"cwm.probe: {path}/health answered 503\n"
    handler.status = 200
    done = run_probe("connector", CONNECTOR_STATUS_LISTEN=f"unix:{path}:mode=660")
    assert (done.returncode, done.stderr) == (0, "")


def test_setting_errors_exit_1() -> None:
    done = run_probe("connector")
    assert done.returncode == 1
    assert "CONNECTOR_STATUS_LISTEN is not set" in done.stderr
    assert run_probe("nothing").returncode == 1
