"""The checks a webhook entry asks for, built once from its config.

``build_checks(entry)`` reads the auth, rate and schema keys of one webhook
entry and returns them as callables in the order they must run. Every other
key of the entry is left to the rest of the config model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cwm.auth.base import Check, CheckFailed, PayloadCheck
from cwm.auth.ip import IPNetwork, build_ip_whitelist, parse_trusted_proxies, resolve_client_ip
from cwm.auth.jwt_check import build_jwt
from cwm.auth.rate import build_rate_limit
from cwm.auth.schema import build_json_schema
from cwm.auth.signatures import HmacCheck, build_hmac, slack_url_verification
from cwm.auth.tokens import (
    build_authorization,
    build_basic_auth,
    build_header_auth,
    build_query_auth,
)
from cwm.errors import ConfigError
from cwm.request import InboundRequest

__all__ = [
    "CHECK_KEYS",
    "UNSUPPORTED_CHECK_KEYS",
    "Check",
    "CheckFailed",
    "PayloadCheck",
    "WebhookChecks",
    "build_checks",
]

# The request checks, in the order they run. Cheap, secret-free refusals come
# first (the source address), then proof of who the sender is. The rate limit
# is last on purpose: only requests that proved who they are use up the quota,
# so an unauthenticated flood is refused by the checks before it and cannot
# lock the real senders out.
_REQUEST_CHECK_KEYS = (
    "ip_whitelist",
    "authorization",
    "basic_auth",
    "header_auth",
    "query_auth",
    "jwt",
    "hmac",
    "rate_limit",
)

#: Every webhook config key this package reads: the request checks in their
#: order, the payload check, and ``trusted_proxies`` (who may forward client IPs).
CHECK_KEYS = (*_REQUEST_CHECK_KEYS, "json_schema", "trusted_proxies")

#: Upstream auth keys that cwm does not implement. An entry that sets one is
#: refused rather than served without that check.
UNSUPPORTED_CHECK_KEYS = ("digest_auth", "oauth1", "oauth2", "recaptcha")


@dataclass(frozen=True)
class WebhookChecks:
    """The checks of one webhook entry, ready to run on each request.

    Attributes:
        checks: The request checks, in the order they must run.
        payload_check: The ``json_schema`` check, run once the body is parsed.
        trusted_proxies: The networks whose forwarding headers are believed.
        secret_headers: Lower-case names of every header a check reads a
            credential or signature from (masked wherever headers are shown).
        secret_params: Every query parameter a check reads a credential from.
        credential_headers: The ``secret_headers`` that carry a credential (a
            token or a password) rather than a signature over the body: never
            relayed onwards (a signature is, so that local targets can verify it).
        slack: The entry verifies Slack signatures (``hmac`` provider ``slack``),
            so a signed ``url_verification`` handshake is answered, not delivered.
    """

    checks: tuple[Check, ...] = ()
    payload_check: PayloadCheck | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    secret_headers: frozenset[str] = frozenset()
    secret_params: frozenset[str] = frozenset()
    credential_headers: frozenset[str] = frozenset()
    slack: bool = False

    def client_ip(self, request: InboundRequest) -> str:
        """The client address of ``request``, as the IP checks see it."""
        return resolve_client_ip(request, self.trusted_proxies)

    def slack_challenge(self, request: InboundRequest) -> str | None:
        """The challenge to echo when ``request`` (already checked) is Slack's URL handshake."""
        return slack_url_verification(request.body) if self.slack else None


@dataclass(frozen=True)
class _SlackHandshakeExempt:
    """A ``json_schema`` check that lets Slack's handshake through: it is not an event."""

    check: PayloadCheck

    def __call__(self, request: InboundRequest, payload: Any) -> None:
        if slack_url_verification(request.body) is None:
            self.check(request, payload)


def build_checks(entry: Mapping[str, Any]) -> WebhookChecks:
    """Build the checks of one webhook entry; a key set to None asks for no check.

    Raises:
        ConfigError: A check's config is malformed, or the entry sets a key
            in UNSUPPORTED_CHECK_KEYS (serving it without that check would
            leave the webhook open).
    """
    for key in UNSUPPORTED_CHECK_KEYS:
        if entry.get(key) is not None:
            raise ConfigError(f"{key} is not supported by cwm; remove it or use another check")

    trusted_proxies = parse_trusted_proxies(entry.get("trusted_proxies"))
    builders: Mapping[str, Callable[[object], Check]] = {
        "ip_whitelist": build_ip_whitelist,
        "authorization": build_authorization,
        "basic_auth": build_basic_auth,
        "header_auth": build_header_auth,
        "query_auth": build_query_auth,
        "jwt": build_jwt,
        "hmac": build_hmac,
        "rate_limit": build_rate_limit,
    }
    checks = tuple(
        builders[key](entry[key]) for key in _REQUEST_CHECK_KEYS if entry.get(key) is not None
    )
    slack = any(isinstance(check, HmacCheck) and check.provider == "slack" for check in checks)
    schema = entry.get("json_schema")
    payload_check: PayloadCheck | None = None
    if schema is not None:
        payload_check = build_json_schema(schema)
        if slack:
            payload_check = _SlackHandshakeExempt(payload_check)
    return WebhookChecks(
        checks,
        payload_check,
        trusted_proxies,
        secret_headers=frozenset().union(*(check.secret_headers for check in checks)),
        secret_params=frozenset().union(*(check.secret_params for check in checks)),
        credential_headers=frozenset().union(
            *(check.secret_headers for check in checks if not isinstance(check, HmacCheck))
        ),
        slack=slack,
    )
