"""``twistd cwm`` and ``twistd cwm-connector`` as daemons (no ``-n``): the log module's output reaches twistd's log, not /dev/null."""

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

from tests.integration.connector_env import (
    Processes,
    connector_env,
    hook,
    procs,  # noqa: F401  (fixture)
    send,
)
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
        stop_daemon(pidfile)


def test_daemonized_connector_log_module_output_goes_to_twistd_log(procs: Processes) -> None:
    """``twistd cwm-connector`` without ``-n``, module mode with the log module: the webhook is in its log file."""
    channel, token = "daemon-channel", "daemon_secret_token_123"
    cloud = procs.cloud.start({"to-daemon": hook(channel, token)})
    send(cloud, "to-daemon", [1], seen="by the connector's operator")
    workdir = procs.tmp_path / "daemon-connector"
    workdir.mkdir()
    (workdir / "webhooks.json").write_text(json.dumps({"to-daemon": {"module": "log"}}))
    logfile, pidfile = workdir / "twistd.log", workdir / "twistd.pid"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIG_", "WEBHOOK", "CONNECTOR_"))}
    environ.update(connector_env(cloud, channel, token, "sse", CONNECTOR_WEBHOOKS_CONFIG="webhooks.json"))
    started = subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "cwm-connector"],
        cwd=workdir, env=environ, capture_output=True, timeout=30,
    )
    assert started.returncode == 0, started.stderr
    try:
        content = wait_for_text(logfile, "by the connector's operator", timeout=30)
        (line,) = [line for line in content.splitlines() if "by the connector's operator" in line]
        record = json.loads(line[line.index("{"):])
        assert record["payload"]["sequence"] == 1 and record["webhook_id"] == "to-daemon"
        wait_for_text(logfile, ": delivered")
    finally:
        stop_daemon(pidfile)


def stop_daemon(pidfile: Path) -> None:
    """SIGTERM the daemon named in ``pidfile``; wait (bounded) until twistd removes the file."""
    if not pidfile.exists():
        return
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 15
    pause = threading.Event()
    while pidfile.exists() and time.monotonic() < deadline:
        pause.wait(0.05)
