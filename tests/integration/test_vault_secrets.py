"""Vault references end to end: a real ``twistd -n cwm``, the Vault stand-in as a process, real etcd.

Seed scenario 06 (etcd + Vault), seed compose/vault (file backend), rotation
with and without a config change, Vault going away and coming back, AppRole,
KV v1. Every wait is on an observable state with a bound.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cwm.etcd.client import EtcdClient, EtcdOptions
from tests.integration.cwm_process import CwmProcess
from tests.integration.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

ROOT = "root"
WAIT = 20.0
REPO = Path(__file__).resolve().parents[2]


class VaultProcess:
    """``python -m tests.vault_standin`` on a loopback port; stop() and start() keep the port."""

    def __init__(self, workdir: Path, seed: dict[str, Any]) -> None:
        self.seed_file = workdir / "vault-seed.json"
        self.seed_file.write_text(json.dumps(seed))
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.vault_standin", "--port", str(self.port), "--seed", str(self.seed_file)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self._first_port_line()), daemon=True)
        reader.start()
        reader.join(WAIT)
        if not found or not found[0]:
            self.stop()
            raise AssertionError("the Vault stand-in did not report its port")
        self.port = int(found[0])

    def _first_port_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("PORT "):
                return line.split()[1]
        return ""

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        self.process = None

    def put(self, mount: str, path: str, data: dict[str, Any], kv_version: int = 2) -> None:
        """Write a secret with Vault's own HTTP API (what ``vault kv put`` sends)."""
        url = f"/v1/{mount}/data/{path}" if kv_version == 2 else f"/v1/{mount}/{path}"
        body = {"data": data} if kv_version == 2 else data
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            connection.request(
                "POST", url, json.dumps(body), {"X-Vault-Token": ROOT, "Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            assert response.status in (200, 204), response.status
        finally:
            connection.close()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], VaultProcess]]:
    started: list[VaultProcess] = []

    def start(seed: dict[str, Any]) -> VaultProcess:
        v = VaultProcess(tmp_path, seed)
        started.append(v)
        return v

    yield start
    for v in started:
        v.stop()


def seed(mounts: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {"mounts": mounts, "tokens": {ROOT: {"ttl": None}}, **extra}


def health(process: CwmProcess) -> dict[str, Any]:
    code, body, _ = process.request("GET", "/health")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


def eventually(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy: bounded, with the last value in the error."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        pause.wait(0.02)


def status_of(process: CwmProcess, path: str, token: str | None = None, body: bytes = b'{"event":"x"}') -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    code, _, _ = process.request("POST", path, body, headers)
    return code


def vault_env(v: VaultProcess, mount: str, ttl: float, **extra: str) -> dict[str, str]:
    env = {
        "SECRETS_BACKEND": "vault",
        "VAULT_ADDR": v.addr,
        "VAULT_TOKEN": ROOT,
        "VAULT_MOUNT_POINT": mount,
        "VAULT_KV_VERSION": "2",
        "VAULT_CACHE_TTL_SECONDS": str(ttl),
        "VAULT_TIMEOUT_SECONDS": "2",
    }
    env.update(extra)
    return env


def start_file_cwm(tmp_path: Path, webhooks: dict[str, Any], env: dict[str, str]) -> CwmProcess:
    (tmp_path / "webhooks.json").write_text(json.dumps(webhooks))
    (tmp_path / "connections.json").write_text("{}")
    process = CwmProcess(tmp_path, tmp_path / "webhooks.json", tmp_path / "connections.json", env=env)
    eventually("configuration loaded", lambda: health(process)["components"]["config_manager"] != "not_configured")
    return process


# --- seed scenario 06: etcd + Vault ---------------------------------------------------------------


def test_scenario_06_vault_etcd_secrets(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, vault: Callable[[dict[str, Any]], VaultProcess]
) -> None:
    """401/401/200 on the bearer, 401/200 on the HMAC, the legacy env token, rotation by re-publishing."""
    v = vault(seed({"webhooks": 2}))
    v.put("webhooks", "app/auth", {"webhook_token": "vault_auth_token_v1", "hmac_secret": "vault_hmac_secret_123"})
    v.put("webhooks", "app/connections", {"redis_password": "vault_redis_password_123"})
    (tmp_path / "unused.json").write_text("{}")
    # TTL 0 (no cache, no timer): the rotation below can only come from re-publishing the keys.
    env = vault_env(
        v,
        "webhooks",
        0,
        CONFIG_BACKEND="etcd",
        ETCD_HOST=etcd.address[0],
        ETCD_PORT=str(etcd.address[1]),
        ETCD_PREFIX=etcd_prefix,
        ETCD_NAMESPACE="default",
        LEGACY_ENV_TOKEN="legacy_env_token_789",
    )
    process = CwmProcess(tmp_path, tmp_path / "unused.json", tmp_path / "unused.json", env=env)
    client = EtcdClient(EtcdOptions(endpoints=(etcd.address,)))
    try:
        eventually("etcd healthy", lambda: health(process)["components"].get("etcd") == "healthy")
        keys = {
            "default/webhooks/vault_auth": {
                "data_type": "json", "module": "log", "authorization": "Bearer {$vault:app/auth#webhook_token}",
            },
            "default/webhooks/vault_hmac": {
                "data_type": "json",
                "module": "log",
                "hmac": {"secret": "{$vault:app/auth#hmac_secret}", "header": "X-HMAC-Signature", "algorithm": "sha256"},
            },
            "default/webhooks/legacy_env": {
                "data_type": "json", "module": "log", "authorization": "Bearer {$LEGACY_ENV_TOKEN}",
            },
            "global/connections/redis_main": {
                "type": "redis-rq", "host": "redis", "port": 6379, "password": "{$vault:app/connections#redis_password}",
            },
        }

        def seed_etcd() -> int:
            revision = 0
            for key, value in keys.items():
                revision = client.put(f"{etcd_prefix}{key}".encode(), json.dumps(value).encode())
            return revision

        seed_etcd()
        eventually(
            "three webhooks serving",
            lambda: (h := health(process))["config"]["webhooks"] == 3 and h["config"]["connections"] == 1,
        )
        body = health(process)
        assert body["config"]["secrets_unavailable"] == [] and body["components"]["vault"] == "healthy"

        # 1. The bearer from Vault.
        assert status_of(process, "/webhook/vault_auth") == 401
        assert status_of(process, "/webhook/vault_auth", "wrong_token") == 401
        assert status_of(process, "/webhook/vault_auth", "vault_auth_token_v1") == 200
        # 2. The HMAC key from Vault, over the exact body.
        good = b'{"event":"good_hmac"}'
        signature = hmac.new(b"vault_hmac_secret_123", good, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json"}
        assert process.request("POST", "/webhook/vault_hmac", good, {**headers, "X-HMAC-Signature": "deadbeef"})[0] == 401
        assert process.request("POST", "/webhook/vault_hmac", good, {**headers, "X-HMAC-Signature": signature})[0] == 200
        # 3. The legacy env reference beside them.
        assert status_of(process, "/webhook/legacy_env", "legacy_env_token_789") == 200
        # 4. Rotation: new value in Vault, the same keys published again.
        v.put("webhooks", "app/auth", {"webhook_token": "vault_auth_token_v2", "hmac_secret": "vault_hmac_secret_123"})
        seed_etcd()
        eventually("v2 accepted", lambda: status_of(process, "/webhook/vault_auth", "vault_auth_token_v2") == 200)
        assert status_of(process, "/webhook/vault_auth", "vault_auth_token_v1") == 401
        output = "\n".join(process.lines)
        for secret in ("vault_auth_token_v1", "vault_auth_token_v2", "vault_hmac_secret_123", "vault_redis_password_123"):
            assert secret not in output and secret not in json.dumps(health(process))
    finally:
        client.close()
        process.stop()


# --- the file backend -----------------------------------------------------------------------------


def test_compose_vault_file_backend_with_default(tmp_path: Path, vault: Callable[[dict[str, Any]], VaultProcess]) -> None:
    """Seed compose/vault: Vault bearer 200 (log and save), inline default 200, wrong token 401."""
    v = vault(seed({"secret": 2}))
    v.put("secret", "webhooks/auth", {"bearer_token": "vault_secret_token_789"})
    bearer = "Bearer {$vault:webhooks/auth#bearer_token}"
    out = tmp_path / "saved"
    out.mkdir()
    process = start_file_cwm(
        tmp_path,
        {
            "test_vault_log": {"data_type": "json", "module": "log", "authorization": bearer},
            "test_vault_save": {
                "data_type": "json", "module": "save_to_disk", "authorization": bearer,
                "module-config": {"path": str(out)},
            },
            "test_vault_fallback": {
                "data_type": "json", "module": "log",
                "authorization": "Bearer {$vault:webhooks/nonexistent#token:fallback_token_999}",
            },
        },
        vault_env(v, "secret", 300, VAULT_MOUNT_POINT="secret"),
    )
    try:
        eventually("loaded", lambda: health(process)["config"]["webhooks"] == 3)
        assert status_of(process, "/webhook/test_vault_log", "vault_secret_token_789") == 200
        assert status_of(process, "/webhook/test_vault_save", "vault_secret_token_789", b'{"saved": 1}') == 200
        assert [json.loads(p.read_text()) for p in out.iterdir()] == [{"saved": 1}]
        assert status_of(process, "/webhook/test_vault_fallback", "fallback_token_999") == 200
        assert status_of(process, "/webhook/test_vault_log", "wrong_token") == 401
    finally:
        process.stop()


def test_rotation_without_config_change_and_missing_secret_is_local(
    tmp_path: Path, vault: Callable[[dict[str, Any]], VaultProcess]
) -> None:
    """A value rotated in Vault serves within the TTL with no config change; a missing one is 503 alone."""
    v = vault(seed({"secret": 2}))
    v.put("secret", "app/auth", {"token": "first"})
    process = start_file_cwm(
        tmp_path,
        {
            "rotating": {"module": "log", "authorization": "Bearer {$vault:app/auth#token}"},
            "missing": {"module": "log", "authorization": "Bearer {$vault:app/absent#token}"},
            "env_missing": {"module": "log", "authorization": "Bearer {$NOT_SET_ANYWHERE}"},
            "plain": {"module": "log"},
        },
        vault_env(v, "secret", 1),
    )
    try:
        assert status_of(process, "/webhook/rotating", "first") == 200
        assert status_of(process, "/webhook/plain") == 200
        code, body, headers = process.request("POST", "/webhook/missing", b"{}", {"Content-Type": "application/json"})
        assert (code, body) == (503, {"detail": "Secret unavailable"}) and headers.getheader("Retry-After") == "5"
        assert status_of(process, "/webhook/env_missing", "x") == 503
        held = {u["name"]: u["reason"] for u in health(process)["config"]["secrets_unavailable"]}
        assert held == {
            "missing": "missing.authorization: Vault secret app/absent#token: Vault secret not found: app/absent#token",
            "env_missing": "env_missing.authorization: environment variable NOT_SET_ANYWHERE is not set",
        }
        v.put("secret", "app/auth", {"token": "second"})
        eventually("rotated", lambda: status_of(process, "/webhook/rotating", "second") == 200)
        assert status_of(process, "/webhook/rotating", "first") == 401
        # The missing secret appears in Vault: the retry picks it up.
        v.put("secret", "app/absent", {"token": "late"})
        eventually("missing one resolved", lambda: status_of(process, "/webhook/missing", "late") == 200)
    finally:
        process.stop()


def test_vault_down_cache_serves_then_503_then_recovers(
    tmp_path: Path, vault: Callable[[dict[str, Any]], VaultProcess]
) -> None:
    """While the value is fresh an outage is invisible; after expiry only its webhook is 503; then it recovers."""
    v = vault(seed({"secret": 2}))
    v.put("secret", "app/auth", {"token": "t1"})
    process = start_file_cwm(
        tmp_path,
        {"guarded": {"module": "log", "authorization": "Bearer {$vault:app/auth#token}"}, "plain": {"module": "log"}},
        vault_env(v, "secret", 4),
    )
    try:
        def fresh_for() -> float:
            field = health(process)["config"]["vault"]["fields"].get("app/auth#token", {})
            return float(field.get("fresh_for", 0.0))

        eventually("a value just read", lambda: fresh_for() > 3.0)
        v.stop()
        assert status_of(process, "/webhook/guarded", "t1") == 200  # the fresh value serves
        eventually("held back after expiry", lambda: status_of(process, "/webhook/guarded", "t1") == 503)
        assert status_of(process, "/webhook/plain") == 200
        body = health(process)
        assert body["components"]["vault"] == "degraded"
        [held] = body["config"]["secrets_unavailable"]
        assert held["name"] == "guarded" and "Vault is unreachable" in held["reason"]
        v.start()
        v.put("secret", "app/auth", {"token": "t2"})
        eventually("recovered", lambda: status_of(process, "/webhook/guarded", "t2") == 200, timeout=40)
        assert health(process)["config"]["secrets_unavailable"] == []
    finally:
        process.stop()


def test_approle_and_kv_version_1(tmp_path: Path, vault: Callable[[dict[str, Any]], VaultProcess]) -> None:
    """AppRole login (no VAULT_TOKEN) against a KV v1 mount."""
    v = vault(seed({"kv": 1}, approles=[{"role_id": "role-1", "secret_id": "secret-1", "token_ttl": 3600}]))
    v.put("kv", "app/auth", {"token": "from-v1"}, kv_version=1)
    env = vault_env(v, "kv", 300, VAULT_KV_VERSION="1", VAULT_ROLE_ID="role-1", VAULT_SECRET_ID="secret-1")
    del env["VAULT_TOKEN"]
    process = start_file_cwm(
        tmp_path, {"guarded": {"module": "log", "authorization": "Bearer {$vault:app/auth#token}"}}, env
    )
    try:
        eventually("loaded", lambda: health(process)["config"]["webhooks"] == 1)
        assert status_of(process, "/webhook/guarded", "from-v1") == 200
        assert status_of(process, "/webhook/guarded", "other") == 401
        assert "secret-1" not in "\n".join(process.lines)
    finally:
        process.stop()


def test_bad_vault_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    """Vault enabled without an address or credentials: exit 2 and one line naming what is missing."""
    (tmp_path / "w.json").write_text("{}")
    for env, expected in (
        ({"SECRETS_BACKEND": "vault"}, "VAULT_ADDR is not set"),
        ({"VAULT_ENABLED": "true", "VAULT_ADDR": "http://127.0.0.1:1"}, "VAULT_TOKEN, or VAULT_ROLE_ID"),
        ({"SECRETS_BACKEND": "vault", "VAULT_ADDR": "http://x", "VAULT_TOKEN": "t", "VAULT_KV_VERSION": "3"}, "VAULT_KV_VERSION"),
    ):
        environ = {k: val for k, val in os.environ.items() if not k.startswith(("VAULT_", "SECRETS_"))}
        environ.update(env)
        done = subprocess.run(
            [str(Path(sys.executable).with_name("twistd")), "--pidfile=", "-n", "cwm", "--webhooks", str(tmp_path / "w.json")],
            cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2 and done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("cwm: ") and expected in line
