"""The webhook_connect module and the stream helpers, without a reactor (Clock, fakes)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwm.connect.api import _Poll, bearer
from cwm.connect.buffer import Buffered
from cwm.connect.channels import ChannelConfig
from cwm.connect.hub import ConnectUnavailable
from cwm.connect.module import WebhookConnectModule, envelope, relayed_headers
from cwm.modules.base import ModuleRefused, ModuleUnavailable, WebhookEvent

_sync = SynchronousTestCase()


class FakeHub:
    """Records what is published; answers as told."""

    def __init__(self, answer: Any = (1, "1-0")) -> None:
        self.answer = answer
        self.published: list[tuple[str, str, dict[str, Any], float]] = []

    async def publish(
        self, config: ChannelConfig, webhook_id: str, message_id: str, envelope: dict[str, Any], now: float
    ) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.published.append((webhook_id, message_id, envelope, now))
        return self.answer


def event(body: bytes = b'{"a": 1}', payload: Any = None, data_type: str = "json") -> WebhookEvent:
    return WebhookEvent(
        namespace="default",
        webhook_id="gh",
        request_id="r1",
        received_at=1_800_000_000.5,
        headers={
            "authorization": ["Bearer secret"],
            "cookie": ["a=b"],
            "proxy-authorization": ["Basic x"],
            "x-hub-signature-256": ["sha256=ab"],
            "x-multi": ["1", "2"],
        },
        body=body,
        payload={"a": 1} if payload is None else payload,
        data_type=data_type,
        client_ip="192.0.2.1",
    )


def deliver(module: WebhookConnectModule, e: WebhookEvent) -> Deferred[None]:
    return Deferred.fromCoroutine(module.deliver(e))


CONFIG = ChannelConfig(name="ch", token="t", ttl_seconds=60, max_queue_size=3, max_message_size=1024)


def test_stored_envelope_has_upstreams_fields_the_exact_bytes_and_no_credentials() -> None:
    hub = FakeHub()
    module = WebhookConnectModule(CONFIG, hub, lambda: None)  # type: ignore[arg-type]
    _sync.successResultOf(deliver(module, event()))
    [(webhook_id, message_id, stored, now)] = hub.published
    assert webhook_id == "gh" and now == 1_800_000_000.5
    assert message_id.startswith("msg_") and len(message_id) == 20 and stored["message_id"] == message_id
    assert stored["timestamp"] == "2027-01-15T08:00:00.500000Z"
    assert stored["expires_at"] == "2027-01-15T08:01:00.500000Z"
    assert stored["headers"] == {"x-hub-signature-256": "sha256=ab", "x-multi": "1, 2"}
    assert base64.b64decode(stored["body_base64"]) == b'{"a": 1}' and stored["payload"] == {"a": 1}
    assert (stored["channel"], stored["namespace"], stored["data_type"]) == ("ch", "default", "json")
    assert stored["metadata"]["source"] == "webhook_connect_module"


def test_forward_credentials_keeps_them() -> None:
    headers = relayed_headers({"authorization": ["Bearer x"], "cookie": ["c"]}, forward_credentials=True)
    assert headers == {"authorization": "Bearer x", "cookie": "c"}


@pytest.mark.parametrize(
    "body, payload",
    [(b"plain text", "plain text"), (b"\xff\xfe", None)],
)
def test_blob_payload_is_its_text_or_null_and_the_bytes_are_exact(body: bytes, payload: Any) -> None:
    stored = envelope(event(body=body, payload=body, data_type="blob"), CONFIG, "msg_1")
    assert stored["payload"] == payload and base64.b64decode(stored["body_base64"]) == body


def test_over_the_size_limit_is_413_and_nothing_is_published() -> None:
    hub = FakeHub()
    module = WebhookConnectModule(CONFIG, hub, lambda: None)  # type: ignore[arg-type]
    failure = _sync.failureResultOf(deliver(module, event(body=b"x" * 1025)), ModuleRefused)
    assert (failure.value.status, failure.value.detail) == (
        413, "Payload too large for channel 'ch': 1025 bytes (max: 1024)")
    assert hub.published == []


def test_queue_full_and_redis_down_are_503_with_retry_after() -> None:
    full = WebhookConnectModule(CONFIG, FakeHub(answer=None), lambda: None)  # type: ignore[arg-type]
    failure = _sync.failureResultOf(deliver(full, event()), ModuleUnavailable)
    assert (failure.value.detail, failure.value.headers) == (
        "Channel 'ch' queue is full (3 messages)", {"Retry-After": "10"})
    down = WebhookConnectModule(CONFIG, FakeHub(answer=ConnectUnavailable("x")), lambda: None)  # type: ignore[arg-type]
    failure = _sync.failureResultOf(deliver(down, event()), ModuleUnavailable)
    assert (failure.value.detail, failure.value.headers) == ("Webhook Connect buffer unavailable", {"Retry-After": "5"})


def test_close_releases_the_channel() -> None:
    released: list[bool] = []
    module = WebhookConnectModule(CONFIG, FakeHub(), lambda: released.append(True))  # type: ignore[arg-type]
    _sync.successResultOf(Deferred.fromCoroutine(module.close()))
    assert released == [True]


@pytest.mark.parametrize(
    "value, token",
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("abc", "abc"), ("", ""), (None, "")],
)
def test_bearer(value: str | None, token: str) -> None:
    assert bearer(value) == token


def message(n: int) -> Buffered:
    return Buffered(f"{n}-0", f"msg_{n}", "gh", n, 0, 2e9, {"payload": n})


def test_poll_answers_on_the_next_turn_with_the_whole_batch() -> None:
    clock = Clock()
    poll = _Poll(clock, 30)
    poll.add([message(1)])
    poll.add([message(2)])
    assert not poll.done.called
    clock.advance(0)
    assert [m.sequence for m in _sync.successResultOf(poll.done)] == [1, 2]


def test_poll_times_out_empty() -> None:
    clock = Clock()
    poll = _Poll(clock, 5)
    clock.advance(4.9)
    assert not poll.done.called
    clock.advance(0.1)
    assert _sync.successResultOf(poll.done) == []
    assert clock.getDelayedCalls() == []


def test_credential_headers_the_entrys_checks_read_are_not_relayed() -> None:
    """``header_auth``'s X-Gitlab-Token never reaches Redis or a connector; a signature does
    (local targets verify it), and ``forward_credentials`` keeps both."""
    from cwm.auth import build_checks

    checks = build_checks(
        {
            "header_auth": {"header_name": "X-Gitlab-Token", "api_key": "glpat-0123456789"},
            "hmac": {"secret": "s3cret", "header": "X-Body-Mac"},
        }
    )
    assert checks.credential_headers == frozenset({"x-gitlab-token"})
    assert "x-body-mac" in checks.secret_headers
    hub = FakeHub()
    module = WebhookConnectModule(CONFIG, hub, lambda: None, checks.credential_headers)  # type: ignore[arg-type]
    signed = event()
    signed.headers.update({"x-gitlab-token": ["glpat-0123456789"], "x-body-mac": ["ab12"]})
    _sync.successResultOf(deliver(module, signed))
    [(_, _, stored, _)] = hub.published
    assert "x-gitlab-token" not in stored["headers"] and stored["headers"]["x-body-mac"] == "ab12"
    assert "glpat-0123456789" not in repr(stored)
    kept = relayed_headers({"x-gitlab-token": ["t"]}, forward_credentials=True, credentials=checks.credential_headers)
    assert kept == {"x-gitlab-token": "t"}
