"""The dispatcher: concurrency bound, one delivery per message id, reports, draining. No reactor."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from cwm.connector.dispatch import REMEMBER_SECONDS, Counters, Dispatcher
from cwm.connector.message import DELIVERED, Message, Outcome, dead_letter, requeue


class ManualDelivery:
    """Each deliver() waits until the test settles it."""

    def __init__(self) -> None:
        self.started: list[Message] = []
        self.pending: dict[str, Deferred[Outcome]] = {}
        self.cancelled: list[str] = []

    async def deliver(self, message: Message) -> Outcome:
        self.started.append(message)

        def cancelled(_: Deferred[Outcome]) -> None:
            self.cancelled.append(message.message_id)

        d: Deferred[Outcome] = Deferred(cancelled)
        self.pending[message.message_id] = d
        return await d

    def finish(self, message_id: str, outcome: Outcome) -> None:
        self.pending.pop(message_id).callback(outcome)

    def status(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


class Reports:
    """Settle functions that record what was reported, per receipt."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Outcome]] = []

    def settle(self, message_id: str, receipt: str = "first") -> Any:
        def report(outcome: Outcome) -> Deferred[None]:
            self.sent.append((message_id, receipt, outcome))
            return succeed(None)

        return report


def message(n: int) -> Message:
    return Message(message_id=f"msg_{n}", webhook_id="hook", body=b"x")


def setup(limit: int = 2) -> tuple[Dispatcher, ManualDelivery, Reports, Clock]:
    clock = Clock()
    delivery = ManualDelivery()
    return Dispatcher(delivery, clock, limit, Counters()), delivery, Reports(), clock


def test_no_more_than_the_limit_run_at_once_and_the_next_starts_when_one_ends() -> None:
    dispatcher, delivery, reports, _ = setup(limit=2)
    for n in range(5):
        dispatcher.received(message(n), reports.settle(f"msg_{n}"))
    assert [m.message_id for m in delivery.started] == ["msg_0", "msg_1"]
    assert (dispatcher.running, dispatcher.waiting, dispatcher.free_slots()) == (2, 3, 0)
    delivery.finish("msg_1", DELIVERED)
    assert [m.message_id for m in delivery.started] == ["msg_0", "msg_1", "msg_2"]
    assert reports.sent == [("msg_1", "first", DELIVERED)]
    assert dispatcher.counters.delivered == 1


def test_outcomes_are_counted_by_kind() -> None:
    dispatcher, delivery, reports, _ = setup(limit=3)
    for n in range(3):
        dispatcher.received(message(n), reports.settle(f"msg_{n}"))
    delivery.finish("msg_0", DELIVERED)
    delivery.finish("msg_1", requeue("target answered 503"))
    delivery.finish("msg_2", dead_letter("target answered 400"))
    c = dispatcher.counters
    assert (c.received, c.delivered, c.nacked, c.dead_lettered) == (3, 1, 1, 1)
    assert [r[2].kind for r in reports.sent] == ["delivered", "requeued", "dead_lettered"]


def test_a_redelivery_during_the_delivery_joins_it_and_the_newest_receipt_reports() -> None:
    dispatcher, delivery, reports, _ = setup()
    dispatcher.received(message(1), reports.settle("msg_1", "first"))
    dispatcher.received(message(1), reports.settle("msg_1", "second"))
    assert len(delivery.started) == 1
    assert dispatcher.counters.duplicates == 1
    delivery.finish("msg_1", DELIVERED)
    assert reports.sent == [("msg_1", "second", DELIVERED)]


def test_a_redelivery_of_a_waiting_message_is_not_queued_twice() -> None:
    dispatcher, delivery, reports, _ = setup(limit=1)
    dispatcher.received(message(0), reports.settle("msg_0"))
    dispatcher.received(message(1), reports.settle("msg_1", "first"))
    dispatcher.received(message(1), reports.settle("msg_1", "second"))
    assert dispatcher.waiting == 1
    delivery.finish("msg_0", DELIVERED)
    delivery.finish("msg_1", DELIVERED)
    assert [m.message_id for m in delivery.started] == ["msg_0", "msg_1"]
    assert reports.sent[-1] == ("msg_1", "second", DELIVERED)


def test_a_redelivery_after_an_ack_or_dead_letter_is_reported_again_without_delivering() -> None:
    dispatcher, delivery, reports, clock = setup()
    dispatcher.received(message(1), reports.settle("msg_1"))
    dispatcher.received(message(2), reports.settle("msg_2"))
    delivery.finish("msg_1", DELIVERED)
    delivery.finish("msg_2", dead_letter("target answered 400"))
    # The reports did not reach the cloud; it sends both again.
    dispatcher.received(message(1), reports.settle("msg_1", "again"))
    dispatcher.received(message(2), reports.settle("msg_2", "again"))
    assert len(delivery.started) == 2
    assert reports.sent[-2:] == [("msg_1", "again", DELIVERED), ("msg_2", "again", dead_letter("target answered 400"))]
    # Remembered for a bounded time only.
    clock.advance(REMEMBER_SECONDS)
    dispatcher.received(message(1), reports.settle("msg_1", "much later"))
    assert len(delivery.started) == 3


def test_a_requeued_message_is_delivered_again_when_it_comes_back() -> None:
    dispatcher, delivery, reports, _ = setup()
    dispatcher.received(message(1), reports.settle("msg_1"))
    delivery.finish("msg_1", requeue("target answered 503"))
    dispatcher.received(message(1), reports.settle("msg_1", "retry"))
    assert len(delivery.started) == 2
    delivery.finish("msg_1", DELIVERED)
    assert reports.sent[-1] == ("msg_1", "retry", DELIVERED)


def test_a_failed_report_is_counted_and_the_redelivery_is_answered_from_memory() -> None:
    dispatcher, delivery, _, _ = setup()
    attempts: list[Outcome] = []

    def failing(outcome: Outcome) -> Deferred[None]:
        attempts.append(outcome)
        d: Deferred[None] = Deferred()
        d.errback(ConnectionError("cloud unreachable"))
        return d

    dispatcher.received(message(1), failing)
    delivery.finish("msg_1", DELIVERED)
    assert dispatcher.counters.report_failures == 1
    dispatcher.received(message(1), failing)
    assert len(delivery.started) == 1
    assert attempts == [DELIVERED, DELIVERED]


def test_slot_free_fires_when_a_delivery_ends() -> None:
    dispatcher, delivery, reports, _ = setup(limit=1)
    assert dispatcher.slot_free().called
    dispatcher.received(message(1), reports.settle("msg_1"))
    waiter = dispatcher.slot_free()
    assert not waiter.called
    delivery.finish("msg_1", DELIVERED)
    assert waiter.called


def test_drain_lets_running_finish_cancels_them_at_the_timeout_and_give_back_returns_the_rest() -> None:
    dispatcher, delivery, reports, clock = setup(limit=2)
    for n in range(4):
        dispatcher.received(message(n), reports.settle(f"msg_{n}"))
    drained = dispatcher.drain(10.0)
    # One running delivery finishes in time.
    delivery.finish("msg_0", DELIVERED)
    # A message arriving while draining is not delivered; nor reported yet (a nack
    # now would bring it straight back on the same stream).
    dispatcher.received(message(9), reports.settle("msg_9"))
    assert [(r[0], r[2]) for r in reports.sent] == [("msg_0", DELIVERED)]
    assert [m.message_id for m in delivery.started] == ["msg_0", "msg_1"]
    clock.advance(9.9)
    assert not drained.called
    clock.advance(0.1)
    assert delivery.cancelled == ["msg_1"]
    assert drained.called
    # The stream is closed now: the rest is given back.
    assert [(r[0], r[2]) for r in reports.sent] == [("msg_0", DELIVERED)]
    assert dispatcher.give_back().called
    stopping = requeue("connector stopping")
    assert [(r[0], r[2]) for r in reports.sent] == [
        ("msg_0", DELIVERED), ("msg_2", stopping), ("msg_3", stopping), ("msg_9", stopping), ("msg_1", stopping)]
    c = dispatcher.counters
    assert (c.received, c.delivered, c.nacked) == (5, 1, 4)


def test_a_redelivery_of_a_running_message_while_draining_joins_it() -> None:
    dispatcher, delivery, reports, _ = setup(limit=1)
    dispatcher.received(message(1), reports.settle("msg_1", "first"))
    drained = dispatcher.drain(10.0)
    dispatcher.received(message(1), reports.settle("msg_1", "second"))
    delivery.finish("msg_1", DELIVERED)
    assert drained.called
    assert reports.sent == [("msg_1", "second", DELIVERED)]


def test_drain_with_nothing_running_fires_at_once() -> None:
    dispatcher, _, _, _ = setup()
    assert dispatcher.drain(10.0).called


def test_a_cancelled_delivery_requeues_as_stopping() -> None:
    clock = Clock()

    class Broken:
        async def deliver(self, message: Message) -> Outcome:
            raise CancelledError()  # as when a delivery is cancelled from elsewhere

        def status(self) -> dict[str, Any]:
            return {}

        async def close(self) -> None:
            pass

    reports = Reports()
    dispatcher = Dispatcher(Broken(), clock, 1, Counters())
    dispatcher.received(message(1), reports.settle("msg_1"))
    assert reports.sent == [("msg_1", "first", requeue("connector stopping"))]


def test_an_unexpected_exception_from_a_delivery_requeues_and_is_logged(logged_failures: list[dict[str, Any]]) -> None:
    clock = Clock()

    class Broken:
        async def deliver(self, message: Message) -> Outcome:
            raise RuntimeError("boom")

        def status(self) -> dict[str, Any]:
            return {}

        async def close(self) -> None:
            pass

    reports = Reports()
    dispatcher = Dispatcher(Broken(), clock, 1, Counters())
    dispatcher.received(message(1), reports.settle("msg_1"))
    assert reports.sent == [("msg_1", "first", requeue("delivery failed unexpectedly"))]
    assert len(logged_failures) == 1
    assert logged_failures[0]["log_failure"].check(RuntimeError)
    logged_failures.clear()


def test_undeliverable_and_malformed_messages() -> None:
    dispatcher, delivery, reports, _ = setup()
    dispatcher.undeliverable("msg_bad", "body_base64 is not base64", reports.settle("msg_bad"))
    assert reports.sent == [("msg_bad", "first", dead_letter("malformed message: body_base64 is not base64"))]
    dispatcher.malformed("no message_id")
    c = dispatcher.counters
    assert (c.received, c.dead_lettered, c.malformed) == (1, 1, 1)
    assert delivery.started == []


def test_many_deliveries_that_end_at_once_do_not_nest() -> None:
    clock = Clock()

    class Instant:
        async def deliver(self, message: Message) -> Outcome:
            return dead_letter("no target")

        def status(self) -> dict[str, Any]:
            return {}

        async def close(self) -> None:
            pass

    slow = ManualDelivery()

    class Mixed:
        async def deliver(self, message: Message) -> Outcome:
            if message.message_id == "msg_0":
                return await slow.deliver(message)
            return await Instant().deliver(message)

        def status(self) -> dict[str, Any]:
            return {}

        async def close(self) -> None:
            pass

    reports = Reports()
    dispatcher = Dispatcher(Mixed(), clock, 1, Counters())
    for n in range(3000):  # deeper than Python's recursion limit if each start nested
        dispatcher.received(message(n), reports.settle(f"msg_{n}"))
    slow.finish("msg_0", DELIVERED)
    assert len(reports.sent) == 3000
    assert (dispatcher.running, dispatcher.waiting) == (0, 0)
    assert dispatcher.counters.dead_lettered == 2999


def test_while_draining_a_redelivery_of_an_acked_message_is_acked_again_not_given_back() -> None:
    dispatcher, delivery, reports, _ = setup()
    dispatcher.received(message(1), reports.settle("msg_1"))
    delivery.finish("msg_1", DELIVERED)
    drained = dispatcher.drain(5.0)
    dispatcher.received(message(1), reports.settle("msg_1", "again"))
    assert reports.sent[-1] == ("msg_1", "again", DELIVERED)
    assert drained.called
    dispatcher.give_back()
    assert len(reports.sent) == 2
