"""Dead letters: the per-channel cap reaches the buffer, replay and listing go page by page.

The buffer is a fake holding dead letters in a list; each call the hub makes
can be held for some seconds of a Clock, so per-call timeouts are exact. The
Redis side (the cap's trim, the pages) runs against a real redis-server in
tests/integration/test_connect_dead_letters.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from cwm.connect import hub as hub_module
from cwm.connect.admin import ConnectAdmin
from cwm.connect.channels import DEAD_LETTER_MAX, ChannelConfig, parse_channel_config
from cwm.connect.hub import CALL_TIMEOUT, Channel, ConnectHub, ConnectUnavailable, Replayed
from cwm.errors import ConfigError
from tests.unit.test_connect_hub import OWNER, RecordingBuffer, _sync


def _position(dead_id: str) -> tuple[int, int]:
    ms, seq = dead_id.split("-")
    return int(ms), int(seq)


class DeadLetterBuffer(RecordingBuffer):
    """Dead letters ``n-0`` -> ``msg_n``; each page call answers after ``delay`` seconds of the clock."""

    def __init__(self, clock: Clock, count: int, delay: float = 0.0) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.dead = [(f"{n}-0", f"msg_{n}") for n in range(1, count + 1)]
        self.replayed: list[str] = []
        self.pages: list[tuple[str, str, int]] = []

    async def _later(self, value: Any) -> Any:
        if self.delay:
            await deferLater(self.clock, self.delay, lambda: None)
        return value

    async def last_dead_letter(self, channel: str) -> str:
        return self.dead[-1][0] if self.dead else ""

    async def dead_letter_ids(self, channel: str, after: str, until: str, count: int) -> list[tuple[str, str]]:
        self.pages.append((after, until, count))
        low = _position(after) if after else (-1, -1)
        found = [(d, m) for d, m in self.dead if low < _position(d) <= _position(until)][:count]
        return await self._later(found)

    async def replay(self, channel: str, dead_letter_ids: list[str], ttl_seconds: float, now: float) -> int:
        present = {d for d, _ in self.dead}
        moved = [d for d in dead_letter_ids if d in present]
        self.dead = [(d, m) for d, m in self.dead if d not in moved]
        self.replayed.extend(moved)
        return await self._later(len(moved))

    async def dead_letters(self, channel: str, limit: int = 100, before: str = "") -> tuple[list[Any], str | None]:
        self.pages.append((before, "", limit))
        return [], None


def hub_over(buffer: DeadLetterBuffer, clock: Clock, **config: Any) -> tuple[ConnectHub, Channel]:
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.register(OWNER, ChannelConfig(name="ch", token="t", **config))
    channel = hub.channel("ch")
    assert channel is not None
    return hub, channel


def replay(hub: ConnectHub, channel: Channel, clock: Clock, *args: Any, step: float = 1.0) -> Replayed:
    d = Deferred.fromCoroutine(hub.replay(channel, *args))
    for _ in range(1000):
        if d.called:
            break
        clock.advance(step)
    return _sync.successResultOf(d)


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(hub_module, "REPLAY_PAGE", 3)
    return 3


def test_dead_letter_max_is_a_channel_setting() -> None:
    assert parse_channel_config({"channel": "c", "channel_token": "t"}).dead_letter_max == DEAD_LETTER_MAX == 10_000
    assert parse_channel_config({"channel": "c", "channel_token": "t", "dead_letter_max": 5}).dead_letter_max == 5
    for bad in (0, -1, True, "5", 1_000_001):
        with pytest.raises(ConfigError, match=re.escape("module-config.dead_letter_max")):
            parse_channel_config({"channel": "c", "channel_token": "t", "dead_letter_max": bad})


def test_the_channel_cap_reaches_the_buffer_and_follows_the_registrations() -> None:
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 0)
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    release_first = hub.register(OWNER, ChannelConfig(name="ch", token="t", dead_letter_max=5))
    release_second = hub.register(("default", "other"), ChannelConfig(name="ch", token="t", dead_letter_max=7))
    release_second()
    release_first()
    caps = [c[1:] for c in buffer.calls if c[0] == "cap_dead_letters"]
    assert caps == [("ch", 5), ("ch", 7), ("ch", 5), ("ch", None)]


def test_replay_of_every_dead_letter_goes_page_by_page_each_under_its_own_timeout(small_pages: int) -> None:
    """Eight letters, three a page, each Redis call taking 4 s of a 5 s timeout: 16 s in all, and it succeeds."""
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 8, delay=CALL_TIMEOUT - 1)
    hub, channel = hub_over(buffer, clock)
    result = replay(hub, channel, clock, None)
    assert result == Replayed(8, [], None)
    assert buffer.dead == [] and buffer.replayed == [f"{n}-0" for n in range(1, 9)]
    assert [page[2] for page in buffer.pages] == [3, 3, 3]  # never more than a page
    assert [page[0] for page in buffer.pages] == ["", "3-0", "6-0"]
    assert clock.seconds() > CALL_TIMEOUT * 2


def test_one_page_past_its_timeout_is_unavailable(small_pages: int) -> None:
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 8, delay=CALL_TIMEOUT + 1)
    hub, channel = hub_over(buffer, clock)
    d = Deferred.fromCoroutine(hub.replay(channel, None))
    clock.advance(CALL_TIMEOUT + 0.5)
    _sync.failureResultOf(d, ConnectUnavailable)
    assert buffer.replayed == []


def test_replay_stops_at_the_newest_letter_of_its_start(small_pages: int) -> None:
    """Letters dead-lettered during a replay wait for the next one (a connector failing them cannot loop it)."""
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 4)
    hub, channel = hub_over(buffer, clock)
    d = Deferred.fromCoroutine(hub.replay(channel, None))
    buffer.dead.append(("9-0", "msg_9"))  # after the replay read its end
    assert _sync.successResultOf(d) == Replayed(4, [], None)
    assert buffer.dead == [("9-0", "msg_9")]


def test_replay_with_a_limit_answers_a_cursor_to_go_on_from(small_pages: int) -> None:
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 8)
    hub, channel = hub_over(buffer, clock)
    first = replay(hub, channel, clock, None, 4)
    assert first == Replayed(4, [], "4-0")
    second = replay(hub, channel, clock, None, 3, first.next_cursor)
    assert second == Replayed(3, [], "7-0")
    assert replay(hub, channel, clock, None, 3, second.next_cursor) == Replayed(1, [], None)
    assert buffer.dead == []


def test_replay_by_message_id_across_pages_names_those_not_found(small_pages: int) -> None:
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 8)
    hub, channel = hub_over(buffer, clock)
    result = replay(hub, channel, clock, ["msg_7", "msg_2", "msg_nope"])
    assert result == Replayed(2, ["msg_nope"], None)
    assert buffer.replayed == ["2-0", "7-0"]
    # All found before the end: the scan stops there.
    buffer.pages.clear()
    assert replay(hub, channel, clock, ["msg_1"]) == Replayed(1, [], None)
    assert len(buffer.pages) == 1


def admin_request(buffer: DeadLetterBuffer, clock: Clock, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    hub, _ = hub_over(buffer, clock)
    treq = StubTreq(ConnectAdmin(hub, "admin", clock).resource())
    kwargs: dict[str, Any] = {"headers": {"Authorization": "Bearer admin"}}
    if body is not None:
        kwargs["data"] = json.dumps(body).encode()
        kwargs["headers"]["Content-Type"] = "application/json"
    d = treq.request(method, "http://cwm.test" + path, **kwargs)
    treq.flush()
    response = _sync.successResultOf(d)
    return response.code, json.loads(_sync.successResultOf(response.content()))


def test_admin_replay_and_listing_take_a_cursor_and_a_limit(small_pages: int) -> None:
    clock = Clock()
    buffer = DeadLetterBuffer(clock, 8)
    code, body = admin_request(buffer, clock, "POST", "/channels/ch/dead-letters/replay", {"limit": 5})
    assert (code, body) == (200, {"channel": "ch", "replayed": 5, "not_found": [], "next_cursor": "5-0"})
    code, body = admin_request(buffer, clock, "POST", "/channels/ch/dead-letters/replay", {"cursor": "5-0"})
    assert (code, body) == (200, {"channel": "ch", "replayed": 3, "not_found": [], "next_cursor": None})
    code, body = admin_request(buffer, clock, "GET", "/channels/ch/dead-letters?limit=2&cursor=17-3")
    assert (code, body) == (200, {"channel": "ch", "count": 0, "messages": [], "next_cursor": None})
    assert buffer.pages[-1] == ("17-3", "", 2)
    for path, body in (
        ("/channels/ch/dead-letters?cursor=%2B", None),
        ("/channels/ch/dead-letters?cursor=1-2-3", None),
    ):
        assert admin_request(buffer, clock, "GET", path) == (
            422, {"detail": "cursor: expected the next_cursor of an earlier answer"})
    for bad in ({"limit": 0}, {"limit": "5"}, {"cursor": 5}, {"cursor": "(1-0"}):
        code, _ = admin_request(buffer, clock, "POST", "/channels/ch/dead-letters/replay", bad)
        assert code == 422, bad
