"""Unit tests for build_checks: which checks an entry gets, and in what order."""

from __future__ import annotations

from dataclasses import replace

import ipaddress
from typing import Any

import pytest

from cwm.auth import CHECK_KEYS, UNSUPPORTED_CHECK_KEYS, WebhookChecks, build_checks
from cwm.auth.base import CheckFailed
from cwm.auth.ip import IpWhitelistCheck
from cwm.auth.jwt_check import JwtCheck
from cwm.auth.rate import RateLimitCheck
from cwm.auth.schema import JsonSchemaCheck
from cwm.auth.signatures import HmacCheck
from cwm.auth.tokens import AuthorizationCheck, BasicAuthCheck, HeaderAuthCheck, QueryAuthCheck
from cwm.errors import ConfigError
from cwm.request import InboundRequest
from tests.unit.inbound import inbound

SECRET = "entry-secret-value-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789"

FULL_ENTRY: dict[str, Any] = {
    "module": "log",
    "rate_limit": {"max_requests": 5},
    "hmac": {"secret": SECRET},
    "jwt": {"secret": SECRET},
    "query_auth": {"api_key": SECRET},
    "header_auth": {"api_key": SECRET},
    "basic_auth": {"username": "u", "password": SECRET},
    "authorization": f"Bearer {SECRET}",
    "ip_whitelist": ["192.0.2.0/24"],
    "json_schema": {"type": "object"},
    "trusted_proxies": ["10.0.0.1"],
}


def make_request(
    peer_ip: str = "192.0.2.10", headers: dict[str, str] | None = None
) -> InboundRequest:
    return inbound(headers, peer_ip=peer_ip)


def test_build_checks_fixed_order() -> None:
    """Checks come out in the fixed order whatever the entry's key order."""
    checks = build_checks(FULL_ENTRY)
    assert [type(check) for check in checks.checks] == [
        IpWhitelistCheck,
        AuthorizationCheck,
        BasicAuthCheck,
        HeaderAuthCheck,
        QueryAuthCheck,
        JwtCheck,
        HmacCheck,
        RateLimitCheck,
    ]
    assert isinstance(checks.payload_check, JsonSchemaCheck)


def test_build_checks_rate_limit_last() -> None:
    """The rate limit runs after authentication, so unauthenticated requests use no quota."""
    checks = build_checks(
        {"rate_limit": {"max_requests": 1}, "header_auth": {"api_key": SECRET}}
    )
    assert isinstance(checks.checks[-1], RateLimitCheck)

    def run(request: InboundRequest) -> None:
        for check in checks.checks:
            check(request)

    for _ in range(10):
        with pytest.raises(CheckFailed, match="Invalid API key"):
            run(make_request(headers={"X-API-Key": "guess"}))
    run(make_request(headers={"X-API-Key": SECRET}))


def test_build_checks_empty_entry() -> None:
    """An entry without check keys gets no checks."""
    checks = build_checks({"module": "log"})
    assert checks == WebhookChecks()
    assert checks.checks == ()
    assert checks.payload_check is None
    assert checks.trusted_proxies == ()


def test_build_checks_none_means_no_check() -> None:
    """A check key set to None asks for no check, unsupported keys included."""
    entry = {key: None for key in CHECK_KEYS + UNSUPPORTED_CHECK_KEYS}
    checks = build_checks(entry)
    assert checks.checks == () and checks.payload_check is None


@pytest.mark.parametrize("key", UNSUPPORTED_CHECK_KEYS)
def test_build_checks_unsupported_key(key: str) -> None:
    """An unsupported auth key fails closed with a ConfigError."""
    with pytest.raises(ConfigError) as info:
        build_checks({"module": "log", key: {"anything": "x"}})
    assert str(info.value) == f"{key} is not supported by cwm; remove it or use another check"


def test_build_checks_unsupported_key_lists() -> None:
    """The supported and unsupported key lists are what the docs say."""
    assert UNSUPPORTED_CHECK_KEYS == ("digest_auth", "oauth1", "oauth2", "recaptcha")
    assert CHECK_KEYS == (
        "ip_whitelist",
        "authorization",
        "basic_auth",
        "header_auth",
        "query_auth",
        "jwt",
        "hmac",
        "rate_limit",
        "json_schema",
        "trusted_proxies",
    )


def test_build_checks_trusted_proxies_and_client_ip() -> None:
    """trusted_proxies is parsed once and drives client_ip and ip_whitelist."""
    checks = build_checks({"trusted_proxies": ["10.0.0.0/8"], "ip_whitelist": ["198.51.100.7"]})
    assert checks.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    request = make_request("10.1.1.1", {"X-Forwarded-For": "198.51.100.7"})
    assert checks.client_ip(request) == "198.51.100.7"
    checks.checks[0](replace(request, client_ip=checks.client_ip(request)))  # as the pipeline does
    assert checks.client_ip(make_request("203.0.113.1", {"X-Forwarded-For": "1.1.1.1"})) == (
        "203.0.113.1"
    )


@pytest.mark.parametrize(
    ("entry", "prefix"),
    [
        ({"authorization": ""}, "authorization: "),
        ({"basic_auth": {"username": "u"}}, "basic_auth: "),
        ({"header_auth": {}}, "header_auth: "),
        ({"query_auth": {"api_key": 1}}, "query_auth: "),
        ({"jwt": {"secret": SECRET, "algorithm": "none"}}, "jwt: "),
        ({"hmac": {"secret": SECRET, "provider": "nope"}}, "hmac: "),
        ({"ip_whitelist": []}, "ip_whitelist: "),
        ({"rate_limit": {"max_requests": 0}}, "rate_limit: "),
        ({"json_schema": {"type": 5}}, "json_schema: "),
        ({"trusted_proxies": "10.0.0.1"}, "trusted_proxies: "),
    ],
)
def test_build_checks_config_errors_name_the_key(entry: dict[str, Any], prefix: str) -> None:
    """A malformed check is a ConfigError that starts with its key and hides secrets."""
    with pytest.raises(ConfigError) as info:
        build_checks(entry)
    assert str(info.value).startswith(prefix)
    assert SECRET not in str(info.value)


def test_build_checks_secret_never_in_reasons() -> None:
    """Running every check against a bad request never reveals a secret."""
    entry = {key: value for key, value in FULL_ENTRY.items() if key != "ip_whitelist"}
    checks = build_checks(entry)
    bad = make_request(headers={"Authorization": f"Bearer {SECRET}x", "X-API-Key": "nope"})
    for check in checks.checks[:-1]:
        with pytest.raises(CheckFailed) as info:
            check(bad)
        assert SECRET not in str(info.value)
        assert SECRET not in repr(check)
