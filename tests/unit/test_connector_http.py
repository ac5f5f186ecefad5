"""The connector's HTTP mode, through StubTreq on a Clock: no reactor, no sockets, no sleeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from zope.interface import implementer

from cwm.connector.http import (
    MAX_RETRY_WAIT,
    ConnectorTLSPolicy,
    HttpDelivery,
    http_client,
    outgoing_headers,
    retry_wait,
    tls_policy,
)
from cwm.connector.message import DELIVERED, Message, Outcome
from cwm.connector.settings import ConnectorSettings, Target
from cwm.errors import ConfigError
from tests.integration.etcd_server import TlsFiles, make_tls_files

_sync = SynchronousTestCase()

URL = "http://127.0.0.1:8080/hooks/in?x=1"  # loopback: targets are local by design
BODY = b'\xff\xfe{"event": "push"}\x80\n  trailing  '  # not UTF-8, odd spacing: must arrive unchanged
HANG = "hang"  # a step: the request never gets an answer
ENDLESS = "endless"  # a step: 200, then a body that never ends


# --------------------------------------------------------------------------
# A scripted target


@dataclass(frozen=True)
class Received:
    """One request as the target's server saw it."""

    method: bytes
    uri: bytes
    headers: dict[str, list[str]]
    body: bytes


class _Server(Resource):
    isLeaf = True

    def __init__(self, owner: FakeTarget) -> None:
        super().__init__()
        self._owner = owner

    def render(self, request: Request) -> bytes | int:
        assert request.method is not None and request.content is not None
        headers = {
            name.decode().lower(): [v.decode("latin-1") for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self._owner.received.append(Received(request.method, request.uri, headers, request.content.read()))
        step = self._owner.answering
        if step == ENDLESS:
            request.setResponseCode(200)
            request.write(b"partial")
            self._owner.open_bodies.append(request)
            return NOT_DONE_YET
        status, answer_headers = step if isinstance(step, tuple) else (step, {})
        request.setResponseCode(status)
        for name, value in answer_headers.items():
            request.setHeader(name, value)
        return b"x" * 100


class FakeTarget:
    """An HTTP client whose target follows a script, one step per request.

    A step is a status, ``(status, headers)``, an exception the request fails
    with (nothing reaches the server), HANG or ENDLESS.
    """

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.received: list[Received] = []
        self.requests = 0  # started, whether or not they reached the server
        self.kwargs: list[dict[str, Any]] = []
        self.cancelled = 0
        self.open_bodies: list[Request] = []
        self.answering: Any = None
        self._stub: Any = StubTreq(_Server(self))

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.requests += 1
        self.kwargs.append(kwargs)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            return fail(step)
        if step == HANG:
            return Deferred(lambda _: self._cancel())
        self.answering = step
        d: Deferred[Any] = self._stub.request(method, url, **kwargs)
        self._stub.flush()
        return d

    def _cancel(self) -> None:
        self.cancelled += 1

    def flush(self) -> None:
        self._stub.flush()


# --------------------------------------------------------------------------
# Helpers


def target(**overrides: Any) -> Target:
    values: dict[str, Any] = {"url": URL, "timeout_seconds": 30.0}
    values.update(overrides)
    return Target(**values)


def connector_settings(
    default: Target | None = None, targets: Mapping[str, Target] | None = None, **overrides: Any
) -> ConnectorSettings:
    return ConnectorSettings(
        cloud_url="https://cloud.example",
        channel="chan",
        token="channel-token-secret",
        default_target=default,
        targets=dict(targets or {}),
        **overrides,
    )


def message(webhook_id: str = "github", **overrides: Any) -> Message:
    values: dict[str, Any] = {
        "message_id": "msg-1",
        "webhook_id": webhook_id,
        "headers": {
            "content-type": "application/octet-stream",
            "x-hub-signature-256": "sha256=abc123",
            "x-github-event": "push",
            "user-agent": "GitHub-Hookshot/1",
            "connection": "keep-alive, X-Private-Hop",
            "x-private-hop": "only for the first hop",
            "keep-alive": "timeout=5",
            "proxy-connection": "keep-alive",
            "proxy-authenticate": "Basic",
            "proxy-authorization": "Basic eHl6",
            "te": "trailers",
            "trailer": "x-checksum",
            "trailers": "x-checksum",
            "transfer-encoding": "chunked",
            "upgrade": "h2c",
            "host": "cwm.example",
            "content-length": "999",
            "x-webhook-attempt": "77",
        },
        "body": BODY,
        "delivery_count": 3,
    }
    values.update(overrides)
    return Message(**values)


class Harness:
    """An HttpDelivery on a FakeTarget and a Clock."""

    def __init__(self, fake: FakeTarget, default: Target | None = None, **settings: Any) -> None:
        self.clock = Clock()
        self.fake = fake
        self.delivery = HttpDelivery(
            connector_settings(default if default is not None else target(), **settings), fake, self.clock
        )

    def deliver(self, msg: Message | None = None) -> Deferred[Outcome]:
        return Deferred.fromCoroutine(self.delivery.deliver(msg or message()))

    def outcome(self, msg: Message | None = None) -> Outcome:
        """Deliver with no waits at all in between (the first attempt settles it)."""
        result: Outcome = _sync.successResultOf(self.deliver(msg))
        assert self.clock.getDelayedCalls() == []
        return result


def advance_until_done(harness: Harness, d: Deferred[Outcome]) -> Outcome:
    """Let the clock run every wait and timeout until the delivery settles."""
    for _ in range(1000):
        if d.called:
            break
        calls = harness.clock.getDelayedCalls()
        assert calls, "the delivery waits on nothing"
        harness.clock.advance(min(c.getTime() for c in calls) - harness.clock.seconds())
    result: Outcome = _sync.successResultOf(d)
    assert harness.clock.getDelayedCalls() == []
    return result


# --------------------------------------------------------------------------
# The request


def test_sends_the_exact_body_and_the_senders_headers() -> None:
    """Body bytes unchanged; sender's headers but hop-by-hop ones; X-Webhook-* set."""
    harness = Harness(FakeTarget(200))
    assert harness.outcome() == DELIVERED
    [seen] = harness.fake.received
    assert seen.method == b"POST"
    assert seen.uri == b"/hooks/in?x=1"
    assert seen.body == BODY
    headers = seen.headers
    assert headers["x-hub-signature-256"] == ["sha256=abc123"]
    assert headers["x-github-event"] == ["push"]
    assert headers["user-agent"] == ["GitHub-Hookshot/1"]
    assert headers["content-type"] == ["application/octet-stream"]
    assert headers["content-length"] == [str(len(BODY))]
    assert headers["host"] == ["127.0.0.1:8080"]
    for gone in ("keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
                 "trailer", "trailers", "transfer-encoding", "upgrade", "x-private-hop"):
        assert gone not in headers, gone
    assert "x-original-x-github-event" not in headers  # upstream's renaming is gone
    assert headers["x-webhook-message-id"] == ["msg-1"]
    assert headers["x-webhook-id"] == ["github"]
    assert headers["x-webhook-attempt"] == ["1"]
    assert headers["x-webhook-delivery-count"] == ["3"]


def test_body_goes_as_bytes_without_redirects_buffering_or_a_treq_timeout() -> None:
    """data=bytes (no cooperator), no redirects followed, the clock as treq's reactor."""
    harness = Harness(FakeTarget(200))
    harness.outcome()
    [kwargs] = harness.fake.kwargs
    assert kwargs["data"] == BODY and type(kwargs["data"]) is bytes
    assert kwargs["allow_redirects"] is False
    assert kwargs["unbuffered"] is True
    assert kwargs["reactor"] is harness.clock
    assert "timeout" not in kwargs  # the attempt's own timeout covers the body too


def test_target_headers_override_case_insensitively() -> None:
    """The target's headers replace the sender's; its framing headers are ignored."""
    configured = target(
        method="PUT",
        headers={"Content-Type": "application/vnd.x+json", "X-GitHub-Event": "overridden",
                 "Authorization": "Bearer local", "Content-Length": "1", "Transfer-Encoding": "gzip"},
    )
    harness = Harness(FakeTarget(200), default=configured)
    harness.outcome()
    [seen] = harness.fake.received
    assert seen.method == b"PUT"
    assert seen.headers["content-type"] == ["application/vnd.x+json"]
    assert seen.headers["x-github-event"] == ["overridden"]
    assert seen.headers["authorization"] == ["Bearer local"]
    assert seen.headers["content-length"] == [str(len(BODY))]
    assert "transfer-encoding" not in seen.headers
    assert seen.body == BODY


def test_content_type_defaults_to_json_only_when_absent() -> None:
    harness = Harness(FakeTarget(200))
    harness.outcome(message(headers={"x-a": "1"}))
    assert harness.fake.received[0].headers["content-type"] == ["application/json"]


def test_webhook_headers_cannot_be_forged_by_the_sender_or_the_target() -> None:
    """X-Webhook-* come last: neither the sender's nor the target's value survives."""
    configured = target(headers={"X-Webhook-ID": "fake", "X-Webhook-Message-ID": "fake"})
    headers = outgoing_headers(message(), configured, attempt=2)
    assert headers.getRawHeaders("x-webhook-id") == ["github"]
    assert headers.getRawHeaders("x-webhook-message-id") == ["msg-1"]
    assert headers.getRawHeaders("x-webhook-attempt") == ["2"]


def test_header_names_that_are_not_tokens_are_dropped() -> None:
    headers = outgoing_headers(message(headers={"bad name": "x", "bad:colon": "y", "good": "z"}), target(), 1)
    assert headers.getRawHeaders("good") == ["z"]
    names = {name.lower() for name, _ in headers.getAllRawHeaders()}
    assert not any(b"bad" in name for name in names)  # Twisted would refuse to send them


# --------------------------------------------------------------------------
# Target selection


def test_target_per_webhook_id_else_default() -> None:
    fake = FakeTarget(200, 200)
    clock = Clock()
    settings = connector_settings(
        default=target(url="http://10.0.0.5/default"),
        targets={"stripe": target(url="http://192.168.1.20:9000/stripe")},
    )
    delivery = HttpDelivery(settings, fake, clock)
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("stripe")))) == DELIVERED
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("other")))) == DELIVERED
    assert [r.uri for r in fake.received] == [b"/stripe", b"/default"]
    assert [r.headers["host"] for r in fake.received] == [["192.168.1.20:9000"], ["10.0.0.5"]]


@pytest.mark.parametrize("webhook_id", ["unknown", ""])
def test_no_target_is_a_dead_letter_without_a_request(webhook_id: str) -> None:
    fake = FakeTarget()
    delivery = HttpDelivery(connector_settings(targets={"github": target()}), fake, Clock())
    outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message(webhook_id))))
    assert outcome.kind == "dead_lettered"
    assert outcome.reason == f"no target for webhook_id {webhook_id!r}"
    assert fake.requests == 0


# --------------------------------------------------------------------------
# Outcomes and retries


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered_at_once(status: int) -> None:
    harness = Harness(FakeTarget(status))
    assert harness.outcome() == DELIVERED
    assert harness.fake.requests == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 499])
def test_4xx_is_a_dead_letter_after_one_request(status: int) -> None:
    harness = Harness(FakeTarget(status, 200, 200))
    outcome = harness.outcome()
    assert outcome.kind == "dead_lettered"
    assert outcome.reason == f"target answered {status}"
    assert harness.fake.requests == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 302, 304, 101])
def test_5xx_408_429_and_other_statuses_are_retried(status: int) -> None:
    harness = Harness(FakeTarget(status, 200))
    outcome = advance_until_done(harness, harness.deliver())
    assert outcome == DELIVERED
    assert harness.fake.requests == 2
    assert [r.headers["x-webhook-attempt"] for r in harness.fake.received] == [["1"], ["2"]]


def test_retries_wait_1s_then_2s_on_the_clock() -> None:
    """500, 500, 200: three requests, one second apart, then two seconds apart."""
    harness = Harness(FakeTarget(500, 500, 200))
    d = harness.deliver()
    assert harness.fake.requests == 1
    harness.clock.advance(0.99)
    assert harness.fake.requests == 1
    harness.clock.advance(0.01)
    assert harness.fake.requests == 2
    harness.clock.advance(1.99)
    assert harness.fake.requests == 2
    assert not d.called
    harness.clock.advance(0.01)
    assert harness.fake.requests == 3
    assert _sync.successResultOf(d) == DELIVERED
    assert harness.clock.getDelayedCalls() == []
    assert [r.body for r in harness.fake.received] == [BODY] * 3
    assert [r.headers["x-webhook-attempt"] for r in harness.fake.received] == [["1"], ["2"], ["3"]]


def test_every_attempt_failing_requeues_with_the_last_reason() -> None:
    harness = Harness(FakeTarget(500, 502, 503))
    outcome = advance_until_done(harness, harness.deliver())
    assert outcome.kind == "requeued"
    assert outcome.reason == "target answered 503 (after 3 attempts)"
    assert harness.fake.requests == 3


def test_retry_max_attempts_is_honoured() -> None:
    harness = Harness(FakeTarget(*[500] * 5), default=target(retry_max_attempts=5, retry_delay_seconds=0.5))
    outcome = advance_until_done(harness, harness.deliver())
    assert outcome.kind == "requeued"
    assert harness.fake.requests == 5
    assert harness.clock.seconds() == 0.5 + 1 + 2 + 4


def test_retry_disabled_means_exactly_one_request() -> None:
    """Upstream still repeated the attempts (without waits); cwm makes one."""
    harness = Harness(FakeTarget(500, 200, 200), default=target(retry_enabled=False))
    outcome = harness.outcome()
    assert outcome.kind == "requeued"
    assert outcome.reason == "target answered 500 (after 1 attempt)"
    assert harness.fake.requests == 1


def test_backoff_is_capped_at_60_seconds() -> None:
    slow = target(retry_delay_seconds=10.0, retry_backoff_multiplier=10.0)
    assert [retry_wait(slow, n) for n in (1, 2, 3, 50)] == [10.0, 60.0, 60.0, MAX_RETRY_WAIT]
    assert retry_wait(target(retry_delay_seconds=0.0), 3) == 0.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(status: int) -> None:
    """Retry-After: 7 from a 429/503 makes the next attempt wait 7 s instead of 1 s."""
    harness = Harness(FakeTarget((status, {"Retry-After": "7"}), 200))
    d = harness.deliver()
    harness.clock.advance(6.99)
    assert harness.fake.requests == 1
    harness.clock.advance(0.01)
    assert harness.fake.requests == 2
    assert _sync.successResultOf(d) == DELIVERED


def test_retry_after_is_capped_and_never_shortens_the_backoff() -> None:
    harness = Harness(FakeTarget((429, {"Retry-After": "3600"}), (503, {"Retry-After": "0"}), 200))
    d = harness.deliver()
    harness.clock.advance(59.99)
    assert harness.fake.requests == 1
    harness.clock.advance(0.01)
    assert harness.fake.requests == 2
    harness.clock.advance(1.99)  # Retry-After: 0 does not beat the 2 s backoff
    assert harness.fake.requests == 2
    harness.clock.advance(0.01)
    assert _sync.successResultOf(d) == DELIVERED


@pytest.mark.parametrize("value", ["Wed, 21 Oct 2015 07:28:00 GMT", "-5", "1.5", ""])
def test_retry_after_other_forms_leave_the_backoff(value: str) -> None:
    harness = Harness(FakeTarget((503, {"Retry-After": value}), 200))
    d = harness.deliver()
    harness.clock.advance(1.0)
    assert harness.fake.requests == 2
    assert _sync.successResultOf(d) == DELIVERED


def test_retry_after_of_a_500_is_ignored() -> None:
    harness = Harness(FakeTarget((500, {"Retry-After": "30"}), 200))
    d = harness.deliver()
    harness.clock.advance(1.0)
    assert _sync.successResultOf(d) == DELIVERED


# --------------------------------------------------------------------------
# Timeouts and connection errors


def test_a_silent_target_times_out_then_is_retried() -> None:
    harness = Harness(FakeTarget(HANG, 200), default=target(timeout_seconds=5.0))
    d = harness.deliver()
    harness.clock.advance(4.99)
    assert harness.fake.cancelled == 0
    harness.clock.advance(0.01)
    assert harness.fake.cancelled == 1  # the hanging request was cancelled
    assert harness.fake.requests == 1
    harness.clock.advance(1.0)
    assert harness.fake.requests == 2
    assert _sync.successResultOf(d) == DELIVERED
    assert harness.clock.getDelayedCalls() == []


def test_timeouts_on_every_attempt_requeue() -> None:
    harness = Harness(FakeTarget(HANG, HANG, HANG), default=target(timeout_seconds=2.5))
    outcome = advance_until_done(harness, harness.deliver())
    assert outcome.kind == "requeued"
    assert outcome.reason == "target timed out after 2.5s (after 3 attempts)"
    assert harness.fake.cancelled == 3
    assert harness.clock.seconds() == 2.5 * 3 + 1 + 2


def test_an_answer_whose_body_never_ends_still_counts() -> None:
    """The status decides; the endless body is cut at the timeout, and the connection dropped."""
    harness = Harness(FakeTarget(ENDLESS), default=target(timeout_seconds=5.0))
    d = harness.deliver()
    assert not d.called
    harness.clock.advance(5.0)
    harness.fake.flush()
    assert _sync.successResultOf(d) == DELIVERED
    assert harness.fake.requests == 1
    assert harness.clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(), "connection refused"),
        (DNSLookupError("nowhere.invalid"), "could not resolve the target host"),
        (ResponseNeverReceived([Failure(ConnectionLost())]), "connection to the target failed"),
        (ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))]),
         "TLS handshake with the target failed"),
    ],
)
def test_connection_errors_are_retried_then_requeued(error: Exception, reason: str) -> None:
    harness = Harness(FakeTarget(error, error, error))
    outcome = advance_until_done(harness, harness.deliver())
    assert outcome.kind == "requeued"
    assert outcome.reason == f"{reason} (after 3 attempts)"
    assert harness.fake.requests == 3
    assert harness.fake.received == []


def test_connection_refused_then_up_delivers() -> None:
    harness = Harness(FakeTarget(ConnectionRefusedError(), 200))
    assert advance_until_done(harness, harness.deliver()) == DELIVERED
    assert harness.fake.requests == 2


def test_an_unexpected_error_requeues_at_once_and_is_logged(logged_failures: list[dict[str, Any]]) -> None:
    harness = Harness(FakeTarget(ZeroDivisionError("bug"), 200))
    outcome = harness.outcome()
    assert outcome.kind == "requeued"
    assert outcome.reason == "unexpected error while delivering to the target"
    assert harness.fake.requests == 1
    assert len(logged_failures) == 1
    assert logged_failures[0]["log_failure"].check(ZeroDivisionError)
    assert logged_failures[0]["message_id"] == "msg-1"
    logged_failures.clear()


def test_each_failed_attempt_logs_one_structured_line() -> None:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        harness = Harness(FakeTarget(500, 404))
        advance_until_done(harness, harness.deliver())
    finally:
        globalLogPublisher.removeObserver(observer)
    mine = [e for e in events if e.get("log_namespace", "").startswith("cwm.connector.http")]
    assert [(e["attempt"], e["reason"]) for e in mine] == [(1, "target answered 500"), (2, "target answered 404")]
    assert all(e["message_id"] == "msg-1" and e["webhook_id"] == "github" for e in mine)
    assert all("127.0.0.1" not in repr(e) for e in mine)


# --------------------------------------------------------------------------
# Stopping


def test_cancelling_during_a_retry_wait_propagates_and_sends_nothing_more() -> None:
    harness = Harness(FakeTarget(500, 200))
    d = harness.deliver()
    harness.clock.advance(0.5)
    d.cancel()
    _sync.failureResultOf(d, CancelledError)
    assert harness.clock.getDelayedCalls() == []
    harness.clock.advance(100)
    assert harness.fake.requests == 1


def test_cancelling_during_a_request_cancels_it_and_propagates() -> None:
    harness = Harness(FakeTarget(HANG, 200))
    d = harness.deliver()
    d.cancel()
    _sync.failureResultOf(d, CancelledError)
    assert harness.fake.cancelled == 1
    assert harness.clock.getDelayedCalls() == []  # the attempt's timeout is gone too
    assert harness.fake.requests == 1


def test_cancelling_is_a_cancellation_whatever_the_request_fails_with() -> None:
    """A real Agent fails a cancelled request with ResponseNeverReceived; still a stop."""

    class AbortingClient:
        requests = 0

        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            self.requests += 1
            d: Deferred[Any] = Deferred(
                lambda d: d.errback(ResponseNeverReceived([Failure(CancelledError())]))
            )
            return d

    client = AbortingClient()
    clock = Clock()
    delivery = HttpDelivery(connector_settings(target()), client, clock)
    d = Deferred.fromCoroutine(delivery.deliver(message()))
    d.cancel()
    _sync.failureResultOf(d, CancelledError)
    clock.advance(100)
    assert client.requests == 1
    assert clock.getDelayedCalls() == []


# --------------------------------------------------------------------------
# Status and close


def test_status_counts_targets_and_shows_no_secrets() -> None:
    secret_target = target(url="http://user:pa55word@127.0.0.1:9/in", headers={"Authorization": "Bearer s3cret"})
    settings = connector_settings(default=secret_target, targets={"a": secret_target, "b": secret_target})
    delivery = HttpDelivery(settings, FakeTarget(), Clock())
    status = delivery.status()
    assert status == {"mode": "http", "targets": 2, "default_target": True}
    text = repr(status)
    for secret in ("pa55word", "s3cret", "user", "channel-token-secret", "127.0.0.1"):
        assert secret not in text
    no_default = HttpDelivery(connector_settings(targets={"a": target()}), FakeTarget(), Clock())
    assert no_default.status()["default_target"] is False


# --------------------------------------------------------------------------
# The HTTP client and TLS: real handshakes in memory, no sockets


class _Peer(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:
        self.lost = reason


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    """The test server's side, from ``cryptography`` objects.

    (Twisted's ``CertificateOptions`` would hand pyOpenSSL its deprecated wrappers.)
    """

    def __init__(self, files: TlsFiles, require_client_certificate: bool) -> None:
        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(x509.load_pem_x509_certificate(Path(files.server_cert).read_bytes()))
        key: Any = serialization.load_pem_private_key(Path(files.server_key).read_bytes(), None)
        self._context.use_privatekey(key)
        if require_client_certificate:
            self._context.load_verify_locations(files.ca_cert)
            self._context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)

    def getContext(self) -> SSL.Context:
        return self._context


def _handshake(
    creator: IOpenSSLClientConnectionCreator, files: TlsFiles, require_client_certificate: bool = False
) -> tuple[_Peer, _Peer, Any]:
    """Connect a client with ``creator`` to the test server in memory; return (client, server, server TLS)."""
    clock = Clock()
    client, server = _Peer(), _Peer()
    client_factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: client), clock)
    server_factory = TLSMemoryBIOFactory(
        _ServerTLS(files, require_client_certificate), False, Factory.forProtocol(lambda: server), clock
    )
    _, server_tls, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None), greet=False
    )
    for _ in range(20):
        pump.flush()
        clock.advance(0)
    return client, server, server_tls


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (CN connector)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"), "connector")


def _policy_creator(settings: ConnectorSettings, host: bytes = b"127.0.0.1") -> IOpenSSLClientConnectionCreator:
    """The creator the client's Agent asks for, for an https URL on ``host``."""
    return tls_policy(settings).creatorForNetloc(host, 443)


@pytest.mark.parametrize("variant", ["system roots", "ca file", "no verification", "client certificate"])
def test_http_client_builds_a_cookieless_client_on_a_persistent_pool(tls_files: TlsFiles, variant: str) -> None:
    variants: dict[str, dict[str, Any]] = {
        "system roots": {},
        "ca file": {"ca_cert_path": tls_files.ca_cert},
        "no verification": {"verify_ssl": False},
        "client certificate": {"client_cert_path": tls_files.client_cert, "client_key_path": tls_files.client_key},
    }
    client, pool = http_client(Clock(), connector_settings(target(), **variants[variant]))
    assert pool.persistent
    agent: Any = client._agent
    assert agent._pool is pool
    assert isinstance(agent._endpointFactory._policyForHTTPS, ConnectorTLSPolicy)
    jar: Any = client._cookiejar
    assert jar._policy.allowed_domains() == ()  # no domain may set a cookie


def test_custom_ca_and_client_certificate(tls_files: TlsFiles) -> None:
    """ca_cert_path is trusted (instead of the system roots) and the client certificate is presented."""
    settings = connector_settings(
        target(), ca_cert_path=tls_files.ca_cert,
        client_cert_path=tls_files.client_cert, client_key_path=tls_files.client_key,
    )
    client, server, server_tls = _handshake(_policy_creator(settings), tls_files, require_client_certificate=True)
    assert (client.data, server.data) == (b"hello", b"hello")
    presented = server_tls.getPeerCertificate().to_cryptography()
    assert presented.subject.rfc4514_string() == "CN=connector"


def test_custom_ca_without_client_certificate_fails_where_one_is_required(tls_files: TlsFiles) -> None:
    settings = connector_settings(target(), ca_cert_path=tls_files.ca_cert)
    client, _, _ = _handshake(_policy_creator(settings), tls_files)
    assert client.data == b"hello"
    client, _, _ = _handshake(_policy_creator(settings), tls_files, require_client_certificate=True)
    assert client.data == b"" and client.lost is not None


def test_system_roots_do_not_trust_a_private_ca(tls_files: TlsFiles) -> None:
    client, _, _ = _handshake(_policy_creator(connector_settings(target())), tls_files)
    assert client.data == b""
    assert client.lost is not None and client.lost.check(SSL.Error)


def test_custom_ca_still_checks_the_host_name(tls_files: TlsFiles) -> None:
    settings = connector_settings(target(), ca_cert_path=tls_files.ca_cert)
    client, _, _ = _handshake(_policy_creator(settings, b"localhost"), tls_files)  # the certificate is for 127.0.0.1
    assert client.data == b"" and client.lost is not None


@pytest.mark.parametrize("with_client_certificate", [False, True])
def test_verify_ssl_false_accepts_any_certificate(tls_files: TlsFiles, with_client_certificate: bool) -> None:
    extra: dict[str, Any] = {"client_cert_path": tls_files.client_cert, "client_key_path": tls_files.client_key}
    settings = connector_settings(target(), verify_ssl=False, **(extra if with_client_certificate else {}))
    client, server, _ = _handshake(_policy_creator(settings, b"localhost"), tls_files, with_client_certificate)
    assert (client.data, server.data) == (b"hello", b"hello")


def test_the_policy_gives_one_creator_per_host(tls_files: TlsFiles) -> None:
    """For the cloud's WebSocket connection: the same settings, made once per host."""
    make = tls_policy(connector_settings(target(), ca_cert_path=tls_files.ca_cert)).creator
    assert make("127.0.0.1") is make("127.0.0.1")
    assert make("127.0.0.1") is not make("localhost")
    client, _, _ = _handshake(make("127.0.0.1"), tls_files)
    assert client.data == b"hello"


def _write_key(path: Path, password: bytes | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: Any = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return str(path)


def test_unusable_tls_files_are_config_errors(tls_files: TlsFiles, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_bytes(b"hello")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ca_cert_path": str(not_pem)}, "invalid ca_cert_path"),
        ({"ca_cert_path": str(tmp_path / "missing.pem")}, "invalid ca_cert_path: cannot read"),
        ({"client_cert_path": str(not_pem), "client_key_path": tls_files.client_key}, "invalid client_cert_path"),
        ({"client_cert_path": tls_files.client_cert, "client_key_path": str(not_pem)}, "invalid client_key_path"),
        ({"client_cert_path": tls_files.client_cert, "client_key_path": _write_key(tmp_path / "other.pem")},
         "is not the key of"),
        ({"client_cert_path": tls_files.client_cert,
          "client_key_path": _write_key(tmp_path / "locked.pem", b"pw")}, "no unencrypted PEM private key"),
    ]
    for values, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            http_client(Clock(), connector_settings(target(), **values))
