"""The connector's etcd and module delivery modes on the real reactor: a real etcd, real files, real modules."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath

from cwm.connector.local import ModuleDelivery, etcd_delivery, module_delivery
from cwm.connector.message import DELIVERED, Message, Outcome, dead_letter, requeue
from cwm.connector.settings import ConnectorSettings
from cwm.etcd.client import EtcdClient, EtcdOptions
from cwm.etcd.mirror import SYNCED, PrefixMirror
from cwm.etcd.watch import PrefixWatch
from tests.integration.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


def bounded(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


async def until(predicate: Callable[[], bool], seconds: float = TIMEOUT) -> None:
    """Wait, bounded, until ``predicate()`` holds: checked on the reactor every 20 ms."""
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not reached within {seconds} s")
        await deferLater(reactor, 0.02, lambda: None)


def settings(**values: Any) -> ConnectorSettings:
    return ConnectorSettings(cloud_url="https://cloud.example.com", channel="ch", token="t", **values)


def message(webhook_id: str, body: bytes) -> Message:
    return Message(message_id="m-1", webhook_id=webhook_id, headers={"content-type": "application/json"}, body=body)


async def deliver(delivery: ModuleDelivery, webhook_id: str, body: bytes) -> Outcome:
    outcome: Outcome = await delivery.deliver(message(webhook_id, body))
    return outcome


def saved(directory: Path) -> list[bytes]:
    return [f.read_bytes() for f in sorted(directory.iterdir())] if directory.exists() else []


def start_etcd_mode(
    tmp_path: Path, parent: MultiService, address: tuple[str, int], prefix: str, namespace: str = "default", **environ: str
) -> tuple[ModuleDelivery, PrefixMirror]:
    """``etcd_delivery`` started under ``parent``, and the mirror its watch feeds (to wait on)."""
    host, port = address
    delivery = etcd_delivery(
        settings(etcd_host=host, etcd_port=port, etcd_prefix=prefix, namespace=namespace),
        reactor,
        environ,
        io.StringIO(),
        parent,
        working_dir=FilePath(str(tmp_path)),
    )
    parent.startService()
    watch = next(s for s in parent if isinstance(s, PrefixWatch))
    return delivery, watch.mirror


@pytest_twisted.async_yield_fixture
async def parent() -> AsyncIterator[MultiService]:
    """The connector's service tree, stopped (threads joined, modules closed) after the test."""
    top = MultiService()
    yield top
    if top.running:
        await bounded(top.stopService())


@pytest.fixture
def client(etcd: EtcdServer) -> Any:
    c = EtcdClient(EtcdOptions(endpoints=(etcd.address,)))
    yield c
    c.close()


async def put(client: EtcdClient, key: str, value: Any) -> int:
    revision: int = await deferToThread(client.put, key.encode(), json.dumps(value).encode())
    return revision


async def delete(client: EtcdClient, key: str) -> int:
    revision: int = await deferToThread(client.delete, key.encode())
    return revision


@pytest_twisted.ensureDeferred
async def test_etcd_mode_delivers_to_live_entries(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient, parent: MultiService
) -> None:
    """An entry put into etcd delivers; changed live, it delivers to its new path; deleted, dead letters."""
    delivery, mirror = start_etcd_mode(tmp_path, parent, etcd.address, etcd_prefix, "edge", OUT="out")
    await bounded(mirror.when(lambda m: m.state == SYNCED))
    assert delivery.status()["etcd"] == "healthy" and delivery.status()["loaded"]
    assert await deliver(delivery, "hook", b"{}") == dead_letter("no local webhook 'hook'")

    key = f"{etcd_prefix}edge/webhooks/hook"
    other_namespace = f"{etcd_prefix}default/webhooks/other"
    await put(client, other_namespace, {"module": "save_to_disk", "module-config": {"path": "other"}})
    revision = await put(client, key, {"module": "save_to_disk", "data_type": "blob", "module-config": {"path": "{$OUT}/a"}})
    await bounded(mirror.when_revision(revision))
    body = b'{"n": 1,  "x" :"\xc3\xa9"}\n'
    assert await deliver(delivery, "hook", body) == DELIVERED
    assert saved(tmp_path / "out" / "a") == [body]
    assert await deliver(delivery, "other", b"{}") == dead_letter("no local webhook 'other'")

    revision = await put(client, key, {"module": "save_to_disk", "module-config": {"path": "{$OUT}/b"}})
    await bounded(mirror.when_revision(revision))
    assert await deliver(delivery, "hook", b'{"n": 2}') == DELIVERED
    assert [json.loads(b) for b in saved(tmp_path / "out" / "b")] == [{"n": 2}]
    assert len(saved(tmp_path / "out" / "a")) == 1

    revision = await delete(client, key)
    await bounded(mirror.when_revision(revision))
    assert await deliver(delivery, "hook", b'{"n": 3}') == dead_letter("no local webhook 'hook'")
    status = delivery.status()
    assert (status["mode"], status["namespace"], status["webhooks"]) == ("etcd", "edge", 0)


@pytest_twisted.ensureDeferred
async def test_etcd_mode_uses_global_connections(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient, parent: MultiService
) -> None:
    """Connections come from ``{prefix}global/connections/``; an invalid entry is requeued until fixed."""
    delivery, mirror = start_etcd_mode(tmp_path, parent, etcd.address, etcd_prefix)
    await put(client, f"{etcd_prefix}global/connections/q", {"type": "redis-rq", "host": "redis.example.com", "port": 6379})
    revision = await put(client, f"{etcd_prefix}default/webhooks/hook", {"module": "save_to_disk", "data_type": 5})
    await bounded(mirror.when_revision(revision))
    assert delivery.status()["connections"] == 1
    assert await deliver(delivery, "hook", b"{}") == requeue("local webhook 'hook' has an invalid configuration")
    revision = await put(client, f"{etcd_prefix}default/webhooks/hook", {"module": "save_to_disk", "module-config": {"path": "out"}})
    await bounded(mirror.when_revision(revision))
    assert await deliver(delivery, "hook", b"{}") == DELIVERED


@pytest_twisted.ensureDeferred
async def test_etcd_down_at_start_requeues_then_delivers(tmp_path: Path, parent: MultiService) -> None:
    """etcd unreachable at start: the connector runs, requeues, and delivers once etcd is there."""
    server = EtcdServer()
    try:
        delivery, mirror = start_etcd_mode(tmp_path, parent, server.address, "/cwm/")
        await bounded(mirror.when(lambda m: m.reason != ""))
        assert delivery.status()["etcd"] == "connecting"
        assert await deliver(delivery, "hook", b"{}") == requeue("local configuration not loaded yet")
        await deferToThread(server.start)
        c = EtcdClient(EtcdOptions(endpoints=(server.address,)))
        try:
            revision = await put(c, "/cwm/default/webhooks/hook", {"module": "save_to_disk", "module-config": {"path": "out"}})
        finally:
            c.close()
        await bounded(mirror.when(lambda m: m.state == SYNCED and m.revision >= revision), 90)
        assert await deliver(delivery, "hook", b'{"late": true}') == DELIVERED
        assert [json.loads(b) for b in saved(tmp_path / "out")] == [{"late": True}]
        await bounded(parent.stopService())
    finally:
        await deferToThread(server.cleanup)


@pytest_twisted.ensureDeferred
async def test_module_mode_real_file_reloads_live(tmp_path: Path, parent: MultiService) -> None:
    """A real webhooks.json with ``{$VAR}``: delivered; an edit applies on the running reactor, no restart."""
    webhooks = tmp_path / "webhooks.json"
    webhooks.write_text(json.dumps({"a": {"module": "save_to_disk", "module-config": {"path": "{$OUT}/a"}}}))
    delivery = module_delivery(
        settings(webhooks_config=str(webhooks)),
        reactor,
        {"OUT": "out"},
        io.StringIO(),
        parent,
        working_dir=FilePath(str(tmp_path)),
    )
    parent.startService()
    assert await deliver(delivery, "a", b'{"n": 1}') == DELIVERED
    assert [json.loads(b) for b in saved(tmp_path / "out" / "a")] == [{"n": 1}]
    assert await deliver(delivery, "b", b"{}") == dead_letter("no local webhook 'b'")

    loaded_at = delivery.status()["last_reload"]
    replacement = tmp_path / "webhooks.json.new"
    replacement.write_text(json.dumps({"b": {"module": "save_to_disk", "data_type": "blob", "module-config": {"path": "{$OUT}/b"}}}))
    replacement.rename(webhooks)  # an atomic replace, as editors and deploy tools do
    await until(lambda: delivery.status()["last_reload"] != loaded_at)
    assert (delivery.status()["webhooks"], delivery.status()["rejected"]) == (1, [])
    body = b"\x00raw bytes\xff"
    assert await deliver(delivery, "b", body) == DELIVERED
    assert saved(tmp_path / "out" / "b") == [body]
    assert await deliver(delivery, "a", b"{}") == dead_letter("no local webhook 'a'")
    await bounded(parent.stopService())
    assert delivery.status()["webhooks"] == 0

