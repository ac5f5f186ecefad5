"""The connector's SSE parser, reconnect backoff and wire messages. No reactor."""

from __future__ import annotations

import base64
import json

import pytest

from cwm.connector.message import MalformedMessage, Message
from cwm.connector.sse import Event, EventStreamParser, EventTooLarge
from cwm.connector.streams import Backoff


def test_events_split_across_chunks_and_line_endings() -> None:
    parser = EventStreamParser()
    stream = b"id: 1-0\nevent: webhook\ndata: {\"a\":\ndata: 1}\n\n: a comment\r\nevent:heartbeat\r\ndata:{}\r\n\r\n"
    events: list[Event] = []
    for i in range(len(stream)):  # one byte at a time: every split point
        events.extend(parser.feed(stream[i:i + 1]))
    assert events == [Event("webhook", '{"a":\n1}', "1-0"), Event("heartbeat", "{}", "1-0")]


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == [Event("message", "x", None)]
    assert parser.feed(b"\ndata: y\n\n") == [Event("message", "y", None)]


def test_an_event_without_data_is_not_dispatched_and_unknown_fields_are_skipped() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"event: nothing\n\nretry: 10\nfoo: bar\ndata: z\n\n") == [Event("message", "z", None)]


def test_an_oversized_event_or_line_is_refused() -> None:
    parser = EventStreamParser(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: " + b"x" * 200)
    parser = EventStreamParser(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        for _ in range(10):
            parser.feed(b"data: " + b"x" * 20 + b"\n")


def test_backoff_grows_with_jitter_up_to_the_maximum_and_resets_after_a_connection() -> None:
    draws = iter([0.0, 1.0, 0.5, 1.0, 1.0, 0.0])
    backoff = Backoff(1.0, 5.0, 2.0, lambda: next(draws))
    assert backoff.next_wait() == 0.5  # [delay/2, delay] of 1 s
    assert backoff.next_wait() == 2.0
    assert backoff.next_wait() == 3.0  # 4 s * 0.75
    assert backoff.next_wait() == 5.0  # capped at 5 s
    assert backoff.next_wait() == 5.0
    backoff.connected()
    assert backoff.next_wait() == 0.5


def test_a_wire_message_gives_the_exact_body_and_one_string_per_header() -> None:
    body = b"\xff\xfe not utf-8"
    message = Message.from_wire({
        "type": "webhook", "message_id": "msg_1", "webhook_id": "gh", "sequence": 4, "delivery_count": 2,
        "headers": {"X-Hub-Signature-256": "sha256=ab", "accept": ["a", "b"]},
        "payload": None, "body_base64": base64.b64encode(body).decode(), "stream_id": "5-0",
    })
    assert message.body == body
    assert message.headers == {"x-hub-signature-256": "sha256=ab", "accept": "a, b"}
    assert (message.sequence, message.delivery_count, message.stream_id) == (4, 2, "5-0")


def test_a_wire_message_without_body_base64_uses_the_payload() -> None:
    assert Message.from_wire({"message_id": "m", "payload": {"a": 1}}).body == json.dumps({"a": 1}, separators=(",", ":")).encode()
    assert Message.from_wire({"message_id": "m", "payload": "text"}).body == b"text"


@pytest.mark.parametrize("data", [[], {"webhook_id": "x"}, {"message_id": ""},
                                  {"message_id": "m", "headers": []},
                                  {"message_id": "m", "body_base64": "!!"}])
def test_malformed_wire_messages(data: object) -> None:
    with pytest.raises(MalformedMessage):
        Message.from_wire(data)


def _wire_bytes(body: bytes, payload: object) -> int:
    """The size of the wire message the cloud sends for ``body`` (as its WebSocket and SSE do)."""
    from cwm.connect.buffer import Buffered

    envelope = {"timestamp": "2026-01-01T00:00:00Z", "headers": {"Content-Type": "text/plain"},
                "payload": payload, "body_base64": base64.b64encode(body).decode("ascii")}
    message = Buffered("1700000000000-0", "msg_0123456789abcdef", "hook", 1, 0, 1e12, envelope)
    return len(json.dumps(message.wire(), separators=(",", ":")).encode())


@pytest.mark.parametrize(
    "make",
    [
        lambda n: (b"\x01" * n, (b"\x01" * n).decode()),  # text of control characters: \u0001 each
        lambda n: (("\U0001f600" * (n // 4)).encode(), "\U0001f600" * (n // 4)),  # a surrogate pair each
        lambda n: (json.dumps(["\u00e9" * (n // 2)], ensure_ascii=False).encode(), ["\u00e9" * (n // 2)]),
    ],
    ids=["control characters", "emoji", "json"],
)
def test_the_connector_takes_the_largest_wire_message_a_channel_allows(make: object) -> None:
    """Measured on small bodies (the size is linear in the body), extrapolated to the largest
    max_message_size a channel may set: no allocation of that size."""
    from cwm.connect.channels import parse_channel_config
    from cwm.connector.streams import MAX_FRAME_BYTES
    from cwm.errors import ConfigError

    def size(n: int) -> int:
        body, payload = make(n)  # type: ignore[operator]
        return _wire_bytes(body, payload)

    per_byte = (size(6000) - size(3000)) / 3000
    fixed = size(3000) - per_byte * 3000
    largest = 64 * 1024 * 1024
    with pytest.raises(ConfigError):
        parse_channel_config({"channel": "c", "channel_token": "t" * 32, "max_message_size": largest + 1})
    assert parse_channel_config({"channel": "c", "channel_token": "t" * 32, "max_message_size": largest}).max_message_size \
        == largest
    assert MAX_FRAME_BYTES >= fixed + per_byte * largest
