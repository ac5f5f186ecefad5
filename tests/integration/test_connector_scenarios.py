"""Scenario 04 (connector_advanced) against real processes: a cloud cwm with Webhook Connect on a
real redis-server, ``twistd -n cwm-connector`` over each protocol, local cwm targets, and etcd.

Upstream's scenario 04 steps with its channels, tokens and limits; every sleep of the
original is a bounded wait on an event, and the fixes it noted apply: a long-poll with a queued
message answers 200, a full queue answers 503 with Retry-After and stores exactly
``max_queue_size``, and saved files are JSON, so each check names the exact sequence numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cwm.etcd.client import EtcdClient, EtcdOptions
from tests.integration.connector_env import (
    ADMIN_HEADERS,
    PROTOCOLS,
    ConnectorProcess,
    LocalCwm,
    Processes,
    channel_stats,
    connector_env,
    dead_letters,
    hook,
    procs,  # noqa: F401  (fixture)
    send,
    settled_stats,
    until,
)
from tests.integration.cwm_process import CwmProcess
from tests.integration.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

ALPHA, ALPHA_TOKEN = "channel-alpha", "alpha_secret_token_123"
BETA, BETA_TOKEN = "channel-beta", "beta_secret_token_456"
OVERFLOW, OVERFLOW_TOKEN = "channel-overflow", "overflow_token_789"
MODULE, MODULE_TOKEN = "channel-module", "module_secret_token_321"
# Beyond upstream: a third channel, so that all three protocols run side by side.
GAMMA, GAMMA_TOKEN = "channel-gamma", "gamma_secret_token_654"

_LIMITS: dict[str, Any] = {"ttl_seconds": 3600, "max_queue_size": 100, "max_connections": 10, "max_in_flight": 50}
CLOUD_HOOKS = {
    "cloud-webhook-alpha": hook(ALPHA, ALPHA_TOKEN, **_LIMITS),
    # Two more webhooks feeding channel-alpha (same settings), for the target routing.
    "cloud-webhook-alpha-2": hook(ALPHA, ALPHA_TOKEN, **_LIMITS),
    "cloud-webhook-alpha-3": hook(ALPHA, ALPHA_TOKEN, **_LIMITS),
    "cloud-webhook-beta": hook(BETA, BETA_TOKEN, **_LIMITS),
    "cloud-webhook-gamma": hook(GAMMA, GAMMA_TOKEN, **_LIMITS),
    "cloud-webhook-overflow": hook(OVERFLOW, OVERFLOW_TOKEN, ttl_seconds=3600, max_queue_size=3, max_connections=5),
    "cloud-webhook-module-mode": hook(MODULE, MODULE_TOKEN, ttl_seconds=3600, max_queue_size=100, max_connections=10),
}


def send_to(cloud: CwmProcess, endpoint: str, sequences: range | list[int]) -> None:
    """Upstream's send_webhooks.sh: each body names the endpoint it was posted to."""
    send(cloud, endpoint, sequences, channel_endpoint=endpoint)


def poll(cloud: CwmProcess, channel: str, token: str, timeout: int = 1, max_messages: int = 5) -> tuple[int, Any, Any]:
    return cloud.request("GET", f"/connect/stream/{channel}/poll?timeout={timeout}&max_messages={max_messages}",
                         headers={"Authorization": f"Bearer {token}"})


def ack(cloud: CwmProcess, connection_id: str, message_id: str, token: str) -> tuple[int, Any]:
    status, body, _ = cloud.request("POST", f"/connect/ack?message_id={message_id}&status=ack",
                                    headers={"X-Connection-ID": connection_id, "Authorization": f"Bearer {token}"})
    return status, body


def polled_sequences(body: Any) -> list[int]:
    return [m["payload"]["sequence"] for m in body["messages"]]


def saved_in(directory: Path) -> list[Any]:
    """The JSON documents save_to_disk wrote in ``directory`` (none if it does not exist)."""
    if not directory.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.iterdir()) if p.suffix == ".json"]


def sequences_in(directory: Path) -> list[int]:
    return sorted(item["sequence"] for item in saved_in(directory))


def http_connector(procs: Processes, cloud: CwmProcess, channel: str, token: str, protocol: str, local: LocalCwm,
                   webhook_id: str, name: str = "connector") -> ConnectorProcess:
    return procs.connector(connector_env(cloud, channel, token, protocol,
                                         CONNECTOR_TARGET_URL=f"{local.url}/webhook/{webhook_id}"), name)


# --- admin-api, long-poll, token-rotation, queue-overflow ----------------------------------------


def test_admin_api(procs: Processes) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send_to(cloud, "cloud-webhook-alpha", [1])
    send_to(cloud, "cloud-webhook-beta", [1])
    status, body, _ = cloud.request("GET", "/admin/webhook-connect/health")  # no token needed
    assert (status, body["status"]) == (200, "healthy")
    status, body, _ = cloud.request("GET", "/admin/webhook-connect/channels", headers=ADMIN_HEADERS)
    assert status == 200
    assert len(body) >= 2 and {ALPHA, BETA} <= {c["name"] for c in body}
    status, body, _ = cloud.request("GET", f"/admin/webhook-connect/channels/{ALPHA}", headers=ADMIN_HEADERS)
    assert (status, body["name"]) == (200, ALPHA)
    assert channel_stats(cloud, ALPHA)["messages_queued"] == 1
    status, body, _ = cloud.request("GET", f"/admin/webhook-connect/channels/{ALPHA}/dead-letters",
                                    headers=ADMIN_HEADERS)
    assert (status, body["messages"]) == (200, [])
    status, body, _ = cloud.request("GET", "/admin/webhook-connect/overview", headers=ADMIN_HEADERS)
    assert status == 200 and body["total_channels"] >= 2
    status, _, _ = cloud.request("GET", "/admin/webhook-connect/channels")
    assert status == 401
    status, _, _ = cloud.request("GET", "/admin/webhook-connect/channels",
                                 headers={"Authorization": "Bearer not_the_admin_token"})
    assert status == 401


def test_long_poll(procs: Processes) -> None:
    """A queued message is answered at once (200, upstream's script expected 204); what a poll
    returned stays in flight, is acked with the poll's connection id, and an empty poll is 204."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send_to(cloud, "cloud-webhook-alpha", [1])
    status, first, _ = poll(cloud, ALPHA, ALPHA_TOKEN, timeout=2)
    assert status == 200, first
    assert polled_sequences(first) == [1]
    assert first["messages"][0]["webhook_id"] == "cloud-webhook-alpha"
    send_to(cloud, "cloud-webhook-alpha", [2])
    status, second, _ = poll(cloud, ALPHA, ALPHA_TOKEN, timeout=5)
    assert status == 200, second
    assert polled_sequences(second) == [2]  # the first is in flight, not handed out again
    for answer in (first, second):
        assert ack(cloud, answer["connection_id"], answer["messages"][0]["message_id"], ALPHA_TOKEN)[0] == 200
    started = time.monotonic()
    status, body, _ = poll(cloud, ALPHA, ALPHA_TOKEN, timeout=1)
    assert (status, body) == (204, None)
    assert time.monotonic() - started >= 0.9  # answered at the timeout, not at once
    stats = settled_stats(cloud, ALPHA, 2)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (2, 0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_token_rotation(procs: Processes, protocol: str) -> None:
    """Both tokens work during the grace period, a wrong one is refused; a connector with the
    new token receives webhooks sent after the rotation (they do not reset the token), and
    one with a wrong token says why it cannot connect."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send_to(cloud, "cloud-webhook-alpha", [1])
    status, body, _ = cloud.request(
        "POST", f"/admin/webhook-connect/channels/{ALPHA}/rotate-token",
        json.dumps({"grace_period_seconds": 3600}).encode(), {**ADMIN_HEADERS, "Content-Type": "application/json"})
    assert status == 200, body
    new_token = body["new_token"]
    assert isinstance(new_token, str) and new_token and new_token != ALPHA_TOKEN
    status, polled, _ = poll(cloud, ALPHA, ALPHA_TOKEN)  # the old one, within its grace period
    assert status == 200 and polled_sequences(polled) == [1]
    assert ack(cloud, polled["connection_id"], polled["messages"][0]["message_id"], ALPHA_TOKEN)[0] == 200
    assert poll(cloud, ALPHA, new_token)[0] == 204  # accepted; nothing left to hand out
    assert poll(cloud, ALPHA, "totally_wrong_token")[0] == 401

    local = procs.local(ids=("local-receiver-a",))
    target = f"{local.url}/webhook/local-receiver-a"
    wrong = procs.connector(connector_env(cloud, ALPHA, "totally_wrong_token", protocol, CONNECTOR_TARGET_URL=target),
                            "wrong")
    rotated = procs.connector(connector_env(cloud, ALPHA, new_token, protocol, CONNECTOR_TARGET_URL=target), "rotated")
    rotated.wait_connected()
    send_to(cloud, "cloud-webhook-alpha", range(2, 5))
    rotated.wait_delivered(3)
    local.wait_accepted(3, "local-receiver-a")
    assert local.sequences("local-receiver-a") == [2, 3, 4]
    assert new_token not in "\n".join(rotated.lines)  # the token is never logged

    wrong.wait_count(r"reconnecting to the cloud in", 2)  # it tried twice
    assert wrong.count(r"connected to the cloud over") == 0 and wrong.count(r": delivered$") == 0
    assert wrong.health() == 503
    last_error = wrong.status()[1]["link"]["last_error"]
    assert "401" in last_error
    if protocol != "websocket":  # an HTTP answer: the cloud's reason comes along
        assert last_error == "cloud answered 401: Invalid channel token"
    assert wrong.count(r"the cloud refused the stream: cloud answered 401: .*; check the channel and token$") >= 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_queue_overflow(procs: Processes, protocol: str) -> None:
    """max_queue_size 3: the 4th webhook on is refused with 503 and Retry-After (upstream said 200
    and dropped it); exactly the 3 stored are delivered, and the queue takes webhooks again."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    answers = []
    for sequence in range(1, 8):  # 1 (upstream's first webhook), then its 6 overflow posts
        status, body, response = cloud.post("/webhook/cloud-webhook-overflow",
                                            {"event": "overflow_test", "sequence": sequence})
        answers.append((status, response.getheader("Retry-After"), body))
    assert [a[0] for a in answers] == [200, 200, 200, 503, 503, 503, 503], answers
    for status, retry_after, body in answers[3:]:
        assert retry_after is not None and int(retry_after) > 0
        assert "queue is full" in body["detail"]
    assert channel_stats(cloud, OVERFLOW)["messages_queued"] == 3
    local = procs.local(ids=("local-receiver",))
    connector = http_connector(procs, cloud, OVERFLOW, OVERFLOW_TOKEN, protocol, local, "local-receiver")
    connector.wait_delivered(3)
    local.wait_accepted(3)
    assert local.sequences() == [1, 2, 3]
    stats = settled_stats(cloud, OVERFLOW, 3)
    assert (stats["messages_queued"], stats["messages_in_flight"]) == (0, 0)
    send(cloud, "cloud-webhook-overflow", [8])  # room again
    connector.wait_delivered(4)
    local.wait_accepted(4)
    assert local.sequences() == [1, 2, 3, 8]


# --- multi-channel, websocket, target-routing, retry-delivery ------------------------------------


def test_multi_channel(procs: Processes) -> None:
    """SSE on channel-alpha, WebSocket on channel-beta, long-poll on channel-gamma, all at once:
    each local cwm gets exactly its own channel's six webhooks."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    lanes = [  # (endpoint, channel, token, protocol, local name, local webhook id)
        ("cloud-webhook-alpha", ALPHA, ALPHA_TOKEN, "sse", "local-a", "local-receiver-a"),
        ("cloud-webhook-beta", BETA, BETA_TOKEN, "websocket", "local-b", "local-receiver-b"),
        ("cloud-webhook-gamma", GAMMA, GAMMA_TOKEN, "long_poll", "local-c", "local-receiver-c"),
    ]
    for endpoint, *_ in lanes:
        send_to(cloud, endpoint, [1])
    locals_ = [procs.local(name, ids=(webhook_id,)) for _, _, _, _, name, webhook_id in lanes]
    connectors = [
        http_connector(procs, cloud, channel, token, protocol, local, webhook_id, f"connector-{protocol}")
        for (_, channel, token, protocol, _, webhook_id), local in zip(lanes, locals_)
    ]
    for connector in connectors:
        connector.wait_connected()
    for endpoint, *_ in lanes:
        send_to(cloud, endpoint, range(2, 7))
    for (endpoint, channel, _, protocol, _, webhook_id), local, connector in zip(lanes, locals_, connectors):
        connector.wait_delivered(6)
        local.wait_accepted(6, webhook_id)
        saved = local.saved(webhook_id)
        assert sorted(item["sequence"] for item in saved) == list(range(1, 7)), protocol
        assert {item["channel_endpoint"] for item in saved} == {endpoint}, protocol
        assert connector.count(f"over {protocol} ") == 1
        stats = settled_stats(cloud, channel, 6)
        assert (stats["messages_delivered"], stats["messages_queued"]) == (6, 0)
    for (*_, webhook_id), local in zip(lanes, locals_):  # nothing was written anywhere else
        assert [p.name for p in (local.directory / "logs").iterdir()] == [webhook_id]


def test_websocket(procs: Processes) -> None:
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send_to(cloud, "cloud-webhook-beta", [1])
    local = procs.local("local-b", ids=("local-receiver-b",))
    connector = http_connector(procs, cloud, BETA, BETA_TOKEN, "websocket", local, "local-receiver-b")
    connector.wait_connected()
    assert connector.count("over websocket ") == 1
    send_to(cloud, "cloud-webhook-beta", range(2, 7))
    connector.wait_delivered(6)
    local.wait_accepted(6, "local-receiver-b")
    assert local.sequences("local-receiver-b") == list(range(1, 7))
    stats = settled_stats(cloud, BETA, 6)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (6, 0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_target_routing(procs: Processes, protocol: str, tmp_path: Path) -> None:
    """One channel, three cloud webhooks: ``targets`` sends each of two to its own local webhook;
    the third has no target (and there is no default): dead letter."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    local = procs.local(ids=("local-receiver-a", "local-receiver-a2"))
    send_to(cloud, "cloud-webhook-alpha", [1])
    send_to(cloud, "cloud-webhook-alpha-2", [101])
    config = tmp_path / "connector.json"
    config.write_text(json.dumps({"targets": {
        "cloud-webhook-alpha": {"url": f"{local.url}/webhook/local-receiver-a", "retry_delay_seconds": 0.1},
        "cloud-webhook-alpha-2": {"url": f"{local.url}/webhook/local-receiver-a2", "retry_delay_seconds": 0.1},
    }}))
    connector = procs.connector(connector_env(cloud, ALPHA, ALPHA_TOKEN, protocol), args=["--config", str(config)])
    connector.wait_connected()
    send_to(cloud, "cloud-webhook-alpha", range(2, 7))
    send_to(cloud, "cloud-webhook-alpha-2", range(102, 105))
    send_to(cloud, "cloud-webhook-alpha-3", [201])
    connector.wait_delivered(10)
    connector.wait_count(r"for cloud-webhook-alpha-3: dead_lettered \(no target for webhook_id 'cloud-webhook-alpha-3'\)$", 1)
    local.wait_accepted(6, "local-receiver-a")
    local.wait_accepted(4, "local-receiver-a2")
    assert local.sequences("local-receiver-a") == list(range(1, 7))
    assert local.sequences("local-receiver-a2") == [101, 102, 103, 104]
    assert {item["channel_endpoint"] for item in local.saved("local-receiver-a")} == {"cloud-webhook-alpha"}
    assert {item["channel_endpoint"] for item in local.saved("local-receiver-a2")} == {"cloud-webhook-alpha-2"}
    until(lambda: len(dead_letters(cloud, ALPHA)) == 1)
    (letter,) = dead_letters(cloud, ALPHA)
    assert letter["payload"] == {"event": "test_event", "sequence": 201, "channel_endpoint": "cloud-webhook-alpha-3"}
    assert letter["webhook_id"] == "cloud-webhook-alpha-3"
    stats = settled_stats(cloud, ALPHA, 10)
    assert (stats["messages_delivered"], stats["messages_dead_lettered"], stats["messages_queued"]) == (10, 1, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retry_delivery(procs: Processes, protocol: str) -> None:
    """1 + 5 sent while the connector and the local cwm are down: all six once they start."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send_to(cloud, "cloud-webhook-alpha", [1])
    send_to(cloud, "cloud-webhook-alpha", range(2, 7))
    assert channel_stats(cloud, ALPHA)["messages_queued"] == 6
    local = procs.local("local-a", ids=("local-receiver-a",))
    connector = http_connector(procs, cloud, ALPHA, ALPHA_TOKEN, protocol, local, "local-receiver-a")
    connector.wait_delivered(6)
    local.wait_accepted(6, "local-receiver-a")
    assert local.sequences("local-receiver-a") == list(range(1, 7))
    stats = settled_stats(cloud, ALPHA, 6)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (6, 0, 0)


# --- the connector's module and etcd delivery modes -----------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_module_mode(procs: Processes, protocol: str) -> None:
    """Upstream's connector-module service: channel-module's webhooks run through a local
    webhooks.json's save_to_disk, whose path comes from the connector's environment."""
    cloud = procs.cloud.start(CLOUD_HOOKS)
    send_to(cloud, "cloud-webhook-module-mode", [1])
    workdir = procs.tmp_path / "connector"
    workdir.mkdir()
    (workdir / "webhooks.json").write_text(json.dumps({"cloud-webhook-module-mode": {
        "data_type": "json", "module": "save_to_disk", "module-config": {"path": "{$MODULE_SAVE_DIR}"},
    }}))
    connector = procs.connector(connector_env(cloud, MODULE, MODULE_TOKEN, protocol,
                                              CONNECTOR_WEBHOOKS_CONFIG="webhooks.json",
                                              MODULE_SAVE_DIR="logs/module-mode"))
    connector.wait_connected()
    assert connector.count(r"delivery mode module,") == 1
    send_to(cloud, "cloud-webhook-module-mode", range(2, 7))
    connector.wait_delivered(6)
    saved = saved_in(workdir / "logs" / "module-mode")
    assert sorted(item["sequence"] for item in saved) == list(range(1, 7))
    assert {item["channel_endpoint"] for item in saved} == {"cloud-webhook-module-mode"}
    assert not (workdir / "{$MODULE_SAVE_DIR}").exists()
    stats = settled_stats(cloud, MODULE, 6)
    assert (stats["messages_delivered"], stats["messages_queued"], stats["messages_in_flight"]) == (6, 0, 0)


def test_etcd_mode(procs: Processes, etcd: EtcdServer, etcd_prefix: str) -> None:
    """Entries of CONNECTOR_NAMESPACE, live from a real etcd: a changed entry applies to the
    next message; another namespace's entry for the same id is not used."""
    namespace = "connector-ns"
    client = EtcdClient(EtcdOptions(endpoints=(etcd.address,)))
    try:
        def put(in_namespace: str, path: str) -> int:
            entry = {"data_type": "json", "module": "save_to_disk", "module-config": {"path": path}}
            key = f"{etcd_prefix}{in_namespace}/webhooks/cloud-webhook-module-mode"
            return client.put(key.encode(), json.dumps(entry).encode())

        put("default", "logs/default-ns")
        put(namespace, "logs/first")
        cloud = procs.cloud.start(CLOUD_HOOKS)
        connector = procs.connector(connector_env(
            cloud, MODULE, MODULE_TOKEN, "websocket", CONNECTOR_ETCD_HOST=etcd.address[0],
            CONNECTOR_ETCD_PORT=str(etcd.address[1]), CONNECTOR_ETCD_PREFIX=etcd_prefix,
            CONNECTOR_NAMESPACE=namespace))
        workdir = procs.tmp_path / "connector"
        connector.wait_connected()
        assert connector.count(r"delivery mode etcd,") == 1
        send_to(cloud, "cloud-webhook-module-mode", [1])
        connector.wait_delivered(1)
        assert sequences_in(workdir / "logs" / "first") == [1]

        revision = put(namespace, "logs/second")
        until(lambda: connector.status()[1]["delivery"]["etcd_status"]["revision"] >= revision)
        send_to(cloud, "cloud-webhook-module-mode", [2])
        connector.wait_delivered(2)
        assert sequences_in(workdir / "logs" / "second") == [2]
        assert sequences_in(workdir / "logs" / "first") == [1]
        assert not (workdir / "logs" / "default-ns").exists()
        status = connector.status()[1]["delivery"]
        assert (status["mode"], status["namespace"], status["webhooks"]) == ("etcd", namespace, 1)
    finally:
        client.close()
