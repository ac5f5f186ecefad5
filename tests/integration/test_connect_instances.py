"""Webhook Connect faults across instances and transports, against real ``twistd -n cwm``
processes and a real redis-server: acks on the instance that does not hold the stream, a kill -9
under load, WebSocket messages over 64 KiB, and the read loop across a Redis restart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.exception import Disconnected
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults

from tests.integration.connect_clients import SSEClient, WSClient, bounded, call
from tests.integration.connector_env import (
    Processes,
    connector_env,
    procs,  # noqa: F401  (fixture)
    settled_stats,
)
from tests.integration.cwm_process import CwmProcess
from tests.integration.redis_server import RedisServer
from tests.integration.test_connect_cloud import (  # noqa: F401  (fixture)
    Cloud,
    admin,
    base,
    cloud,
    counts,
    dead_letters,
    eventually,
    hook,
    post,
    stats,
    stats_match,
)

pytestmark = pytest.mark.integration


async def ack_at(process: CwmProcess, connection_id: str, message_id: str, token: str,
                 as_json: bool = False) -> tuple[int, Any]:
    headers = {"X-Connection-ID": connection_id, "Authorization": f"Bearer {token}"}
    if as_json:
        code, body, _ = await call("POST", f"{base(process)}/connect/ack",
                                   {"message_id": message_id, "status": "ack"}, headers)
    else:
        code, body, _ = await call("POST", f"{base(process)}/connect/ack?message_id={message_id}", headers=headers)
    return code, body


@pytest_twisted.ensureDeferred
async def test_acks_sent_to_the_instance_without_the_stream_settle_and_free_the_window(cloud: Cloud) -> None:
    """Behind a load balancer an ack may reach any instance: it settles there, and the instance
    holding the stream frees the slot (window 2, ack timeout 600 s: six messages only flow if so)."""
    webhooks = {"h": hook("lb", "tok", max_in_flight=2, ack_timeout_seconds=600)}
    a = cloud.start(webhooks, name="a")
    b = cloud.start(webhooks, name="b")
    sse = await SSEClient.open(base(a), "lb", "tok")
    for n in range(6):
        assert (await post(b, "h", {"n": n}))[0] == 200
    got = []
    for i in range(6):
        message, _ = await sse.next_webhook()
        got.append(message["payload"]["n"])
        assert message["delivery_count"] == 1
        assert await ack_at(b, sse.connection_id, message["message_id"], "tok", as_json=i % 2 == 1) == (
            200, {"status": "ok", "message_id": message["message_id"], "outcome": "acked"})
    assert got == [0, 1, 2, 3, 4, 5]
    await eventually("all acked", lambda: stats_match(a, "lb", (0, 0, 6, 0, 0)))
    assert await ack_at(b, sse.connection_id, "msg_0000000000000000", "tok") == (
        404, {"detail": "Connection not found"})
    assert await ack_at(b, sse.connection_id, "msg_0000000000000000", "wrong") == (401, {"detail": "Invalid token"})
    assert await dead_letters(a, "lb") == []
    sse.close()


def _pending(redis: RedisServer, prefix: str, channel: str) -> int:
    """XPENDING's count for the channel, read straight from Redis."""
    reply = redis.command("XPENDING", f"{prefix}:{{{channel}}}:stream", "cwm")
    found = re.match(rb"\*4\r\n:(\d+)\r\n", reply)
    assert found is not None, reply
    return int(found.group(1))


class _Stream:
    """The consumer's stream, SSE (acks by POST) or WebSocket (acks in band), on one instance."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.sse: SSEClient | None = None
        self.ws: WSClient | None = None
        self.connection_id = ""
        self.last = ""

    async def open(self, process: CwmProcess) -> None:
        if self.protocol == "sse":
            self.sse = await SSEClient.open(base(process), "k9", "tok", last_event_id=self.last or None)
            self.connection_id = self.sse.connection_id
        else:
            self.ws = await WSClient.open(process.port, "k9", "tok")
            self.connection_id = self.ws.connection_id
            frames = self.ws.factory.frames
            self.ws.factory.closed.addCallback(lambda r: frames.put({"type": "closed"}) or r)

    async def next(self) -> dict[str, Any] | None:
        """The next webhook; None once the stream ended."""
        if self.sse is not None:
            try:
                message, self.last = await self.sse.next_webhook(60)
            except CancelledError:
                raise
            except Exception:
                self.sse.close()
                return None
            return message
        assert self.ws is not None
        while True:
            frame = await self.ws.frame(60)
            if frame["type"] == "closed":
                return None
            if frame["type"] == "webhook":
                return frame

    async def ended(self) -> None:
        if self.sse is not None:
            await bounded(self.sse.ended, 15)
        elif self.ws is not None:
            await bounded(self.ws.factory.closed, 15)

    def close(self) -> None:
        if self.sse is not None:
            self.sse.close()
        elif self.ws is not None:
            self.ws.protocol.sendClose(1000)


@pytest.mark.parametrize("protocol", ["sse", "websocket"])
@pytest_twisted.ensureDeferred
async def test_kill_9_under_load_duplicates_at_most_what_was_in_flight(
    cloud: Cloud, redis: RedisServer, redis_prefix: str, protocol: str
) -> None:
    """2,000 messages; a stream on a; a is killed -9 a third of the way in, the stream moves to b.

    SSE acks are POSTs spread over a and b (a load balancer; one that fails is sent to the
    other). WebSocket acks go in band: those of messages received on a's socket and not yet
    acked there are lost with it (as cwm-connector drops them). Only such a message may come
    twice: the duplicates are at most the messages in flight at the kill (XPENDING then)."""
    total = 2000
    webhooks = {"h": hook("k9", "tok", max_in_flight=50, ack_timeout_seconds=8, max_queue_size=5000)}
    a = cloud.start(webhooks, name="a")
    b = cloud.start(webhooks, name="b")
    instances = [a, b]
    seen: dict[int, int] = {}
    acks: list[Deferred[Any]] = []
    turn = [0]
    killed: dict[str, int] = {}

    async def settle(connection_id: str, message_id: str) -> None:
        for attempt in range(6):
            live = [p for p in instances if p.process.poll() is None]
            target = live[(turn[0] + attempt) % len(live)]
            try:
                code, body = await ack_at(target, connection_id, message_id, "tok")
            except Exception:
                continue  # refused or reset by the killed instance: the balancer tries the other
            assert code in (200, 404), (code, body)
            return
        raise AssertionError(f"ack of {message_id} never answered")

    stream = _Stream(protocol)

    async def consume() -> None:
        await stream.open(a)
        while True:  # until cancelled: redeliveries may come after the last new message
            message = await stream.next()
            if message is None:  # a was killed: reconnect, to b now
                await stream.open(b)
                continue
            n = message["payload"]["n"]
            seen[n] = seen.get(n, 0) + 1
            turn[0] += 1
            if stream.ws is not None:
                try:
                    stream.ws.ack(message["message_id"])
                except Disconnected:
                    pass  # received from a's socket, and a is gone: this ack is lost
            else:
                acks.append(Deferred.fromCoroutine(settle(stream.connection_id, message["message_id"])))
            if len(seen) == total // 3 and not killed:
                a.process.kill()
                a.process.wait()
                killed["in_flight"] = _pending(redis, redis_prefix, "k9")
                killed["received"] = sum(seen.values())
                await stream.ended()

    consumer = Deferred.fromCoroutine(consume())
    consumer.addErrback(lambda f: f.trap(CancelledError))

    async def sender(start: int) -> None:
        for n in range(start, total, 10):
            code, body, _ = await post(b, "h", {"n": n})
            assert code == 200, body

    await bounded(gatherResults([Deferred.fromCoroutine(sender(i)) for i in range(10)]), 300)

    async def all_seen() -> bool:
        return len(seen) == total or consumer.called

    await eventually("all received", all_seen, seconds=300)
    assert not consumer.called, consumer  # it ended early: its failure is raised by the next line
    cloud.processes.remove(a)
    await eventually("all settled", lambda: stats_match(b, "k9", (0, 0, total, 0, 0)), seconds=60)
    consumer.cancel()
    stream.close()
    await bounded(DeferredList(acks, fireOnOneErrback=True, consumeErrors=True), 60)
    duplicates = sum(seen.values()) - total
    print(f"\nkill -9 under load ({protocol}): {total} messages, in flight at the kill {killed['in_flight']}, "
          f"received before it {killed['received']}, duplicates {duplicates}")
    assert sorted(seen) == list(range(total))
    assert duplicates <= killed["in_flight"], (duplicates, killed)


@pytest_twisted.ensureDeferred
async def test_websocket_carries_a_30_kb_webhook_beside_a_small_one(cloud: Cloud) -> None:
    """Over autobahn's 64 KiB (payload and body_base64 both carry the body); a connector's own
    messages are still capped at 64 KiB."""
    process = cloud.start({"h": hook("big", "tok", ack_timeout_seconds=600)})
    ws = await WSClient.open(process.port, "big", "tok")
    large = {"items": [{"id": i, "text": "x" * 280} for i in range(100)]}
    assert len(json.dumps(large)) > 30_000
    assert (await post(process, "h", large))[0] == 200
    assert (await post(process, "h", {"small": True}))[0] == 200
    first, second = await ws.webhook(), await ws.webhook()
    assert (first["payload"], second["payload"]) == (large, {"small": True})
    assert first["delivery_count"] == second["delivery_count"] == 1
    ws.ack(first["message_id"])
    ws.ack(second["message_id"])
    await eventually("both acked", lambda: stats_match(process, "big", (0, 0, 2, 0, 0)))
    print(f"\nWebSocket, test client: 30 KB + small: delivered {(await stats(process, 'big'))['messages_delivered']}, "
          f"dead letters {len(await dead_letters(process, 'big'))}")
    # 70 KiB from the connector in frames of 40 KB each (each under the frame limit): closed.
    ws.protocol.sendMessage(json.dumps({"type": "heartbeat", "pad": "x" * (70 * 1024)}).encode(), fragmentSize=40_000)
    code, _ = await bounded(ws.factory.closed)
    assert code in (1009, 1006)  # 1009 sent, then the TCP connection dropped: no more is read from it
    process.wait_for(r"a message over 65536 bytes from the connector; closed")


def test_the_connector_over_websocket_delivers_a_30_kb_webhook_and_a_small_one(procs: Processes) -> None:
    cloud = procs.cloud.start({"cloud-webhook": hook("big-c", "tok")})
    local = procs.local()
    connector = procs.connector(connector_env(cloud, "big-c", "tok", "websocket",
                                              CONNECTOR_TARGET_URL=f"{local.url}/webhook/local-receiver"))
    connector.wait_connected()
    large = {"event": "big", "sequence": 1, "items": ["y" * 300 for _ in range(100)]}
    assert cloud.post("/webhook/cloud-webhook", large)[0] == 200
    assert cloud.post("/webhook/cloud-webhook", {"event": "small", "sequence": 2})[0] == 200
    local.wait_accepted(2)
    stats = settled_stats(cloud, "big-c", 2)
    print(f"\nWebSocket, cwm-connector: 30 KB + small: delivered {stats['messages_delivered']}, "
          f"dead-lettered {stats['messages_dead_lettered']}, connections {connector.count('connected to the cloud')}")
    assert (stats["messages_delivered"], stats["messages_dead_lettered"], stats["messages_queued"]) == (2, 0, 0)
    assert local.sequences() == [1, 2]
    assert connector.count("connected to the cloud") == 1  # no reconnect loop


async def _read_loop(process: CwmProcess) -> dict[str, Any]:
    _, body, _ = await call("GET", f"{base(process)}/admin/webhook-connect/health")
    return body  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_the_read_loop_reports_a_redis_outage_and_runs_again_after_it(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    clouds = Cloud(tmp_path, fresh_redis, "rl")
    process = clouds.start({"h": hook("rl", "tok")})
    try:
        ws = await WSClient.open(process.port, "rl", "tok")
        assert (await _read_loop(process))["read_loop"] == "running"
        fresh_redis.kill()

        async def restarting() -> Any:
            body = await _read_loop(process)
            return body if body["read_loop"] == "restarting" and body.get("read_loop_error") else None

        down = await eventually("reported", restarting, seconds=30)
        assert fresh_redis.url not in json.dumps(down)
        fresh_redis.start()

        async def running() -> bool:
            body = await _read_loop(process)
            return body["read_loop"] == "running" and "read_loop_error" not in body

        await eventually("reading again", running, seconds=30)
        assert (await post(process, "h", {"after": True}))[0] == 200
        message = await ws.webhook(30)
        assert message["payload"] == {"after": True}
        ws.ack(message["message_id"])
        await ws.close()
    finally:
        clouds.stop()
