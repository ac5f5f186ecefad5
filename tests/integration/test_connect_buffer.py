"""StreamBuffer against a real redis-server: every state change of a message."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import txredisapi

from cwm.connect.buffer import StreamBuffer, parse_redis_url
from cwm.errors import ConfigError
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0


async def connect(server: RedisServer) -> Any:
    return await txredisapi.Connection("127.0.0.1", server.port, reconnect=False, convertNumbers=False)


@pytest_twisted.async_yield_fixture
async def buffers(redis: RedisServer, redis_prefix: str) -> AsyncIterator[tuple[StreamBuffer, StreamBuffer]]:
    """Two instances' buffers on one Redis (consumers a and b)."""
    one, two = await connect(redis), await connect(redis)
    try:
        yield StreamBuffer(one, redis_prefix, "a"), StreamBuffer(two, redis_prefix, "b")
    finally:
        await one.disconnect()
        await two.disconnect()


def envelope(n: int, body: bytes = b'{"n": 1}') -> dict[str, Any]:
    return {
        "message_id": f"msg_{n:016x}",
        "channel": "ch",
        "webhook_id": "hook",
        "timestamp": "2026-11-23T00:00:00Z",
        "headers": {"x-n": str(n)},
        "payload": {"n": n},
        "body_base64": base64.b64encode(body).decode(),
    }


async def ids_left(b: StreamBuffer, channel: str = "ch") -> int:
    """Entries of the channel's message id -> stream id map (one per live message)."""
    return int(await b._redis.execute_command("HLEN", b.keys(channel).ids))


async def publish(b: StreamBuffer, n: int, max_queue: int = 100, ttl: float = 3600, webhook: str = "hook") -> Any:
    return await b.publish("ch", f"msg_{n:016x}", webhook, NOW + ttl, envelope(n), max_queue)


@pytest_twisted.ensureDeferred
async def test_publish_read_ack_with_exact_bytes_and_counts(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, _ = buffers
    await a.ensure_channel("ch")
    await a.ensure_channel("ch")  # idempotent
    raw = b"\xff\xfe not utf-8 \x00"
    published = await a.publish("ch", "msg_1", "hook", NOW + 60, envelope(1, raw), 10)
    assert published is not None and published[0] == 1
    assert (await publish(a, 2))[0] == 2
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight, counts.pending_by_webhook) == (2, 0, {"hook": 2})
    [(channel, first)] = await a.read({"ch": 1})
    assert channel == "ch" and first.sequence == 1 and first.delivery_count == 0
    assert base64.b64decode(first.wire()["body_base64"]) == raw
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight) == (1, 1)
    assert await a.ack("ch", first.stream_id) is True
    assert await a.ack("ch", first.stream_id) is False  # twice: already settled
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight, counts.delivered, counts.pending_by_webhook) == (1, 0, 1, {"hook": 1})
    assert await ids_left(a) == 1  # the ack removed its id


@pytest_twisted.ensureDeferred
async def test_queue_full_refuses_and_stores_nothing(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, _ = buffers
    await a.ensure_channel("ch")
    assert await publish(a, 1, max_queue=2) is not None
    assert await publish(a, 2, max_queue=2) is not None
    assert await publish(a, 3, max_queue=2) is None
    counts = await a.counts("ch")
    assert counts.queued == 2 and counts.pending_by_webhook == {"hook": 2}
    # In-flight messages still count against the limit.
    taken = await a.read({"ch": 2})
    assert await publish(a, 4, max_queue=2) is None
    # Refusals used no sequence number: the next accepted message is 3.
    assert await a.ack("ch", taken[0][1].stream_id)
    assert (await publish(a, 5, max_queue=2))[0] == 3


@pytest_twisted.ensureDeferred
async def test_nack_requeues_then_dead_letters_at_max_deliveries(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, b = buffers
    await a.ensure_channel("ch")
    await publish(a, 1)
    [(_, unsent)] = await a.read({"ch": 5})
    back = await a.give_back("ch", unsent.stream_id, 3, "no capacity", NOW, counted=False)
    assert (back.state, back.deliveries) == ("requeued", 0)  # never sent: not a delivery
    for attempt in range(1, 3):
        [(_, m)] = await (a if attempt % 2 else b).read({"ch": 5})
        assert m.delivery_count == attempt - 1
        assert m.expires_at == NOW + 3600 and json.loads(m.envelope) == envelope(1)  # requeued unchanged
        outcome = await a.give_back("ch", m.stream_id, 3, "nack", NOW)
        assert (outcome.state, outcome.deliveries) == ("requeued", attempt)
    [(_, m)] = await b.read({"ch": 5})
    outcome = await b.give_back("ch", m.stream_id, 3, "target answered 500", NOW)
    assert outcome.state == "dead_lettered"
    assert await a.read({"ch": 5}) == []
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight, counts.dead_lettered, counts.dead_letters) == (0, 0, 1, 1)
    assert counts.pending_by_webhook == {}
    [letter] = [json.loads(x) for x in (await a.dead_letters("ch"))[0]]
    assert letter["message_id"] == "msg_0000000000000001" and letter["reason"] == "target answered 500"
    assert letter["delivery_count"] == 3


@pytest_twisted.ensureDeferred
async def test_nack_without_retry_dead_letters_then_replay_and_purge(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, _ = buffers
    await a.ensure_channel("ch")
    for n in (1, 2, 3):
        await publish(a, n)
    for _, m in await a.read({"ch": 3}):
        assert (await a.give_back("ch", m.stream_id, 5, "target answered 400", NOW, dead=True)).state == "dead_lettered"
    letters = [json.loads(x) for x in (await a.dead_letters("ch"))[0]]
    assert [x["sequence"] for x in letters] == [3, 2, 1]
    assert await a.replay("ch", [letters[0]["dead_letter_id"], "1-0"], 60, NOW) == 1  # one still there
    [(_, again)] = await a.read({"ch": 5})
    assert again.sequence == 3 and again.delivery_count == 0 and again.expires_at == NOW + 60
    assert await a.purge("ch") == 2
    counts = await a.counts("ch")
    assert (counts.dead_letters, counts.in_flight, counts.pending_by_webhook) == (0, 1, {"hook": 1})
    assert await ids_left(a) == 1


@pytest_twisted.ensureDeferred
async def test_reclaim_gives_back_what_another_instance_left_in_flight(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, b = buffers
    await a.ensure_channel("ch")
    await publish(a, 1)
    await publish(a, 2)
    taken = await a.read({"ch": 2})  # instance a reads, then "dies"
    assert len(taken) == 2
    assert await b.reclaim("ch", 60_000, 5, NOW) == []  # not idle long enough
    outcomes = await b.reclaim("ch", 0, 5, NOW)
    assert [o.state for o in outcomes] == ["requeued", "requeued"]
    again = await b.read({"ch": 5})
    assert [(m.sequence, m.delivery_count) for _, m in again] == [(1, 1), (2, 1)]
    assert [(m.expires_at, json.loads(m.envelope)) for _, m in again] == [(NOW + 3600, envelope(1)), (NOW + 3600, envelope(2))]
    assert await a.ack("ch", taken[0][1].stream_id) is False  # a's late ack finds nothing
    assert await ids_left(a) == 2


@pytest_twisted.ensureDeferred
async def test_expired_messages_are_dropped_and_counted(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, _ = buffers
    await a.ensure_channel("ch")
    await publish(a, 1, ttl=10)
    await publish(a, 2, ttl=1000)
    assert await a.expire_waiting("ch", NOW + 5) == (0, "")
    assert await a.expire_waiting("ch", NOW + 20) == (1, "")
    [(_, left)] = await a.read({"ch": 5})
    assert left.sequence == 2
    # In flight, it is left alone by the sweep of waiting messages even once expired.
    assert await a.expire_waiting("ch", NOW + 2000) == (0, "")
    assert (await a.counts("ch")).in_flight == 1
    assert await a.expire("ch", left.stream_id, NOW + 20) is False  # not expired yet
    assert await a.expire("ch", left.stream_id, NOW + 2000) is True
    counts = await a.counts("ch")
    assert (counts.expired, counts.queued, counts.in_flight, counts.pending_by_webhook) == (2, 0, 0, {})
    assert await ids_left(a) == 0  # expiry (waiting and in flight) removed the ids


@pytest_twisted.ensureDeferred
async def test_expiry_sweep_goes_on_from_its_cursor_and_skips_in_flight(
    buffers: tuple[StreamBuffer, StreamBuffer],
) -> None:
    a, _ = buffers
    await a.ensure_channel("ch")
    for n in range(1, 8):
        await publish(a, n, ttl=10 if n != 4 else 1000)
    taken = await a.read({"ch": 2})  # 1 and 2 in flight: never expired by the sweep
    assert [m.sequence for _, m in taken] == [1, 2]
    first = await a.expire_waiting("ch", NOW + 20, count=3)  # 3, 4 (kept), 5
    assert first[0] == 2 and first[1] != ""
    second = await a.expire_waiting("ch", NOW + 20, cursor=first[1], count=3)  # 6, 7, end
    assert second == (2, "")
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight, counts.expired) == (1, 2, 4)
    assert await ids_left(a) == 3


@pytest_twisted.ensureDeferred
async def test_connections_are_limited_across_instances_and_expire(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, b = buffers

    def record(cid: str, expires: float) -> dict[str, Any]:
        return {"connection_id": cid, "connected_at": NOW, "expires_at": expires}

    assert await a.join("ch", "c1", record("c1", NOW + 30), 2, NOW)
    assert await b.join("ch", "c2", record("c2", NOW + 30), 2, NOW)
    assert not await b.join("ch", "c3", record("c3", NOW + 30), 2, NOW)
    assert [c["connection_id"] for c in await b.connections("ch", NOW)] == ["c1", "c2"]
    # a stops refreshing c1 (its instance died): once it is stale, c3 gets in.
    await b.kick("ch", "c2")
    assert await b.refresh("ch", {"c2": record("c2", NOW + 60)}) == ["c2"]
    assert await b.refresh("ch", {"c2": record("c2", NOW + 60)}) == []  # asked once
    assert await b.join("ch", "c3", record("c3", NOW + 90), 2, NOW + 40)
    assert [c["connection_id"] for c in await a.connections("ch", NOW + 40)] == ["c2", "c3"]
    await a.leave("ch", "c3")
    assert [c["connection_id"] for c in await a.connections("ch", NOW + 40)] == ["c2"]


@pytest_twisted.ensureDeferred
async def test_blocking_read_wakes_on_a_publish_from_another_connection(
    buffers: tuple[StreamBuffer, StreamBuffer], redis: RedisServer
) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a, b = buffers
    await a.ensure_channel("ch")
    _, waiting = a.read_blocking({"ch": 1}, 10_000)
    answered: list[Any] = []
    waiting.addCallback(lambda found: answered.append(found) or found)
    # Wait (bounded) until Redis reports the XREADGROUP as blocked, then publish.
    for _ in range(500):
        if b"blocked_clients:1" in redis.command("INFO", "clients"):
            break
        await deferLater(reactor, 0.01, lambda: None)
    else:
        raise AssertionError("the read never blocked in Redis")
    assert not answered
    await publish(b, 7)
    [(_, m)] = await waiting
    assert m.sequence == 1 and m.message_id == "msg_0000000000000007"


@pytest_twisted.ensureDeferred
async def test_messages_survive_a_redis_restart(fresh_redis: RedisServer) -> None:
    conn = await connect(fresh_redis)
    buf = StreamBuffer(conn, "p", "a")
    await buf.ensure_channel("ch")
    for n in range(1, 6):
        await publish(buf, n)
    [(_, m)] = await buf.read({"ch": 1})
    await conn.disconnect()
    fresh_redis.kill()
    fresh_redis.start()
    conn = await connect(fresh_redis)
    try:
        buf = StreamBuffer(conn, "p", "a")
        counts = await buf.counts("ch")
        assert (counts.queued, counts.in_flight) == (4, 1)
        assert await buf.ack("ch", m.stream_id) is True
        rest = await buf.read({"ch": 10})
        assert [x.sequence for _, x in rest] == [2, 3, 4, 5]
    finally:
        await conn.disconnect()


@pytest_twisted.ensureDeferred
async def test_idle_consumers_without_messages_are_forgotten(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, b = buffers
    await a.ensure_channel("ch")
    await publish(a, 1)
    await publish(a, 2)
    [(_, held)] = await b.read({"ch": 1})  # b holds one
    await a.read({"ch": 1})
    await a.ack("ch", (await a.held_by_me("ch"))[0])
    assert await a.held_by_me("ch") == [] and await b.held_by_me("ch") == [held.stream_id]
    assert await b.forget_idle_consumers("ch", 0) == ["a"]  # a holds nothing: forgotten
    assert await a.forget_idle_consumers("ch", 0) == []  # b still holds one
    assert await b.held_by_me("ch") == [held.stream_id]


@pytest_twisted.ensureDeferred
async def test_rotated_tokens_are_shared(buffers: tuple[StreamBuffer, StreamBuffer]) -> None:
    a, b = buffers
    assert await a.tokens("ch") == {}
    await a.store_tokens("ch", ["current", "t2", "previous", "t1"])
    assert await b.tokens("ch") == {"current": "t2", "previous": "t1"}


def test_redis_url() -> None:
    address = parse_redis_url("redis://:p%40ss@10.0.0.1:6380/2")
    assert (address.host, address.port, address.db, address.password, address.tls) == ("10.0.0.1", 6380, 2, "p@ss", False)
    assert "p@ss" not in repr(address)
    assert parse_redis_url("rediss://h").tls and parse_redis_url("redis://h").port == 6379
    for bad in ("http://h", "redis://", "redis://h:x", "redis://h/db"):
        with pytest.raises(ConfigError):
            parse_redis_url(bad)


@pytest_twisted.ensureDeferred
async def test_each_channel_is_read_with_its_own_count_and_acks_by_message_id_from_any_instance(
    buffers: tuple[StreamBuffer, StreamBuffer],
) -> None:
    a, b = buffers
    for channel in ("x", "y"):
        await a.ensure_channel(channel)
        for n in range(1, 5):
            await a.publish(channel, f"msg_{channel}{n}", "hook", NOW + 60, envelope(n), 100)
    # One read, windows of 1 and 3: no channel is handed more than it can take.
    found = await a.read({"x": 1, "y": 3})
    assert [(c, m.message_id) for c, m in found] == [("x", "msg_x1"), ("y", "msg_y1"), ("y", "msg_y2"), ("y", "msg_y3")]
    # The blocking wake-up takes at most one message per stream, whatever the windows.
    _, woke = a.read_blocking({"x": 5, "y": 5}, 100)
    taken = await woke
    assert [(c, m.message_id) for c, m in taken] == [("x", "msg_x2"), ("y", "msg_y4")]
    x1, x2 = found[0][1], taken[0][1]
    # An ack by message id from another instance settles what a holds...
    assert await b.ack_message("x", "msg_x1") is True
    assert await b.ack_message("x", "msg_x1") is False
    assert await b.ack_message("x", "msg_nope") is False
    # ...and a finds out which of its messages are no longer in flight.
    assert await a.not_pending("x", [x1.stream_id, x2.stream_id]) == [x1.stream_id]
    # Given back meanwhile (waiting again, at a new stream id): an ack by id still settles it.
    back = await a.give_back("x", x2.stream_id, 5, "ack timeout", NOW)
    assert back.state == "requeued" and await b.stream_id_of("x", "msg_x2") == back.new_id
    assert await b.ack_message("x", "msg_x2") is True
    counts = await a.counts("x")
    assert (counts.queued, counts.in_flight, counts.delivered, counts.pending_by_webhook) == (2, 0, 2, {"hook": 2})
    # Dead letters and expired messages leave the index.
    [(_, x3), (_, x4)] = await a.read({"x": 2})
    assert (await a.give_back("x", x3.stream_id, 5, "bad", NOW, dead=True)).state == "dead_lettered"
    assert await a.expire("x", x4.stream_id, NOW + 120) is True
    assert await b.stream_id_of("x", "msg_x3") is None and await b.stream_id_of("x", "msg_x4") is None
    assert await ids_left(a, "x") == 0 and await ids_left(a, "y") == 4


@pytest_twisted.ensureDeferred
async def test_a_replayed_message_is_found_by_its_id_at_its_new_place(
    buffers: tuple[StreamBuffer, StreamBuffer],
) -> None:
    a, b = buffers
    await a.ensure_channel("ch")
    await publish(a, 1)
    [(_, first)] = await a.read({"ch": 1})
    await a.give_back("ch", first.stream_id, 5, "bad", NOW, dead=True)
    assert await b.stream_id_of("ch", first.message_id) is None and await ids_left(a) == 0
    letters = [json.loads(x) for x in (await a.dead_letters("ch"))[0]]
    assert await a.replay("ch", [letters[0]["dead_letter_id"]], 60, NOW) == 1
    [(_, again)] = await a.read({"ch": 1})
    assert again.stream_id != first.stream_id
    assert await b.stream_id_of("ch", first.message_id) == again.stream_id
    assert await b.ack_message("ch", first.message_id) is True  # from the other instance
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight, counts.delivered) == (0, 0, 1)
    assert await ids_left(a) == 0


@pytest_twisted.ensureDeferred
async def test_an_ack_meeting_a_stale_stream_id_settles_the_requeued_copy_by_id(
    buffers: tuple[StreamBuffer, StreamBuffer],
) -> None:
    """What ConnectHub.settle does when the stream id it holds was requeued elsewhere meanwhile."""
    a, b = buffers
    await a.ensure_channel("ch")
    await publish(a, 1)
    await publish(a, 2)
    [(_, m1), (_, m2)] = await a.read({"ch": 2})
    # Another instance gives msg 1 back (a nack there, or a reclaim): requeued under a new id.
    assert (await b.give_back("ch", m1.stream_id, 5, "nack", NOW)).state == "requeued"
    assert await a.ack("ch", m1.stream_id) is False  # the stale id: nothing in flight there
    assert await a.ack_message("ch", m1.message_id) is True  # the copy still queued is settled
    assert await a.ack("ch", m2.stream_id) is True
    assert await a.read({"ch": 5}) == []  # nothing is delivered again
    counts = await a.counts("ch")
    assert (counts.queued, counts.in_flight, counts.delivered) == (0, 0, 2)
    assert await ids_left(a) == 0
