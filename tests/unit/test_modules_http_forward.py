"""The ``http_webhook`` module, through StubTreq on a Clock: no reactor, no sockets."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail
from OpenSSL import SSL
from twisted.internet.error import (
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cwm.errors import ConfigError
from cwm.modules import http_forward
from cwm.modules.base import ModuleContext, ModuleUnavailable, WebhookEvent
from cwm.modules.ssrf import REFUSAL_REASON, DestinationNotAllowed

_sync = SynchronousTestCase()

LOST = "the connection to the destination failed"
BODY = b'{"event":  "push",\n "n": 1.50}'  # odd spacing: must arrive unchanged


class RecordingResource(Resource):
    """Records each request and answers with a chosen status."""

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes = b"thanks") -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.requests: list[tuple[bytes, bytes, dict[str, list[str]], bytes]] = []

    def render(self, request: Request) -> bytes:
        headers = {
            name.decode().lower(): [v.decode() for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.method is not None and request.content is not None
        self.requests.append((request.method, request.uri, headers, request.content.read()))
        request.setResponseCode(self.status)
        return self.body


class HangingResource(Resource):
    """Never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class EndlessBodyResource(Resource):
    """Answers 200 and starts a body it never finishes."""

    isLeaf = True

    def render(self, request: Request) -> int:
        request.setResponseCode(200)
        request.write(b"partial")
        return NOT_DONE_YET


class FailingClient:
    """An HTTP client whose every request fails with one exception."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.calls.append((method, url))
        return fail(self.error)


class Harness:
    """A module built on StubTreq clients and a Clock."""

    def __init__(
        self,
        config: Mapping[str, Any],
        resource: Resource | None = None,
        unguarded: Resource | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.resource: Any = resource if resource is not None else RecordingResource()
        self.unguarded_resource: Any = (
            unguarded if unguarded is not None else RecordingResource()
        )
        self.http = StubTreq(self.resource)
        self.http_unguarded = StubTreq(self.unguarded_resource)
        self.module = http_forward.build(config, self.context())

    def context(self) -> ModuleContext:
        """The context the module was built with."""
        return ModuleContext(
            clock=self.clock,
            stdout=io.StringIO(),
            http=self.http,
            http_unguarded=self.http_unguarded,
            working_dir=FilePath("/nonexistent"),
        )

    def deliver(self, event: WebhookEvent | None = None) -> Deferred[None]:
        """Start a delivery and let the in-memory server run."""
        d = Deferred.fromCoroutine(self.module.deliver(event or make_event()))
        self.http.flush()
        self.http_unguarded.flush()
        return d


def make_event(headers: Mapping[str, list[str]] | None = None, body: bytes = BODY) -> WebhookEvent:
    """A webhook with typical GitHub-like headers."""
    if headers is None:
        headers = {
            "content-type": ["application/json; charset=utf-8"],
            "x-github-event": ["push"],
            "x-hub-signature-256": ["sha256=abc"],
            "authorization": ["Bearer for-cwm"],
            "cookie": ["session=1"],
            "proxy-authorization": ["Basic xyz"],
            "connection": ["keep-alive"],
            "keep-alive": ["timeout=5"],
            "te": ["trailers"],
            "upgrade": ["h2c"],
            "host": ["cwm.example"],
            "content-length": [str(len(body))],
            "user-agent": ["GitHub-Hookshot/1"],
        }
    return WebhookEvent(
        namespace="default",
        webhook_id="github",
        request_id="req-1",
        received_at=1_700_000_000.0,
        headers=headers,
        body=body,
        payload={"event": "push", "n": 1.5},
        data_type="json",
        client_ip="203.0.113.9",
    )


def only_request(resource: RecordingResource) -> tuple[bytes, bytes, dict[str, list[str]], bytes]:
    """The single request the resource saw."""
    assert len(resource.requests) == 1
    return resource.requests[0]


def test_forwards_exact_body_with_content_type_and_ids() -> None:
    """The body goes out byte-identical, with Content-Type and the two id headers."""
    harness = Harness({"url": "https://hooks.example.com/in?x=1"})
    _sync.successResultOf(harness.deliver())
    method, uri, headers, body = only_request(harness.resource)
    assert method == b"POST"
    assert uri == b"/in?x=1"
    assert body == BODY
    assert headers["content-type"] == ["application/json; charset=utf-8"]
    assert headers["x-webhook-id"] == ["github"]
    assert headers["x-request-id"] == ["req-1"]
    assert headers["host"] == ["hooks.example.com"]
    assert "x-github-event" not in headers
    assert "authorization" not in headers
    assert harness.clock.getDelayedCalls() == []


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "put"])
def test_method_is_used(method: str) -> None:
    """The configured method is used (any case)."""
    harness = Harness({"url": "https://hooks.example.com/", "method": method})
    _sync.successResultOf(harness.deliver())
    assert only_request(harness.resource)[0] == method.upper().encode()


def test_forward_headers_true_forwards_all_but_hop_by_hop_and_credentials() -> None:
    """``forward_headers: true`` drops hop-by-hop, Host, Content-Length, credentials."""
    harness = Harness({"url": "https://hooks.example.com/", "forward_headers": True})
    _sync.successResultOf(harness.deliver())
    _, _, headers, body = only_request(harness.resource)
    assert headers["x-github-event"] == ["push"]
    assert headers["x-hub-signature-256"] == ["sha256=abc"]
    assert headers["user-agent"] == ["GitHub-Hookshot/1"]
    for name in ("authorization", "cookie", "proxy-authorization", "keep-alive", "te", "upgrade"):
        assert name not in headers, name
    assert headers["host"] == ["hooks.example.com"]
    assert headers["content-length"] == [str(len(BODY))]
    assert headers.get("connection") != ["keep-alive"]
    assert body == BODY


def test_forward_headers_list_forwards_exactly_those() -> None:
    """A list forwards only the named headers, case-insensitively, Authorization included."""
    config = {
        "url": "https://hooks.example.com/",
        "forward_headers": ["X-GitHub-Event", "Authorization"],
    }
    harness = Harness(config)
    _sync.successResultOf(harness.deliver())
    _, _, headers, _ = only_request(harness.resource)
    assert headers["x-github-event"] == ["push"]
    assert headers["authorization"] == ["Bearer for-cwm"]
    assert "x-hub-signature-256" not in headers
    assert "cookie" not in headers
    assert headers["content-type"] == ["application/json; charset=utf-8"]


def test_allowed_headers_is_the_list_form() -> None:
    """Upstream's ``allowed_headers`` (with ``forward_headers: true``) is the list form."""
    config = {
        "url": "https://hooks.example.com/",
        "forward_headers": True,
        "allowed_headers": ["x-hub-signature-256"],
    }
    harness = Harness(config)
    _sync.successResultOf(harness.deliver())
    _, _, headers, _ = only_request(harness.resource)
    assert headers["x-hub-signature-256"] == ["sha256=abc"]
    assert "x-github-event" not in headers
    assert "user-agent" not in headers


def test_repeated_header_values_are_all_forwarded() -> None:
    """A header received twice is forwarded with both values."""
    config = {"url": "https://hooks.example.com/", "forward_headers": ["x-tag"]}
    harness = Harness(config)
    _sync.successResultOf(harness.deliver(make_event(headers={"x-tag": ["a", "b"]})))
    assert only_request(harness.resource)[2]["x-tag"] == ["a", "b"]


def test_configured_headers_are_added_and_win() -> None:
    """``headers`` are added, overriding a forwarded header of the same name."""
    config = {
        "url": "https://hooks.example.com/",
        "forward_headers": True,
        "headers": {"X-GitHub-Event": "override", "X-Token": "abc"},
    }
    harness = Harness(config)
    _sync.successResultOf(harness.deliver())
    _, _, headers, _ = only_request(harness.resource)
    assert headers["x-github-event"] == ["override"]
    assert headers["x-token"] == ["abc"]


def test_ids_cannot_be_spoofed_by_the_sender() -> None:
    """Forwarded X-Webhook-ID / X-Request-ID are replaced by cwm's."""
    config = {"url": "https://hooks.example.com/", "forward_headers": True}
    harness = Harness(config)
    event = make_event(headers={"x-webhook-id": ["evil"], "x-request-id": ["evil"]})
    _sync.successResultOf(harness.deliver(event))
    _, _, headers, _ = only_request(harness.resource)
    assert headers["x-webhook-id"] == ["github"]
    assert headers["x-request-id"] == ["req-1"]


def test_empty_body_is_forwarded() -> None:
    """An empty body is sent as an empty body."""
    harness = Harness({"url": "https://hooks.example.com/"})
    _sync.successResultOf(harness.deliver(make_event(headers={}, body=b"")))
    assert only_request(harness.resource)[3] == b""


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    """Any 2xx answer means the destination accepted the webhook."""
    harness = Harness({"url": "https://hooks.example.com/"}, RecordingResource(status))
    _sync.successResultOf(harness.deliver())


@pytest.mark.parametrize("status", [301, 302, 400, 404, 500, 503])
def test_other_status_is_module_unavailable(status: int) -> None:
    """Any other status (redirects included: they are not followed) is ModuleUnavailable."""
    resource = RecordingResource(status)
    harness = Harness({"url": "https://hooks.example.com/"}, resource)
    failure = _sync.failureResultOf(harness.deliver(), ModuleUnavailable)
    assert failure.value.reason == f"upstream answered {status}"
    assert len(resource.requests) == 1
    assert harness.clock.getDelayedCalls() == []


def test_no_answer_times_out_on_the_clock() -> None:
    """A destination that never answers fails after ``timeout`` seconds, timers cleaned up."""
    resource = HangingResource()
    harness = Harness({"url": "https://hooks.example.com/", "timeout": 12.5}, resource)
    d = harness.deliver()
    _sync.assertNoResult(d)
    harness.clock.advance(12)
    _sync.assertNoResult(d)
    harness.clock.advance(0.5)
    harness.http.flush()
    failure = _sync.failureResultOf(d, ModuleUnavailable)
    assert failure.value.reason == "timed out after 12.5 s"
    assert harness.clock.getDelayedCalls() == []
    assert len(resource.requests) == 1


def test_default_timeout_is_30_seconds() -> None:
    """Without ``timeout`` the limit is 30 s."""
    harness = Harness({"url": "https://hooks.example.com/"}, HangingResource())
    d = harness.deliver()
    harness.clock.advance(29.9)
    _sync.assertNoResult(d)
    harness.clock.advance(0.1)
    failure = _sync.failureResultOf(d, ModuleUnavailable)
    assert failure.value.reason == "timed out after 30 s"
    assert harness.clock.getDelayedCalls() == []


def test_endless_response_body_does_not_block_success() -> None:
    """A 2xx whose body never ends still succeeds once the drain times out."""
    harness = Harness({"url": "https://hooks.example.com/", "timeout": 5}, EndlessBodyResource())
    d = harness.deliver()
    _sync.assertNoResult(d)
    harness.clock.advance(5)
    harness.http.flush()
    _sync.successResultOf(d)
    assert harness.clock.getDelayedCalls() == []


def test_caller_cancellation_is_not_a_timeout() -> None:
    """Cancelling the delivery (client went away) gives CancelledError, not ModuleUnavailable."""
    harness = Harness({"url": "https://hooks.example.com/"}, HangingResource())
    d = harness.deliver()
    harness.clock.advance(3)
    d.cancel()
    harness.http.flush()
    _sync.failureResultOf(d, CancelledError)
    assert harness.clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DestinationNotAllowed(string=REFUSAL_REASON), REFUSAL_REASON),
        (ConnectionRefusedError(), "connection refused"),
        (DNSLookupError("no results"), "could not resolve the destination host"),
        (ConnectTimeoutError(), "timed out while connecting"),
        (NoRouteError(), "could not connect to the destination"),
        (
            ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", "bad cert")]))]),
            "the TLS handshake with the destination failed",
        ),
        (ResponseNeverReceived([Failure(ConnectionLost())]), LOST),
        (ResponseFailed([Failure(ConnectionLost())]), LOST),
        (RuntimeError("boom"), "the request to the destination failed"),
    ],
)
def test_connection_errors_are_module_unavailable(error: Exception, reason: str) -> None:
    """Connection-level failures become ModuleUnavailable with a clear reason."""
    harness = Harness({"url": "https://hooks.example.com/secret-path?token=s3cr3t"})
    client = FailingClient(error)
    harness.module = http_forward.build(
        {"url": "https://hooks.example.com/secret-path?token=s3cr3t"},
        ModuleContext(
            clock=harness.clock,
            stdout=io.StringIO(),
            http=client,
            http_unguarded=None,
            working_dir=FilePath("/nonexistent"),
        ),
    )
    failure: Failure = _sync.failureResultOf(
        Deferred.fromCoroutine(harness.module.deliver(make_event())), ModuleUnavailable
    )
    assert failure.value.reason == reason
    assert "s3cr3t" not in failure.value.reason
    assert client.calls == [("POST", "https://hooks.example.com/secret-path?token=s3cr3t")]


def test_cancellation_inside_a_wrapper_is_still_cancellation() -> None:
    """A wrapped CancelledError before the timeout is the caller's cancellation."""
    clock = Clock()
    client = FailingClient(ResponseNeverReceived([Failure(CancelledError())]))
    module = http_forward.build(
        {"url": "https://hooks.example.com/"},
        ModuleContext(
            clock=clock,
            stdout=io.StringIO(),
            http=client,
            http_unguarded=None,
            working_dir=FilePath("/nonexistent"),
        ),
    )
    _sync.failureResultOf(Deferred.fromCoroutine(module.deliver(make_event())), CancelledError)


def test_public_hosts_use_the_guarded_client() -> None:
    """A host not in ``allowed_hosts`` goes through ``ctx.http``."""
    harness = Harness({"url": "https://hooks.example.com/", "allowed_hosts": ["other.example"]})
    _sync.successResultOf(harness.deliver())
    assert len(harness.resource.requests) == 1
    assert harness.unguarded_resource.requests == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://10.0.0.5:8080/hook", "10.0.0.5"),
        ("http://localhost:8011/hook", "LOCALHOST"),
        ("http://internal.corp./hook", "internal.corp"),
    ],
)
def test_allowed_hosts_use_the_unguarded_client(url: str, allowed: str) -> None:
    """A host in ``allowed_hosts`` (normalised) goes through ``ctx.http_unguarded``."""
    harness = Harness({"url": url, "allowed_hosts": [allowed]})
    _sync.successResultOf(harness.deliver())
    assert harness.resource.requests == []
    assert len(harness.unguarded_resource.requests) == 1


def test_ipv6_literal_hosts_are_config_errors() -> None:
    """IPv6 literals are refused at build: treq cannot request them (hyperlink #68)."""
    with pytest.raises(ConfigError, match="IPv6 literal hosts are not supported"):
        Harness({"url": "http://[2606:4700::1111]/hook"})
    with pytest.raises(ConfigError, match="IPv6 literal hosts are not supported"):
        Harness({"url": "http://[::1]:8011/hook", "allowed_hosts": ["0:0:0:0:0:0:0:1"]})


async def _close(module: http_forward.HTTPForwardModule) -> None:
    await module.close()


def test_close_does_nothing() -> None:
    """``close`` completes at once (the clients belong to the composition root)."""
    harness = Harness({"url": "https://hooks.example.com/"})
    _sync.successResultOf(Deferred.fromCoroutine(_close(harness.module)))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://100.100.100.200/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA/",
        "http://instance-data/",
        "http://localhost:8000/",
        "http://api.localhost/",
    ],
)
def test_non_public_destinations_are_config_errors(url: str) -> None:
    """Non-public IP literals and metadata/local names are refused at build."""
    with pytest.raises(ConfigError, match=r"^module-config\.url: .*allowed_hosts to allow it$"):
        Harness({"url": url})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "module-config.url: required"),
        ({"url": "https://a.example/", "urls": "x"}, "module-config.urls: unknown key"),
        ({"url": 5}, "module-config.url: must be a string"),
        ({"url": ""}, "module-config.url: must not be empty"),
        ({"url": "ftp://a.example/"}, "module-config.url: scheme must be http or https"),
        ({"url": "a.example/hook"}, "module-config.url: scheme must be http or https"),
        ({"url": "https:///hook"}, "module-config.url: must include a host"),
        ({"url": "https://a.example:99999/"}, "module-config.url: invalid URL"),
        ({"url": "https://a.example:0/"}, "module-config.url: port must be 1-65535"),
        ({"url": "https://u:p@a.example/"}, "module-config.url: must not contain credentials"),
        ({"url": "https://a.example/a b"}, "module-config.url: must not contain spaces"),
        ({"url": "https://a.example/", "method": "GET"}, "module-config.method: must be POST"),
        ({"url": "https://a.example/", "method": 1}, "module-config.method: must be a string"),
        ({"url": "https://a.example/", "headers": []}, "module-config.headers: must be an object"),
        ({"url": "https://a.example/", "headers": {"X": 1}}, "module-config.headers.X: must be"),
        ({"url": "https://a.example/", "headers": {"X Y": "1"}}, "module-config.headers: invalid"),
        ({"url": "https://a.example/", "headers": {"X": "a\r\nB: c"}}, "module-config.headers.X"),
        (
            {"url": "https://a.example/", "headers": {"Content-Length": "1"}},
            "module-config.headers.Content-Length: cannot be set",
        ),
        (
            {"url": "https://a.example/", "headers": {"X-Webhook-ID": "1"}},
            "module-config.headers.X-Webhook-ID: cannot be set",
        ),
        (
            {"url": "https://a.example/", "forward_headers": "yes"},
            "module-config.forward_headers: must be true, false or a list",
        ),
        (
            {"url": "https://a.example/", "forward_headers": [1]},
            "module-config.forward_headers[0]: must be a non-empty string",
        ),
        (
            {"url": "https://a.example/", "forward_headers": ["Transfer-Encoding"]},
            "module-config.forward_headers: 'Transfer-Encoding' cannot be forwarded",
        ),
        (
            {"url": "https://a.example/", "forward_headers": ["host"]},
            "module-config.forward_headers: 'host' cannot be forwarded",
        ),
        (
            {"url": "https://a.example/", "allowed_headers": ["Proxy-Authorization"]},
            "module-config.allowed_headers: 'Proxy-Authorization' cannot be forwarded",
        ),
        (
            {"url": "https://a.example/", "headers": {"X-Trailing\n": "v"}},
            "module-config.headers: invalid header name",
        ),
        (
            {"url": "https://a.example/", "allowed_headers": ["bad header"]},
            "module-config.allowed_headers: invalid header name",
        ),
        (
            {"url": "https://a.example/", "allowed_headers": "x-a"},
            "module-config.allowed_headers: must be a list of strings",
        ),
        (
            {"url": "https://a.example/", "forward_headers": ["a"], "allowed_headers": ["b"]},
            "module-config.allowed_headers: give the header list in forward_headers",
        ),
        (
            {"url": "https://a.example/", "forward_headers": False, "allowed_headers": ["b"]},
            "module-config.allowed_headers: conflicts with forward_headers: false",
        ),
        ({"url": "https://a.example/", "timeout": 0}, "module-config.timeout: must be > 0"),
        ({"url": "https://a.example/", "timeout": -1}, "module-config.timeout: must be > 0"),
        ({"url": "https://a.example/", "timeout": 301}, "module-config.timeout: must be > 0"),
        ({"url": "https://a.example/", "timeout": "30"}, "module-config.timeout: must be a num"),
        ({"url": "https://a.example/", "timeout": True}, "module-config.timeout: must be a num"),
        (
            {"url": "https://a.example/", "allowed_hosts": "a.example"},
            "module-config.allowed_hosts: must be a list of strings",
        ),
        (
            {"url": "https://a.example/", "allowed_hosts": [""]},
            "module-config.allowed_hosts[0]: must be a non-empty string",
        ),
    ],
)
def test_build_rejects_malformed_config(config: dict[str, Any], message: str) -> None:
    """Every malformed key is a ConfigError naming it."""
    with pytest.raises(ConfigError) as raised:
        Harness(config)
    assert str(raised.value).startswith(message)


def test_timeout_of_300_seconds_is_accepted() -> None:
    """The upper bound itself is allowed."""
    Harness({"url": "https://a.example/", "timeout": 300})
