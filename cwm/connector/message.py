"""What the connector receives from the cloud, and what a delivery decides about it."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class MalformedMessage(ValueError):
    """A wire message the connector cannot deliver (no id, bad fields)."""


@dataclass(frozen=True)
class Message:
    """One webhook as the cloud relays it.

    Attributes:
        message_id: Stable across redeliveries; the de-duplication key.
        webhook_id: The cloud webhook it was posted to; selects the target.
        headers: The sender's headers, lower-case names, one string each.
        body: The exact bytes the sender posted (from ``body_base64``; a
            cloud that does not send it gets the JSON of ``payload``).
        payload: The parsed body as the cloud saw it.
        delivery_count: 1 on the first delivery, counted by the cloud.
        sequence: The channel's sequence number, if the cloud sent one.
        timestamp: When the cloud received it (ISO 8601), if sent.
        stream_id: The cloud's position of this delivery, if sent.
    """

    message_id: str
    webhook_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    payload: Any = None
    delivery_count: int = 1
    sequence: int | None = None
    timestamp: str | None = None
    stream_id: str | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Message:
        """Read one wire message (a WebSocket frame, an SSE event's data, a poll item).

        Raises:
            MalformedMessage: no message id, or a field of the wrong type.
        """
        if not isinstance(data, dict):
            raise MalformedMessage("expected a JSON object")
        message_id = data.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise MalformedMessage("no message_id")
        webhook_id = data.get("webhook_id")
        if not isinstance(webhook_id, str):
            webhook_id = ""
        raw_headers = data.get("headers")
        if raw_headers is None:
            raw_headers = {}
        if not isinstance(raw_headers, dict):
            raise MalformedMessage(f"message {message_id}: headers is not an object")
        headers: dict[str, str] = {}
        for name, value in raw_headers.items():
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if not isinstance(name, str) or not isinstance(value, (str, int, float)):
                raise MalformedMessage(f"message {message_id}: header {name!r} is not text")
            headers[name.lower()] = str(value)
        payload = data.get("payload")
        encoded = data.get("body_base64")
        if isinstance(encoded, str):
            try:
                body = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedMessage(f"message {message_id}: body_base64 is not base64") from None
        elif isinstance(payload, str):
            body = payload.encode("utf-8")
        elif payload is None:
            body = b""
        else:
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        count = data.get("delivery_count", 1)
        sequence = data.get("sequence")
        timestamp = data.get("timestamp")
        stream_id = data.get("stream_id")
        return cls(
            message_id=message_id,
            webhook_id=webhook_id,
            headers=headers,
            body=body,
            payload=payload,
            delivery_count=count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1,
            sequence=sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None,
            timestamp=timestamp if isinstance(timestamp, str) else None,
            stream_id=stream_id if isinstance(stream_id, str) else None,
        )


@dataclass(frozen=True)
class Outcome:
    """What to tell the cloud about one message.

    Attributes:
        ack: True: delivered, remove it. False: nack.
        retry: For a nack: True requeues it, False sends it to the dead letters.
        reason: Why, for the logs and the cloud's dead-letter record (no secrets).
    """

    ack: bool
    retry: bool = False
    reason: str = ""

    @property
    def kind(self) -> str:
        """``delivered``, ``requeued`` or ``dead_lettered``."""
        if self.ack:
            return "delivered"
        return "requeued" if self.retry else "dead_lettered"


DELIVERED = Outcome(ack=True)


def requeue(reason: str) -> Outcome:
    """Nack with retry: a transient failure (5xx, timeout, connection error)."""
    return Outcome(ack=False, retry=True, reason=reason)


def dead_letter(reason: str) -> Outcome:
    """Nack without retry: the message can never be delivered as it is (4xx, no target)."""
    return Outcome(ack=False, retry=False, reason=reason)


class Delivery(Protocol):
    """Delivers messages locally: HTTP targets, cwm modules, or etcd-configured webhooks."""

    async def deliver(self, message: Message) -> Outcome:
        """Deliver one message and decide its outcome.

        Never raises, except CancelledError when the connector stops: every
        failure is an Outcome (``requeue`` for what may work later,
        ``dead_letter`` for what never will).
        """

    def status(self) -> dict[str, Any]:
        """What the status endpoint shows of this delivery mode (no secrets)."""
