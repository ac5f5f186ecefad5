"""Stored envelopes and wire messages: large ones encoded off the reactor, deliveries spliced, never parsed.

The wire message a connector receives must stay what it was when it was
built from the parsed envelope: the same keys and values, whatever the
payload holds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cwm.body import LARGE_BODY
from cwm.connect import buffer as buffer_module
from cwm.connect.buffer import Buffered, StreamBuffer, envelope_text
from cwm.connect.channels import ChannelConfig
from cwm.connect.module import WebhookConnectModule, envelope, thd_envelope_text
from cwm.connector.message import Message
from cwm.modules.base import ModuleUnavailable, WebhookEvent
from cwm.workers import InlineWork, WorkersBusy

_sync = SynchronousTestCase()
CONFIG = ChannelConfig(name="ch", token="t", ttl_seconds=60, max_queue_size=3, max_message_size=64 * 1024 * 1024)
WIRE_KEYS = ["type", "message_id", "sequence", "webhook_id", "timestamp", "headers", "payload", "body_base64",
             "delivery_count", "stream_id"]


def event(body: bytes, payload: Any, data_type: str = "json", headers: dict[str, list[str]] | None = None) -> WebhookEvent:
    return WebhookEvent(
        namespace="default", webhook_id="gh", request_id="r1", received_at=1_800_000_000.5,
        headers=headers or {"x-hub-signature-256": ["sha256=ab"]}, body=body, payload=payload,
        data_type=data_type, client_ip="192.0.2.1",
    )


def expected_wire(stored: dict[str, Any], message: Buffered) -> dict[str, Any]:
    """The wire message as the streams built it from the parsed envelope before it was spliced."""
    return {
        "type": "webhook",
        "message_id": message.message_id,
        "sequence": message.sequence,
        "webhook_id": message.webhook_id,
        "timestamp": stored.get("timestamp"),
        "headers": stored.get("headers", {}),
        "payload": stored.get("payload"),
        "body_base64": stored.get("body_base64"),
        "delivery_count": message.delivery_count + 1,
        "stream_id": message.stream_id,
    }


def read_back(text: str, delivery_count: int = 2) -> Buffered:
    return Buffered("1700000000000-3", "msg_1", "gh", 7, delivery_count, 2e9, text)


def tricky_payload() -> dict[str, Any]:
    """Key names of the wire and of the envelope as keys and as strings, quotes, braces and non-ASCII text."""
    return {
        "timestamp": "not the envelope's",
        "delivery_count": 99,
        "stream_id": '"stream_id":"0-0"}',
        "text": 'he said "timestamp": {"delivery_count": 1}, },\\"',
        "expires_at": "expires_at",
        "unicode": "café ☃ 😀 \u2028 \x00",
        "nested": [{"message_id": "x", "body_base64": None}, "\"headers\":{}"],
    }


@pytest.mark.parametrize("yielding", [False, True])
@pytest.mark.parametrize(
    "body, payload, data_type",
    [
        (b'{"a": 1}', {"a": 1}, "json"),
        (None, None, "json"),  # the tricky payload, as JSON
        ("plain café ☃ \"timestamp\":".encode(), None, "blob"),
        (b"\xff\xfe\x00binary", None, "blob"),
        (b'["x"]', ["x"], "json"),
    ],
)
def test_spliced_wire_message_equals_the_one_built_from_the_parsed_envelope(
    yielding: bool, body: bytes | None, payload: Any, data_type: str
) -> None:
    if body is None:
        payload = tricky_payload()
        body = json.dumps(payload).encode()
    elif data_type == "blob":
        payload = body
    headers = {"x-note": ['"delivery_count":1} café'], "x-hub-signature-256": ["sha256=ab"]}
    stored = envelope(event(body, payload, data_type, headers), CONFIG, "msg_1", yielding=yielding)
    text = envelope_text(stored, yielding=yielding)
    assert json.loads(text) == stored  # the stored text is the envelope, keys and values
    assert text.isascii()
    message = read_back(text)
    wire_bytes = message.wire_bytes()
    wire = json.loads(wire_bytes)
    assert list(wire) == WIRE_KEYS
    assert wire == expected_wire(stored, message)
    assert Message.from_wire(wire).body == body
    assert b"\n" not in wire_bytes  # one SSE data line


def test_large_message_splices_the_same_whichever_encoder_made_it() -> None:
    payload = {"items": [{"id": i, "name": f"user {i} ☃", "tags": ["a", "b"]} for i in range(30_000)]}
    body = json.dumps(payload).encode()
    assert len(body) > LARGE_BODY
    inline = envelope(event(body, payload), CONFIG, "msg_1")
    text = thd_envelope_text(event(body, payload), CONFIG, "msg_1", frozenset()).decode("ascii")
    assert json.loads(text) == inline == json.loads(envelope_text(inline))
    wire = read_back(text).wire()
    assert wire == expected_wire(inline, read_back(text))
    assert Message.from_wire(wire).body == body and Message.from_wire(wire).payload == payload


def test_splicing_does_not_parse_the_stored_envelope(monkeypatch: pytest.MonkeyPatch) -> None:
    text = envelope_text(envelope(event(b'{"a": 1}', {"a": 1}), CONFIG, "msg_1"))

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the stored envelope was parsed")

    monkeypatch.setattr(buffer_module.json, "loads", no_parse)
    assert read_back(text).wire_bytes().startswith(b'{"type":"webhook","message_id":"msg_1","sequence":7,')


@pytest.mark.parametrize(
    "stored",
    [
        # The layout stored before the splice (message_id first, expires_at after timestamp).
        lambda env: json.dumps(env, separators=(",", ":")),
        lambda env: json.dumps(env),  # with spaces
        lambda env: json.dumps({"payload": 1}),  # keys missing: the old defaults
        lambda env: env,  # a dict (tests)
    ],
)
def test_an_envelope_of_another_layout_is_parsed_and_gives_the_same_wire(stored: Callable[[Any], Any]) -> None:
    env = envelope(event(b'{"a": 1}', {"a": 1}), CONFIG, "msg_1")
    value = stored(env)
    message = read_back(value)
    parsed = value if isinstance(value, dict) else json.loads(value)
    assert message.wire() == expected_wire(parsed, message)


def test_a_key_named_like_the_marker_inside_a_head_value_is_not_a_marker() -> None:
    env = envelope(event(b'{"a": 1}', {"a": 1}), CONFIG, "msg_1")
    env["metadata"]["client_ip"] = '","timestamp":"x'
    env["namespace"] = '"expires_at":1,"timestamp":2'
    text = envelope_text(env)
    assert read_back(text).wire() == expected_wire(env, read_back(text))


# --- the module: a large envelope is encoded on the file threads ----------------------------


class FakeHub:
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, config: ChannelConfig, webhook_id: str, message_id: str, stored: Any, now: float) -> Any:
        self.published.append(stored)
        return (1, "1-0")


class RecordingWork:
    """Runs the work inline, recording which function ran ("on the file threads")."""

    def __init__(self, busy: bool = False) -> None:
        self.ran: list[Callable[..., Any]] = []
        self._busy = busy

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._busy:
            from twisted.internet.defer import fail

            return fail(WorkersBusy("busy"))
        self.ran.append(function)
        return InlineWork().run(function, *args)


def test_a_large_envelope_is_encoded_on_the_file_threads_and_published_as_text() -> None:
    hub, files = FakeHub(), RecordingWork()
    module = WebhookConnectModule(CONFIG, hub, lambda: None, files=files)  # type: ignore[arg-type]
    payload = {"pad": ["x" * 1000] * 300}
    body = json.dumps(payload).encode()
    assert len(body) > LARGE_BODY
    _sync.successResultOf(Deferred.fromCoroutine(module.deliver(event(body, payload))))
    assert files.ran == [thd_envelope_text]
    [stored] = hub.published
    assert isinstance(stored, bytes)
    env = json.loads(stored)
    assert env["payload"] == payload and base64.b64decode(env["body_base64"]) == body


def test_a_small_envelope_stays_on_the_fast_inline_path() -> None:
    hub, files = FakeHub(), RecordingWork()
    module = WebhookConnectModule(CONFIG, hub, lambda: None, files=files)  # type: ignore[arg-type]
    _sync.successResultOf(Deferred.fromCoroutine(module.deliver(event(b'{"a": 1}', {"a": 1}))))
    assert files.ran == [] and isinstance(hub.published[0], dict)


def test_busy_file_threads_answer_503_with_retry_after() -> None:
    module = WebhookConnectModule(CONFIG, FakeHub(), lambda: None, files=RecordingWork(busy=True))  # type: ignore[arg-type]
    body = b'"' + b"x" * LARGE_BODY + b'"'
    failure = _sync.failureResultOf(Deferred.fromCoroutine(module.deliver(event(body, "x" * LARGE_BODY))),
                                    ModuleUnavailable)
    assert failure.value.status == 503 and failure.value.headers["Retry-After"] == "5"


# --- publish stores the text as given ---------------------------------------------------------


class FakeRedis:
    def __init__(self) -> None:
        self.args: list[Any] = []

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        self.args = args
        d: Deferred[Any] = Deferred()
        d.callback([1, "1-0"])
        return d


@pytest.mark.parametrize("given", ["bytes", "dict"])
def test_publish_stores_the_spliceable_layout(given: str) -> None:
    redis = FakeRedis()
    env = envelope(event(b'{"a": 1}', {"a": 1}), CONFIG, "msg_1")
    value: Any = envelope_text(env).encode() if given == "bytes" else env
    result = _sync.successResultOf(
        Deferred.fromCoroutine(StreamBuffer(redis).publish("ch", "msg_1", "gh", 2e9, value, 10))
    )
    assert result == (1, "1-0")
    stored = redis.args[4]
    text = stored.decode() if isinstance(stored, bytes) else stored
    assert text == envelope_text(env)
    assert buffer_module._wire_cut(text) > 0


def test_a_stored_text_that_is_not_ascii_is_parsed_not_cut_at_a_wrong_offset() -> None:
    env = envelope(event(b'{"a": 1}', {"a": 1}), CONFIG, "msg_1")
    env["namespace"] = "café"
    env["payload"] = {"s": "☃"}
    head = json.dumps({k: v for k, v in env.items() if k not in buffer_module.WIRE_TAIL}, ensure_ascii=False)
    tail = json.dumps({k: env[k] for k in buffer_module.WIRE_TAIL}, ensure_ascii=False)
    text = head[:-1] + "," + tail[1:]
    assert read_back(text).wire() == expected_wire(env, read_back(text))


def test_a_dead_letter_is_the_stored_envelope_with_its_fields_spliced_in_unparsed() -> None:
    """The admin listing never parses an envelope (it may be tens of MB): same object as parse + update."""
    import json as _json

    from cwm.connect.buffer import dead_letter_bytes

    stored = _json.dumps({"message_id": "msg_1", "payload": {"reason": "not a field", "sequence": "nor this"}},
                         separators=(",", ":"))
    fields = {"env": stored, "seq": "7", "n": "3", "reason": "target answered 500", "at": "1800000000.5"}
    letter = _json.loads(dead_letter_bytes("9-0", fields))
    expected = _json.loads(stored)
    expected.update({"dead_letter_id": "9-0", "sequence": 7, "delivery_count": 3,
                     "reason": "target answered 500", "dead_lettered_at": 1800000000.5})
    assert letter == expected
    assert _json.loads(dead_letter_bytes("9-0", {**fields, "env": "{}"}))["sequence"] == 7
