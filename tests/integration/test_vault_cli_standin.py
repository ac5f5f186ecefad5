"""The stand-in ``vault`` command (docker/podman/images/vault/vault) against the real stand-in process.

It is the Vault CLI of the locally built ``hashicorp/vault`` stand-in image:
``status`` (the compose health check), ``secrets list/enable`` and ``kv put``
(the seed scripts), ``server -dev`` (the image's command). Every wait is on
an observable state with a bound.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VAULT = REPO / "docker" / "podman" / "images" / "vault" / "vault"
ROOT = "root"
WAIT = 20.0


def _read_port(process: subprocess.Popen[str]) -> int:
    """The ``PORT <n>`` the stand-in prints once listening (bounded by WAIT)."""
    found: list[int] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("PORT "):
                found.append(int(line.split()[1]))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(WAIT)
    if not found:
        raise AssertionError("the Vault stand-in did not report its port")
    return found[0]


@pytest.fixture(scope="module")
def vault_port() -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.vault_standin", "--host", "0.0.0.0", "--port", "0",
         "--dev-root-token", ROOT],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield _read_port(process)
    finally:
        process.kill()
        process.wait(WAIT)


def vault(port: int, *args: str, token: str = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_ADDR=f"http://127.0.0.1:{port}", VAULT_TOKEN=token)
    return subprocess.run(
        [sys.executable, str(VAULT), *args], env=env, capture_output=True, text=True, timeout=WAIT
    )


def api(port: int, method: str, path: str, token: str | None = ROOT) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, headers={"X-Vault-Token": token} if token else {})
        response = conn.getresponse()
        body = response.read()
        return response.status, (json.loads(body) if body else None)
    finally:
        conn.close()


def test_the_command_is_executable_python() -> None:
    assert os.access(VAULT, os.X_OK)
    assert VAULT.read_text().startswith("#!/usr/bin/env python3\n")


def test_status_exits_0_when_unsealed(vault_port: int) -> None:
    done = vault(vault_port, "status")
    assert done.returncode == 0, done.stderr
    assert "Sealed          false" in done.stdout
    done = vault(vault_port, "status", "-format=json")
    assert json.loads(done.stdout)["sealed"] is False


def test_status_exits_1_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    done = vault(free, "status")
    assert done.returncode == 1
    assert done.stderr.startswith("Error checking seal status:")


def test_secrets_enable_then_list(vault_port: int) -> None:
    done = vault(vault_port, "secrets", "enable", "-path=webhooks", "kv-v2")
    assert done.returncode == 0, done.stderr
    assert "webhooks/" in done.stdout
    listed = vault(vault_port, "secrets", "list", "-format=json")
    assert listed.returncode == 0, listed.stderr
    mounts = json.loads(listed.stdout)
    assert mounts["webhooks/"]["type"] == "kv"
    assert mounts["webhooks/"]["options"] == {"version": "2"}
    assert "secret/" in mounts
    table = vault(vault_port, "secrets", "list")
    assert table.returncode == 0 and "webhooks/" in table.stdout
    again = vault(vault_port, "secrets", "enable", "-path=webhooks", "kv-v2")
    assert again.returncode == 2
    assert "path is already in use at webhooks/" in again.stderr


def test_kv_put_with_and_without_mount(vault_port: int) -> None:
    vault(vault_port, "secrets", "enable", "-path=apps", "kv-v2")
    done = vault(vault_port, "kv", "put", "-mount=apps", "app/auth", "webhook_token=t1", "hmac_secret=h")
    assert done.returncode == 0, done.stderr
    assert "apps/data/app/auth" in done.stdout
    status, answer = api(vault_port, "GET", "/v1/apps/data/app/auth")
    assert status == 200
    assert answer["data"]["data"] == {"webhook_token": "t1", "hmac_secret": "h"}

    done = vault(vault_port, "kv", "put", "secret/db/postgres", "password=p1", "username=u")
    assert done.returncode == 0, done.stderr
    done = vault(vault_port, "kv", "put", "secret/db/postgres", "password=p2")
    assert done.returncode == 0, done.stderr
    status, answer = api(vault_port, "GET", "/v1/secret/data/db/postgres")
    assert status == 200
    assert (answer["data"]["data"], answer["data"]["metadata"]["version"]) == ({"password": "p2"}, 2)


def test_kv_put_to_a_kv_v1_mount(vault_port: int) -> None:
    done = vault(vault_port, "secrets", "enable", "-path=legacy", "-version=1", "kv")
    assert done.returncode == 0, done.stderr
    done = vault(vault_port, "kv", "put", "legacy/app", "key=value")
    assert (done.returncode, done.stdout.strip()) == (0, "Success! Data written to: legacy/app")
    status, answer = api(vault_port, "GET", "/v1/legacy/app")
    assert (status, answer["data"]) == (200, {"key": "value"})


def test_bad_token_and_bad_usage_exit_non_zero(vault_port: int) -> None:
    done = vault(vault_port, "kv", "put", "secret/x", "a=b", token="wrong")
    assert done.returncode == 2
    assert done.stderr.startswith("Error writing data to secret/x:")
    assert "permission denied" in done.stderr
    assert api(vault_port, "GET", "/v1/secret/data/x")[0] == 404
    assert vault(vault_port, "secrets", "list", token="wrong").returncode == 2
    assert vault(vault_port, "secrets", "enable", "-path=nope", "kv-v2", token="wrong").returncode == 2
    assert vault(vault_port, "kv", "put", "secret/x").returncode == 1  # no data
    assert vault(vault_port, "kv", "put", "-bogus", "secret/x", "a=b").returncode == 1
    unknown = vault(vault_port, "read", "secret/x")
    assert unknown.returncode == 1
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_server_dev_serves_health_and_the_root_token(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(
        VAULT_DEV_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        VAULT_DEV_ROOT_TOKEN_ID="dev-token",
        VAULT_STANDIN_HOME=str(REPO),
    )
    process = subprocess.Popen(
        [sys.executable, str(VAULT), "server", "-dev"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert _read_port(process) == port  # printed once listening: no poll needed
        status, health = api(port, "GET", "/v1/sys/health", token=None)
        assert (status, health["sealed"], health["initialized"]) == (200, False, True)
        assert api(port, "GET", "/v1/sys/mounts", token="dev-token")[1]["data"]["secret/"]["options"] == {
            "version": "2"
        }
        assert vault(port, "status").returncode == 0
        assert vault(port, "kv", "put", "secret/a", "b=c", token="dev-token").returncode == 0
    finally:
        process.kill()
        process.wait(WAIT)
