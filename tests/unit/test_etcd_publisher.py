"""The leased publisher's thread steps, driven directly against a fake client."""

from __future__ import annotations

from typing import Any

from cwm.etcd.publisher import LeasedPublisher


class FakeEtcd:
    """Keys, leases and their TTLs in memory, the way etcd treats them."""

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[bytes, int]] = {}
        self.leases: dict[int, int] = {}
        self.next_lease = 100
        self.revision = 1
        self.closed = 0

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        if lease and lease not in self.leases:
            raise KeyError("requested lease not found")
        self.revision += 1
        self.keys[key] = (value, lease)
        return self.revision

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        self.next_lease += 1
        self.leases[self.next_lease] = ttl
        return self.next_lease, ttl

    def lease_keepalive(self, lease_id: int) -> int:
        return self.leases.get(lease_id, 0)

    def lease_revoke(self, lease_id: int) -> None:
        self.leases.pop(lease_id)
        self.keys = {k: v for k, v in self.keys.items() if v[1] != lease_id}

    def expire(self, lease_id: int) -> None:
        self.lease_revoke(lease_id)

    def close(self) -> None:
        self.closed += 1


class Reactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((f, args, kwargs))


def test_leased_put_keepalive_and_revoke() -> None:
    """Keys go on one lease; keep-alive renews it; revoke removes the keys at once."""
    etcd = FakeEtcd()
    publisher = LeasedPublisher(lambda: etcd, Reactor(), ttl=10)
    publisher.thd_put(b"/i/a", b"1")
    publisher.thd_put(b"/i/b", b"2")
    lease = publisher.lease_id
    assert {v[1] for v in etcd.keys.values()} == {lease} and len(etcd.leases) == 1
    publisher.thd_keepalive()
    assert publisher.lease_id == lease
    publisher.thd_revoke()
    assert etcd.keys == {} and publisher.lease_id == 0


def test_lost_lease_is_replaced_and_keys_put_again() -> None:
    """If the lease expired anyway, a new one is granted and every key published again."""
    etcd = FakeEtcd()
    reactor = Reactor()
    publisher = LeasedPublisher(lambda: etcd, reactor, ttl=10)
    publisher.thd_put(b"/i/a", b"1")
    old = publisher.lease_id
    etcd.expire(old)
    assert etcd.keys == {}
    publisher.thd_keepalive()
    assert publisher.lease_id != old and etcd.keys == {b"/i/a": (b"1", publisher.lease_id)}
    assert any("expired" in str(args) for _, args, _ in reactor.calls)


def test_without_ttl_keys_persist_and_nothing_is_revoked() -> None:
    """No TTL: plain puts, no lease, nothing removed on stop."""
    etcd = FakeEtcd()
    publisher = LeasedPublisher(lambda: etcd, Reactor(), ttl=None)
    publisher.thd_put(b"/k", b"v")
    publisher.thd_keepalive()
    publisher.thd_revoke()
    assert etcd.keys == {b"/k": (b"v", 0)} and etcd.leases == {}


def test_keepalive_failure_keeps_the_client_and_logs() -> None:
    """A failed keep-alive is logged on the reactor; the same client (which fails over itself) tries again."""
    clients: list[FakeEtcd] = []

    def factory() -> FakeEtcd:
        clients.append(FakeEtcd())
        return clients[-1]

    reactor = Reactor()
    publisher = LeasedPublisher(factory, reactor, ttl=10)
    publisher.thd_put(b"/k", b"v")
    working = clients[0].lease_keepalive

    def broken(lease_id: int) -> int:
        raise ConnectionError("etcd went away")

    clients[0].lease_keepalive = broken  # type: ignore[method-assign]
    publisher.thd_keepalive()
    assert clients[0].closed == 0 and "etcd went away" in str(reactor.calls[-1])
    clients[0].lease_keepalive = working  # type: ignore[method-assign]
    lease = publisher.lease_id
    publisher.thd_keepalive()  # etcd answers again: the same lease lives on
    assert len(clients) == 1 and publisher.lease_id == lease and clients[0].keys[b"/k"][0] == b"v"
