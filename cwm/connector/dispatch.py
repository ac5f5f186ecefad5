"""Between the stream and the deliveries: a bound on concurrency, one delivery per message id, draining.

Every message is delivered at most once at a time. A message the cloud
redelivers while its delivery is still running (its ack timeout passed, or the
stream was reopened) joins the running delivery: its outcome is then reported
through the newest receipt. A message whose delivery already ended in an ack or
a dead letter, and that the cloud sends again because that report did not
reach it, is reported again without being delivered again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from cwm.connector.logs import connector_logger
from cwm.connector.message import Delivery, Message, Outcome, dead_letter, requeue

Settle = Callable[[Outcome], Deferred[None]]
"""Reports an outcome to the cloud through the stream the message came on."""

# How long an ended delivery is remembered, and how many are (a redelivery of
# one of them is answered without delivering again).
REMEMBER_SECONDS = 3600.0
REMEMBER_MAX = 50_000
STOPPING = "connector stopping"


@dataclass
class Counters:
    """What the connector has done since it started (logs and the status endpoint)."""

    received: int = 0
    duplicates: int = 0
    delivered: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    reconnects: int = 0
    malformed: int = 0
    report_failures: int = 0

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Job:
    message: Message
    settle: Settle
    running: Deferred[Outcome] | None = None


class Dispatcher:
    """Runs deliveries, at most ``limit`` at once, and reports each outcome."""

    _log = connector_logger()

    def __init__(self, delivery: Delivery, clock: IReactorTime, limit: int, counters: Counters) -> None:
        self._delivery = delivery
        self._clock = clock
        self._limit = limit
        self.counters = counters
        self._jobs: dict[str, _Job] = {}  # waiting or running, by message id
        self._waiting: deque[_Job] = deque()
        self._running = 0
        self._ended: OrderedDict[str, tuple[Outcome, float]] = OrderedDict()
        self._reports: set[Deferred[None]] = set()
        self._slot_waiters: list[Deferred[None]] = []
        self._returning: list[tuple[Message, Settle]] = []
        self._starting = False
        self.stopping = False

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def free_slots(self) -> int:
        """How many more messages could start now (long-poll asks for that many)."""
        return max(0, self._limit - self._running - len(self._waiting))

    def slot_free(self) -> Deferred[None]:
        """Fires once ``free_slots()`` is above zero (at once if it is)."""
        if self.free_slots() > 0:
            return succeed(None)
        def forget(d: Deferred[None]) -> None:
            if d in self._slot_waiters:
                self._slot_waiters.remove(d)

        waiter: Deferred[None] = Deferred(forget)
        self._slot_waiters.append(waiter)
        return waiter

    def received(self, message: Message, settle: Settle) -> None:
        """A message arrived; ``settle`` reports its outcome on the stream it came on."""
        self.counters.received += 1
        job = self._jobs.get(message.message_id)
        if job is not None:
            # Redelivered while waiting or running: one delivery; the newest
            # receipt reports (the older one is no longer held by the cloud).
            self.counters.duplicates += 1
            job.settle = settle
            self._log.info(
                "message {message_id} redelivered while its delivery is under way; not delivered twice",
                message_id=message.message_id, webhook_id=message.webhook_id,
            )
            return
        ended = self._remembered(message.message_id)
        if ended is not None:
            self.counters.duplicates += 1
            self._log.info(
                "message {message_id} redelivered after its delivery ended ({kind}); reported again",
                message_id=message.message_id, webhook_id=message.webhook_id, kind=ended.kind,
            )
            self._report(message, ended, settle)
            return
        if self.stopping:
            # Given back once the stream is closed (see drain): a nack now would
            # requeue it to this same stream, again and again.
            self._returning.append((message, settle))
            return
        job = _Job(message, settle)
        self._jobs[message.message_id] = job
        self._waiting.append(job)
        self._start_waiting()

    def undeliverable(self, message_id: str, reason: str, settle: Settle) -> None:
        """A message with an id but unusable fields: straight to the dead letters."""
        self.counters.received += 1
        outcome = dead_letter(f"malformed message: {reason}")
        self._remember(message_id, outcome)
        self._report(Message(message_id=message_id, webhook_id=""), outcome, settle)

    def malformed(self, reason: str) -> None:
        """A wire message without an id: nothing can be reported about it."""
        self.counters.malformed += 1
        self._log.error("a message from the cloud was dropped: {reason}", reason=reason)

    def _start_waiting(self) -> None:
        # A delivery that ends at once (no target, say) calls back in here:
        # the outer call does the starting, so the stack stays flat.
        if self._starting:
            return
        self._starting = True
        try:
            while self._waiting and self._running < self._limit and not self.stopping:
                job = self._waiting.popleft()
                self._running += 1
                job.running = Deferred.fromCoroutine(self._delivery.deliver(job.message))
                job.running.addBoth(self._finished, job)
        finally:
            self._starting = False

    def _finished(self, result: Outcome | Failure, job: _Job) -> None:
        self._running -= 1
        del self._jobs[job.message.message_id]
        if isinstance(result, Failure):
            if not result.check(CancelledError):
                self._log.failure("delivery of {message_id} failed unexpectedly", result,
                                  message_id=job.message.message_id)
            outcome = requeue(STOPPING if result.check(CancelledError) else "delivery failed unexpectedly")
        else:
            outcome = result
        if outcome.ack or not outcome.retry:
            self._remember(job.message.message_id, outcome)
        if self.stopping and not outcome.ack and outcome.retry:
            self._returning.append((job.message, job.settle))  # see drain()
        else:
            self._report(job.message, outcome, job.settle)
        self._start_waiting()
        self._wake_slot_waiters()

    def _report(self, message: Message, outcome: Outcome, settle: Settle) -> None:
        if outcome.ack:
            self.counters.delivered += 1
        elif outcome.retry:
            self.counters.nacked += 1
        else:
            self.counters.dead_lettered += 1
        self._log.info(
            "message {message_id} for {webhook_id}: {kind}{why}",
            message_id=message.message_id,
            webhook_id=message.webhook_id,
            kind=outcome.kind,
            why=f" ({outcome.reason})" if outcome.reason else "",
            delivery_count=message.delivery_count,
            counters=self.counters.as_json(),
        )
        try:
            d = settle(outcome)
        except Exception:
            d = Deferred()
            d.errback()
        self._reports.add(d)
        d.addErrback(self._report_failed, message, outcome)
        d.addBoth(lambda _: self._reports.discard(d))

    def _report_failed(self, failure: Failure, message: Message, outcome: Outcome) -> None:
        if self.stopping and failure.check(ConnectionDone) and outcome.retry:
            # Its WebSocket is closed: closing it gave the message back already.
            return
        self.counters.report_failures += 1
        # The cloud still holds it: it comes back after its ack timeout, and is
        # then reported again from memory (ack, dead letter) or redelivered.
        self._log.warn(
            "could not report {kind} of {message_id} to the cloud: {reason}; it will be redelivered",
            kind=outcome.kind, message_id=message.message_id, reason=_why(failure),
        )

    def _wake_slot_waiters(self) -> None:
        while self._slot_waiters and self.free_slots() > 0:
            self._slot_waiters.pop(0).callback(None)

    def _remember(self, message_id: str, outcome: Outcome) -> None:
        now = self._clock.seconds()
        self._ended[message_id] = (outcome, now)
        self._ended.move_to_end(message_id)
        while self._ended:
            oldest_id, (_, at) = next(iter(self._ended.items()))
            if len(self._ended) <= REMEMBER_MAX and now - at < REMEMBER_SECONDS:
                break
            del self._ended[oldest_id]

    def _remembered(self, message_id: str) -> Outcome | None:
        found = self._ended.get(message_id)
        if found is None or self._clock.seconds() - found[1] >= REMEMBER_SECONDS:
            return None
        return found[0]

    def drain(self, timeout: float) -> Deferred[None]:
        """Stop delivering: running deliveries get ``timeout`` seconds to finish, then
        are cancelled. Fires once none runs and the outcomes of those that finished
        are reported. What is left (waiting, cancelled, arrived meanwhile) is given
        back by ``give_back()``, to call once the stream is closed: a nack on the
        open stream would bring the message straight back to it."""
        self.stopping = True
        for job in self._waiting:
            del self._jobs[job.message.message_id]
            self._returning.append((job.message, job.settle))
        self._waiting = deque()
        running = [job.running for job in self._jobs.values() if job.running is not None]
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            waiter.cancel()
        timer: IDelayedCall | None = None
        if running:
            def cancel_the_rest() -> None:
                for job in list(self._jobs.values()):
                    if job.running is not None:
                        job.running.cancel()

            timer = self._clock.callLater(timeout, cancel_the_rest)
        done: Deferred[Any] = DeferredList([_quiet(d) for d in running], consumeErrors=True)

        def reported(_: object) -> Deferred[Any]:
            if timer is not None and timer.active():
                timer.cancel()
            return self._all_reported()

        return done.addCallback(reported).addCallback(lambda _: None)

    def give_back(self) -> Deferred[None]:
        """Nack with retry what was not delivered (after ``drain``); fires once reported."""
        returning, self._returning = self._returning, []
        for message, settle in returning:
            self._report(message, requeue(STOPPING), settle)
        return self._all_reported().addCallback(lambda _: None)

    def _all_reported(self) -> Deferred[Any]:
        return DeferredList([_quiet(d) for d in list(self._reports)], consumeErrors=True)


def _quiet(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` does, without touching ``d``'s result."""
    mirror: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        if not mirror.called:
            mirror.callback(None)
        return result

    d.addBoth(fire)
    return mirror


def _why(failure: Failure) -> str:
    value = failure.value
    text = str(value) if str(value) else type(value).__name__
    return text[:200]
