"""``twistd cwm`` as a daemon (no ``-n``): the log module's output reaches twistd's log, not /dev/null."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.cwm_process import TWISTD

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_text(path: Path, text: str, timeout: float = 20.0) -> str:
    """Poll ``path`` until it holds ``text`` (a daemon's only output is its log file)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        pause.wait(0.05)
    raise AssertionError(f"{text!r} not in {path} within {timeout} s:\n" + (path.read_text() if path.exists() else ""))


def test_daemonized_log_module_output_goes_to_twistd_log(tmp_path: Path) -> None:
    (tmp_path / "webhooks.json").write_text(json.dumps({"logged": {"module": "log"}}))
    (tmp_path / "connections.json").write_text("{}")
    port = free_port()
    logfile, pidfile = tmp_path / "twistd.log", tmp_path / "twistd.pid"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIG_", "WEBHOOK", "CONNECTOR_"))}
    started = subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "cwm", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--webhooks", "webhooks.json", "--connections", "connections.json"],
        cwd=tmp_path, env=environ, capture_output=True, timeout=30,
    )
    assert started.returncode == 0, started.stderr
    try:
        wait_for_text(logfile, f"starting on {port}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/webhook/logged", body=b'{"seen": "by the operator"}', headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        conn.close()
        content = wait_for_text(logfile, "by the operator")
        (line,) = [line for line in content.splitlines() if "by the operator" in line]
        record = json.loads(line[line.index("{"):])
        assert record["payload"] == {"seen": "by the operator"} and record["webhook_id"] == "logged"
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            pause = threading.Event()
            while pidfile.exists() and time.monotonic() < deadline:
                pause.wait(0.05)
