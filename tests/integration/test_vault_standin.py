"""VaultClient over real loopback HTTP against the Vault stand-in."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from cwm.config.vault import VaultClient, VaultSettings, VaultUnavailable
from tests.vault_standin import VaultStandin

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the bound on every wait for the runner process
REPO = Path(__file__).resolve().parents[2]


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[VaultStandin, HTTPClient]]:
    from twisted.internet import reactor

    standin = VaultStandin()
    standin.listen(reactor)
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    try:
        yield standin, http
    finally:
        stopped = standin.stop_listening()
        if stopped is not None:
            await stopped
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_read_over_loopback(served: tuple[VaultStandin, HTTPClient]) -> None:
    from twisted.internet import reactor

    standin, http = served
    standin.create_approle("role", "secret-id")
    standin.put_secret("app/auth", {"webhook_token": "v1"}, mount="webhooks")
    settings = VaultSettings(
        addr=standin.addr, role_id="role", secret_id="secret-id", mount_point="webhooks"
    )
    client = VaultClient(settings, http, reactor)
    client.start()
    try:
        assert await client.read("app/auth", "webhook_token") == "v1"
        assert standin.request_count("/v1/auth/approle/login") == 1
        assert standin.request_count("/v1/webhooks/data/app/auth") == 1
    finally:
        client.stop()


@pytest_twisted.ensureDeferred
async def test_refused_connection_is_retryable(served: tuple[VaultStandin, HTTPClient]) -> None:
    from twisted.internet import reactor

    standin, http = served
    standin.create_token(token="root")
    standin.put_secret("app", {"f": "x", "g": "y"})
    client = VaultClient(VaultSettings(addr=standin.addr, token="root"), http, reactor)
    assert await client.read("app", "f") == "x"
    stopped: Any = standin.stop_listening()
    await stopped
    with pytest.raises(VaultUnavailable) as raised:
        await client.read("app", "other")
    assert raised.value.retryable
    standin.resume_listening()
    assert await client.read("app", "g") == "y"
    assert standin.request_count("/v1/secret/data/app") == 2


class StandinProcess(ProcessProtocol):
    """``python -m tests.vault_standin`` as a child of the reactor; ``port`` fires on ``PORT <n>``."""

    def __init__(self) -> None:
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    @classmethod
    def spawn(cls, *args: str) -> StandinProcess:
        from twisted.internet import reactor

        protocol = cls()
        argv = [sys.executable, "-u", "-m", "tests.vault_standin", *args]
        reactor.spawnProcess(
            protocol, sys.executable, argv, env=dict(os.environ), path=str(REPO)
        )
        return protocol

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.port.called:
            return
        for line in self.output.splitlines():
            if line.startswith(b"PORT "):
                self.port.callback(int(line.split()[1]))
                return

    def processEnded(self, reason: Failure) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError(f"the stand-in exited early: {self.output!r}"))
        self.ended.callback(None)

    async def listening(self) -> int:
        from twisted.internet import reactor

        self.port.addTimeout(WAIT, reactor)
        port: int = await self.port
        return port

    async def terminate(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the bound."""
        from twisted.internet import reactor

        if self.ended.called:
            return
        assert self.transport is not None
        self.transport.signalProcess("TERM")
        ended: Deferred[None] = Deferred()
        self.ended.chainDeferred(ended)
        ended.addTimeout(WAIT, reactor)
        try:
            await ended
        except Exception:
            self.transport.signalProcess("KILL")
            raise


async def start_runner(tmp_path: Path, document: dict[str, Any]) -> tuple[StandinProcess, int]:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(document))
    process = StandinProcess.spawn("--port", "0", "--seed", str(seed))
    try:
        return process, await process.listening()
    except BaseException:
        await process.terminate()
        raise


@pytest_twisted.ensureDeferred
async def test_runner_process(tmp_path: Any) -> None:
    """``python -m tests.vault_standin --port 0 --seed FILE`` serves the seed."""
    from twisted.internet import reactor

    process, port = await start_runner(
        tmp_path,
        {
            "tokens": {"root": {"ttl": None}},
            "secrets": [{"path": "app/auth", "data": {"token": "seeded"}}],
        },
    )
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        http = HTTPClient(Agent(reactor, pool=pool))
        client = VaultClient(
            VaultSettings(addr=f"http://127.0.0.1:{port}", token="root", timeout=5.0), http, reactor
        )
        assert await client.read("app/auth", "token") == "seeded"
    finally:
        await process.terminate()
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_runner_process_write_then_read(tmp_path: Any) -> None:
    """A KV v2 write over HTTP to the runner, with the seed's root token, reads back."""
    from twisted.internet import reactor

    process, port = await start_runner(tmp_path, {"tokens": {"root-from-seed": {"ttl": None}}})
    addr = f"http://127.0.0.1:{port}"
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        http = HTTPClient(Agent(reactor, pool=pool))
        headers: dict[bytes | str, bytes | str] = {"X-Vault-Token": "root-from-seed"}
        clock: Any = reactor
        response = await http.post(
            f"{addr}/v1/secret/data/app/written",
            json={"data": {"token": "written-over-http"}},
            headers=headers,
            timeout=WAIT,
            reactor=clock,
        )
        assert response.code == 200
        answer = await response.json()
        assert answer["data"]["version"] == 1
        client = VaultClient(
            VaultSettings(addr=addr, token="root-from-seed", timeout=5.0), http, reactor
        )
        assert await client.read("app/written", "token") == "written-over-http"
    finally:
        await process.terminate()
        await pool.closeCachedConnections()
