"""Full garbage collections held off while a large payload is alive: bounded, thread-safe, restored."""

from __future__ import annotations

import gc
import io
import json
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.body import LARGE_BODY, dismantle, encode_in_pieces
from cwm.collector import HELD_THRESHOLD, FullCollectionHold
from cwm.config.store import ConfigStore
from cwm.errors import HTTPError
from cwm.modules.base import ModuleContext, WebhookEvent
from cwm.pipeline import WebhookPipeline
from cwm.request import InboundRequest
from cwm.settings import parse_settings

_sync = SynchronousTestCase()


class FakeGc:
    """The part of ``gc`` the hold uses, in memory."""

    def __init__(self, threshold: tuple[int, int, int] = (700, 10, 10), enabled: bool = True) -> None:
        self.threshold = threshold
        self.enabled = enabled
        self.collections: list[int] = []

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, threshold0: int, threshold1: int = 10, threshold2: int = 10, /) -> None:
        self.threshold = (threshold0, threshold1, threshold2)

    def isenabled(self) -> bool:
        return self.enabled

    def collect(self, generation: int = 2) -> int:
        self.collections.append(generation)
        return 3


class Seconds:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def started(fake: FakeGc, max_hold: float = 30.0) -> tuple[FullCollectionHold, Clock, Seconds]:
    clock, seconds = Clock(), Seconds()
    hold = FullCollectionHold(clock, max_hold=max_hold, gc_api=fake, monotonic=seconds)
    hold.startService()
    return hold, clock, seconds


def test_holds_raise_generation_2_threshold_until_the_last_release() -> None:
    fake = FakeGc()
    hold, clock, _ = started(fake)
    first = hold.hold()
    second = hold.hold()
    assert fake.threshold == (700, 10, HELD_THRESHOLD) and hold.holding and hold.holders == 2
    first()
    first()  # a second call does nothing
    assert fake.threshold == (700, 10, HELD_THRESHOLD) and hold.holders == 1
    second()
    assert fake.threshold == (700, 10, 10) and not hold.holding and hold.holders == 0
    assert fake.collections == []
    hold.stopService()
    assert clock.getDelayedCalls() == []


def test_a_stopped_hold_or_a_switched_off_collector_is_left_alone() -> None:
    fake = FakeGc()
    idle = FullCollectionHold(Clock(), gc_api=fake)
    idle.hold()()
    assert fake.threshold == (700, 10, 10)
    for off in (FakeGc(enabled=False), FakeGc(threshold=(0, 10, 10))):
        hold, _, _ = started(off)
        release = hold.hold()
        assert off.threshold[2] == 10 and not hold.holding
        release()
        hold.stopService()


def test_past_max_hold_one_full_collection_runs_and_a_new_window_starts() -> None:
    """A flood of large bodies never keeps full collections off for longer than max_hold."""
    fake = FakeGc()
    hold, clock, seconds = started(fake, max_hold=5.0)
    release = hold.hold()
    seconds.now = 4.0
    clock.advance(4.0)
    assert fake.collections == [] and hold.forced == 0
    seconds.now = 5.0
    clock.advance(1.0)
    assert fake.collections == [2] and hold.forced == 1
    assert fake.threshold == (700, 10, HELD_THRESHOLD)  # still held, in a new window
    seconds.now = 9.0
    clock.advance(4.0)
    assert fake.collections == [2]
    seconds.now = 10.0
    clock.advance(1.0)
    assert fake.collections == [2, 2]
    release()
    assert fake.threshold == (700, 10, 10)
    seconds.now = 20.0
    clock.advance(10.0)
    assert fake.collections == [2, 2]
    hold.stopService()
    assert clock.getDelayedCalls() == []


def test_stopping_restores_the_thresholds_whatever_is_held() -> None:
    fake = FakeGc()
    hold, _, _ = started(fake)
    release = hold.hold()
    hold.stopService()
    assert fake.threshold == (700, 10, 10)
    release()
    assert fake.threshold == (700, 10, 10) and hold.holders == 0


def test_holds_from_many_threads_end_restored() -> None:
    fake = FakeGc()
    hold, _, _ = started(fake)
    go = threading.Barrier(8)

    def worker() -> None:
        go.wait()
        for _ in range(2000):
            hold.hold()()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert hold.holders == 0 and fake.threshold == (700, 10, 10)
    hold.stopService()


def test_the_real_collector_is_held_and_given_back() -> None:
    before = gc.get_threshold()
    hold = FullCollectionHold(Clock())
    hold.startService()
    try:
        release = hold.hold()
        assert gc.get_threshold() == (before[0], before[1], HELD_THRESHOLD)
        release()
        assert gc.get_threshold() == before
    finally:
        hold.stopService()
        gc.set_threshold(*before)


def test_gc_hold_setting() -> None:
    assert parse_settings({}, {}, "/tmp").gc_hold_max == 30.0
    assert parse_settings({}, {"GC_HOLD_MAX_SECONDS": "0"}, "/tmp").gc_hold_max == 0.0


# --- the pipeline holds a large payload from its parsing to the end of its delivery -------------


class CountingHold:
    def __init__(self) -> None:
        self.held = 0

    def hold(self) -> Any:
        self.held += 1
        released = [False]

        def release() -> None:
            assert not released[0]
            released[0] = True
            self.held -= 1

        return release


class SlowModule:
    def __init__(self, hold: CountingHold) -> None:
        self.hold = hold
        self.pending: list[Deferred[None]] = []
        self.held_during: list[int] = []

    async def deliver(self, event: WebhookEvent) -> None:
        self.held_during.append(self.hold.held)
        waiting: Deferred[None] = Deferred()
        self.pending.append(waiting)
        await waiting

    async def close(self) -> None:
        pass


class InlineBodyWork:
    def __init__(self, hold: CountingHold) -> None:
        self.hold = hold
        self.held_during: list[int] = []

    def run(self, function: Any, *args: Any) -> Deferred[Any]:
        self.held_during.append(self.hold.held)
        return Deferred.fromCoroutine(_call(function, *args))


async def _call(function: Any, *args: Any) -> Any:
    return function(*args)


def pipeline(webhook: dict[str, Any]) -> tuple[WebhookPipeline, SlowModule, InlineBodyWork, CountingHold, Clock]:
    clock, hold = Clock(), CountingHold()
    module, work = SlowModule(hold), InlineBodyWork(hold)
    ctx = ModuleContext(clock, io.StringIO(), None, None, FilePath("."))
    store = ConfigStore(ctx, {}, build=lambda name, config, c: module, known_module=lambda n: n == "slow")
    store.replace_all({"default": {"hook": webhook}}, {})
    store.mark_loaded()
    return WebhookPipeline(store, clock, 10, body_work=work, payload_hold=hold), module, work, hold, clock


def post(pipe: WebhookPipeline, body: bytes) -> Deferred[Any]:
    request = InboundRequest(
        "POST", "/webhook/hook", body, "203.0.113.1", 0.0, headers={"content-type": ["application/json"]}
    )
    return Deferred.fromCoroutine(pipe.handle(None, "hook", request))


BIG = json.dumps({"items": list(range(LARGE_BODY // 4))}).encode()


def test_a_large_payload_is_held_while_parsed_and_delivered_even_past_the_answer() -> None:
    pipe, module, work, hold, clock = pipeline({"module": "slow", "response_timeout": 1})
    answer = post(pipe, BIG)
    assert work.held_during == [1] and module.held_during == [1]
    clock.advance(1)  # 202: the delivery goes on, and so does the hold
    assert _sync.successResultOf(answer).status == 202 and hold.held == 1
    module.pending[0].callback(None)
    assert hold.held == 1  # released on the reactor's next turn, once the payload is let go
    clock.advance(0)
    assert hold.held == 0 and clock.getDelayedCalls() == []


def test_a_small_body_takes_no_hold_and_a_refused_large_one_gives_it_back() -> None:
    pipe, module, _, hold, clock = pipeline({"module": "slow", "json_schema": {"type": "array"}})
    small = post(pipe, b"[1]")
    assert module.held_during == [0]
    module.pending[0].callback(None)
    assert _sync.successResultOf(small).status == 200 and hold.held == 0
    refused = post(pipe, BIG)  # an object, not the array the schema wants: 400
    assert _sync.failureResultOf(refused, HTTPError).value.status == 400 and hold.held == 1
    clock.advance(0)
    assert hold.held == 0


# --- building and freeing a large document in small steps ----------------------------------------


def test_encode_in_pieces_is_the_same_text() -> None:
    document = {"items": [{"id": i, "tags": ["a", "é"], "x": None} for i in range(25_000)]}
    encoder = json.JSONEncoder(ensure_ascii=False)
    assert encode_in_pieces(encoder, document) == json.dumps(document, ensure_ascii=False)
    assert encode_in_pieces(encoder, [], "\n") == "[]\n"


def test_dismantle_empties_a_tree() -> None:
    inner: list[Any] = [{"a": [1, 2]}, [], {}]
    document = {"items": inner, "n": 1}
    dismantle(document)
    assert document == {} and inner == []
    dismantle("text")  # not a container: nothing to do
