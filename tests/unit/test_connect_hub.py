"""ConnectHub's bookkeeping without a reactor: a Clock, and a buffer whose reads the test answers.

The Redis side is covered against a real redis-server in
tests/integration/test_connect_buffer.py; here the buffer only records what
the hub asks of it, so timing (ack timeouts, resume grace) is exact.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwm.connect.buffer import Buffered, Outcome
from cwm.connect.channels import ChannelConfig
from cwm.connect.hub import RESUME_GRACE, ConnectHub, Connection, NotInFlight

_sync = SynchronousTestCase()
OWNER = ("default", "hook")


class RecordingBuffer:
    """The StreamBuffer surface the hub uses; reads wait until the test answers them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.reads: list[tuple[dict[str, int], Deferred[list[tuple[str, Buffered]]]]] = []
        self.blocking: list[bool] = []  # of each read: the blocking wake-up, or a read of what waits
        self.settled_elsewhere: set[str] = set()  # stream ids another instance acked

    async def ensure_channel(self, channel: str) -> None:
        self.calls.append(("ensure", channel))

    async def held_by_me(self, channel: str) -> list[str]:
        return []

    async def tokens(self, channel: str) -> dict[str, str]:
        return {}

    def cap_dead_letters(self, channel: str, maximum: int | None) -> None:
        self.calls.append(("cap_dead_letters", channel, maximum))

    async def join(self, channel: str, cid: str, record: dict[str, Any], limit: int, now: float) -> bool:
        self.calls.append(("join", cid))
        return True

    async def leave(self, channel: str, cid: str) -> None:
        self.calls.append(("leave", cid))

    async def ack(self, channel: str, stream_id: str) -> bool:
        self.calls.append(("ack", stream_id))
        return True

    async def give_back(self, channel: str, stream_id: str, max_deliveries: int, reason: str, now: float,
                        dead: bool = False, counted: bool = True) -> Outcome:
        self.calls.append(("give_back", stream_id, reason, dead, counted))
        return Outcome("requeued", 1, "new")

    async def expire(self, channel: str, stream_id: str, now: float) -> bool:
        self.calls.append(("expire", stream_id))
        return True

    async def reclaim(self, channel: str, idle_ms: int, max_deliveries: int, now: float) -> list[Outcome]:
        return []

    async def expire_waiting(self, channel: str, now: float, cursor: str = "") -> tuple[int, str]:
        return 0, ""

    async def forget_idle_consumers(self, channel: str, idle_ms: int) -> list[str]:
        return []

    async def refresh(self, channel: str, records: dict[str, Any]) -> list[str]:
        self.calls.append(("refresh", sorted(records)))
        return []

    async def unblock(self, client_id: str) -> None:
        self.calls.append(("unblock", client_id))

    async def not_pending(self, channel: str, stream_ids: list[str]) -> list[str]:
        return [i for i in stream_ids if i in self.settled_elsewhere]

    async def read(self, channels: dict[str, int]) -> list[tuple[str, Buffered]]:
        d: Deferred[list[tuple[str, Buffered]]] = Deferred()
        self.reads.append((dict(channels), d))
        self.blocking.append(False)
        return await d

    def read_blocking(self, channels: dict[str, int], block_ms: int) -> tuple[Deferred[str], Deferred[Any]]:
        d: Deferred[list[tuple[str, Buffered]]] = Deferred()
        self.reads.append((dict(channels), d))
        self.blocking.append(True)
        return succeed("7"), d

    def answer(self, *messages: Buffered, channel: str = "ch") -> None:
        _, d = self.reads[-1]
        d.callback([(channel, m) for m in messages])

    def given_back(self) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == "give_back"]


def message(n: int, expires_at: float = 1e12) -> Buffered:
    return Buffered(f"{n}-0", f"msg_{n}", "hook", n, 0, expires_at, {"payload": n})


def hub_with_channel(**config: Any) -> tuple[ConnectHub, RecordingBuffer, Clock]:
    clock = Clock()
    clock.advance(1000)
    buffer = RecordingBuffer()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t", **config))
    return hub, buffer, clock


def open_connection(hub: ConnectHub, protocol: str = "websocket", window: int = 2) -> tuple[Connection, list[int]]:
    channel = hub.channel("ch")
    assert channel is not None
    connection = _sync.successResultOf(Deferred.fromCoroutine(hub.connect(channel, protocol, "c", "127.0.0.1", "t", window)))
    assert connection is not None
    received: list[int] = []
    hub.attach(connection, lambda ms: received.extend(m.sequence for m in ms), lambda reason: None)
    return connection, received


def settle(hub: ConnectHub, connection: Connection, message_id: str, ack: bool = True, retry: bool = True) -> str:
    return _sync.successResultOf(Deferred.fromCoroutine(hub.settle(connection, message_id, ack, retry)))


def test_reads_ask_for_the_free_window_and_an_ack_opens_it_again() -> None:
    hub, buffer, clock = hub_with_channel()
    assert buffer.reads == []  # no connection: nothing is read
    connection, received = open_connection(hub, window=2)
    assert buffer.reads[-1][0] == {"ch": 2}
    buffer.answer(message(1), message(2))
    assert received == [1, 2] and connection.free() == 0
    assert len(buffer.reads) == 1  # window full: no read
    assert settle(hub, connection, "msg_1") == "acked"
    assert buffer.reads[-1][0] == {"ch": 1}
    hub.stop()


def test_no_ack_within_the_timeout_gives_it_back_and_frees_the_window() -> None:
    hub, buffer, clock = hub_with_channel(ack_timeout_seconds=30)
    connection, received = open_connection(hub, window=1)
    buffer.answer(message(1))
    clock.advance(29)
    assert buffer.given_back() == []
    clock.advance(1)
    assert buffer.given_back() == [("1-0", "ack timeout", False, True)]
    assert connection.free() == 1 and buffer.reads[-1][0] == {"ch": 1}
    failure = _sync.failureResultOf(Deferred.fromCoroutine(hub.settle(connection, "msg_1", True)), NotInFlight)
    assert failure.value.args == ("msg_1",)
    hub.stop()


def test_more_than_the_windows_hold_goes_back_uncounted_and_expired_ones_are_not_sent() -> None:
    hub, buffer, clock = hub_with_channel()
    _, received = open_connection(hub, window=1)
    buffer.answer(message(1), message(2), message(3, expires_at=clock.seconds()))
    assert received == [1]
    assert buffer.given_back() == [("2-0", "no capacity", False, False)]
    assert ("expire", "3-0") in buffer.calls
    hub.stop()


def test_websocket_gone_gives_back_at_once_and_long_poll_keeps_until_acked() -> None:
    hub, buffer, clock = hub_with_channel()
    ws, _ = open_connection(hub, window=1)
    buffer.answer(message(1))
    hub.disconnect(ws, hold=0)
    assert buffer.given_back() == [("1-0", "connection closed", False, True)]
    assert ("leave", ws.id) in buffer.calls
    poll, _ = open_connection(hub, "long_poll", window=2)
    buffer.answer(message(2))
    hub.disconnect(poll, hold=None)
    assert hub.connection(poll.id) is poll and poll.free() == 0  # answered: waits for its ack
    assert settle(hub, poll, "msg_2") == "acked"
    assert hub.connection(poll.id) is None  # nothing left to ack: forgotten
    hub.stop()


def test_sse_resume_takes_over_what_the_client_saw_and_resends_the_rest() -> None:
    hub, buffer, clock = hub_with_channel()
    old, _ = open_connection(hub, "sse", window=5)
    buffer.answer(message(1), message(2), message(3))
    assert settle(hub, old, "msg_1") == "acked"
    hub.disconnect(old, hold=RESUME_GRACE)
    assert buffer.given_back() == []  # held for a resume
    new, received = open_connection(hub, "sse", window=5)
    assert hub.resume(new, "2-0") == 2
    assert received == [3]  # 2 reached the client; 3 did not
    assert sorted(new.in_flight) == ["msg_2", "msg_3"] and hub.connection(old.id) is None
    clock.advance(RESUME_GRACE + 1)
    assert buffer.given_back() == []
    # Resuming from an event the client already acked works too (acked ids are remembered).
    assert settle(hub, new, "msg_2") == "acked"
    hub.disconnect(new, hold=RESUME_GRACE)
    third, received = open_connection(hub, "sse", window=5)
    assert hub.resume(third, "2-0") == 1
    assert received == [3] and sorted(third.in_flight) == ["msg_3"]
    # An id no held connection sent: nothing to take over.
    fourth, _ = open_connection(hub, "sse", window=5)
    assert hub.resume(fourth, "1-0") == 0 and fourth.in_flight == {}
    hub.disconnect(third, hold=RESUME_GRACE)
    clock.advance(RESUME_GRACE + 1)
    assert [c[:2] for c in buffer.given_back()] == [("3-0", "connection closed")]  # grace over: given back
    hub.stop()


def test_releasing_the_last_registration_closes_the_channels_connections() -> None:
    clock = Clock()
    buffer = RecordingBuffer()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    first = hub.register(OWNER, ChannelConfig(name="ch", token="t", max_in_flight=3))
    second = hub.register(("default", "other"), ChannelConfig(name="ch", token="t", max_in_flight=7))
    channel = hub.channel("ch")
    assert channel is not None and channel.config.max_in_flight == 7 and channel.webhook_ids == ["hook", "other"]
    closed: list[str] = []
    connection = _sync.successResultOf(Deferred.fromCoroutine(hub.connect(channel, "sse", "c", "r", "t", 7)))
    assert connection is not None
    hub.attach(connection, lambda ms: None, closed.append)
    second()
    assert channel.config.max_in_flight == 3 and closed == []
    first()
    assert hub.channel("ch") is None and closed == ["channel removed from the configuration"]
    hub.stop()


def test_a_window_opening_on_a_channel_outside_the_current_read_wakes_it() -> None:
    hub, buffer, clock = hub_with_channel()
    hub.register(("default", "b"), ChannelConfig(name="other", token="t"))
    open_connection(hub, window=1)
    assert buffer.reads[-1][0] == {"ch": 1} and buffer.blocking == [False]
    buffer.answer()  # nothing waits: the blocking read of "ch" follows
    assert buffer.reads[-1][0] == {"ch": 1} and buffer.blocking == [False, True]
    other = hub.channel("other")
    assert other is not None
    connection = _sync.successResultOf(Deferred.fromCoroutine(hub.connect(other, "websocket", "c", "r", "t", 4)))
    assert connection is not None
    hub.attach(connection, lambda ms: None, lambda reason: None)
    assert [c for c in buffer.calls if c[0] == "unblock"] == [("unblock", "7")]
    clock.advance(0.2)  # in case the wake beat the read to Redis: once more, then no more
    clock.advance(0.2)
    assert len([c for c in buffer.calls if c[0] == "unblock"]) == 3
    buffer.answer()  # the woken read returns nothing; the next one asks for both
    assert buffer.reads[-1][0] == {"ch": 1, "other": 4} and buffer.blocking[-1] is False
    hub.stop()


def test_the_restart_give_back_runs_once_and_before_the_channel_is_read() -> None:
    """Registration and the first sweep both ensure the channel: only one gives back
    what a previous process held, and the channel is read only after it, so nothing
    this process reads is given back as 'instance restarted'."""
    clock = Clock()
    clock.advance(1000)
    held: Deferred[list[str]] = Deferred()
    lookups: list[str] = []

    class HeldBuffer(RecordingBuffer):
        async def held_by_me(self, channel: str) -> list[str]:
            lookups.append(channel)
            return await held

    buffer = HeldBuffer()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    hub.start()  # its first sweep ensures the channel again, during the give-back
    assert lookups == ["ch"]
    _, received = open_connection(hub, window=1)
    assert buffer.reads == []  # not read before the give-back is done
    held.callback(["9-0"])
    assert buffer.given_back() == [("9-0", "instance restarted", False, True)]
    buffer.answer(message(1))
    assert received == [1]
    clock.advance(5)  # later sweeps do not give back again
    assert buffer.given_back() == [("9-0", "instance restarted", False, True)]
    hub.stop()


# --- issue 13: reads per channel, release races, the read loop, cancelled joins, sends ----------------


def test_each_channel_is_read_for_no_more_than_its_free_window() -> None:
    """What waits is read with each channel's own count; the blocking read is only the wake-up."""
    hub, buffer, clock = hub_with_channel()
    hub.register(("default", "b"), ChannelConfig(name="other", token="t"))
    open_connection(hub, window=1)
    other = hub.channel("other")
    assert other is not None
    connection = _sync.successResultOf(Deferred.fromCoroutine(hub.connect(other, "websocket", "c", "r", "t", 3)))
    assert connection is not None
    hub.attach(connection, lambda ms: None, lambda reason: None)
    buffer.answer()  # the first read (ch only) found nothing: the wake-up, over both
    assert buffer.reads[-1][0] == {"ch": 1, "other": 3} and buffer.blocking[-1] is True  # COUNT 1 in Redis
    buffer.answer(message(1), channel="other")
    assert buffer.reads[-1][0] == {"ch": 1, "other": 2} and buffer.blocking[-1] is False  # the rest, exactly
    assert buffer.given_back() == []
    hub.stop()


def test_a_released_channel_keeps_its_last_settings_for_calls_under_way() -> None:
    clock = Clock()
    buffer = RecordingBuffer()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    first = hub.register(OWNER, ChannelConfig(name="ch", token="t", max_in_flight=3))
    second = hub.register(("default", "other"), ChannelConfig(name="ch", token="t", max_in_flight=7))
    channel = hub.channel("ch")
    assert channel is not None
    second()
    first()
    assert hub.channel("ch") is None
    # A route or task that held the channel across an await still reads its settings.
    assert channel.config.max_in_flight == 3 and channel.webhook_id == "hook"
    hub.stop()


class FailingReads(RecordingBuffer):
    """Reads fail with ``errors`` first (one each), then behave."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.errors = list(errors)

    async def read(self, channels: dict[str, int]) -> list[tuple[str, Buffered]]:
        if self.errors:
            raise self.errors.pop(0)
        return await super().read(channels)


def test_a_dead_read_loop_is_restarted_with_backoff_and_status_says_so(
    logged_failures: list[dict[str, Any]],
) -> None:
    clock = Clock()
    clock.advance(1000)
    buffer = FailingReads(KeyError("env"))  # e.g. a malformed entry: not Redis being away
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    assert hub.status()["read_loop"] == "stopped"
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    _, received = open_connection(hub, window=1)
    status = hub.status()
    assert status["read_loop"] == "restarting" and status["read_loop_error"] == "'env'"
    assert len(logged_failures) == 1 and isinstance(logged_failures[0]["log_failure"].value, KeyError)
    logged_failures.clear()
    clock.advance(1)  # the backoff's first delay is at most 1 s
    assert hub.status()["read_loop"] == "running" and "read_loop_error" not in hub.status()
    buffer.answer(message(1))
    assert received == [1]
    hub.stop()
    assert hub.status()["read_loop"] == "stopped"


def test_redis_away_shows_as_restarting_until_a_read_succeeds() -> None:
    from cwm.connect.hub import ConnectUnavailable

    clock = Clock()
    clock.advance(1000)
    buffer = FailingReads(ConnectUnavailable("Not connected"))
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    _, received = open_connection(hub, window=1)
    assert (hub.status()["read_loop"], hub.status()["read_loop_error"]) == ("restarting", "Not connected")
    clock.advance(1)
    buffer.answer(message(1))
    assert received == [1] and hub.status()["read_loop"] == "running"
    hub.stop()


def test_a_failing_sweep_is_started_again_with_backoff_and_logged_once_per_streak(
    logged_failures: list[dict[str, Any]],
) -> None:
    hub, buffer, clock = hub_with_channel()
    hub._loop_backoffs["sweep"]._random = lambda: 1.0  # the ceiling of each jittered delay
    calls: list[float] = []
    broken = [True]
    sweep = hub._sweep_redis

    async def failing() -> None:
        calls.append(clock.seconds())
        if broken[0]:
            raise RuntimeError("bug")
        await sweep()

    hub._sweep_redis = failing  # type: ignore[method-assign]
    clock.advance(5)  # the sweep fails and its LoopingCall stops...
    assert len(calls) == 1 and len(logged_failures) == 1
    logged_failures.clear()
    for _ in range(60):
        clock.advance(5)
    # ...and is started again after 5, 10, 20, 40, then 60 s (not every 5 s), each failure unlogged.
    delays = [round(b - a) for a, b in zip(calls, calls[1:])]
    assert delays[:5] == [5, 10, 20, 40, 60] and set(delays[5:]) == {60}
    assert logged_failures == []
    broken[0] = False
    clock.advance(60)  # it works again...
    broken[0] = True
    clock.advance(5)  # ...so the next failure starts a new streak: logged
    assert len(logged_failures) == 1
    logged_failures.clear()
    hub.stop()
    assert clock.getDelayedCalls() == []


def test_a_cancelled_join_is_taken_back_and_is_not_called_redis_trouble() -> None:
    clock = Clock()
    joins: list[Deferred[bool]] = []

    class SlowJoin(RecordingBuffer):
        async def join(self, channel: str, cid: str, record: dict[str, Any], limit: int, now: float) -> bool:
            self.calls.append(("join", cid))
            d: Deferred[bool] = Deferred()
            joins.append(d)
            return await d

    buffer = SlowJoin()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    channel = hub.channel("ch")
    assert channel is not None
    connecting = Deferred.fromCoroutine(hub.connect(channel, "sse", "c", "r", "t", 1))
    connecting.cancel()  # the client went away while Redis was recording the connection
    _sync.failureResultOf(connecting, CancelledError)
    [(_, cid)] = [c for c in buffer.calls if c[0] == "join"]
    assert ("leave", cid) not in buffer.calls  # not before the join landed...
    joins[0].callback(True)
    assert ("leave", cid) in buffer.calls  # ...then taken back: no phantom against max_connections
    assert hub.connection(cid) is None and channel.connections == {}
    hub.stop()


def test_a_message_that_cannot_be_sent_is_given_back_alone(logged_failures: list[dict[str, Any]]) -> None:
    hub, buffer, clock = hub_with_channel()
    channel = hub.channel("ch")
    assert channel is not None
    connection = _sync.successResultOf(Deferred.fromCoroutine(hub.connect(channel, "websocket", "c", "r", "t", 3)))
    assert connection is not None
    sent: list[int] = []
    closed: list[str] = []

    def sink(messages: list[Buffered]) -> None:
        for m in messages:
            if m.sequence == 2:
                raise ValueError("too big for this transport")
            sent.append(m.sequence)

    hub.attach(connection, sink, closed.append)
    buffer.answer(message(1), message(2), message(3))
    assert sent == [1, 3] and closed == []
    assert buffer.given_back() == [("2-0", "send failed", False, True)]
    assert sorted(connection.in_flight) == ["msg_1", "msg_3"] and hub.connection(connection.id) is connection
    assert [str(e["log_failure"].value) for e in logged_failures] == ["too big for this transport"]
    logged_failures.clear()
    hub.stop()


def test_a_message_acked_on_another_instance_frees_the_slot_here() -> None:
    hub, buffer, clock = hub_with_channel()
    connection, received = open_connection(hub, window=1)
    buffer.answer(message(1))
    assert connection.free() == 0
    buffer.settled_elsewhere.add("1-0")
    clock.advance(1)  # the next tick finds it no longer in flight in Redis
    assert connection.free() == 1 and connection.acked == 1 and buffer.given_back() == []
    assert buffer.reads[-1][0] == {"ch": 1}
    hub.stop()


# --- review of the cloud side: lost read replies, stop, settling ------------------------------------


class HeldReads(RecordingBuffer):
    """``held_by_me`` answers what the test says this consumer holds in Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []
        self.startup_done = False

    async def held_by_me(self, channel: str) -> list[str]:
        if not self.startup_done:
            return []
        return list(self.held)


def test_after_a_failed_read_what_redis_handed_us_and_nobody_holds_goes_back_uncounted() -> None:
    from cwm.connect.hub import ConnectUnavailable

    clock = Clock()
    clock.advance(1000)
    buffer = HeldReads()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    buffer.startup_done = True
    connection, received = open_connection(hub, window=2)
    buffer.answer(message(1))
    assert received == [1]
    # The next read's reply is lost (a timeout, one of its commands failing), though Redis
    # handed message 2 to this consumer.
    buffer.held = ["1-0", "2-0"]
    buffer.reads[-1][1].errback(ConnectUnavailable("Redis did not answer within 5 s"))
    assert buffer.given_back() == []
    clock.advance(1)  # the backoff; then, before reading again
    assert buffer.given_back() == [("2-0", "read reply lost", False, False)]  # not 1-0: in flight here
    assert buffer.reads[-1][0] == {"ch": 1} and not buffer.reads[-1][1].called
    hub.stop()


def test_stop_waits_for_the_read_under_way_and_gives_back_what_it_brings() -> None:
    hub, buffer, clock = hub_with_channel()
    connection, received = open_connection(hub, window=2)
    stopped = hub.stop()
    assert not stopped.called  # the read is still under way
    buffer.answer(message(1))
    assert received == [] and buffer.given_back()[-1] == ("1-0", "server shutting down", False, False)
    _sync.successResultOf(stopped)


def test_stop_is_bounded_when_the_read_never_answers() -> None:
    hub, buffer, clock = hub_with_channel()
    open_connection(hub, window=2)
    stopped = hub.stop()
    clock.advance(5)  # the read's own timeout: a lost reply, nothing dispatched
    _sync.successResultOf(stopped)


class RequeuedElsewhere(RecordingBuffer):
    """Stream ids in ``moved`` were requeued under a new id by another instance; ``ids`` maps
    message ids to their current stream ids (as the channel's ids hash does)."""

    def __init__(self) -> None:
        super().__init__()
        self.moved: set[str] = set()
        self.ids: dict[str, str] = {}

    async def ack(self, channel: str, stream_id: str) -> bool:
        self.calls.append(("ack", stream_id))
        return stream_id not in self.moved

    async def ack_message(self, channel: str, message_id: str) -> bool:
        self.calls.append(("ack_message", message_id))
        return self.ids.pop(message_id, None) is not None


def test_an_ack_meeting_a_stale_stream_id_acks_the_requeued_copy_by_message_id() -> None:
    clock = Clock()
    clock.advance(1000)
    buffer = RequeuedElsewhere()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    connection, _ = open_connection(hub, window=2)
    buffer.answer(message(1), message(2))
    buffer.moved |= {"1-0", "2-0"}  # both nacked on another instance: requeued...
    buffer.ids["msg_1"] = "9-0"  # ...msg_1 is still queued under 9-0; msg_2 was settled since
    assert settle(hub, connection, "msg_1") == "acked"
    assert ("ack_message", "msg_1") in buffer.calls and "msg_1" not in buffer.ids
    assert settle(hub, connection, "msg_2") == "gone"
    hub.stop()


def test_a_websocket_closing_gives_back_what_is_dispatched_to_it_uncounted_and_quietly() -> None:
    """After the peer's close frame, until onClose: nothing can be sent, nothing was delivered."""
    from cwm.connect.ws import ChannelSocketFactory

    hub, buffer, clock = hub_with_channel()
    channel = hub.channel("ch")
    assert channel is not None
    connection = _sync.successResultOf(Deferred.fromCoroutine(hub.connect(channel, "websocket", "c", "r", "t", 2)))
    assert connection is not None
    socket = ChannelSocketFactory(hub, connection, clock, 30.0).buildProtocol(None)
    socket.state = socket.STATE_CLOSING
    hub.attach(connection, socket._send_batch, lambda reason: None)
    buffer.answer(message(1), message(2))
    assert buffer.given_back() == [("1-0", "connection closing", False, False), ("2-0", "connection closing", False, False)]
    assert connection.in_flight == {}
    hub.stop()


class BlockingReplies(RecordingBuffer):
    """The blocking read's two replies (client id, found) are the test's to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.client_ids: list[Deferred[str]] = []

    def read_blocking(self, channels: dict[str, int], block_ms: int) -> tuple[Deferred[str], Deferred[Any]]:
        _, found = super().read_blocking(channels, block_ms)
        client_id: Deferred[str] = Deferred()
        self.client_ids.append(client_id)
        return client_id, found


def blocking_hub() -> tuple[ConnectHub, BlockingReplies, Clock]:
    clock = Clock()
    clock.advance(1000)
    buffer = BlockingReplies()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    open_connection(hub, window=1)
    buffer.answer()  # nothing waits: the blocking read follows
    assert buffer.blocking[-1] is True
    return hub, buffer, clock


def test_a_blocking_read_whose_client_id_never_comes_times_out() -> None:
    hub, buffer, clock = blocking_hub()
    buffer.reads[-1][1].callback([])  # the read answers; CLIENT ID never does
    clock.advance(10)  # READ_BLOCK_MS + CALL_TIMEOUT
    assert hub.status()["read_loop"] == "restarting" and "blocking read" in hub.status()["read_loop_error"]
    hub.stop()


def test_both_blocking_replies_failing_leave_no_unhandled_error(logged_failures: list[dict[str, Any]]) -> None:
    import gc

    import txredisapi

    hub, buffer, clock = blocking_hub()
    buffer.client_ids[-1].errback(txredisapi.ConnectionError("Not connected"))
    buffer.reads[-1][1].errback(txredisapi.ConnectionError("Not connected"))
    assert hub.status()["read_loop_error"] == "Not connected"
    hub.stop()
    clock.advance(10)
    buffer.reads.clear()  # the test's own references: the replies can be collected now
    buffer.client_ids.clear()
    gc.collect()
    assert logged_failures == []


def test_a_transient_redis_error_on_the_blocking_read_is_retried_without_a_traceback() -> None:
    import txredisapi

    hub, buffer, clock = blocking_hub()
    buffer.client_ids[-1].callback("7")
    buffer.reads[-1][1].errback(txredisapi.ResponseError("LOADING Redis is loading the dataset in memory"))
    assert hub.status()["read_loop"] == "restarting" and hub.status()["read_loop_error"].startswith("LOADING")
    hub.stop()


def test_a_cancelled_join_that_then_times_out_is_taken_back_too() -> None:
    from cwm.connect.hub import ConnectUnavailable

    clock = Clock()
    joins: list[Deferred[bool]] = []

    class SlowJoin(RecordingBuffer):
        async def join(self, channel: str, cid: str, record: dict[str, Any], limit: int, now: float) -> bool:
            self.calls.append(("join", cid))
            d: Deferred[bool] = Deferred()
            joins.append(d)
            return await d

    buffer = SlowJoin()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    channel = hub.channel("ch")
    assert channel is not None
    connecting = Deferred.fromCoroutine(hub.connect(channel, "sse", "c", "r", "t", 1))
    connecting.cancel()
    _sync.failureResultOf(connecting, CancelledError)
    [(_, cid)] = [c for c in buffer.calls if c[0] == "join"]
    joins[0].errback(ConnectUnavailable("Redis did not answer within 5 s"))  # it may have landed all the same
    assert ("leave", cid) in buffer.calls
    hub.stop()


def test_stop_wakes_the_blocking_read_and_gives_back_what_it_was_handed() -> None:
    hub, buffer, clock = hub_with_channel()
    open_connection(hub, window=1)
    buffer.answer()  # nothing waits: the blocking read follows
    assert buffer.blocking[-1] is True
    stopped = hub.stop()
    assert ("unblock", "7") in buffer.calls and not stopped.called
    buffer.answer(message(4))  # Redis handed it a message just before the wake-up
    assert buffer.given_back()[-1] == ("4-0", "server shutting down", False, False)
    _sync.successResultOf(stopped)


def test_the_lost_read_give_back_leaves_alone_what_is_being_given_back_already() -> None:
    from cwm.connect.buffer import Outcome
    from cwm.connect.hub import ConnectUnavailable

    class SlowGiveBack(HeldReads):
        def __init__(self) -> None:
            super().__init__()
            self.slow: list[Deferred[Outcome]] = []

        async def give_back(self, channel: str, stream_id: str, max_deliveries: int, reason: str, now: float,
                            dead: bool = False, counted: bool = True) -> Outcome:
            self.calls.append(("give_back", stream_id, reason, dead, counted))
            if reason == "connection closed":
                d: Deferred[Outcome] = Deferred()
                self.slow.append(d)
                return await d
            return Outcome("requeued", 1, "new")

    clock = Clock()
    clock.advance(1000)
    buffer = SlowGiveBack()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    buffer.startup_done = True
    first, _ = open_connection(hub, window=1)
    buffer.answer(message(1))
    second, _ = open_connection(hub, window=1)
    hub.disconnect(first, hold=0)  # its give-back of 1-0 waits for Redis...
    buffer.held = ["1-0"]
    buffer.reads[-1][1].errback(ConnectUnavailable("Redis did not answer within 5 s"))  # ...when a read fails
    clock.advance(1)
    assert buffer.given_back() == [("1-0", "connection closed", False, True)]  # once, counted
    buffer.slow[0].callback(Outcome("requeued", 1, "new"))
    hub.stop()
