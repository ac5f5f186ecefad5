"""What real senders expect: Slack's URL handshake, Standard Webhooks secrets without padding.

Through the receiver on StubTreq and a Clock: no reactor, no sockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.auth.signatures import build_hmac, slack_url_verification
from cwm.config.store import ConfigStore
from cwm.connect.admin import ConnectAdmin
from cwm.connect.api import ConnectStreams
from cwm.modules.base import ModuleContext, WebhookEvent
from cwm.pipeline import WebhookPipeline
from cwm.request import InboundRequest
from cwm.web.receiver import WebhookReceiver

_sync = SynchronousTestCase()

NOW = 1_700_000_000
SLACK_SECRET = "slack-signing-secret-0123456789"
CHALLENGE = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
HANDSHAKE = json.dumps(
    {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": CHALLENGE, "type": "url_verification"}
).encode()
EVENT = json.dumps({"type": "event_callback", "event": {"type": "app_mention"}}).encode()


def slack_signature(body: bytes, secret: str = SLACK_SECRET, timestamp: int = NOW) -> dict[str, str]:
    digest = hmac.new(secret.encode(), b"v0:%d:" % timestamp + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Signature": f"v0={digest}", "X-Slack-Request-Timestamp": str(timestamp)}


class Recorder:
    """A module that records what it is given."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []

    async def deliver(self, event: WebhookEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        return None


class Receiver:
    def __init__(self, webhooks: Mapping[str, Any]) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.modules: dict[str, Recorder] = {}

        def build(name: str, config: Mapping[str, Any], ctx: ModuleContext) -> Recorder:
            assert ctx.entry is not None
            module = self.modules[ctx.entry[1]] = Recorder()
            return module

        context = ModuleContext(
            clock=clock, stdout=None, http=None, http_unguarded=None, working_dir=FilePath(".")  # type: ignore[arg-type]
        )
        store = ConfigStore(context, {}, build=build, known_module=lambda name: name == "rec")
        store.replace_all({"default": dict(webhooks)}, {})
        store.loaded = True
        assert not store.rejections
        receiver = WebhookReceiver(
            WebhookPipeline(store, clock, 10),
            clock,
            lambda: (True, {"components": {}}),
            ConnectStreams(None, clock).resource(),
            ConnectAdmin(None, None, clock).resource(),
        )
        self.treq = StubTreq(receiver.resource())

    def post(self, webhook_id: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Any, str]:
        d = self.treq.post(
            f"http://cwm.test/webhook/{webhook_id}",
            data=body,
            headers={"Content-Type": "application/json", **headers},
        )
        self.treq.flush()
        response = _sync.successResultOf(d)
        content = _sync.successResultOf(response.content())
        kind = response.headers.getRawHeaders("content-type", [""])[0]
        return response.code, json.loads(content), kind


SLACK = {"module": "rec", "hmac": {"provider": "slack", "secret": SLACK_SECRET}}
SCHEMA = {"type": "object", "required": ["event"]}


@pytest.fixture
def receiver() -> Receiver:
    return Receiver(
        {
            "slack": SLACK,
            "slack_schema": {**SLACK, "json_schema": SCHEMA},
            "open": {"module": "rec"},
        }
    )


def test_slack_handshake_is_echoed_without_running_the_module(receiver: Receiver) -> None:
    """A signed url_verification gets 200 {"challenge": ...} in JSON; the module never sees it."""
    code, body, kind = receiver.post("slack", HANDSHAKE, slack_signature(HANDSHAKE))
    assert (code, body) == (200, {"challenge": CHALLENGE})
    assert kind.startswith("application/json")
    assert receiver.modules["slack"].events == []


def test_slack_handshake_is_answered_only_after_the_signature_check(receiver: Receiver) -> None:
    """An unsigned or wrongly signed handshake is refused like any request; nothing is echoed."""
    code, body, _ = receiver.post("slack", HANDSHAKE, {})
    assert code == 401 and CHALLENGE not in json.dumps(body)
    code, body, _ = receiver.post("slack", HANDSHAKE, slack_signature(HANDSHAKE, secret="wrong"))
    assert (code, body) == (401, {"detail": "Invalid HMAC signature"})
    assert receiver.modules["slack"].events == []


def test_slack_events_still_reach_the_module(receiver: Receiver) -> None:
    """Any other signed body is a webhook as before."""
    code, body, _ = receiver.post("slack", EVENT, slack_signature(EVENT))
    assert (code, body) == (200, {"message": "200 OK"})
    assert [event.body for event in receiver.modules["slack"].events] == [EVENT]


def test_a_json_schema_for_events_does_not_refuse_the_handshake(receiver: Receiver) -> None:
    """The schema describes events: the handshake passes it, an event still must match it."""
    code, body, _ = receiver.post("slack_schema", HANDSHAKE, slack_signature(HANDSHAKE))
    assert (code, body) == (200, {"challenge": CHALLENGE})
    bad = b'{"type": "event_callback"}'
    code, _, _ = receiver.post("slack_schema", bad, slack_signature(bad))
    assert code == 400
    assert receiver.modules["slack_schema"].events == []


def test_without_the_slack_preset_a_handshake_body_is_just_a_webhook(receiver: Receiver) -> None:
    """Only entries that verify Slack's signature answer its handshake."""
    code, body, _ = receiver.post("open", HANDSHAKE, {})
    assert (code, body) == (200, {"message": "200 OK"})
    assert len(receiver.modules["open"].events) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "url_verification"}',
        b'{"type": "url_verification", "challenge": 7}',
        b'{"type": "url_verification", "challenge": ""}',
        b'["url_verification"]',
        b'{"type": "event_callback", "challenge": "url_verification"}',
        b"url_verification",
        b'{"type": "url_verification", "challenge": "' + b"x" * 5000 + b'"}',
    ],
)
def test_only_a_well_formed_handshake_is_recognised(body: bytes) -> None:
    assert slack_url_verification(body) is None


def _standard_webhooks_request(key: bytes) -> InboundRequest:
    body = b'{"type": "invoice.paid"}'
    signed = b"msg_1." + str(NOW).encode() + b"." + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    headers = {
        "webhook-id": ["msg_1"],
        "webhook-timestamp": [str(NOW)],
        "webhook-signature": [f"v1,{signature}"],
    }
    return InboundRequest("POST", "/webhook/x", body, "127.0.0.1", float(NOW), headers)


@pytest.mark.parametrize("size", [32, 31, 24, 20])
def test_standard_webhooks_secret_without_padding_is_accepted(size: int) -> None:
    """``whsec_`` + base64 with its ``=`` padding left out verifies like the padded secret."""
    key = bytes(range(1, size + 1))
    padded = base64.b64encode(key).decode()
    unpadded = padded.rstrip("=")
    for secret in (f"whsec_{padded}", f"whsec_{unpadded}", unpadded):
        build_hmac({"provider": "standard-webhooks", "secret": secret})(_standard_webhooks_request(key))
