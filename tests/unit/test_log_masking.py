"""The ``log`` module never writes what the entry's own checks read a secret from.

Whole path: the entry's checks, built by the ConfigStore, tell the real ``log``
module which headers and query parameters to mask; requests go through the
receiver on StubTreq (no reactor, no sockets).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Mapping
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.auth import build_checks
from cwm.config.store import ConfigStore
from cwm.connect.admin import ConnectAdmin
from cwm.connect.api import ConnectStreams
from cwm.modules import log
from cwm.modules.base import ModuleContext
from cwm.pipeline import WebhookPipeline
from cwm.web.receiver import WebhookReceiver

_sync = SynchronousTestCase()

GITLAB_TOKEN = "glpat-gitlab-token-0123456789"
QUERY_KEY = "query-key-0123456789abcdef"
HMAC_SECRET = "hmac-secret-0123456789"
BODY = b'{"object_kind": "push"}'
SIGNATURE = hmac.new(HMAC_SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def entries(module_config: Mapping[str, Any]) -> dict[str, Any]:
    """Entries whose checks read secrets from headers no fixed list knows."""
    return {
        "gitlab": {
            "module": "log",
            "module-config": dict(module_config),
            "header_auth": {"header_name": "X-Gitlab-Token", "api_key": GITLAB_TOKEN},
        },
        "query": {
            "module": "log",
            "module-config": dict(module_config),
            "query_auth": {"parameter_name": "key", "api_key": QUERY_KEY},
        },
        "signed": {
            "module": "log",
            "module-config": dict(module_config),
            "hmac": {"secret": HMAC_SECRET, "header": "X-Body-Mac"},
        },
    }


class Receiver:
    """A receiver with the real module registry, writing into a StringIO."""

    def __init__(self, module_config: Mapping[str, Any]) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        self.stdout = io.StringIO()
        context = ModuleContext(
            clock=clock,
            stdout=self.stdout,
            http=None,
            http_unguarded=None,
            working_dir=FilePath("."),
        )
        store = ConfigStore(context, {})
        store.replace_all({"default": entries(module_config)}, {})
        store.loaded = True
        assert not store.rejections
        pipeline = WebhookPipeline(store, clock, 10)
        receiver = WebhookReceiver(
            pipeline,
            clock,
            lambda: (True, {"components": {}}),
            ConnectStreams(None, clock).resource(),
            ConnectAdmin(None, None, clock).resource(),
        )
        self.treq = StubTreq(receiver.resource())

    def post(self, path: str, headers: Mapping[str, str]) -> int:
        d = self.treq.post(
            "http://cwm.test" + path,
            data=BODY,
            headers={"Content-Type": "application/json", **headers},
        )
        self.treq.flush()
        code: int = _sync.successResultOf(d).code
        return code


@pytest.mark.parametrize(
    "module_config",
    [{}, {"pretty_print": True}, {"redact_sensitive": False}, {"pretty_print": True, "redact_sensitive": False}],
    ids=["json", "pretty", "json-unredacted", "pretty-unredacted"],
)
def test_no_secret_an_entry_checks_reaches_the_log(module_config: Mapping[str, Any]) -> None:
    """header_auth's header, hmac's custom header and query_auth's parameter are masked in every format."""
    receiver = Receiver(module_config)
    assert receiver.post("/webhook/gitlab", {"X-Gitlab-Token": GITLAB_TOKEN}) == 200
    assert receiver.post(
        f"/webhook/query?key={QUERY_KEY}",
        {"Referer": f"https://sender.example/hooks?key={QUERY_KEY}&page=2"},
    ) == 200
    assert receiver.post("/webhook/signed", {"X-Body-Mac": f"sha256={SIGNATURE}"}) == 200
    written = receiver.stdout.getvalue()
    for secret in (GITLAB_TOKEN, QUERY_KEY, SIGNATURE):
        assert secret not in written
    assert written.count(log.REDACTED) >= 3
    # Only the secret is masked: the rest of a quoted URL stays readable.
    assert "https://sender.example/hooks?key=[REDACTED]&page=2" in written


def test_each_check_declares_what_it_reads_a_secret_from() -> None:
    """Credentials and signatures are declared; forwarding and timestamp headers are not."""
    checks = build_checks(
        {
            "ip_whitelist": ["10.0.0.0/8"],
            "trusted_proxies": ["10.0.0.1"],
            "authorization": "Bearer t",
            "header_auth": {"header_name": "X-Gitlab-Token", "api_key": "k"},
            "query_auth": {"parameter_name": "sig_key", "api_key": "k"},
            "hmac": {"secret": "s", "provider": "slack"},
            "rate_limit": {"max_requests": 5, "window_seconds": 60},
        }
    )
    assert checks.secret_headers == {"authorization", "x-gitlab-token", "x-slack-signature"}
    assert checks.secret_params == {"sig_key"}
    standard = build_checks({"hmac": {"secret": "whsec_c2VjcmV0", "provider": "standard-webhooks"}})
    assert standard.secret_headers == {"webhook-signature", "svix-signature"}
    shopify = build_checks({"hmac": {"secret": "s", "provider": "shopify"}})
    assert shopify.secret_headers == {"x-shopify-hmac-sha256", "shopify-hmac-sha256"}
    jwt_and_basic = build_checks({"basic_auth": {"username": "u", "password": "p"}})
    assert jwt_and_basic.secret_headers == {"authorization"}


def test_secret_params_are_masked_only_as_whole_parameter_names() -> None:
    """``key`` is masked after ``?`` or ``&``; ``monkey=`` and a bare ``key=`` elsewhere are not."""
    pattern = log.query_value_pattern({"key"})
    shown = log.redact_headers(
        {"x-original-uri": ["/webhook/q?monkey=1&key=abc#frag"], "x-note": ["key=visible"]},
        redact_sensitive=True,
        secret_params=pattern,
    )
    assert shown == {"x-original-uri": "/webhook/q?monkey=1&key=[REDACTED]#frag", "x-note": "key=visible"}
    assert log.query_value_pattern(()) is None


def test_written_lines_stay_json() -> None:
    """Masking keeps each default-format line valid JSON."""
    receiver = Receiver({})
    assert receiver.post("/webhook/gitlab", {"X-Gitlab-Token": GITLAB_TOKEN}) == 200
    (line,) = receiver.stdout.getvalue().splitlines()
    assert json.loads(line)["headers"]["x-gitlab-token"] == log.REDACTED
