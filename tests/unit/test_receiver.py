"""The receiver's routes and answers, through StubTreq on a Clock: no reactor, no sockets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.config.store import ConfigStore
from cwm.errors import ConfigError
from cwm.modules.base import ModuleContext, ModuleRefused, ModuleUnavailable, WebhookEvent
from cwm.pipeline import WebhookPipeline
from cwm.web.errors import install_json_errors
from cwm.web.receiver import WebhookReceiver
from cwm.connect.admin import ConnectAdmin
from cwm.connect.api import ConnectStreams

_sync = SynchronousTestCase()


def connect_off(clock: Clock) -> tuple[Any, Any]:
    """The Webhook Connect mounts of a receiver with Webhook Connect off."""
    return ConnectStreams(None, clock).resource(), ConnectAdmin(None, None, clock).resource()


class RecordingModule:
    """A module whose behaviour each test chooses: succeed, fail, or wait."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.events: list[WebhookEvent] = []
        self.pending: list[Deferred[None]] = []
        self.closed = False

    async def deliver(self, event: WebhookEvent) -> None:
        self.events.append(event)
        behaviour = self.config.get("behaviour", "ok")
        if behaviour == "unavailable":
            raise ModuleUnavailable("sink is down", retry_after=7)
        if behaviour == "crash":
            raise RuntimeError("bug")
        if behaviour == "too_big":
            raise ModuleRefused(413, "Message exceeds the channel's size limit")
        if behaviour == "wait":
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            await d

    async def close(self) -> None:
        self.closed = True


class Harness:
    """A receiver over a store of RecordingModules, driven by StubTreq and a Clock."""

    def __init__(self, webhooks: Mapping[str, Any], max_in_flight: int = 100) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.modules: dict[str, RecordingModule] = {}

        def build(name: str, config: Mapping[str, Any], ctx: ModuleContext) -> RecordingModule:
            if "bad" in config:
                raise ConfigError("module-config.bad: not allowed")
            module = RecordingModule(config)
            self.modules[config.get("name", name)] = module
            return module

        context = ModuleContext(
            clock=self.clock,
            stdout=None,  # type: ignore[arg-type]
            http=None,  # type: ignore[arg-type]
            http_unguarded=None,  # type: ignore[arg-type]
            working_dir=FilePath("."),
        )
        self.store = ConfigStore(context, {"TOKEN": "s3cret"}, build=build, known_module=lambda n: n == "rec")
        self.store.replace_all({"default": webhooks, "other": {"there": {"module": "rec"}}}, {})
        self.store.loaded = True
        self.pipeline = WebhookPipeline(self.store, self.clock, max_in_flight)
        self.receiver = WebhookReceiver(
            self.pipeline, self.clock, lambda: (True, {"components": {}}), *connect_off(self.clock)
        )
        self.treq = StubTreq(self.receiver.resource())

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        d = self.treq.request(method, "http://cwm.test" + path, **kwargs)
        self.treq.flush()
        response = _sync.successResultOf(d)
        body = _sync.successResultOf(response.content())
        return response.code, json.loads(body) if body else None, response.headers

    def post(self, path: str, body: bytes = b'{"a": 1}', headers: Mapping[str, str] | None = None) -> tuple[int, Any, Any]:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        return self.request("POST", path, data=body, headers=hdrs)


@pytest.fixture
def harness() -> Harness:
    return Harness(
        {
            "plain": {"module": "rec", "module-config": {"name": "plain"}},
            "guarded": {
                "module": "rec",
                "authorization": "Bearer {$TOKEN}",
                "module-config": {"name": "guarded"},
            },
            "sink_down": {"module": "rec", "module-config": {"behaviour": "unavailable", "name": "down"}},
            "crashes": {"module": "rec", "module-config": {"behaviour": "crash", "name": "crash"}},
            "too_big": {"module": "rec", "module-config": {"behaviour": "too_big", "name": "too_big"}},
            "slow": {"module": "rec", "response_timeout": 5, "module-config": {"behaviour": "wait", "name": "slow"}},
            "raw": {"module": "rec", "data_type": "blob", "module-config": {"name": "raw"}},
            "xml": {"module": "rec", "data_type": "xml", "module-config": {"name": "xml"}},
            "limited": {
                "module": "rec",
                "rate_limit": {"max_requests": 1, "window_seconds": 60},
                "module-config": {"name": "limited"},
            },
            "schema": {
                "module": "rec",
                "json_schema": {"type": "object", "required": ["event"]},
                "module-config": {"name": "schema"},
            },
            "broken": {"module": "nope"},
            "unset_env": {"module": "rec", "authorization": "Bearer {$NOT_SET}"},
            "proxied": {
                "module": "rec",
                "trusted_proxies": ["127.0.0.0/8", "::1/128"],
                "ip_whitelist": ["198.51.100.7"],
                "rate_limit": {"max_requests": 1, "per": "client_ip"},
                "module-config": {"name": "proxied"},
            },
            "_comment": "not an entry",
        }
    )


def test_post_webhook_ok_after_module_accepted(harness: Harness) -> None:
    """A webhook the module accepted is 200 with upstream's body, and the module saw the exact bytes."""
    code, body, _ = harness.post("/webhook/plain", b'{"a": 1}')
    assert (code, body) == (200, {"message": "200 OK"})
    event = harness.modules["plain"].events[0]
    assert event.body == b'{"a": 1}' and event.payload == {"a": 1}
    assert event.namespace == "default"


def test_namespaced_route_uses_default_namespace(harness: Harness) -> None:
    """/webhook/default/{id} finds the file entries; another namespace only its own."""
    assert harness.post("/webhook/default/plain")[0] == 200
    assert harness.post("/webhook/other/there")[0] == 200
    code, body, _ = harness.post("/webhook/other/plain")
    assert code == 404 and "namespace 'other'" in body["detail"]


def test_unknown_webhook_is_404(harness: Harness) -> None:
    """An unknown id is 404 with upstream's detail; no catch-all."""
    assert harness.post("/webhook/missing")[:2] == (404, {"detail": "Webhook ID not found"})


@pytest.mark.parametrize(
    "path, detail",
    [
        ("/webhook/bad.id", "Invalid webhook ID format"),
        ("/webhook/admin", "reserved"),
        ("/webhook/a__b", "'--' or '__'"),
        ("/webhook/" + "a" * 65, "too long"),
        ("/webhook/bad.ns/plain", "Invalid namespace format"),
    ],
)
def test_bad_id_or_namespace_is_400(harness: Harness, path: str, detail: str) -> None:
    """Ids and namespaces are checked before lookup, with the precise reason."""
    code, body, _ = harness.post(path)
    assert code == 400 and detail in body["detail"]


def test_wrong_method_is_405_json(harness: Harness) -> None:
    """GET on a webhook route is 405 with a JSON detail and an Allow header."""
    code, body, headers = harness.request("GET", "/webhook/plain")
    assert code == 405 and "POST" in body["detail"]
    assert headers.getRawHeaders("Allow") == ["POST"]


def test_unknown_path_is_404_json(harness: Harness) -> None:
    """Unknown paths answer JSON, not Klein's HTML."""
    assert harness.request("GET", "/nowhere")[:2] == (404, {"detail": "Not Found"})
    assert harness.post("/webhook/a/b/c")[:2] == (404, {"detail": "Not Found"})


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/connect/stream/ch"),
        ("GET", "/connect/stream/ch/sse"),
        ("GET", "/connect/stream/ch/poll"),
        ("POST", "/connect/ack?message_id=m"),
        ("GET", "/connect/status/ch"),
        ("GET", "/admin/webhook-connect/health"),
        ("GET", "/admin/webhook-connect/channels"),
        ("POST", "/admin/webhook-connect/channels/ch/rotate-token"),
    ],
)
def test_connect_routes_answer_404_when_off(harness: Harness, method: str, path: str) -> None:
    """With Webhook Connect off its routes do not exist: 404 before any auth, not a 503 inviting retries."""
    code, body, headers = harness.request(method, path, headers={"Authorization": "Bearer x"})
    assert (code, body) == (404, {"detail": "Webhook Connect is not enabled"})
    assert not headers.hasHeader("Retry-After")


@pytest.mark.parametrize("path", ["/connect", "/admin/webhook-connect", "/connect/", "/admin/webhook-connect/"])
def test_connect_mount_points_are_404_json_and_reflect_no_host(harness: Harness, path: str) -> None:
    d = harness.treq.request("GET", "http://evil.example:81" + path, allow_redirects=False)
    harness.treq.flush()
    response = _sync.successResultOf(d)
    body = _sync.successResultOf(response.content())
    assert (response.code, json.loads(body)) == (404, {"detail": "Not Found"})
    assert b"evil" not in body and not response.headers.hasHeader("Location")


def test_a_slash_redirect_sends_a_relative_location_and_no_host() -> None:
    """werkzeug's redirect to a route's trailing slash names the path only, never the request's Host."""

    class App:
        app = Klein()

        @app.route("/dir/", methods=["GET"])
        def directory(self, request: Any) -> bytes:
            return b"{}"

    install_json_errors(App.app)
    treq = StubTreq(App().app.resource())
    d = treq.request("GET", "http://evil.example:81//dir", allow_redirects=False)
    treq.flush()
    response = _sync.successResultOf(d)
    body = _sync.successResultOf(response.content())
    assert response.code == 308 and json.loads(body) == {"detail": "Moved Permanently"}
    assert response.headers.getRawHeaders("Location") == ["/dir/"]
    assert b"evil" not in body


def test_root_and_health(harness: Harness) -> None:
    """GET / and GET /health answer JSON with upstream's fields."""
    assert harness.request("GET", "/")[:2] == (200, {"message": "200 OK"})
    code, body, _ = harness.request("GET", "/health")
    assert code == 200
    assert body["status"] == "healthy" and body["service"] == "webhook-service"
    assert body["timestamp"] == harness.clock.seconds()


def test_bearer_check_401_and_200(harness: Harness) -> None:
    """A failed check is 401 with its reason; the substituted token passes."""
    code, body, _ = harness.post("/webhook/guarded")
    assert code == 401 and "Authorization" in body["detail"]
    assert harness.post("/webhook/guarded", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert harness.post("/webhook/guarded", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert len(harness.modules["guarded"].events) == 1


def test_sink_failure_is_503_with_retry_after(harness: Harness) -> None:
    """ModuleUnavailable becomes 503 with the module's reason and Retry-After."""
    code, body, headers = harness.post("/webhook/sink_down")
    assert (code, body) == (503, {"detail": "sink is down"})
    assert headers.getRawHeaders("Retry-After") == ["7"]


def test_module_bug_is_503_and_logged(harness: Harness, logged_failures: list[Any]) -> None:
    """An unexpected module error is 503 without a traceback to the client, and logged."""
    code, body, headers = harness.post("/webhook/crashes")
    assert code == 503 and body == {"detail": "Module 'rec' failed"}
    assert "bug" not in json.dumps(body)
    assert headers.getRawHeaders("Retry-After") == ["30"]
    assert len(logged_failures) == 1
    logged_failures.clear()


def test_slow_module_202_then_finishes(harness: Harness) -> None:
    """A module slower than response_timeout gets 202; its completion is still awaited."""
    d = harness.treq.post("http://cwm.test/webhook/slow", data=b"{}", headers={"Content-Type": "application/json"})
    harness.treq.flush()
    _sync.assertNoResult(d)
    harness.clock.advance(5)
    harness.treq.flush()
    response = _sync.successResultOf(d)
    assert response.code == 202
    assert json.loads(_sync.successResultOf(response.content()))["status"] == "accepted"
    assert harness.pipeline.in_flight == 1
    harness.modules["slow"].pending[0].callback(None)
    assert harness.pipeline.in_flight == 0
    assert harness.clock.getDelayedCalls() == []


def test_slow_module_answering_in_time_is_200(harness: Harness) -> None:
    """A module that finishes before the timeout gets 200 and leaves no timer behind."""
    d = harness.treq.post("http://cwm.test/webhook/slow", data=b"{}", headers={"Content-Type": "application/json"})
    harness.treq.flush()
    harness.clock.advance(4)
    harness.modules["slow"].pending[0].callback(None)
    harness.treq.flush()
    assert _sync.successResultOf(d).code == 200
    assert harness.clock.getDelayedCalls() == []


def test_busy_is_503_not_a_wait() -> None:
    """Past MAX_CONCURRENT_TASKS deliveries in flight, the sender gets 503 at once."""
    harness = Harness({"slow": {"module": "rec", "module-config": {"behaviour": "wait", "name": "slow"}}}, max_in_flight=1)
    first = harness.treq.post("http://cwm.test/webhook/slow", data=b"{}")
    harness.treq.flush()
    code, body, headers = harness.post("/webhook/slow", b"{}")
    assert code == 503 and "busy" in body["detail"]
    assert headers.getRawHeaders("Retry-After") == ["1"]
    harness.modules["slow"].pending[0].callback(None)
    harness.treq.flush()
    assert _sync.successResultOf(first).code == 200


def test_malformed_json_is_400(harness: Harness) -> None:
    """A body that is not JSON is 400 with upstream's prefix and the reason."""
    code, body, _ = harness.post("/webhook/plain", b"{not json")
    assert code == 400 and body["detail"].startswith("Malformed JSON payload")
    assert harness.post("/webhook/plain", b"")[0] == 400


def test_blob_passes_bytes(harness: Harness) -> None:
    """data_type blob hands the module the raw bytes."""
    assert harness.post("/webhook/raw", b"\x00\xffbinary")[0] == 200
    assert harness.modules["raw"].events[0].payload == b"\x00\xffbinary"


def test_unsupported_data_type_is_415(harness: Harness) -> None:
    """An entry with an unsupported data_type answers 415 per request."""
    code, body, _ = harness.post("/webhook/xml")
    assert code == 415 and "xml" in body["detail"]


def test_rate_limit_is_429_with_retry_after(harness: Harness) -> None:
    """The second request inside the window is 429 with Retry-After."""
    assert harness.post("/webhook/limited")[0] == 200
    code, body, headers = harness.post("/webhook/limited")
    assert code == 429 and "Rate limit" in body["detail"]
    assert int(headers.getRawHeaders("Retry-After")[0]) >= 1


def test_schema_failure_is_400(harness: Harness) -> None:
    """A payload failing json_schema is 400, after a good parse."""
    code, body, _ = harness.post("/webhook/schema", b'{"other": 1}')
    assert code == 400 and "schema" in body["detail"].lower()
    assert harness.post("/webhook/schema", b'{"event": "x"}')[0] == 200


def test_rejected_entries_do_not_serve_and_are_listed(harness: Harness) -> None:
    """An entry with an unknown module and a non-object value are rejected alone."""
    assert harness.post("/webhook/broken")[0] == 404
    rejected = {r.name: r.reason for r in harness.store.rejections}
    assert rejected["broken"] == "unknown module 'nope'"
    assert "must be a JSON object" in rejected["_comment"]
    assert harness.post("/webhook/plain")[0] == 200


def test_client_disconnect_lets_delivery_finish(harness: Harness) -> None:
    """A client that goes away cancels the answer, never the module's delivery."""
    d = harness.treq.post("http://cwm.test/webhook/slow", data=b"{}", headers={"Content-Type": "application/json"})
    harness.treq.flush()
    d.cancel()
    harness.treq.flush()
    _sync.failureResultOf(d)
    assert harness.clock.getDelayedCalls() == []
    assert harness.pipeline.in_flight == 1
    module = harness.modules["slow"]
    module.pending[0].callback(None)
    assert harness.pipeline.in_flight == 0
    assert len(module.events) == 1


def test_unexpected_error_is_500_json_without_traceback(harness: Harness, logged_failures: list[Any]) -> None:
    """A bug behind a route answers 500 with a generic detail; the traceback only goes to the log."""

    class BrokenPipeline:
        def handle(self, *args: Any) -> Any:
            raise KeyError("internal detail")

    receiver = WebhookReceiver(
        BrokenPipeline(), harness.clock, lambda: (True, {}), *connect_off(harness.clock)  # type: ignore[arg-type]
    )
    treq = StubTreq(receiver.resource())
    response = _sync.successResultOf(treq.post("http://cwm.test/webhook/x", data=b"{}"))
    body = _sync.successResultOf(response.content())
    assert (response.code, json.loads(body)) == (500, {"detail": "Internal server error"})
    assert b"internal detail" not in body and b"Traceback" not in body
    assert len(logged_failures) == 1
    logged_failures.clear()


def test_client_ip_behind_a_trusted_proxy_reaches_checks_and_module(harness: Harness) -> None:
    """The pipeline resolves the client once: the whitelist, the per-client rate limit and the module see it."""
    forwarded = {"X-Forwarded-For": "198.51.100.7"}
    assert harness.post("/webhook/proxied", headers=forwarded)[0] == 200
    assert harness.modules["proxied"].events[-1].client_ip == "198.51.100.7"
    code, body, _ = harness.post("/webhook/proxied", headers={"X-Forwarded-For": "6.6.6.6"})
    assert (code, body) == (401, {"detail": "IP 6.6.6.6 not in whitelist"})
    assert harness.post("/webhook/proxied", headers=forwarded)[0] == 429  # keyed on the forwarded client


def test_module_refusal_is_its_4xx_without_retry_after(harness: Harness) -> None:
    """A module that can never accept the webhook (413 over a channel's limit) answers its 4xx."""
    code, body, headers = harness.post("/webhook/too_big")
    assert (code, body) == (413, {"detail": "Message exceeds the channel's size limit"})
    assert headers.getRawHeaders("Retry-After") is None


def test_held_back_secret_is_503_with_retry_after_and_no_reason(harness: Harness) -> None:
    """A webhook whose secret cannot be resolved answers 503; the reason stays in /health."""
    code, body, headers = harness.post("/webhook/unset_env", headers={"Authorization": "Bearer x"})
    assert (code, body) == (503, {"detail": "Secret unavailable"})
    assert headers.getRawHeaders("Retry-After") == ["5"]
    held = harness.store.held_back("default", "unset_env")
    assert held is not None and "NOT_SET" in held.reason
    assert harness.post("/webhook/plain")[0] == 200


def test_not_loaded_is_503_not_404(harness: Harness) -> None:
    """Before a source has loaded the configuration, webhooks get 503 with Retry-After, not 404."""
    harness.store.loaded = False
    code, body, headers = harness.post("/webhook/plain")
    assert (code, body) == (503, {"detail": "Configuration not loaded yet"})
    assert headers.getRawHeaders("Retry-After") == ["5"]
