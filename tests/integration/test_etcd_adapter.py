"""The etcd adapter's contract (seed 004), one test per item, on the real reactor and a real etcd."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from cwm.etcd import client as etcd_client
from cwm.etcd.client import EtcdClient, EtcdOptions
from cwm.etcd.mirror import DELETE, PUT, Change, PrefixMirror
from cwm.etcd.publisher import LeasedPublisher
from cwm.etcd.watch import PrefixWatch
from tests.integration.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


def bounded(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def options(address: tuple[str, int]) -> EtcdOptions:
    return EtcdOptions(endpoints=(address,), timeout=2.0)


class Subscription:
    """A PrefixWatch and its mirror, recording every change set delivered."""

    def __init__(self, address: tuple[str, int], prefix: str) -> None:
        self.mirror = PrefixMirror()
        self.batches: list[tuple[list[Change], bool]] = []
        self.mirror.subscribe(lambda changes, snapshot: self.batches.append((list(changes), snapshot)))
        self.watch = PrefixWatch(
            lambda: EtcdClient(options(address)), etcd_client, prefix.encode(), self.mirror, reactor
        )

    def start(self) -> None:
        self.watch.startService()

    async def stop(self) -> None:
        await self.watch.stopService()

    def changes(self) -> list[Change]:
        return [c for batch, snapshot in self.batches if not snapshot for c in batch]


@pytest.fixture
def blocking(etcd: EtcdServer) -> Any:
    c = EtcdClient(options(etcd.address))
    yield c
    c.close()


async def in_thread(f: Callable[..., Any], *args: Any) -> Any:
    """Blocking etcd calls of the test itself run off the reactor thread."""
    return await deferToThread(f, *args)


@pytest_twisted.async_yield_fixture
async def subscribe(etcd: EtcdServer, etcd_prefix: str) -> AsyncIterator[Callable[[], Subscription]]:
    made: list[Subscription] = []

    def start() -> Subscription:
        sub = Subscription(etcd.address, etcd_prefix)
        made.append(sub)
        sub.start()
        return sub

    yield start
    for sub in made:
        await sub.stop()


@pytest_twisted.ensureDeferred
async def test_connection_refused() -> None:
    """Unreachable etcd: the mirror stays STARTING with the reason, and stopping is prompt."""
    sub = Subscription(("127.0.0.1", free_port()), "/x/")
    sub.start()
    await bounded(sub.mirror.when(lambda m: m.reason != ""))
    assert "UNAVAILABLE" in sub.mirror.reason or "unavailable" in sub.mirror.reason.lower(), sub.mirror.reason
    assert sub.mirror.state == "STARTING" and sub.mirror.snapshots == 0
    await bounded(sub.watch.stopService(), 2.0)


@pytest_twisted.ensureDeferred
async def test_sub_empty_snapshot_then_live_write(subscribe: Any, blocking: EtcdClient, etcd_prefix: str) -> None:
    """An empty prefix gives an empty snapshot, then the live PUT arrives with its revision."""
    sub = subscribe()
    await bounded(sub.mirror.when(lambda m: m.state == "SYNCED"))
    assert sub.batches == [([], True)]
    revision = await in_thread(blocking.put, f"{etcd_prefix}a".encode(), b"1")
    await bounded(sub.mirror.when_revision(revision))
    assert sub.changes() == [Change(PUT, f"{etcd_prefix}a".encode(), b"1", revision)]


@pytest_twisted.ensureDeferred
async def test_sub_snapshot_with_existing_keys(subscribe: Any, blocking: EtcdClient, etcd_prefix: str) -> None:
    """Keys present before subscribing come in the snapshot."""
    for i in range(3):
        await in_thread(blocking.put, f"{etcd_prefix}k{i}".encode(), str(i).encode())
    sub = subscribe()
    await bounded(sub.mirror.when(lambda m: m.snapshots == 1))
    snapshot, is_snapshot = sub.batches[0]
    assert is_snapshot and sorted(c.key for c in snapshot) == [f"{etcd_prefix}k{i}".encode() for i in range(3)]


@pytest_twisted.ensureDeferred
async def test_sub_live_updates(subscribe: Any, blocking: EtcdClient, etcd_prefix: str) -> None:
    """Successive PUTs of one key arrive in order, each with its revision."""
    sub = subscribe()
    await bounded(sub.mirror.when(lambda m: m.state == "SYNCED"))
    key = f"{etcd_prefix}k".encode()
    revisions = [await in_thread(blocking.put, key, str(i).encode()) for i in range(5)]
    await bounded(sub.mirror.when_revision(revisions[-1]))
    assert [(c.value, c.revision) for c in sub.changes()] == [(str(i).encode(), r) for i, r in enumerate(revisions)]


@pytest_twisted.ensureDeferred
async def test_pub_round_trip(etcd: EtcdServer, blocking: EtcdClient, etcd_prefix: str) -> None:
    """What the publisher puts is readable with a plain client."""
    publisher = LeasedPublisher(lambda: EtcdClient(options(etcd.address)), reactor)
    publisher.startService()
    try:
        revision = await bounded(publisher.publish(f"{etcd_prefix}p".encode(), b"value"))
        found = await in_thread(blocking.range_key, f"{etcd_prefix}p".encode())
        assert found is not None and found.value == b"value" and found.mod_revision == revision
    finally:
        await publisher.stopService()


@pytest_twisted.ensureDeferred
async def test_pub_lease_keys_expire_after_revoke(
    etcd: EtcdServer, subscribe: Any, blocking: EtcdClient, etcd_prefix: str
) -> None:
    """A clean stop revokes the lease: the key's DELETE arrives at once, not after the TTL."""
    sub = subscribe()
    await bounded(sub.mirror.when(lambda m: m.state == "SYNCED"))
    publisher = LeasedPublisher(lambda: EtcdClient(options(etcd.address)), reactor, ttl=60)
    publisher.startService()
    key = f"{etcd_prefix}leased".encode()
    await bounded(publisher.publish(key, b"1"))
    await bounded(sub.mirror.when(lambda m: key in m.entries))
    await bounded(publisher.stopService(), 5.0)
    await bounded(sub.mirror.when(lambda m: key not in m.entries), 5.0)
    assert sub.changes()[-1].kind == DELETE
    assert await in_thread(blocking.range_key, key) is None


@pytest_twisted.ensureDeferred
async def test_pub_lease_keepalive_extends_ttl(etcd: EtcdServer, blocking: EtcdClient, etcd_prefix: str) -> None:
    """With keep-alive the key outlives three times the raw TTL on its first lease."""
    calls: list[str] = []
    kept: Deferred[None] = Deferred()

    class Counting(EtcdClient):
        def lease_grant(self, ttl: int) -> tuple[int, int]:
            calls.append("grant")
            return super().lease_grant(ttl)

        def lease_keepalive(self, lease_id: int) -> int:
            remaining = super().lease_keepalive(lease_id)
            calls.append("keepalive")
            if calls.count("keepalive") == 7:  # one a second: past 3 x TTL
                reactor.callFromThread(kept.callback, None)  # type: ignore[attr-defined]
            return remaining

    publisher = LeasedPublisher(lambda: Counting(options(etcd.address)), reactor, ttl=2)
    publisher.startService()
    key = f"{etcd_prefix}kept".encode()
    try:
        await bounded(publisher.publish(key, b"1"))
        await bounded(kept, 20.0)
        assert await in_thread(blocking.range_key, key) is not None
        assert calls.count("grant") == 1  # never lost and granted again
    finally:
        await publisher.stopService()
    assert await in_thread(blocking.range_key, key) is None


@pytest_twisted.ensureDeferred
async def test_pub_no_lease_keys_persist(etcd: EtcdServer, blocking: EtcdClient, etcd_prefix: str) -> None:
    """Without a TTL the keys stay after the publisher stops."""
    publisher = LeasedPublisher(lambda: EtcdClient(options(etcd.address)), reactor)
    publisher.startService()
    key = f"{etcd_prefix}plain".encode()
    await bounded(publisher.publish(key, b"1"))
    await publisher.stopService()
    assert await in_thread(blocking.range_key, key) is not None


@pytest_twisted.ensureDeferred
async def test_sub_delete_events(subscribe: Any, blocking: EtcdClient, etcd_prefix: str) -> None:
    """A DELETE arrives as a delete change with the deletion's revision."""
    key = f"{etcd_prefix}gone".encode()
    await in_thread(blocking.put, key, b"1")
    sub = subscribe()
    await bounded(sub.mirror.when(lambda m: key in m.entries))
    revision = await in_thread(blocking.delete, key)
    await bounded(sub.mirror.when_revision(revision))
    assert sub.changes() == [Change(DELETE, key, b"", revision)]


@pytest_twisted.ensureDeferred
async def test_sub_no_race_between_snapshot_and_watch(
    subscribe: Any, blocking: EtcdClient, etcd: EtcdServer, etcd_prefix: str
) -> None:
    """1,000 writes racing the subscription's start: nothing missed, nothing applied twice."""
    writer_client = EtcdClient(options(etcd.address))
    started = threading.Event()

    def write() -> int:
        last = 0
        try:
            for i in range(1000):
                key = f"{etcd_prefix}r{i % 50}".encode()
                last = writer_client.delete(key) if i % 7 == 0 else writer_client.put(key, str(i).encode())
                if i == 100:
                    started.set()
            return last
        finally:
            writer_client.close()

    writing = deferToThread(write)
    await in_thread(started.wait, 10)
    sub = subscribe()
    last = await bounded(writing, 60)
    final_revision = max(last, (await in_thread(blocking.status)).header.revision)
    await bounded(sub.mirror.when_revision(final_revision))
    kvs, _ = await in_thread(blocking.range_prefix, etcd_prefix.encode())
    assert {bytes(kv.key): bytes(kv.value) for kv in kvs} == {k: e.value for k, e in sub.mirror.entries.items()}
    seen = [(c.key, c.revision) for c in sub.changes()]
    assert len(seen) == len(set(seen)), "an event was applied twice"
