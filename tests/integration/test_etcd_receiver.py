"""``twistd -n cwm`` with CONFIG_BACKEND=etcd against a real etcd: seeds 000 (scenario 05) and 001, faults."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cwm.etcd.client import EtcdClient, EtcdOptions
from tests.integration.cwm_process import CwmProcess
from tests.integration.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

LOG = {"data_type": "json", "module": "log"}
WAIT = 15.0


def start_cwm(tmp_path: Path, endpoint: tuple[str, int], prefix: str, **env: str) -> CwmProcess:
    (tmp_path / "unused.json").write_text("{}")
    environ = {
        "CONFIG_BACKEND": "etcd",
        "ETCD_HOST": endpoint[0],
        "ETCD_PORT": str(endpoint[1]),
        "ETCD_PREFIX": prefix,
        "ETCD_NAMESPACE": "default",
    }
    environ.update(env)
    return CwmProcess(tmp_path, tmp_path / "unused.json", tmp_path / "unused.json", env=environ)


def health(process: CwmProcess) -> dict[str, Any]:
    code, body, _ = process.request("GET", "/health")
    assert code == 200
    return body  # type: ignore[no-any-return]


def wait_for(process: CwmProcess, predicate: Any, timeout: float = WAIT) -> dict[str, Any]:
    """Poll /health until ``predicate(health)`` holds: waiting on the state, bounded."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        body = health(process)
        if predicate(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s; last health: {body}")
        pause.wait(0.02)


def wait_revision(process: CwmProcess, revision: int) -> dict[str, Any]:
    """Wait until cwm's etcd cache has seen ``revision`` (the answer of a Put or Delete)."""
    return wait_for(process, lambda h: h["config"]["etcd"]["revision"] >= revision)


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    c = EtcdClient(EtcdOptions(endpoints=(etcd.address,)))
    yield c
    c.close()


def put(client: EtcdClient, key: str, value: Any) -> int:
    return client.put(key.encode(), json.dumps(value).encode())


def test_scenario_05_namespaces(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient) -> None:
    """Seed 000: starts empty and healthy, namespace routing, live add, live delete, default namespace."""
    process = start_cwm(tmp_path, etcd.address, etcd_prefix)
    try:
        body = wait_for(process, lambda h: h["components"].get("etcd") == "healthy")
        assert body["components"]["config_backend"] == "etcd" and body["config"]["webhooks"] == 0
        p = etcd_prefix
        put(client, f"{p}ns_alpha/webhooks/hook1", {**LOG, "module-config": {"pretty_print": True}})
        put(client, f"{p}ns_alpha/webhooks/hook2", LOG)
        put(client, f"{p}ns_beta/webhooks/hook1", {**LOG, "module-config": {"pretty_print": False}})
        revision = put(client, f"{p}global/connections/redis_main", {"type": "redis-rq", "host": "redis", "port": 6379})
        wait_revision(process, revision)
        assert process.post("/webhook/ns_alpha/hook1", {"step": 1})[0] == 200
        assert process.post("/webhook/ns_alpha/hook2", {"step": 2})[0] == 200
        assert process.post("/webhook/ns_beta/hook1", {"step": 3})[0] == 200
        assert process.post("/webhook/ns_beta/hook2", {"step": 4})[0] == 404
        wait_revision(process, put(client, f"{p}ns_beta/webhooks/hook_new", LOG))
        assert process.post("/webhook/ns_beta/hook_new", {"step": 5})[0] == 200
        wait_revision(process, client.delete(f"{p}ns_alpha/webhooks/hook2".encode()))
        assert process.post("/webhook/ns_alpha/hook2", {"step": 6})[0] == 404
        wait_revision(process, put(client, f"{p}default/webhooks/fallback_hook", LOG))
        assert process.post("/webhook/fallback_hook", {"step": 7})[0] == 200
        assert health(process)["config"]["connections"] == 1
    finally:
        process.stop()


def test_seed_001_compose_etcd(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient) -> None:
    """Seed 001: bearer-protected log and save webhooks in default, one in staging, added at runtime."""
    p = etcd_prefix
    auth = {"authorization": "Bearer test_token_123"}
    put(client, f"{p}default/webhooks/test_log", {**LOG, **auth, "module-config": {"pretty_print": True}})
    put(
        client,
        f"{p}default/webhooks/test_save",
        {"data_type": "json", "module": "save_to_disk", **auth, "module-config": {"path": "webhooks"}},
    )
    revision = put(client, f"{p}staging/webhooks/test_log_staging", {**LOG, "authorization": "Bearer staging_token_456"})
    process = start_cwm(tmp_path, etcd.address, p)
    try:
        wait_revision(process, revision)
        bearer = {"Authorization": "Bearer test_token_123"}
        assert process.post("/webhook/test_log", {"test": "data", "source": "etcd_integration_test"}, bearer)[0] == 200
        assert process.post("/webhook/test_save", {"test": "save_data"}, bearer)[0] == 200
        assert [json.loads(f.read_text()) for f in (tmp_path / "webhooks").iterdir()] == [{"test": "save_data"}]
        assert process.post("/webhook/staging/test_log_staging", {"env": "staging"}, {"Authorization": "Bearer staging_token_456"})[0] == 200
        assert process.post("/webhook/test_log", {}, {"Authorization": "Bearer staging_token_456"})[0] == 401
        assert process.request("GET", "/")[0] == 200
        new = {**LOG, **auth, "module-config": {"pretty_print": True}}
        wait_revision(process, put(client, f"{p}default/webhooks/new_hook", new))
        assert process.post("/webhook/new_hook", {"dynamic": True}, bearer)[0] == 200
    finally:
        process.stop()


def test_bad_keys_are_skipped_and_listed(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient) -> None:
    """Bad JSON, an unknown module and a bad namespace are listed in /health; the rest serve."""
    p = etcd_prefix
    client.put(f"{p}ns/webhooks/broken".encode(), b"{not json")
    put(client, f"{p}ns/webhooks/unknown", {"module": "nope"})
    put(client, f"{p}bad.ns/webhooks/x", LOG)
    revision = put(client, f"{p}ns/webhooks/good", LOG)
    process = start_cwm(tmp_path, etcd.address, p)
    try:
        body = wait_revision(process, revision)
        assert {r["name"] for r in body["config"]["rejected"]} == {"broken", "unknown"}
        assert [s["key"] for s in body["config"]["etcd"]["skipped_keys"]] == [f"{p}bad.ns/webhooks/x"]
        assert process.post("/webhook/ns/good")[0] == 200
        assert process.post("/webhook/ns/broken")[0] == 404
    finally:
        process.stop()


def test_etcd_down_at_start_then_up_then_away(tmp_path: Path, fresh_etcd: Any) -> None:
    """Down at start: 200 health 'connecting' and 503 webhooks; up: served; gone: cache keeps serving."""
    server = EtcdServer()
    try:
        process = start_cwm(tmp_path, server.address, "/cwm/")
        try:
            body = health(process)
            assert body["components"]["etcd"] == "connecting"
            code, detail, response = process.post("/webhook/hook")
            assert (code, detail) == (503, {"detail": "Configuration not loaded yet"})
            assert response.getheader("Retry-After")
            server.start()
            c = EtcdClient(EtcdOptions(endpoints=(server.address,)))
            try:
                revision = put(c, "/cwm/default/webhooks/hook", LOG)
            finally:
                c.close()
            wait_for(process, lambda h: h["components"]["etcd"] == "healthy", timeout=90)
            wait_revision(process, revision)
            assert process.post("/webhook/hook")[0] == 200
            server.stop()
            wait_for(process, lambda h: h["components"]["etcd"] == "disconnected", timeout=30)
            assert process.post("/webhook/hook")[0] == 200
        finally:
            process.stop()
    finally:
        server.cleanup()


def test_instances_register_and_vanish_on_sigterm(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient
) -> None:
    """Two processes on one etcd list each other; a stopped one's lease is revoked at once."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_cwm(tmp_path / "a", etcd.address, etcd_prefix)
    second = start_cwm(tmp_path / "b", etcd.address, etcd_prefix)
    try:
        ids = {health(first)["config"]["instance_id"], health(second)["config"]["instance_id"]}
        wait_for(first, lambda h: {i["id"] for i in h["config"]["etcd"]["instances"]} == ids)
        wait_revision(second, put(client, f"{etcd_prefix}default/webhooks/shared", LOG))
        wait_revision(first, client.status().header.revision)
        assert first.post("/webhook/shared")[0] == 200 and second.post("/webhook/shared")[0] == 200
        second.stop()
        kvs, _ = client.range_prefix(f"{etcd_prefix}global/instances/".encode())
        assert [json.loads(kv.value)["id"] for kv in kvs] == [health(first)["config"]["instance_id"]]
    finally:
        first.stop()
        second.stop()


def test_instance_registers_again_after_losing_its_lease(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: str, client: EtcdClient
) -> None:
    """If the instance's lease is lost (revoked here, as an outage would expire it), it registers anew."""
    process = start_cwm(tmp_path, etcd.address, etcd_prefix)
    try:
        instance = health(process)["config"]["instance_id"]
        key = f"{etcd_prefix}global/instances/{instance}".encode()
        wait_for(process, lambda h: [i["id"] for i in h["config"]["etcd"]["instances"]] == [instance])
        registered = client.range_key(key)
        assert registered is not None and registered.lease
        client.lease_revoke(registered.lease)
        wait_for(process, lambda h: h["config"]["etcd"]["instances"] == [], timeout=5)
        # The keep-alive runs every TTL/3 (5 s): the instance is back within it.
        wait_for(process, lambda h: [i["id"] for i in h["config"]["etcd"]["instances"]] == [instance], timeout=10)
        again = client.range_key(key)
        assert again is not None and again.lease and again.lease != registered.lease
    finally:
        process.stop()
