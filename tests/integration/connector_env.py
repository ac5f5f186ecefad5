"""Real processes for the connector's tests: ``twistd -n cwm-connector``, local cwm targets,
and a scripted HTTP target. Every wait is on output or a request, with a bound."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cwm_process import CwmProcess, TwistdProcess, start_cwm
from tests.integration.redis_server import RedisServer
from tests.integration.test_connect_cloud import ADMIN, ADMIN_HEADERS, Cloud, hook

__all__ = ["ADMIN", "ADMIN_HEADERS", "Cloud", "hook"]

WAIT = 30.0
PROTOCOLS = ("websocket", "sse", "long_poll")


class ConnectorProcess(TwistdProcess):
    """One ``twistd -n cwm-connector`` with its status page on a random loopback port."""

    def __init__(self, workdir: Path, env: Mapping[str, str], args: Sequence[str] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, ["cwm-connector", "--status-listen", "tcp:0:interface=127.0.0.1", *args], env)
        self.status_port = int(self.wait_for(r"Site starting on (\d+)", WAIT).group(1))

    def count(self, pattern: str) -> int:
        import re

        compiled = re.compile(pattern)
        return sum(1 for line in list(self.lines) if compiled.search(line))

    def wait_count(self, pattern: str, n: int, timeout: float = WAIT) -> None:
        """Until ``n`` output lines match ``pattern``."""
        self.wait_until(lambda: self.count(pattern) >= n or self.process.poll() is not None, timeout)
        assert self.count(pattern) >= n, f"{self.count(pattern)} lines match {pattern!r}, expected {n}:\n" + "\n".join(self.lines[-40:])

    def wait_connected(self, n: int = 1, timeout: float = WAIT) -> None:
        self.wait_count(r"connected to the cloud over", n, timeout)

    def wait_delivered(self, n: int, timeout: float = WAIT) -> None:
        self.wait_count(r": delivered$", n, timeout)

    def status(self) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=10)
        try:
            conn.request("GET", "/status")
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def health(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=10)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def counters(self) -> dict[str, int]:
        _, body = self.status()
        counters: dict[str, int] = body["counters"]
        return counters


def connector_env(cloud: CwmProcess, channel: str, token: str, protocol: str, **extra: str) -> dict[str, str]:
    env = {
        "CONNECTOR_CLOUD_URL": f"http://127.0.0.1:{cloud.port}",
        "CONNECTOR_CHANNEL": channel,
        "CONNECTOR_TOKEN": token,
        "CONNECTOR_PROTOCOL": protocol,
        "CONNECTOR_ID": f"test-{protocol}",
        "CONNECTOR_RECONNECT_DELAY": "0.2",
        "CONNECTOR_MAX_RECONNECT_DELAY": "1",
    }
    env.update(extra)
    return env


class LocalCwm:
    """A local ``twistd -n cwm`` whose webhooks save to disk under ``logs/<id>``."""

    def __init__(self, directory: Path, ids: Sequence[str] = ("local-receiver",),
                 extra: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        webhooks: dict[str, Any] = {
            webhook_id: {"data_type": "json", "module": "save_to_disk", "module-config": {"path": f"logs/{webhook_id}"}}
            for webhook_id in ids
        }
        webhooks.update(extra or {})
        self.process = start_cwm(directory, webhooks, env=dict(env or {}))
        self.process.wait_for(r"configuration loaded")
        self.port = self.process.port
        self.url = f"http://127.0.0.1:{self.port}"

    def accepted(self, webhook_id: str = "local-receiver") -> int:
        return sum(1 for line in list(self.process.lines) if f"webhook default/{webhook_id} 200" in line)

    def wait_accepted(self, n: int, webhook_id: str = "local-receiver", timeout: float = WAIT) -> None:
        self.process.wait_until(lambda: self.accepted(webhook_id) >= n, timeout)

    def saved(self, webhook_id: str = "local-receiver") -> list[Any]:
        folder = self.directory / "logs" / webhook_id
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.iterdir()) if p.suffix == ".json"]

    def sequences(self, webhook_id: str = "local-receiver") -> list[int]:
        return sorted(item["sequence"] for item in self.saved(webhook_id))

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Seen:
    """One request the scripted target received."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedTarget:
    """An HTTP server on a random loopback port answering from a script of statuses.

    ``script`` is consumed one status per request; when it runs out, ``then``
    is answered. A request while ``hold`` is set waits until ``release()``.
    """

    script: list[int] = field(default_factory=list)
    then: int = 200
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._held = threading.Event()
        self._held.set()
        self.waiting = 0
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with target._changed:
                    target.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = target.script.pop(0) if target.script else target.then
                    target.waiting += 1
                    target._changed.notify_all()
                target._held.wait(60)
                with target._changed:
                    target.waiting -= 1
                    target._changed.notify_all()
                answer = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def hold(self) -> None:
        self._held.clear()

    def release(self) -> None:
        self._held.set()

    def wait_seen(self, n: int, timeout: float = WAIT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.seen) >= n, timeout):
                raise AssertionError(f"the target saw {len(self.seen)} requests, expected {n}")

    def wait_waiting(self, n: int, timeout: float = WAIT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.waiting >= n, timeout):
                raise AssertionError(f"{self.waiting} requests held, expected {n}")

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def send(cloud: CwmProcess, webhook_id: str, sequences: range | Sequence[int], **extra: Any) -> None:
    """POST one JSON webhook per sequence number; each must be accepted (200)."""
    for i in sequences:
        status, body, _ = cloud.post(f"/webhook/{webhook_id}", {"event": "test_event", "sequence": i, **extra})
        assert status == 200, (status, body)


def channel_stats(cloud: CwmProcess, channel: str) -> dict[str, Any]:
    status, body, _ = cloud.request("GET", f"/admin/webhook-connect/channels/{channel}/stats", headers=ADMIN_HEADERS)
    assert status == 200, body
    stats: dict[str, Any] = body
    return stats


def settled_stats(cloud: CwmProcess, channel: str, delivered: int, timeout: float = WAIT) -> dict[str, Any]:
    """The channel's stats once the cloud has recorded ``delivered`` acks (an ack frame or
    POST can still be on its way when the connector logs the delivery)."""
    stats: dict[str, Any] = {}

    def done() -> bool:
        nonlocal stats
        stats = channel_stats(cloud, channel)
        return bool(stats["messages_delivered"] >= delivered)

    until(done, timeout, lambda: f"stats never reached {delivered} delivered: {stats}")
    return stats


def until(predicate: Callable[[], bool], timeout: float = WAIT, why: Callable[[], str] = lambda: "") -> None:
    """Re-check ``predicate`` every 50 ms until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s {why()}")
        pause.wait(0.05)


def dead_letters(cloud: CwmProcess, channel: str) -> list[dict[str, Any]]:
    status, body, _ = cloud.request("GET", f"/admin/webhook-connect/channels/{channel}/dead-letters", headers=ADMIN_HEADERS)
    assert status == 200, body
    messages: list[dict[str, Any]] = body["messages"]
    return messages


class Processes:
    """Everything a test started, stopped at its end (connectors first)."""

    def __init__(self, tmp_path: Path, redis: RedisServer, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.cloud = Cloud(tmp_path / "cloud", redis, prefix)
        (tmp_path / "cloud").mkdir()
        self.connectors: list[ConnectorProcess] = []
        self.locals: list[LocalCwm] = []
        self.targets: list[ScriptedTarget] = []

    def connector(self, env: Mapping[str, str], name: str = "connector", args: Sequence[str] = ()) -> ConnectorProcess:
        process = ConnectorProcess(self.tmp_path / name, env, args)
        self.connectors.append(process)
        return process

    def local(self, name: str = "local", **kwargs: Any) -> LocalCwm:
        local = LocalCwm(self.tmp_path / name, **kwargs)
        self.locals.append(local)
        return local

    def target(self, script: Sequence[int] = (), then: int = 200) -> ScriptedTarget:
        target = ScriptedTarget(list(script), then)
        self.targets.append(target)
        return target

    def stop(self) -> None:
        for target in self.targets:
            target.release()
        for connector in self.connectors:
            if connector.process.poll() is None:
                connector.stop()
        for target in self.targets:
            target.stop()
        for local in self.locals:
            local.stop()
        self.cloud.stop()


@pytest.fixture
def procs(tmp_path: Path, redis: RedisServer, redis_prefix: str) -> Iterator[Processes]:
    processes = Processes(tmp_path, redis, redis_prefix)
    try:
        yield processes
    finally:
        processes.stop()
