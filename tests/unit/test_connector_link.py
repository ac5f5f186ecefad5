"""The cloud link's reconnect loop and SSE handling, on a Clock with a scripted HTTP client. No reactor."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from cwm.connector.dispatch import Counters, Dispatcher
from cwm.connector.message import DELIVERED, Message, Outcome
from cwm.connector.settings import ConnectorSettings
from cwm.connector.streams import CloudLink


class Response:
    """A streaming response: the link hands it a protocol, the test feeds it."""

    def __init__(self, code: int, body: bytes = b"") -> None:
        self.code = code
        self.body = body
        self.protocol: Any = None
        self.transport = StringTransport()
        self.length = len(body)

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self.code != 200:
            protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))

    def event(self, name: str, data: Any, event_id: str | None = None) -> None:
        text = (f"id: {event_id}\n" if event_id else "") + f"event: {name}\ndata: {json.dumps(data)}\n\n"
        self.protocol.dataReceived(text.encode())

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))


class ScriptedHTTP:
    """Each GET takes the next answer: a Response, an exception, or None (never answers)."""

    def __init__(self) -> None:
        self.gets: list[tuple[str, dict[str, str]]] = []
        self.answers: list[Any] = []
        self.posts: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.pending: list[Deferred[Any]] = []
        self.post_answers: list[Any] = []

    def get(self, url: str, headers: dict[str, str], **kwargs: Any) -> Deferred[Any]:
        self.gets.append((url, dict(headers)))
        answer = self.answers.pop(0)
        if answer is None:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(answer, Exception):
            failed: Deferred[Any] = Deferred()
            failed.errback(answer)
            return failed
        return succeed(answer)

    def post(self, url: str, params: dict[str, str], headers: dict[str, str]) -> Deferred[Any]:
        self.posts.append((url, dict(params), dict(headers)))
        answer = self.post_answers.pop(0) if self.post_answers else Response(200, b'{"status": "ok"}')
        if isinstance(answer, Exception):
            failed: Deferred[Any] = Deferred()
            failed.errback(answer)
            return failed
        return succeed(answer)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def deliver(self, message: Message) -> Outcome:
        self.messages.append(message)
        return DELIVERED

    def status(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


def link(http: ScriptedHTTP, clock: Clock, **overrides: Any) -> tuple[CloudLink, Recorder]:
    settings = ConnectorSettings(
        cloud_url="http://cloud.example:8010", channel="chan", token="tok-secret", protocol="sse",
        reconnect_delay=1.0, max_reconnect_delay=5.0, heartbeat_timeout=10.0, connection_timeout=3.0,
        connector_id="here", **overrides,
    )
    recorder = Recorder()
    dispatcher = Dispatcher(recorder, clock, 10, Counters())
    return CloudLink(settings, clock, http, dispatcher, random_fraction=lambda: 1.0), recorder


def test_failures_back_off_exponentially_to_the_maximum_and_a_connection_resets_the_delay() -> None:
    clock, http = Clock(), ScriptedHTTP()
    http.answers = [ConnectionRefusedError()] * 4
    cloud, _ = link(http, clock)
    cloud.start()
    assert len(http.gets) == 1
    for wait in (1.0, 2.0, 4.0):  # random_fraction 1.0: the top of [delay/2, delay]
        clock.advance(wait - 0.01)
        before = len(http.gets)
        clock.advance(0.01)
        assert len(http.gets) == before + 1
    assert cloud.dispatcher.counters.reconnects == 3
    assert "Connection was refused" in (cloud.status()["last_error"] or "")
    # The next wait is capped at 5 s; then a stream opens.
    good = Response(200)
    http.answers.append(good)
    clock.advance(5.0)
    good.event("connected", {"connection_id": "sse_1", "channel": "chan"})
    assert cloud.connected
    assert cloud.status()["connection_id"] == "sse_1"
    # It drops: the delay starts again from reconnect_delay.
    http.answers.append(ConnectionRefusedError())
    good.end()
    assert not cloud.connected
    clock.advance(0.99)
    assert len(http.gets) == 5
    clock.advance(0.01)
    assert len(http.gets) == 6
    cloud.stop()


def test_a_stream_request_that_never_answers_times_out_and_is_retried() -> None:
    clock, http = Clock(), ScriptedHTTP()
    http.answers = [None, None]
    cloud, _ = link(http, clock)
    cloud.start()
    clock.advance(2.99)
    assert not http.pending[0].called
    clock.advance(0.01)  # connection_timeout 3 s
    assert http.pending[0].called
    assert (cloud.status()["last_error"] or "").startswith("TimeoutError")
    clock.advance(1.0)
    assert len(http.gets) == 2
    cloud.stop()


def test_a_silent_stream_is_closed_after_heartbeat_timeout_and_reopened_with_last_event_id() -> None:
    clock, http = Clock(), ScriptedHTTP()
    first, second = Response(200), Response(200)
    http.answers = [first, second]
    cloud, recorder = link(http, clock)
    cloud.start()
    first.event("connected", {"connection_id": "sse_1"})
    first.event("webhook", {"message_id": "m1", "webhook_id": "w", "payload": {"a": 1}, "stream_id": "7-0"}, "7-0")
    assert [m.message_id for m in recorder.messages] == ["m1"]
    clock.advance(9.9)
    first.event("heartbeat", {"timestamp": "now"})  # data resets the watchdog
    clock.advance(9.9)
    assert cloud.connected
    clock.advance(0.1)  # 10 s of silence
    assert first.transport.producerState == "stopped"
    assert not cloud.connected
    clock.advance(1.0)
    url, headers = http.gets[1]
    assert url == "http://cloud.example:8010/connect/stream/chan/sse"
    assert headers["Last-Event-ID"] == "7-0"
    assert headers["Authorization"] == "Bearer tok-secret"
    assert headers["X-Connector-ID"] == "here"
    cloud.stop()


def test_sse_outcomes_are_posted_with_the_current_connection_id() -> None:
    clock, http = Clock(), ScriptedHTTP()
    stream = Response(200)
    http.answers = [stream]
    cloud, _ = link(http, clock)
    cloud.start()
    stream.event("connected", {"connection_id": "sse_1"})
    stream.event("webhook", {"message_id": "m1", "webhook_id": "w", "payload": None, "body_base64": "aGk="}, "1-0")
    assert http.posts == [("http://cloud.example:8010/connect/ack", {"message_id": "m1", "status": "ack"},
                           {"Authorization": "Bearer tok-secret", "X-Connector-ID": "here", "X-Connection-ID": "sse_1"})]
    assert cloud.dispatcher.counters.delivered == 1
    cloud.stop()


def test_a_refusal_is_reported_with_the_cloud_s_reason() -> None:
    clock, http = Clock(), ScriptedHTTP()
    http.answers = [Response(401, b'{"detail": "Invalid channel token"}')]
    cloud, _ = link(http, clock)
    cloud.start()
    assert cloud.status()["last_error"] == "cloud answered 401: Invalid channel token"
    assert "tok-secret" not in json.dumps(cloud.status())
    cloud.stop()


def test_stop_cancels_the_wait_and_ends_the_loop() -> None:
    clock, http = Clock(), ScriptedHTTP()
    http.answers = [ConnectionRefusedError()]
    cloud, _ = link(http, clock)
    cloud.start()
    stopped = cloud.stop()
    assert stopped.called
    clock.advance(100)
    assert len(http.gets) == 1


def test_a_report_the_cloud_could_not_take_is_sent_again() -> None:
    clock, http = Clock(), ScriptedHTTP()
    stream = Response(200)
    http.answers = [stream]
    http.post_answers = [Response(503, b'{"detail": "Webhook Connect buffer unavailable"}'), ConnectionRefusedError(),
                         Response(200, b"{}")]
    cloud, _ = link(http, clock)
    cloud.start()
    stream.event("connected", {"connection_id": "sse_1"})
    stream.event("webhook", {"message_id": "m1", "webhook_id": "w", "payload": None}, "1-0")
    assert len(http.posts) == 1
    clock.advance(0.5)
    assert len(http.posts) == 2
    clock.advance(1.0)
    assert len(http.posts) == 3
    assert cloud.dispatcher.counters.report_failures == 0
    cloud.stop()


def test_after_a_resume_a_404_is_tried_again_with_the_new_connection_id() -> None:
    clock, http = Clock(), ScriptedHTTP()
    stream = Response(200)
    http.answers = [stream]
    http.post_answers = [Response(404, b'{"detail": "Connection not found"}')]
    cloud, _ = link(http, clock)
    cloud.start()
    stream.event("connected", {"connection_id": "sse_1"})
    stream.event("webhook", {"message_id": "m1", "webhook_id": "w", "payload": None}, "1-0")
    cloud.connection_id = "sse_2"  # the new stream took over
    clock.advance(0.5)
    assert [p[2]["X-Connection-ID"] for p in http.posts] == ["sse_1", "sse_2"]
    assert cloud.dispatcher.counters.report_failures == 0
    cloud.stop()


def test_quiesce_during_a_backoff_wait_stops_reconnecting() -> None:
    clock, http = Clock(), ScriptedHTTP()
    http.answers = [ConnectionRefusedError(), Response(200)]
    cloud, _ = link(http, clock)
    cloud.start()
    cloud.quiesce()  # SIGTERM while waiting to reconnect
    clock.advance(10)
    assert len(http.gets) == 1
    assert cloud.stop().called


def test_quiesce_keeps_an_open_stream_for_the_outcomes() -> None:
    clock, http = Clock(), ScriptedHTTP()
    stream = Response(200)
    http.answers = [stream]
    cloud, _ = link(http, clock)
    cloud.start()
    stream.event("connected", {"connection_id": "sse_1"})
    cloud.quiesce()
    assert cloud.connected
    assert stream.transport.producerState != "stopped"
    stopped = cloud.stop()
    assert stream.transport.producerState == "stopped"
    stream.end()
    assert stopped.called
