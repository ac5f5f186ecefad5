"""The etcd config source: keys under the prefix become store entries (a mirror, no etcd)."""

from __future__ import annotations

import json
from typing import Any

from cwm.config.etcd import EtcdConfigSource
from cwm.etcd.mirror import DELETE, PUT, STALE, Change, Entry, PrefixMirror
from tests.unit.test_config import make_store


def entry(key: str, value: Any, revision: int = 1) -> Entry:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Entry(key.encode(), data, revision)


def setup() -> tuple[Any, PrefixMirror, EtcdConfigSource]:
    store, _ = make_store()
    mirror = PrefixMirror()
    return store, mirror, EtcdConfigSource(store, mirror, "/cwm/")


def test_snapshot_loads_namespaces_and_connections() -> None:
    """Webhooks land in their namespace, connections are global; the store is loaded after it."""
    store, mirror, source = setup()
    assert not store.loaded and source.health == "connecting"
    mirror.apply_snapshot(
        [
            entry("/cwm/ns_alpha/webhooks/hook1", {"module": "log"}),
            entry("/cwm/ns_beta/webhooks/hook1", {"module": "log", "connection": "redis_main"}),
            entry("/cwm/global/connections/redis_main", {"type": "redis-rq", "host": "redis", "port": 6379}),
            entry("/cwm/global/instances/abc", {"address": "x"}),
            entry("/cwm/stray", {"x": 1}),
        ],
        10,
    )
    assert store.loaded and source.health == "healthy"
    assert store.lookup("ns_alpha", "hook1") and store.lookup("ns_beta", "hook1")
    assert store.lookup("default", "hook1") is None
    assert store.counts() == (2, 1) and store.rejections == ()


def test_live_put_and_delete() -> None:
    """A PUT adds or replaces one webhook, a DELETE removes it."""
    store, mirror, _ = setup()
    mirror.apply_snapshot([], 1)
    mirror.apply_events([Change(PUT, b"/cwm/ns/webhooks/new", b'{"module": "log"}', 2)])
    assert store.lookup("ns", "new") is not None
    mirror.apply_events([Change(DELETE, b"/cwm/ns/webhooks/new", b"", 3)])
    assert store.lookup("ns", "new") is None


def test_bad_json_and_invalid_entries_are_skipped_and_listed() -> None:
    """Bad JSON or an invalid entry rejects that key only; a bad namespace is a skipped key."""
    store, mirror, source = setup()
    mirror.apply_snapshot(
        [
            entry("/cwm/ns/webhooks/good", {"module": "log"}),
            entry("/cwm/ns/webhooks/broken", b"{not json"),
            entry("/cwm/ns/webhooks/unknown", {"module": "nope"}),
            entry("/cwm/bad.ns/webhooks/x", {"module": "log"}),
        ],
        5,
    )
    assert store.lookup("ns", "good") is not None
    reasons = {r.name: r.reason for r in store.rejections}
    assert reasons["broken"].startswith("value is not valid JSON")
    assert reasons["unknown"] == "unknown module 'nope'"
    assert [s["key"] for s in source.status()["skipped_keys"]] == ["/cwm/bad.ns/webhooks/x"]
    mirror.apply_events([Change(DELETE, b"/cwm/bad.ns/webhooks/x", b"", 6)])
    assert source.status()["skipped_keys"] == []


def test_relist_after_compaction_removes_vanished_keys() -> None:
    """A second snapshot without a key deletes that webhook."""
    store, mirror, _ = setup()
    mirror.apply_snapshot([entry("/cwm/ns/webhooks/a", {"module": "log"}), entry("/cwm/ns/webhooks/b", {"module": "log"})], 3)
    mirror.apply_snapshot([entry("/cwm/ns/webhooks/b", {"module": "log"})], 9)
    assert store.lookup("ns", "a") is None and store.lookup("ns", "b") is not None


def test_stale_keeps_serving() -> None:
    """While etcd is away the cache serves and health says disconnected."""
    store, mirror, source = setup()
    mirror.apply_snapshot([entry("/cwm/ns/webhooks/a", {"module": "log"})], 3)
    mirror.set_state(STALE, "socket closed")
    assert source.health == "disconnected" and store.lookup("ns", "a") is not None
    assert source.status()["reason"] == "socket closed"
