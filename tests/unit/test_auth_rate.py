"""Unit tests for the rate_limit check (time comes from received_at only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from cwm.auth.base import CheckFailed
from cwm.auth.ip import IPNetwork, parse_trusted_proxies
from cwm.auth.rate import DEFAULT_MAX_CLIENTS, RateLimitCheck, build_rate_limit
from cwm.errors import ConfigError
from cwm.request import InboundRequest
from tests.unit.inbound import inbound

T0 = 1_700_000_000.0


def make_request(
    received_at: float,
    peer_ip: str = "192.0.2.10",
    headers: Mapping[str, str] | None = None,
    proxies: Sequence[IPNetwork] = (),
) -> InboundRequest:
    return inbound(headers, peer_ip=peer_ip, received_at=received_at, trusted_proxies=proxies)


def refused(check: RateLimitCheck, request: InboundRequest) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        check(request)
    return info.value


def test_rate_limit_under_limit_passes() -> None:
    """Up to max_requests in a window pass."""
    check = build_rate_limit({"max_requests": 3, "window_seconds": 10})
    for offset in (0.0, 1.0, 2.0):
        check(make_request(T0 + offset))


def test_rate_limit_over_limit_429_with_retry_after() -> None:
    """One more request in the window is refused with 429 and Retry-After."""
    check = build_rate_limit({"max_requests": 2, "window_seconds": 10})
    check(make_request(T0))
    check(make_request(T0 + 3))
    failure = refused(check, make_request(T0 + 4))
    assert failure.status == 429
    assert failure.reason == "Rate limit exceeded: 2 requests per 10 seconds"
    # The oldest request (T0) leaves the window at T0 + 10: six seconds from now.
    assert failure.headers == {"Retry-After": "6"}


def test_rate_limit_retry_after_rounds_up_and_is_at_least_one() -> None:
    """Retry-After is whole seconds, rounded up, never below 1."""
    check = build_rate_limit({"max_requests": 1, "window_seconds": 10})
    check(make_request(T0))
    assert refused(check, make_request(T0 + 0.5)).headers["Retry-After"] == "10"
    assert refused(check, make_request(T0 + 9.99)).headers["Retry-After"] == "1"


def test_rate_limit_window_slides() -> None:
    """Each request leaves the window exactly window_seconds after it arrived."""
    check = build_rate_limit({"max_requests": 2, "window_seconds": 10})
    check(make_request(T0))
    check(make_request(T0 + 5))
    refused(check, make_request(T0 + 9.9))
    check(make_request(T0 + 10))  # T0 has left the window
    refused(check, make_request(T0 + 14.9))  # T0 + 5 and T0 + 10 still inside
    check(make_request(T0 + 15))


def test_rate_limit_refused_requests_do_not_use_quota() -> None:
    """Refused requests are not logged, so a retry loop cannot extend the block."""
    check = build_rate_limit({"max_requests": 1, "window_seconds": 10})
    check(make_request(T0))
    for offset in range(1, 10):
        refused(check, make_request(T0 + offset))
    check(make_request(T0 + 10))


def test_rate_limit_defaults() -> None:
    """Defaults are 100 requests per 60 seconds, per webhook."""
    check = build_rate_limit({})
    assert (check.max_requests, check.window_seconds, check.per) == (100, 60.0, "webhook")
    for index in range(100):
        check(make_request(T0 + index * 0.1))
    assert refused(check, make_request(T0 + 30)).reason == (
        "Rate limit exceeded: 100 requests per 60 seconds"
    )


def test_rate_limit_fractional_window_in_message() -> None:
    """A fractional window is written without trailing zeros."""
    check = build_rate_limit({"max_requests": 1, "window_seconds": 0.5})
    check(make_request(T0))
    failure = refused(check, make_request(T0 + 0.1))
    assert failure.reason == "Rate limit exceeded: 1 requests per 0.5 seconds"
    assert failure.headers["Retry-After"] == "1"


def test_rate_limit_per_webhook_shared_by_all_clients() -> None:
    """per webhook: every client draws on the same quota."""
    check = build_rate_limit({"max_requests": 1, "window_seconds": 10})
    check(make_request(T0, peer_ip="198.51.100.1"))
    refused(check, make_request(T0 + 1, peer_ip="198.51.100.2"))


def test_rate_limit_per_client_ip_isolated() -> None:
    """per client_ip: one client's flood does not lock out another."""
    check = build_rate_limit({"max_requests": 2, "window_seconds": 10, "per": "client_ip"})
    check(make_request(T0, peer_ip="198.51.100.1"))
    check(make_request(T0, peer_ip="198.51.100.1"))
    refused(check, make_request(T0 + 1, peer_ip="198.51.100.1"))
    check(make_request(T0 + 1, peer_ip="198.51.100.2"))
    check(make_request(T0 + 1, peer_ip="::ffff:198.51.100.3"))


def test_rate_limit_per_client_ip_uses_trusted_proxy_headers() -> None:
    """per client_ip behind a trusted proxy keys on the forwarded client."""
    proxies = parse_trusted_proxies(["10.0.0.0/8"])
    check = build_rate_limit({"max_requests": 1, "per": "client_ip"})
    check(make_request(T0, "10.0.0.1", {"X-Forwarded-For": "198.51.100.1"}, proxies))
    check(make_request(T0, "10.0.0.1", {"X-Forwarded-For": "198.51.100.2"}, proxies))
    refused(check, make_request(T0, "10.0.0.2", {"X-Forwarded-For": "198.51.100.1"}, proxies))


def test_rate_limit_per_client_ip_untrusted_forwarded_ignored() -> None:
    """A client cannot dodge the limit by inventing X-Forwarded-For."""
    check = build_rate_limit({"max_requests": 1, "per": "client_ip"})
    check(make_request(T0, "203.0.113.9", {"X-Forwarded-For": "198.51.100.1"}))
    refused(check, make_request(T0, "203.0.113.9", {"X-Forwarded-For": "198.51.100.2"}))


def test_rate_limit_bounded_memory_many_ips() -> None:
    """Tracked clients are capped; the least recently seen are forgotten first."""
    check = build_rate_limit({"max_requests": 1, "per": "client_ip"}, max_clients=100)
    check(make_request(T0, peer_ip="198.51.100.1"))
    for index in range(5000):
        peer = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
        check(make_request(T0 + 1, peer_ip=peer))
        assert check.tracked_keys <= 100
    assert check.tracked_keys == 100
    # The first client was evicted, so it starts a fresh window.
    check(make_request(T0 + 2, peer_ip="198.51.100.1"))
    # A recently seen client is still tracked and still limited.
    refused(check, make_request(T0 + 2, peer_ip="10.0.19.135"))


def test_rate_limit_recently_seen_client_not_evicted() -> None:
    """A client seen again moves to the back of the eviction order."""
    check = build_rate_limit({"max_requests": 1, "per": "client_ip"}, max_clients=2)
    check(make_request(T0, peer_ip="198.51.100.1"))
    check(make_request(T0, peer_ip="198.51.100.2"))
    refused(check, make_request(T0 + 1, peer_ip="198.51.100.1"))  # touches .1
    check(make_request(T0 + 1, peer_ip="198.51.100.3"))  # evicts .2, not .1
    refused(check, make_request(T0 + 2, peer_ip="198.51.100.1"))
    check(make_request(T0 + 2, peer_ip="198.51.100.2"))


def test_rate_limit_default_client_cap() -> None:
    """The default cap on tracked clients is 10 000."""
    assert DEFAULT_MAX_CLIENTS == 10_000


def test_rate_limit_log_holds_at_most_max_requests() -> None:
    """A key's log never grows past max_requests entries."""
    check = build_rate_limit({"max_requests": 3, "window_seconds": 1000})
    for index in range(50):
        try:
            check(make_request(T0 + index))
        except CheckFailed:
            pass
    assert check.tracked_keys == 1
    assert len(check._logs[""]) == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (100, "must be an object"),
        ({"max_requests": 0}, "max_requests must be an integer from 1 to 100000"),
        ({"max_requests": -5}, "max_requests must be an integer from 1 to 100000"),
        ({"max_requests": 2.5}, "max_requests must be an integer from 1 to 100000"),
        ({"max_requests": "10"}, "max_requests must be an integer from 1 to 100000"),
        ({"max_requests": True}, "max_requests must be an integer from 1 to 100000"),
        ({"max_requests": 100001}, "max_requests must be an integer from 1 to 100000"),
        ({"window_seconds": 0}, "window_seconds must be > 0"),
        ({"window_seconds": -1}, "window_seconds must be > 0"),
        ({"window_seconds": "60"}, "window_seconds must be a number"),
        ({"window_seconds": float("inf")}, "window_seconds must be a finite number"),
        ({"per": "ip"}, "per must be one of 'webhook', 'client_ip'"),
        ({"per_ip": True}, "unknown option 'per_ip'"),
    ],
)
def test_rate_limit_config_errors(value: object, message: str) -> None:
    """Each malformed rate_limit config is a precise ConfigError."""
    with pytest.raises(ConfigError, match=r"^rate_limit: ") as info:
        build_rate_limit(value)
    assert message in str(info.value)
