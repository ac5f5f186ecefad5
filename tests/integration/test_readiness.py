"""``/ready`` and ``/health`` of a real ``twistd -n cwm`` while its backends stop and come back.

Each backend is a private server of the test: etcd (stopped, started again on
its data dir and port), redis-server (down at start-up, killed, started again
on its port and directory), the Vault stand-in (stopped, started again on its
port). Readiness must follow each one; liveness must stay 200 throughout.
Every wait is on the answer of ``/ready``, bounded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cwm_process import CwmProcess, start_cwm
from tests.integration.etcd_server import EtcdServer
from tests.integration.redis_server import RedisServer
from tests.integration.test_etcd_receiver import start_cwm as start_etcd_cwm
from tests.integration.test_vault_secrets import VaultProcess, seed, vault, vault_env  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

WAIT = 30.0


def ready(process: CwmProcess) -> tuple[int, dict[str, Any], Any]:
    code, body, response = process.request("GET", "/ready")
    return code, body, response


def wait_ready(process: CwmProcess, want: int, timeout: float = WAIT) -> tuple[dict[str, Any], Any]:
    """Poll /ready until it answers ``want``; checks /health is 200 on every round."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        code, body, response = ready(process)
        assert process.request("GET", "/health")[0] == 200, "liveness must not follow readiness"
        if code == want:
            return body, response
        if time.monotonic() > deadline:
            raise AssertionError(f"/ready did not answer {want} within {timeout} s; last: {code} {body}")
        pause.wait(0.05)


def assert_not_ready(body: dict[str, Any], response: Any, component: str, state: str) -> None:
    assert body["status"] == "not_ready"
    assert body["components"][component] == state, body
    assert list(body["failing"]) == [component], body
    assert body["detail"].startswith(f"Not ready: {component} ("), body
    assert response.getheader("Retry-After") == "5"


def test_redis_down_at_start_then_up_then_killed_then_back(tmp_path: Path, fresh_redis: RedisServer) -> None:
    """Webhook Connect: /ready is 503 while its Redis is unreachable (from the start, or later), 200 once back."""
    fresh_redis.stop()
    process = start_cwm(
        tmp_path,
        {"plain": {"module": "log"}},
        env={"WEBHOOK_CONNECT_ENABLED": "true", "WEBHOOK_CONNECT_REDIS_URL": fresh_redis.url},
    )
    try:
        body, response = wait_ready(process, 503)
        assert_not_ready(body, response, "webhook_connect", "redis_unreachable")
        assert body["components"]["config"] == "ready"
        fresh_redis.start()
        body, _ = wait_ready(process, 200)
        assert body["components"] == {"webhook_connect": "ready", "config": "ready"}
        fresh_redis.kill()
        body, response = wait_ready(process, 503)
        assert_not_ready(body, response, "webhook_connect", "redis_unreachable")
        fresh_redis.start()
        wait_ready(process, 200)
    finally:
        process.stop()


def test_etcd_stopped_then_started(tmp_path: Path, fresh_etcd: Callable[..., EtcdServer]) -> None:
    """etcd backend: /ready is 200 once the watch is synced, 503 while etcd is away, 200 after it is back."""
    etcd = fresh_etcd()
    process = start_etcd_cwm(tmp_path, etcd.address, "/ready/")
    try:
        body, _ = wait_ready(process, 200)
        assert body["components"] == {"config": "ready", "etcd": "ready"}
        etcd.stop()
        body, response = wait_ready(process, 503)
        assert_not_ready(body, response, "etcd", "disconnected")
        assert body["failing"]["etcd"].startswith("etcd unreachable")
        etcd.start()
        wait_ready(process, 200, timeout=90.0)  # the watch's backoff reaches 60 s at most
    finally:
        process.stop()


def test_etcd_down_at_start_is_not_ready(tmp_path: Path, fresh_etcd: Callable[..., EtcdServer]) -> None:
    """Before the first snapshot neither the configuration nor etcd is ready."""
    etcd = fresh_etcd()
    etcd.stop()
    process = start_etcd_cwm(tmp_path, etcd.address, "/ready/")
    try:
        code, body, response = ready(process)
        assert code == 503 and response.getheader("Retry-After") == "5"
        assert body["components"] == {"config": "not_loaded", "etcd": "connecting"}
        etcd.start()
        wait_ready(process, 200, timeout=90.0)
    finally:
        process.stop()


def test_vault_stopped_then_started(tmp_path: Path, vault: Callable[[dict[str, Any]], VaultProcess]) -> None:
    """Vault referenced by an entry: /ready is 503 once a field in use cannot be read, 200 once Vault is back."""
    v = vault(seed({"secret": 2}))
    v.put("secret", "app/auth", {"token": "never-shown-token"})
    (tmp_path / "webhooks.json").write_text(
        json.dumps({"guarded": {"module": "log", "authorization": "Bearer {$vault:app/auth#token}"}})
    )
    (tmp_path / "connections.json").write_text("{}")
    process = CwmProcess(
        tmp_path, tmp_path / "webhooks.json", tmp_path / "connections.json", env=vault_env(v, "secret", 2)
    )
    try:
        body, _ = wait_ready(process, 200)
        assert body["components"] == {"config": "ready", "vault": "ready"}
        v.stop()
        body, response = wait_ready(process, 503)  # after the cached value's 2 s
        assert_not_ready(body, response, "vault", "unreachable")
        assert "app/auth#token" in body["failing"]["vault"]
        assert "never-shown-token" not in json.dumps(body)
        v.start()
        wait_ready(process, 200, timeout=90.0)  # the read's retry backs off to 60 s at most
    finally:
        process.stop()
