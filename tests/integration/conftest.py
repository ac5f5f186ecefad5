"""Fixtures of the integration tests: a real etcd, shared or fresh."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.etcd_server import EtcdServer
from tests.integration.redis_server import RedisServer


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """One etcd member for the whole session.

    Tests keep to their own ``etcd_prefix``. Some compact the history: never
    rely on revisions from before your own test's first write.
    """
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses, like ``/t-1a2b3c4d/``."""
    return f"/t-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def fresh_etcd() -> Iterator[Callable[..., EtcdServer]]:
    """Start a private etcd: ``fresh_etcd("--auth-token-ttl", "2")``; all are removed after the test.

    For tests that restart, pause or kill the server, enable auth, or need
    flags; keyword arguments go to EtcdServer (``log_level="debug"``, ``tls=True``).
    """
    servers: list[EtcdServer] = []

    def start(*extra_args: str, **kwargs: Any) -> EtcdServer:
        server = EtcdServer(*extra_args, **kwargs)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep to their own ``redis_prefix``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_redis(tmp_path: Any) -> Iterator[RedisServer]:
    """A private redis-server, for tests that stop, kill or restart it."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, like ``t1a2b3c4d``."""
    return f"t{uuid.uuid4().hex[:8]}"
