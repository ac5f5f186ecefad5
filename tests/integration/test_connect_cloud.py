"""Webhook Connect, cloud side, against a real ``twistd -n cwm`` and a real redis-server.

Clients run on the test's reactor: treq for HTTP, SSE and long-poll, autobahn
for WebSocket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests.integration.connect_clients import WAIT, SSEClient, WSClient, bounded, call, ws_refused
from tests.integration.cwm_process import CwmProcess, start_cwm
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

ADMIN = "admin_secret_123"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def hook(channel: str, token: str, data_type: str = "json", **config: Any) -> dict[str, Any]:
    return {
        "data_type": data_type,
        "module": "webhook_connect",
        "module-config": {"channel": channel, "channel_token": token, **config},
    }


class Cloud:
    """Starts cloud cwm processes sharing one Redis (and one key prefix); stops them all."""

    def __init__(self, tmp_path: Path, redis: RedisServer, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.redis = redis
        self.prefix = prefix
        self.processes: list[CwmProcess] = []

    def start(self, webhooks: dict[str, Any], name: str = "a", args: tuple[str, ...] = (), **env: str) -> CwmProcess:
        directory = self.tmp_path / name
        directory.mkdir(exist_ok=True)
        environ = {
            "WEBHOOK_CONNECT_ENABLED": "true",
            "WEBHOOK_CONNECT_REDIS_URL": self.redis.url,
            "WEBHOOK_CONNECT_KEY_PREFIX": self.prefix,
            "WEBHOOK_CONNECT_ADMIN_TOKEN": ADMIN,
            "WEBHOOK_CONNECT_INSTANCE_ID": f"test-{name}",
        }
        environ.update(env)
        process = start_cwm(directory, webhooks, env=environ, args=args)
        process.wait_for(r"configuration loaded")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def cloud(tmp_path: Path, redis: RedisServer, redis_prefix: str) -> Iterator[Cloud]:
    clouds = Cloud(tmp_path, redis, redis_prefix)
    try:
        yield clouds
    finally:
        clouds.stop()


def base(process: CwmProcess) -> str:
    return f"http://127.0.0.1:{process.port}"


async def post(process: CwmProcess, webhook_id: str, body: Any = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    return await call("POST", f"{base(process)}/webhook/{webhook_id}", body if body is not None else {"n": 1},
                      headers, raw)


async def admin(process: CwmProcess, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    return await call(method, f"{base(process)}/admin/webhook-connect{path}", body,
                      ADMIN_HEADERS if headers is None else headers)


async def stats(process: CwmProcess, channel: str) -> dict[str, Any]:
    code, body, _ = await admin(process, "GET", f"/channels/{channel}/stats")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def ack(process: CwmProcess, connection_id: str, message_id: str, token: str, status: str = "ack",
              retry: str = "true") -> tuple[int, Any]:
    code, body, _ = await call(
        "POST",
        f"{base(process)}/connect/ack?message_id={message_id}&status={status}&retry={retry}",
        headers={"X-Connection-ID": connection_id, "Authorization": f"Bearer {token}"},
    )
    return code, body


async def eventually(what: str, check: Callable[[], Awaitable[Any]], seconds: float = WAIT) -> Any:
    """Re-check ``check`` (on the reactor, every 50 ms) until it is truthy; bounded."""
    deadline = time.monotonic() + seconds
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {seconds} s (last: {last!r})")
        await deferLater(reactor, 0.05, lambda: None)


def counts(s: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (s["messages_queued"], s["messages_in_flight"], s["messages_delivered"], s["messages_expired"],
            s["messages_dead_lettered"])


# --- delivery over each protocol --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_github_signed_non_utf8_body_arrives_byte_identical_over_sse(cloud: Cloud) -> None:
    """The exact bytes and the signature header arrive; credentials stay behind; ack settles it."""
    process = cloud.start({"gh": hook("relay", "tok", data_type="blob")})
    sse = await SSEClient.open(base(process), "relay", "tok")  # the channel exists before any webhook
    raw = b'{"action":"opened","note":"caf\xe9 \xff\x00"}'
    signature = "sha256=" + hmac.new(b"gh-secret", raw, hashlib.sha256).hexdigest()
    code, body, _ = await post(process, "gh", raw=raw, headers={
        "Content-Type": "application/octet-stream",
        "X-Hub-Signature-256": signature,
        "X-GitHub-Event": "pull_request",
        "Authorization": "Bearer sender-credential",
        "Cookie": "session=abc",
    })
    assert (code, body) == (200, {"message": "200 OK"})
    message, event_id = await sse.next_webhook()
    assert base64.b64decode(message["body_base64"]) == raw
    assert message["headers"]["x-hub-signature-256"] == signature
    assert message["headers"]["x-github-event"] == "pull_request"
    assert "authorization" not in message["headers"] and "cookie" not in message["headers"]
    assert event_id == message["stream_id"] and message["webhook_id"] == "gh" and message["delivery_count"] == 1
    assert message["type"] == "webhook" and message["sequence"] == 1 and message["message_id"].startswith("msg_")
    assert counts(await stats(process, "relay"))[:3] == (0, 1, 0)
    assert await ack(process, sse.connection_id, message["message_id"], "tok") == (
        200, {"status": "ok", "message_id": message["message_id"], "outcome": "acked"})
    assert await ack(process, sse.connection_id, message["message_id"], "tok") == (404, {"detail": "Message not in flight"})
    assert counts(await stats(process, "relay")) == (0, 0, 1, 0, 0)
    sse.close()


@pytest_twisted.ensureDeferred
async def test_forward_credentials_keeps_authorization(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("fc", "tok", forward_credentials=True)})
    ws = await WSClient.open(process.port, "fc", "tok")
    assert (await post(process, "h", headers={"Authorization": "Bearer x"}))[0] == 200
    message = await ws.webhook()
    assert message["headers"]["authorization"] == "Bearer x" and message["payload"] == {"n": 1}
    await ws.close()


@pytest_twisted.ensureDeferred
async def test_websocket_nack_retry_redelivers_then_dead_letter_replay_and_purge(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("ws", "tok", max_deliveries=3)})
    ws = await WSClient.open(process.port, "ws", "tok")
    assert (await post(process, "h", {"k": "v"}))[0] == 200
    first = await ws.webhook()
    ws.nack(first["message_id"])  # retry: comes back to the client already connected
    again = await ws.webhook()
    assert (again["message_id"], again["delivery_count"]) == (first["message_id"], 2)
    ws.nack(again["message_id"], retry=False)
    letters = await eventually("dead-lettered", lambda: dead_letters(process, "ws"))
    assert [(m["message_id"], m["reason"], m["payload"]) for m in letters] == [
        (first["message_id"], "nack without retry", {"k": "v"})]
    assert counts(await stats(process, "ws")) == (0, 0, 0, 0, 1)
    code, body, _ = await admin(process, "POST", "/channels/ws/dead-letters/replay",
                                {"message_ids": [first["message_id"], "msg_unknown"]})
    assert (code, body) == (200, {"channel": "ws", "replayed": 1, "not_found": ["msg_unknown"], "next_cursor": None})
    replayed = await ws.webhook()
    assert (replayed["message_id"], replayed["delivery_count"]) == (first["message_id"], 1)
    ws.nack(replayed["message_id"], retry=False)
    await eventually("dead again", lambda: dead_letters(process, "ws"))
    assert (await admin(process, "DELETE", "/channels/ws/dead-letters"))[:2] == (200, {"channel": "ws", "purged": 1})
    assert await dead_letters(process, "ws") == []
    # max_deliveries: three failed deliveries and it is a dead letter.
    assert (await post(process, "h"))[0] == 200
    for attempt in (1, 2, 3):
        m = await ws.webhook()
        assert m["delivery_count"] == attempt
        ws.nack(m["message_id"])
    [letter] = await eventually("dead after 3", lambda: dead_letters(process, "ws"))
    assert letter["delivery_count"] == 3 and letter["reason"] == "nack"
    await ws.close()


async def dead_letters(process: CwmProcess, channel: str) -> list[dict[str, Any]]:
    code, body, _ = await admin(process, "GET", f"/channels/{channel}/dead-letters")
    assert code == 200, body
    assert body["count"] == len(body["messages"])
    return body["messages"]  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_long_poll_returns_up_to_max_messages_which_stay_in_flight_until_acked(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("lp", "tok", ack_timeout_seconds=1, max_deliveries=2)})
    url = f"{base(process)}/connect/stream/lp/poll"
    auth = {"Authorization": "Bearer tok"}
    assert (await call("GET", f"{url}?timeout=1", headers=auth))[0] == 204
    for n in range(3):
        assert (await post(process, "h", {"n": n}))[0] == 200
    code, body, _ = await call("GET", f"{url}?timeout=5&max_messages=2", headers=auth)
    assert code == 200 and len(body["messages"]) == 2 and body["channel"] == "lp"
    assert [m["payload"] for m in body["messages"]] == [{"n": 0}, {"n": 1}]
    assert counts(await stats(process, "lp"))[:2] == (1, 2)  # returned messages stay in flight
    cid = body["connection_id"]
    assert (await ack(process, cid, body["messages"][0]["message_id"], "tok"))[0] == 200
    assert await ack(process, "poll_nope", "m", "tok") == (404, {"detail": "Connection not found"})
    assert await ack(process, cid, body["messages"][1]["message_id"], "wrong") == (401, {"detail": "Invalid token"})
    # The third is waiting: the next poll gets it at once; it is acked.
    code, third, _ = await call("GET", f"{url}?timeout=5&max_messages=5", headers=auth)
    assert code == 200 and [m["payload"] for m in third["messages"]] == [{"n": 2}]
    assert (await ack(process, third["connection_id"], third["messages"][0]["message_id"], "tok"))[0] == 200
    # The second is never acked: after the ack timeout it comes back, counted.
    code, later, _ = await call("GET", f"{url}?timeout=10&max_messages=5", headers=auth)
    assert code == 200 and [(m["payload"], m["delivery_count"]) for m in later["messages"]] == [({"n": 1}, 2)]
    # Not acked again: max_deliveries 2 sends it to the dead letters, reason "ack timeout".
    [letter] = await eventually("timed out twice", lambda: dead_letters(process, "lp"))
    assert letter["payload"] == {"n": 1} and letter["reason"] == "ack timeout"
    assert counts(await stats(process, "lp")) == (0, 0, 2, 0, 1)


@pytest.mark.parametrize(
    "query, detail",
    [
        ("timeout=0", "timeout: expected a whole number from 1 to 60"),
        ("timeout=61", "timeout: expected a whole number from 1 to 60"),
        ("max_messages=101", "max_messages: expected a whole number from 1 to 100"),
        ("max_messages=x", "max_messages: expected a whole number from 1 to 100"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_long_poll_parameters_out_of_range_are_422(cloud: Cloud, query: str, detail: str) -> None:
    process = cloud.start({"h": hook("lp", "tok")})
    code, body, _ = await call("GET", f"{base(process)}/connect/stream/lp/poll?{query}",
                               headers={"Authorization": "Bearer tok"})
    assert (code, body) == (422, {"detail": detail})


@pytest_twisted.ensureDeferred
async def test_refusals_of_the_stream_routes(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("ch", "tok", max_connections=1)})
    sse_url = f"{base(process)}/connect/stream/ch/sse"
    assert (await call("GET", sse_url))[:2] == (401, {"detail": "Missing channel token (Authorization: Bearer, or ?token=)"})
    assert (await call("GET", sse_url, headers={"Authorization": "Bearer nope"}))[:2] == (401, {"detail": "Invalid channel token"})
    assert (await call("GET", f"{base(process)}/connect/stream/other/sse?token=tok"))[:2] == (
        404, {"detail": "Channel 'other' not found"})
    # The header wins over ?token=.
    assert (await call("GET", f"{sse_url}?token=tok", headers={"Authorization": "Bearer nope"}))[0] == 401
    holder = await SSEClient.open(base(process), "ch", "tok")
    code, body, headers = await call("GET", f"{base(process)}/connect/stream/ch/poll?token=tok&timeout=1")
    assert (code, body) == (503, {"detail": "Max connections reached (1) for channel 'ch'"})
    assert headers.getRawHeaders("Retry-After") == ["5"]
    assert "503" in await ws_refused(process.port, "ch", "tok")
    assert "401" in await ws_refused(process.port, "ch", "nope")
    assert (await call("GET", f"{base(process)}/connect/stream/ch", headers={"Authorization": "Bearer tok"}))[:2] == (
        426, {"detail": "This is the WebSocket endpoint: upgrade to WebSocket"})
    # ack: every header required (422).
    ack_url = f"{base(process)}/connect/ack?message_id=m"
    assert (await call("POST", ack_url, headers={"Authorization": "Bearer tok"}))[:2] == (
        422, {"detail": "X-Connection-ID: required header"})
    assert (await call("POST", ack_url, headers={"X-Connection-ID": "c"}))[:2] == (
        422, {"detail": "Authorization: required header"})
    assert (await call("POST", f"{base(process)}/connect/ack", headers={"X-Connection-ID": "c"}))[:2] == (
        422, {"detail": "message_id: required (query parameter or JSON body)"})
    # status
    status_url = f"{base(process)}/connect/status/ch"
    assert (await call("GET", status_url))[:2] == (401, {"detail": "Missing authorization header"})
    assert (await call("GET", status_url, headers={"Authorization": "Bearer nope"}))[0] == 401
    assert (await call("GET", f"{base(process)}/connect/status/zz", headers={"Authorization": "Bearer tok"}))[0] == 404
    code, body, _ = await call("GET", status_url, headers={"Authorization": "Bearer tok"})
    assert code == 200 and body["connected"] is True and body["stats"]["connected_clients"] == 1
    holder.close()
    await bounded(holder.ended)


# --- no silent drop ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_full_is_503_and_nothing_is_stored_past_the_limit(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("of", "tok", max_queue_size=3), "big": hook("of2", "tok", max_message_size=1024)})
    for n in range(3):
        assert (await post(process, "h", {"n": n}))[0] == 200
    for n in range(3):
        code, body, headers = await post(process, "h", {"n": 10 + n})
        assert (code, body) == (503, {"detail": "Channel 'of' queue is full (3 messages)"})
        assert headers.getRawHeaders("Retry-After") == ["10"]
    assert counts(await stats(process, "of"))[0] == 3
    code, body, _ = await post(process, "big", raw=b'{"x": "' + b"a" * 2000 + b'"}')
    assert (code, body) == (413, {"detail": "Payload too large for channel 'of2': 2009 bytes (max: 1024)"})
    assert counts(await stats(process, "of2"))[0] == 0


@pytest_twisted.ensureDeferred
async def test_redis_down_is_503_and_it_all_comes_back(tmp_path: Path, fresh_redis: RedisServer) -> None:
    clouds = Cloud(tmp_path, fresh_redis, "rd")
    process = clouds.start({"h": hook("rd", "tok")})
    try:
        assert (await post(process, "h", {"n": 1}))[0] == 200
        fresh_redis.kill()
        code, body, headers = await post(process, "h", {"n": 2})
        assert (code, body) == (503, {"detail": "Webhook Connect buffer unavailable"})
        assert headers.getRawHeaders("Retry-After") == ["5"]
        code, body, _ = await admin(process, "GET", "/health", headers={})
        assert code == 503 and body["status"] == "unhealthy" and body["buffer"] is False
        code, body, _ = await call("GET", f"{base(process)}/health")
        assert body["components"]["webhook_connect"] == "degraded"
        fresh_redis.start()
        await eventually("accepting again", lambda: post_status(process, "h", {"n": 3}), seconds=30)
        ws = await WSClient.open(process.port, "rd", "tok")
        got = [(await ws.webhook())["payload"]["n"] for _ in range(2)]
        assert sorted(got) == [1, 3]  # what was acknowledged before the crash survived it
        await ws.close()
    finally:
        clouds.stop()


async def post_status(process: CwmProcess, webhook_id: str, body: Any) -> bool:
    return (await post(process, webhook_id, body))[0] == 200


@pytest_twisted.ensureDeferred
async def test_ttl_expiry_is_counted(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("ttl", "tok", ttl_seconds=1)})
    assert (await post(process, "h"))[0] == 200
    await eventually("expired", lambda: stats_match(process, "ttl", (0, 0, 0, 1, 0)), seconds=20)


async def stats_match(process: CwmProcess, channel: str, expected: tuple[int, ...]) -> bool:
    return counts(await stats(process, channel)) == expected


# --- tokens ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_token_rotation_grace_restart_and_reload(cloud: Cloud) -> None:
    webhooks = {"h": hook("rot", "configured")}
    process = cloud.start(webhooks)
    poll = f"{base(process)}/connect/stream/rot/poll?timeout=1"

    async def poll_code(token: str) -> int:
        return (await call("GET", poll, headers={"Authorization": f"Bearer {token}"}))[0]

    code, body, _ = await admin(process, "POST", "/channels/rot/rotate-token", {"grace_period_seconds": 3600})
    assert code == 200 and body["new_token"].startswith("ch_tok_") and len(body["new_token"]) == 55
    assert body["message"] == "Old token valid for 3600 seconds grace period"
    first = body["new_token"]
    assert (await poll_code(first), await poll_code("configured"), await poll_code("totally_wrong_token")) == (204, 204, 401)
    code, body, _ = await admin(process, "POST", "/channels/rot/rotate-token", {"grace_period_seconds": 0})
    second = body["new_token"]
    assert (await poll_code(second), await poll_code(first), await poll_code("configured")) == (204, 401, 401)
    # Survives a restart and holds on a second instance.
    process.stop()
    cloud.processes.remove(process)
    process = cloud.start(webhooks)
    other = cloud.start(webhooks, name="b")
    poll = f"{base(process)}/connect/stream/rot/poll?timeout=1"
    assert (await poll_code(second), await poll_code("configured")) == (204, 401)
    assert (await call("GET", f"{base(other)}/connect/stream/rot/poll?timeout=1",
                       headers={"Authorization": f"Bearer {second}"}))[0] == 204
    # A reload that leaves channel_token alone keeps the rotation; a new configured token takes over.
    (cloud.tmp_path / "a" / "webhooks.json").write_text(json.dumps({"h": hook("rot", "configured", ttl_seconds=60)}))
    mark = len(process.lines)
    process.signal(1)
    process.wait_for("configuration loaded", start=mark)
    assert (await poll_code(second), await poll_code("configured")) == (204, 401)
    (cloud.tmp_path / "a" / "webhooks.json").write_text(json.dumps({"h": hook("rot", "fresh")}))
    mark = len(process.lines)
    process.signal(1)
    process.wait_for("configuration loaded", start=mark)
    assert (await poll_code("fresh"), await poll_code(second)) == (204, 401)
    # Bad rotate bodies.
    assert (await admin(process, "POST", "/channels/rot/rotate-token"))[:2] == (
        422, {"detail": "A JSON object body is required"})
    assert (await admin(process, "POST", "/channels/rot/rotate-token", {"grace_period_seconds": -1}))[0] == 422
    assert (await admin(process, "POST", "/channels/nope/rotate-token", {}))[:2] == (
        404, {"detail": "Channel 'nope' not found"})


# --- admin API ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_admin_routes_and_auth(cloud: Cloud) -> None:
    process = cloud.start({"alpha": hook("channel-alpha", "a", max_queue_size=100, max_in_flight=50),
                           "beta": hook("channel-beta", "b"), "alpha2": hook("channel-alpha", "a", max_queue_size=100, max_in_flight=50)})
    assert (await post(process, "alpha"))[0] == 200
    assert (await post(process, "alpha2"))[0] == 200
    assert (await post(process, "beta"))[0] == 200
    code, body, _ = await admin(process, "GET", "/health", headers={})
    assert code == 200 and body["status"] == "healthy" and body["channels_count"] == 2
    assert (await admin(process, "GET", "/channels", headers={}))[:2] == (401, {"detail": "Missing authorization header"})
    assert (await admin(process, "GET", "/channels", headers={"Authorization": "Bearer no"}))[:2] == (
        401, {"detail": "Invalid admin token"})
    code, body, _ = await admin(process, "GET", "/channels")
    assert code == 200 and [c["name"] for c in body] == ["channel-alpha", "channel-beta"]
    assert body[0]["max_queue_size"] == 100 and body[0]["webhook_ids"] == ["alpha", "alpha2"]
    ws = await WSClient.open(process.port, "channel-alpha", "a", connector="conn-1")
    code, body, _ = await admin(process, "GET", "/channels/channel-alpha")
    assert code == 200 and body["name"] == "channel-alpha" and body["config"]["max_in_flight"] == 50
    [client] = body["connected_clients"]
    assert (client["connection_id"], client["connector_id"], client["protocol"]) == (ws.connection_id, "conn-1", "websocket")
    code, webhook_stats, _ = await admin(process, "GET", "/channels/channel-alpha/webhook-stats")
    assert webhook_stats == {"channel": "channel-alpha", "webhooks": {"alpha": {"pending": 1}, "alpha2": {"pending": 1}}}
    code, s, _ = await admin(process, "GET", "/channels/channel-alpha/stats")
    assert code == 200 and s["connected_clients"] == 1 and s["messages_queued"] + s["messages_in_flight"] == 2
    code, body, _ = await admin(process, "GET", "/channels/channel-alpha/dead-letters?limit=5")
    assert (code, body) == (200, {"channel": "channel-alpha", "count": 0, "messages": [], "next_cursor": None})
    assert (await admin(process, "GET", "/channels/channel-alpha/dead-letters?limit=0"))[0] == 422
    code, body, _ = await admin(process, "GET", "/overview")
    assert code == 200 and body["total_channels"] == 2 and body["total_connections"] == 1
    assert body["channels"]["channel-alpha"]["connected_clients"] == 1
    for path in ("/channels/nope", "/channels/nope/stats", "/channels/nope/webhook-stats", "/channels/nope/dead-letters"):
        assert (await admin(process, "GET", path))[:2] == (404, {"detail": "Channel 'nope' not found"}), path
    assert (await admin(process, "DELETE", "/channels/channel-alpha/connections/wsc_nope"))[:2] == (
        404, {"detail": "Connection not found"})
    assert (await admin(process, "DELETE", f"/channels/channel-beta/connections/{ws.connection_id}"))[:2] == (
        400, {"detail": "Connection not on this channel"})
    assert (await admin(process, "DELETE", f"/channels/channel-alpha/connections/{ws.connection_id}"))[:2] == (
        200, {"status": "disconnected", "connection_id": ws.connection_id})
    code, reason = await bounded(ws.factory.closed)
    assert code == 4000 and reason == "disconnected by an administrator"
    await eventually("released", lambda: stats_clients(process, "channel-alpha", 0))
    # Every message the closed connection held is back in the queue.
    await eventually("given back", lambda: stats_match(process, "channel-alpha", (2, 0, 0, 0, 0)))


async def stats_clients(process: CwmProcess, channel: str, expected: int) -> bool:
    return (await stats(process, channel))["connected_clients"] == expected


@pytest_twisted.ensureDeferred
async def test_admin_api_off_without_its_token(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("c", "t")}, WEBHOOK_CONNECT_ADMIN_TOKEN="")
    assert (await admin(process, "GET", "/channels"))[:2] == (
        403, {"detail": "Admin API disabled. Set WEBHOOK_CONNECT_ADMIN_TOKEN environment variable."})


# --- resume, restarts, instances ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sse_reconnect_with_last_event_id_resumes(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("res", "tok")})
    sse = await SSEClient.open(base(process), "res", "tok")
    for n in range(3):
        assert (await post(process, "h", {"n": n}))[0] == 200
    got = [await sse.next_webhook() for _ in range(3)]
    assert await ack(process, sse.connection_id, got[0][0]["message_id"], "tok") == (
        200, {"status": "ok", "message_id": got[0][0]["message_id"], "outcome": "acked"})
    sse.close()
    await bounded(sse.ended)
    # The client says it saw the second event (the third was lost on the way).
    again = await SSEClient.open(base(process), "res", "tok", last_event_id=got[1][1])
    message, event_id = await again.next_webhook()
    assert (message["message_id"], event_id) == (got[2][0]["message_id"], got[2][1])
    assert message["delivery_count"] == 1  # sent again, not redelivered
    for m, _ in got[1:]:
        assert (await ack(process, again.connection_id, m["message_id"], "tok"))[0] == 200
    assert counts(await stats(process, "res")) == (0, 0, 3, 0, 0)
    again.close()


@pytest_twisted.ensureDeferred
async def test_cwm_restart_with_queued_and_in_flight_messages(cloud: Cloud) -> None:
    """Graceful stop and kill -9: everything is delivered after the restart, and nothing twice once acked.

    The ack timeout is far longer than any wait here, so the periodic reclaim (idle past the ack
    timeout) can never hand the killed instance's messages back: only the restarted instance's
    give-back of its own pending at start-up ("instance restarted") can.
    """
    webhooks = {"h": hook("rs", "tok", max_in_flight=2, ack_timeout_seconds=600)}
    process = cloud.start(webhooks)
    ws = await WSClient.open(process.port, "rs", "tok")
    for n in range(6):
        assert (await post(process, "h", {"n": n}))[0] == 200
    first = await ws.webhook()
    ws.ack(first["message_id"])
    await ws.webhook()  # held, not acked
    process.stop()
    await bounded(ws.factory.closed)
    cloud.processes.remove(process)
    process = cloud.start(webhooks)
    ws = await WSClient.open(process.port, "rs", "tok")
    seen = [first["payload"]["n"]]
    for _ in range(2):
        m = await ws.webhook()
        seen.append(m["payload"]["n"])
        ws.ack(m["message_id"])
    # kill -9 with two in flight: the restarted instance gives them back at once.
    await eventually("window full", lambda: in_flight(process, "rs", 2))
    process.process.kill()
    process.process.wait()
    cloud.processes.remove(process)
    process = cloud.start(webhooks)
    # Before any connector connects, the two messages the killed instance held are queued again
    # (well within the bound; the reclaim would take the 600 s ack timeout).
    await eventually("given back at start-up", lambda: in_flight(process, "rs", 0))
    settled = await stats(process, "rs")
    assert settled["messages_queued"] + settled["messages_delivered"] == 6
    assert settled["messages_queued"] >= 2
    ws = await WSClient.open(process.port, "rs", "tok")
    while len(seen) < 6:
        m = await ws.webhook()
        if m["payload"]["n"] not in seen:
            seen.append(m["payload"]["n"])
        ws.ack(m["message_id"])
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    await eventually("all acked", lambda: stats_match(process, "rs", (0, 0, 6, 0, 0)))
    await ws.close()


async def in_flight(process: CwmProcess, channel: str, n: int) -> bool:
    return (await stats(process, channel))["messages_in_flight"] == n


@pytest_twisted.ensureDeferred
async def test_two_instances_share_channels_connections_and_stats(cloud: Cloud) -> None:
    webhooks = {"h": hook("multi", "tok", max_connections=2)}
    a = cloud.start(webhooks, name="a")
    b = cloud.start(webhooks, name="b")
    ws = await WSClient.open(b.port, "multi", "tok")
    sse = await SSEClient.open(base(a), "multi", "tok")
    # max_connections holds across instances.
    assert "503" in await ws_refused(b.port, "multi", "tok")
    sse.close()
    await bounded(sse.ended)
    await eventually("one left", lambda: stats_clients(a, "multi", 1))
    for n in range(5):
        assert (await post(a, "h", {"n": n}))[0] == 200
    got = []
    for _ in range(5):
        m = await ws.webhook()
        got.append(m["payload"]["n"])
        ws.ack(m["message_id"])
    assert sorted(got) == [0, 1, 2, 3, 4]
    await eventually("acked", lambda: stats_match(a, "multi", (0, 0, 5, 0, 0)))
    assert await stats(a, "multi") == await stats(b, "multi")
    # An admin on instance a disconnects the connection held by b.
    code, body, _ = await admin(a, "DELETE", f"/channels/multi/connections/{ws.connection_id}")
    assert code == 202 and body["status"] == "disconnecting" and body["instance"] == "test-b"
    code, reason = await bounded(ws.factory.closed)
    assert code == 4000


@pytest_twisted.ensureDeferred
async def test_ten_thousand_messages_none_lost_none_duplicated(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("bulk", "tok", max_queue_size=20000, max_in_flight=200)})
    ws = await WSClient.open(process.port, "bulk", "tok")
    total = 10_000
    seen: dict[int, int] = {}

    async def consume() -> None:
        while len(seen) < total:
            m = await ws.webhook(30)
            n = m["payload"]["n"]
            seen[n] = seen.get(n, 0) + 1
            ws.ack(m["message_id"])

    consumer = Deferred.fromCoroutine(consume())
    statuses: list[int] = []

    async def sender(start: int) -> None:
        for n in range(start, total, 20):
            statuses.append((await post(process, "h", {"n": n}))[0])

    await bounded(gatherResults([Deferred.fromCoroutine(sender(i)) for i in range(20)]), 300)
    await bounded(consumer, 300)
    assert statuses.count(200) == total
    assert sorted(seen) == list(range(total)) and set(seen.values()) == {1}
    await eventually("all acked", lambda: stats_match(process, "bulk", (0, 0, total, 0, 0)))
    await ws.close()


@pytest_twisted.ensureDeferred
async def test_a_full_window_holds_back_only_its_own_connection(cloud: Cloud) -> None:
    """max_in_flight per connection: a connector that stops acking never stalls the others."""
    process = cloud.start({"h": hook("fc1", "tok", max_in_flight=2), "o": hook("fc2", "tok")})
    stuck = await WSClient.open(process.port, "fc1", "tok", connector="stuck")
    for n in range(2):
        assert (await post(process, "h", {"n": n}))[0] == 200
    held = [await stuck.webhook() for _ in range(2)]  # its window is full now, never acked
    other = await WSClient.open(process.port, "fc2", "tok")
    busy = await WSClient.open(process.port, "fc1", "tok", connector="busy")
    for n in range(2, 12):
        assert (await post(process, "h", {"n": n}))[0] == 200
        assert (await post(process, "o", {"n": n}))[0] == 200
        m = await busy.webhook()
        busy.ack(m["message_id"])
        assert (await other.webhook())["payload"] == {"n": n}
    assert counts(await stats(process, "fc1"))[:2] == (0, 2)
    assert [m["payload"]["n"] for m in held] == [0, 1]
    for c in (stuck, other, busy):
        await c.close()


@pytest_twisted.ensureDeferred
async def test_heartbeats_on_idle_streams(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("hb", "tok", heartbeat_interval_seconds=1)})
    sse = await SSEClient.open(base(process), "hb", "tok")
    name, data, _ = await sse.next_event(5)
    assert name == "heartbeat" and data["timestamp"].endswith("Z")
    ws = await WSClient.open(process.port, "hb", "tok")
    frame = await ws.frame(5)
    assert frame["type"] == "heartbeat" and isinstance(frame["server_time"], float)
    sse.close()
    await ws.close()


@pytest_twisted.ensureDeferred
async def test_removing_the_config_closes_its_connections(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("gone", "tok"), "keep": hook("kept", "tok")})
    sse = await SSEClient.open(base(process), "gone", "tok")
    (cloud.tmp_path / "a" / "webhooks.json").write_text(json.dumps({"keep": hook("kept", "tok")}))
    process.signal(1)
    name, data, _ = await sse.next_event()
    assert (name, data) == ("error", {"error": "channel removed from the configuration"})
    await bounded(sse.ended)
    assert (await call("GET", f"{base(process)}/connect/stream/gone/sse?token=tok"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_channels_follow_etcd_live(
    tmp_path: Path, redis: RedisServer, redis_prefix: str, etcd: Any, etcd_prefix: str
) -> None:
    """With the etcd backend too, a channel opens when its key is put (before any webhook) and closes when deleted."""
    from cwm.etcd.client import EtcdClient
    from cwm.etcd.options import EtcdOptions
    from tests.integration.test_etcd_receiver import start_cwm as start_etcd_cwm, wait_revision

    process = start_etcd_cwm(
        tmp_path, etcd.address, etcd_prefix,
        WEBHOOK_CONNECT_ENABLED="true", WEBHOOK_CONNECT_REDIS_URL=redis.url, WEBHOOK_CONNECT_KEY_PREFIX=redis_prefix,
        WEBHOOK_CONNECT_ADMIN_TOKEN=ADMIN, WEBHOOK_CONNECT_INSTANCE_ID="etcd-a",
    )
    client = EtcdClient(EtcdOptions(endpoints=(etcd.address,)))
    key = f"{etcd_prefix}default/webhooks/relay".encode()
    try:
        wait_revision(process, client.put(key, json.dumps(hook("live", "tok")).encode()))
        sse = await SSEClient.open(base(process), "live", "tok")
        assert (await post(process, "relay", {"via": "etcd"}))[0] == 200
        message, _ = await sse.next_webhook()
        assert message["payload"] == {"via": "etcd"}
        client.delete(key)
        name, data, _ = await sse.next_event()
        assert (name, data) == ("error", {"error": "channel removed from the configuration"})
        await bounded(sse.ended)
    finally:
        client.close()
        process.stop()
