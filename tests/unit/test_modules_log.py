"""The ``log`` module: JSON lines, the pretty banner, redaction, write failures."""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.errors import ConfigError
from cwm.modules import log
from cwm.modules.base import ModuleContext, ModuleUnavailable, WebhookEvent

_sync = SynchronousTestCase()


def make_context(stdout: Any) -> ModuleContext:
    """A context whose stdout is the given stream; nothing else is used."""
    return ModuleContext(
        clock=Clock(),
        stdout=stdout,
        http=None,
        http_unguarded=None,
        working_dir=FilePath("/nonexistent"),
    )


def make_event(
    payload: Any = None,
    headers: Mapping[str, list[str]] | None = None,
    data_type: str = "json",
    body: bytes | None = None,
) -> WebhookEvent:
    """A webhook event with sensible defaults."""
    if payload is None:
        payload = {"event": "push"}
    if body is None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return WebhookEvent(
        namespace="default",
        webhook_id="github",
        request_id="req-1",
        received_at=1_700_000_000.25,
        headers=headers if headers is not None else {"content-type": ["application/json"]},
        body=body,
        payload=payload,
        data_type=data_type,
        client_ip="203.0.113.9",
    )


def deliver(module: log.LogModule, event: WebhookEvent) -> None:
    """Run ``deliver`` to completion (it never waits)."""
    _sync.successResultOf(Deferred.fromCoroutine(module.deliver(event)))


def one_line(stdout: io.StringIO) -> dict[str, Any]:
    """The single JSON line written, parsed."""
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 1
    record: dict[str, Any] = json.loads(lines[0])
    return record


def test_default_writes_one_json_line_with_the_documented_fields() -> None:
    """The default output is one JSON line with every documented field."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event({"event": "push", "text": "line\nbreak"}))
    assert stdout.getvalue().endswith("\n")
    assert one_line(stdout) == {
        "event": "webhook",
        "namespace": "default",
        "webhook_id": "github",
        "request_id": "req-1",
        "received_at": "2023-11-14T22:13:20.250000Z",
        "headers": {"content-type": "application/json"},
        "payload": {"event": "push", "text": "line\nbreak"},
    }


def test_each_webhook_is_its_own_line() -> None:
    """Two deliveries give two lines."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event({"n": 1}))
    deliver(module, make_event({"n": 2}))
    payloads = [json.loads(line)["payload"] for line in stdout.getvalue().splitlines()]
    assert payloads == [{"n": 1}, {"n": 2}]


def test_repeated_header_values_are_joined() -> None:
    """A header received twice is shown once with both values."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event(headers={"x-forwarded-for": ["1.1.1.1", "2.2.2.2"]}))
    assert one_line(stdout)["headers"] == {"x-forwarded-for": "1.1.1.1, 2.2.2.2"}


def test_blob_payload_is_logged_as_base64() -> None:
    """A blob webhook's bytes appear as ``body_base64``, not ``payload``."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    raw = b"\x00\xffbinary"
    deliver(module, make_event(raw, data_type="blob"))
    record = one_line(stdout)
    assert "payload" not in record
    assert base64.b64decode(record["body_base64"]) == raw


def test_pretty_print_writes_the_banner_headers_and_payload() -> None:
    """``pretty_print`` writes the banner, then headers and payload as indented JSON."""
    stdout = io.StringIO()
    module = log.build({"pretty_print": True}, make_context(stdout))
    deliver(module, make_event({"event": "push", "nested": {"a": 1}}))
    text = stdout.getvalue()
    assert text.splitlines()[0] == "=== WEBHOOK RECEIVED: default/github ==="
    assert '  "content-type": "application/json"' in text
    assert '  "nested": {\n    "a": 1\n  }' in text
    assert text.endswith("\n")


def test_pretty_print_caps_the_payload_text() -> None:
    """A payload longer than 10 000 characters is cut with a truncation marker."""
    stdout = io.StringIO()
    module = log.build({"pretty_print": True}, make_context(stdout))
    deliver(module, make_event({"big": "x" * 20_000}))
    text = stdout.getvalue()
    assert "x" * 9_000 in text
    assert "x" * 10_001 not in text
    assert "[truncated:" in text
    assert len(text) < 11_000


def test_pretty_print_shows_blobs_as_base64() -> None:
    """A pretty-printed blob shows its base64 body."""
    stdout = io.StringIO()
    module = log.build({"pretty_print": True}, make_context(stdout))
    deliver(module, make_event(b"abc", data_type="blob"))
    assert base64.b64encode(b"abc").decode() in stdout.getvalue()


@pytest.mark.parametrize(
    ("key", "redacted"),
    [
        ("password", True),
        ("Password", True),
        ("passwd", True),
        ("github_token", True),
        ("client_secret", True),
        ("api_key", True),
        ("apikey", True),
        ("x-api-key", True),
        ("access_key", True),
        ("private_key", True),
        ("authorization", True),
        ("auth", True),
        ("oauth_auth", True),
        ("cookie", True),
        ("session", True),
        ("session_id", True),
        ("user_session", True),
        ("credential", True),
        ("credentials", True),
        ("ssn", True),
        ("credit_card", True),
        ("card_number", True),
        ("cvv", True),
        ("accessToken", True),
        ("clientSecret", True),
        ("monkey", False),
        ("author", False),
        ("authors", False),
        ("token_count", False),
        ("tokenizer", False),
        ("secretary", False),
        ("passwords_changed_at", False),
        ("keyboard", False),
        ("event", False),
    ],
)
def test_payload_key_redaction_table(key: str, redacted: bool) -> None:
    """Only whole words or ``_`` suffixes of the sensitive list are masked."""
    assert log.is_sensitive_key(key) is redacted
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event({key: "value"}))
    shown = one_line(stdout)["payload"][key]
    assert shown == ("[REDACTED]" if redacted else "value")


def test_redaction_reaches_nested_dicts_and_lists() -> None:
    """Sensitive keys are masked at any depth, including inside lists."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    payload = {
        "user": {"name": "ada", "password": "p"},
        "items": [{"token": "t", "id": 1}, [{"secret": {"deep": "s"}}]],
        "credentials": {"user": "u", "pass": "p"},
    }
    deliver(module, make_event(payload))
    assert one_line(stdout)["payload"] == {
        "user": {"name": "ada", "password": "[REDACTED]"},
        "items": [{"token": "[REDACTED]", "id": 1}, [{"secret": "[REDACTED]"}]],
        "credentials": "[REDACTED]",
    }


def test_redaction_never_mutates_the_event() -> None:
    """The event's payload and headers are unchanged after logging."""
    payload = {"password": "p", "list": [{"token": "t"}]}
    headers = {"authorization": ["Bearer x"], "cookie": ["a=b"]}
    event = make_event(payload, headers=headers)
    before_payload, before_headers = copy.deepcopy(payload), copy.deepcopy(headers)
    module = log.build({}, make_context(io.StringIO()))
    deliver(module, event)
    assert event.payload == before_payload
    assert dict(event.headers) == before_headers


@pytest.mark.parametrize(
    ("header", "redacted"),
    [
        ("authorization", True),
        ("proxy-authorization", True),
        ("cookie", True),
        ("set-cookie", True),
        ("x-api-key", True),
        ("x-auth-token", True),
        ("x-hub-signature-256", True),
        ("stripe-signature", True),
        ("x-hmac-signature", True),
        ("x-shopify-hmac-sha256", True),
        ("content-type", False),
        ("x-github-event", False),
        ("user-agent", False),
    ],
)
def test_header_redaction_table(header: str, redacted: bool) -> None:
    """Credential and signature headers are masked; others are shown."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event(headers={header: ["value"]}))
    assert one_line(stdout)["headers"][header] == ("[REDACTED]" if redacted else "value")


def test_header_names_are_matched_in_any_case() -> None:
    """A header given in mixed case is still recognised."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event(headers={"X-Hub-Signature": ["sha1=abc"]}))
    assert one_line(stdout)["headers"] == {"x-hub-signature": "[REDACTED]"}


def test_authorization_is_redacted_even_when_redaction_is_off() -> None:
    """``redact_sensitive: false`` still masks Authorization, and only that."""
    stdout = io.StringIO()
    module = log.build({"redact_sensitive": False}, make_context(stdout))
    headers = {"authorization": ["Bearer secret"], "x-api-key": ["k"]}
    deliver(module, make_event({"password": "p"}, headers=headers))
    record = one_line(stdout)
    assert record["headers"] == {"authorization": "[REDACTED]", "x-api-key": "k"}
    assert record["payload"] == {"password": "p"}
    assert "Bearer secret" not in stdout.getvalue()


def test_pretty_print_redacts_too() -> None:
    """Pretty output applies the same masking."""
    stdout = io.StringIO()
    module = log.build({"pretty_print": True}, make_context(stdout))
    headers = {"authorization": ["Bearer hunter2"]}
    deliver(module, make_event({"client_secret": "hunter3"}, headers=headers))
    text = stdout.getvalue()
    assert "hunter2" not in text
    assert "hunter3" not in text
    assert text.count("[REDACTED]") == 2


class _FailingStream(io.StringIO):
    """A stream whose writes fail like a full disk or a closed pipe."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


class _CountingStream(io.StringIO):
    """A stream that counts flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_each_write_is_flushed() -> None:
    """The stream is flushed after every webhook."""
    stdout = _CountingStream()
    module = log.build({}, make_context(stdout))
    deliver(module, make_event())
    deliver(module, make_event())
    assert stdout.flushes == 2


def test_write_failure_is_module_unavailable() -> None:
    """An OSError while writing becomes ModuleUnavailable with the reason."""
    module = log.build({}, make_context(_FailingStream()))
    d = Deferred.fromCoroutine(module.deliver(make_event()))
    failure = _sync.failureResultOf(d, ModuleUnavailable)
    assert failure.value.reason == "could not write to stdout: No space left on device"


def test_closed_stream_is_module_unavailable() -> None:
    """A closed stream becomes ModuleUnavailable too."""
    stdout = io.StringIO()
    stdout.close()
    module = log.build({}, make_context(stdout))
    d = Deferred.fromCoroutine(module.deliver(make_event()))
    _sync.failureResultOf(d, ModuleUnavailable)


async def _close(module: log.LogModule) -> None:
    await module.close()


def test_close_does_nothing() -> None:
    """``close`` completes at once and leaves the stream open."""
    stdout = io.StringIO()
    module = log.build({}, make_context(stdout))
    _sync.successResultOf(Deferred.fromCoroutine(_close(module)))
    assert not stdout.closed


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pretty": True}, "module-config.pretty: unknown key"),
        ({"pretty_print": "yes"}, "module-config.pretty_print: must be true or false"),
        ({"pretty_print": 1}, "module-config.pretty_print: must be true or false"),
        ({"redact_sensitive": None}, "module-config.redact_sensitive: must be true or false"),
    ],
)
def test_build_rejects_malformed_config(config: dict[str, Any], message: str) -> None:
    """Every malformed key is a ConfigError naming it."""
    with pytest.raises(ConfigError) as raised:
        log.build(config, make_context(io.StringIO()))
    assert str(raised.value).startswith(message)
