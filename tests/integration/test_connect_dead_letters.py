"""Dead letters against a real redis-server: the per-channel cap, paged listing, paged replay.

The buffer and the hub run in this process on one Redis; the last test runs
a real ``twistd -n cwm`` with ``dead_letter_max`` in its webhook entry.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from cwm.connect import hub as hub_module
from cwm.connect.buffer import StreamBuffer
from cwm.connect.channels import ChannelConfig
from cwm.connect.hub import ConnectHub, Replayed
from tests.integration.connect_clients import call
from tests.integration.redis_server import RedisServer
from tests.integration.test_connect_buffer import NOW, connect, publish
from tests.integration.test_connect_cloud import ADMIN_HEADERS, Cloud, admin, base, cloud, hook, post, stats

pytestmark = pytest.mark.integration

__all__ = ["cloud"]  # the fixture, shared with test_connect_cloud


@pytest_twisted.async_yield_fixture
async def buffer(redis: RedisServer, redis_prefix: str) -> AsyncIterator[StreamBuffer]:
    connection = await connect(redis)
    try:
        yield StreamBuffer(connection, redis_prefix, "a")
    finally:
        await connection.disconnect()


async def dead_letter(b: StreamBuffer, count: int) -> list[str]:
    """Publish ``count`` messages and dead-letter each (a nack without retry); their message ids."""
    await b.ensure_channel("ch")
    for n in range(1, count + 1):
        await publish(b, n)
    taken = await b.read({"ch": count})
    assert len(taken) == count
    for _, m in taken:
        assert (await b.give_back("ch", m.stream_id, 5, "nack without retry", NOW, dead=True)).state == "dead_lettered"
    return [m.message_id for _, m in taken]


@pytest_twisted.ensureDeferred
async def test_the_cap_keeps_the_newest_and_counts_the_dropped(buffer: StreamBuffer) -> None:
    buffer.cap_dead_letters("ch", 5)
    ids = await dead_letter(buffer, 8)
    counts = await buffer.counts("ch")
    assert (counts.dead_lettered, counts.dead_letters, counts.dead_letters_dropped) == (8, 5, 3)
    letters = [json.loads(x) for x in (await buffer.dead_letters("ch", 100))[0]]
    assert [x["message_id"] for x in letters] == ids[:2:-1]  # the newest five, newest first


@pytest_twisted.ensureDeferred
async def test_the_default_cap_drops_nothing_below_it(buffer: StreamBuffer) -> None:
    await dead_letter(buffer, 8)
    counts = await buffer.counts("ch")
    assert (counts.dead_letters, counts.dead_letters_dropped) == (8, 0)


@pytest_twisted.ensureDeferred
async def test_listing_pages_newest_first_with_a_cursor(buffer: StreamBuffer) -> None:
    ids = await dead_letter(buffer, 5)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page, next_cursor = await buffer.dead_letters("ch", 2, cursor)
        letters = [json.loads(x) for x in page]
        pages += 1
        seen += [x["message_id"] for x in letters]
        if next_cursor is None:
            break
        assert next_cursor == letters[-1]["dead_letter_id"]
        cursor = next_cursor
    assert pages == 3 and seen == ids[::-1]


@pytest_twisted.ensureDeferred
async def test_the_hub_replays_more_than_one_page(buffer: StreamBuffer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "REPLAY_PAGE", 3)
    ids = await dead_letter(buffer, 8)
    hub = ConnectHub(buffer, buffer, reactor, "a")
    hub.register(("default", "hook"), ChannelConfig(name="ch", token="t"))
    channel = hub.channel("ch")
    assert channel is not None
    try:
        # By message id, found on the first and the third page.
        assert await hub.replay(channel, [ids[7], ids[0], "msg_nope"]) == Replayed(2, ["msg_nope"], None)
        # The rest, five at most: two pages, and a cursor to go on from.
        first = await hub.replay(channel, None, 5)
        assert first.moved == 5 and first.next_cursor is not None
        assert await hub.replay(channel, None, None, first.next_cursor) == Replayed(1, [], None)
        counts = await buffer.counts("ch")
        assert (counts.dead_letters, counts.queued) == (0, 8)
        again = await buffer.read({"ch": 10})
        assert sorted(m.message_id for _, m in again) == sorted(ids)
        assert {m.delivery_count for _, m in again} == {0}
    finally:
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_dead_letter_max_in_a_webhook_entry_through_the_admin_api(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("capped", "tok", dead_letter_max=5)})
    for n in range(8):
        assert (await post(process, "h", {"n": n}))[0] == 200
    code, polled, _ = await call("GET", f"{base(process)}/connect/stream/capped/poll?timeout=5&max_messages=8",
                                 headers={"Authorization": "Bearer tok"})
    assert code == 200 and len(polled["messages"]) == 8
    for m in polled["messages"]:
        code, _, _ = await call(
            "POST", f"{base(process)}/connect/ack?message_id={m['message_id']}&status=nack&retry=false",
            headers={"X-Connection-ID": polled["connection_id"], "Authorization": "Bearer tok"},
        )
        assert code == 200
    s = await stats(process, "capped")
    assert (s["messages_dead_lettered"], s["dead_letters"], s["dead_letters_dropped"]) == (8, 5, 3)
    code, detail, _ = await admin(process, "GET", "/channels/capped")
    assert code == 200 and detail["config"]["dead_letter_max"] == 5 and detail["stats"]["dead_letters_dropped"] == 3
    # Listed two at a time: 2 + 2 + 1, newest first.
    seen: list[Any] = []
    path = "/channels/capped/dead-letters?limit=2"
    while True:
        code, page, _ = await admin(process, "GET", path)
        assert code == 200 and page["count"] == len(page["messages"])
        seen += [m["payload"]["n"] for m in page["messages"]]
        if page["next_cursor"] is None:
            break
        path = f"/channels/capped/dead-letters?limit=2&cursor={page['next_cursor']}"
    assert seen == [7, 6, 5, 4, 3]
    code, body, _ = await admin(process, "POST", "/channels/capped/dead-letters/replay", {"limit": 3})
    assert code == 200 and (body["replayed"], body["not_found"]) == (3, []) and body["next_cursor"]
    code, body, _ = await admin(process, "POST", "/channels/capped/dead-letters/replay",
                                {"cursor": body["next_cursor"]})
    assert (code, body) == (200, {"channel": "capped", "replayed": 2, "not_found": [], "next_cursor": None})
    # Compatible with the original's body: no parameters, every letter.
    code, body, _ = await call("POST", f"{base(process)}/admin/webhook-connect/channels/capped/dead-letters/replay",
                               headers=ADMIN_HEADERS)
    assert (code, body) == (200, {"channel": "capped", "replayed": 0, "not_found": [], "next_cursor": None})
