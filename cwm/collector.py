"""Holding CPython's full garbage collections off while a large payload is alive.

A full (generation-2) collection walks every tracked object, holding the GIL
whichever thread triggers it. A parsed 10 MB JSON body is about 250,000
lists and dicts; while one is alive each full collection takes 35-80 ms, and
parsing and rendering it allocates enough to trigger several. Measured
against a real twistd, those were the remaining stalls of the reactor thread
during a 10 MB POST (``bench/large_body_stalls.py``).

``FullCollectionHold`` raises the generation-2 threshold while at least one
large payload is held, so that no full collection starts then; young
collections (generations 0 and 1, which never walk the payload once it has
been promoted) go on as usual, so short-lived cyclic garbage is still
collected. When the last hold is released the thresholds are restored, and
the next automatic full collection walks a heap without the payload.

A hold never lasts unbounded: past ``max_hold`` seconds of continuous holding
(a flood of large bodies, or one stuck on a frozen disk), the service runs
one full collection on the reactor thread (one deliberate pause, logged) and
starts a new window, so cyclic garbage is always collected eventually.

The garbage collector's state is process-wide: only the composition root
builds this service; library code receives it as a ``PayloadHold`` and tests
pass a fake ``gc``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

HELD_THRESHOLD = 2**31 - 1
"""Generation 2's threshold while held: its count (one per generation-1 collection) never gets there."""

DEFAULT_MAX_HOLD = 30.0
"""Seconds full collections may stay off at a stretch."""

CHECK_INTERVAL = 1.0
"""Seconds between checks of how long the current hold has lasted."""

Release = Callable[[], None]


class PayloadHold(Protocol):
    """What a caller holding a large payload needs: ``hold()`` returns the release (idempotent)."""

    def hold(self) -> Release: ...


class GcApi(Protocol):
    """The part of the ``gc`` module used here (a fake in unit tests)."""

    def get_threshold(self) -> tuple[int, int, int]: ...

    def set_threshold(self, threshold0: int, threshold1: int = ..., threshold2: int = ..., /) -> None: ...

    def isenabled(self) -> bool: ...

    def collect(self, generation: int = ...) -> int: ...


class NoHold:
    """Holds nothing: the default of a pipeline built without the composition root's hold."""

    def hold(self) -> Release:
        return _nothing


def _nothing() -> None:
    pass


class FullCollectionHold(Service):
    """Counts the large payloads alive; while there are any, full collections are held off (bounded).

    ``hold`` and releases may be called from any thread (the reactor, body
    and file threads). Holds change the collector only while the service
    runs, which is also when the cap is enforced (from the reactor thread).

    Args:
        clock: Schedules the cap checks.
        max_hold: Seconds full collections may stay off at a stretch.
        gc_api: The garbage collector (the ``gc`` module).
        monotonic: Seconds, for the length of a hold.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        max_hold: float = DEFAULT_MAX_HOLD,
        gc_api: GcApi = gc,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_hold <= 0:
            raise ValueError("max_hold must be positive")
        self._clock = clock
        self._max_hold = max_hold
        self._gc = gc_api
        self._monotonic = monotonic
        self._lock = threading.RLock()
        # Under _lock:
        self.holders = 0
        self._saved: tuple[int, int, int] | None = None
        self._held_since = 0.0
        self.forced = 0
        self._check: LoopingCall | None = None

    def hold(self) -> Release:
        """Hold full collections off until the returned function is called (once; later calls do nothing)."""
        with self._lock:
            self.holders += 1
            if self.holders == 1 and self.running:
                self._start_window()
        released = [False]

        def release() -> None:
            with self._lock:
                if released[0]:
                    return
                released[0] = True
                self.holders -= 1
                if self.holders == 0:
                    self._end_window()

        return release

    def _start_window(self) -> None:
        # The collector switched off (gc.disable, threshold 0) is left as it is.
        threshold = self._gc.get_threshold()
        if not self._gc.isenabled() or threshold[0] == 0:
            return
        self._saved = threshold
        self._held_since = self._monotonic()
        self._gc.set_threshold(threshold[0], threshold[1], HELD_THRESHOLD)

    def _end_window(self) -> None:
        if self._saved is not None:
            self._gc.set_threshold(*self._saved)
            self._saved = None

    @property
    def holding(self) -> bool:
        """Whether full collections are held off now."""
        return self._saved is not None

    def check(self) -> None:
        """Past ``max_hold`` seconds of holding: one full collection now, then a new window."""
        with self._lock:
            if self._saved is None:
                return
            held = self._monotonic() - self._held_since
            if held < self._max_hold:
                return
            self._end_window()
        # Outside the lock: finalizers run during a collection, and may take a hold.
        started = self._monotonic()
        collected = self._gc.collect()
        took = self._monotonic() - started
        with self._lock:
            self.forced += 1
            if self.holders and self._saved is None and self.running:
                self._start_window()
        self._log.info(
            "full garbage collection after holding it off for {held:.1f} s: {collected} objects freed in {took_ms:.0f} ms",
            held=held,
            collected=collected,
            took_ms=took * 1000,
        )

    def startService(self) -> None:
        super().startService()
        self._check = LoopingCall(self.check)
        self._check.clock = self._clock
        self._check.start(min(CHECK_INTERVAL, self._max_hold), now=False).addErrback(
            lambda failure: self._log.failure("the full-collection hold check failed", failure)
        )

    def stopService(self) -> Any:
        """Stop checking and give the garbage collector its thresholds back, whatever is still held."""
        super().stopService()
        if self._check is not None and self._check.running:
            self._check.stop()
        self._check = None
        with self._lock:
            self._end_window()
        return None
