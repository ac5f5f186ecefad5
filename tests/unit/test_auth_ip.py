"""Unit tests for client address resolution and the ip_whitelist check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from cwm.auth.base import CheckFailed
from cwm.auth.ip import (
    IPNetwork,
    build_ip_whitelist,
    parse_address,
    parse_trusted_proxies,
    resolve_client_ip,
)
from cwm.errors import ConfigError
from cwm.request import InboundRequest
from tests.unit.inbound import inbound


def make_request(
    peer_ip: str = "203.0.113.5",
    headers: Mapping[str, str | Sequence[str]] | None = None,
    proxies: Sequence[IPNetwork] = (),
) -> InboundRequest:
    return inbound(headers, peer_ip=peer_ip, trusted_proxies=proxies)


PROXIES = parse_trusted_proxies(["10.0.0.0/8", "2001:db8:ffff::/48"])


# --- resolve_client_ip ----------------------------------------------------------------------


def test_resolve_client_ip_untrusted_peer_ignores_headers() -> None:
    """Forwarding headers from a peer that is not a trusted proxy are ignored."""
    request = make_request("203.0.113.5", {"X-Forwarded-For": "1.1.1.1", "X-Real-IP": "2.2.2.2"})
    assert resolve_client_ip(request, PROXIES) == "203.0.113.5"


def test_resolve_client_ip_no_proxies_configured() -> None:
    """Without trusted proxies the peer is always the client."""
    request = make_request("10.0.0.1", {"X-Forwarded-For": "1.1.1.1"})
    assert resolve_client_ip(request, ()) == "10.0.0.1"


def test_resolve_client_ip_trusted_peer_uses_forwarded_for() -> None:
    """A trusted proxy peer's X-Forwarded-For names the client."""
    request = make_request("10.0.0.1", {"X-Forwarded-For": "198.51.100.7"})
    assert resolve_client_ip(request, PROXIES) == "198.51.100.7"


def test_resolve_client_ip_rightmost_untrusted_wins() -> None:
    """Walking from the right, trusted hops are skipped and spoofed left entries ignored."""
    request = make_request(
        "10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.2.3, 10.0.0.9"}
    )
    assert resolve_client_ip(request, PROXIES) == "198.51.100.7"


def test_resolve_client_ip_multiple_header_lines_joined() -> None:
    """Several X-Forwarded-For lines are read as one list, in order."""
    request = make_request("10.0.0.1", {"X-Forwarded-For": ["6.6.6.6", "198.51.100.7, 10.0.0.2"]})
    assert resolve_client_ip(request, PROXIES) == "198.51.100.7"


def test_resolve_client_ip_all_hops_trusted_uses_leftmost() -> None:
    """When every hop is a trusted proxy, the leftmost one is the client."""
    request = make_request("10.0.0.1", {"X-Forwarded-For": "10.9.9.9, 10.0.0.2"})
    assert resolve_client_ip(request, PROXIES) == "10.9.9.9"


def test_resolve_client_ip_falls_back_to_real_ip() -> None:
    """Without X-Forwarded-For, a trusted peer's X-Real-IP is used."""
    request = make_request("10.0.0.1", {"X-Real-IP": "198.51.100.8"})
    assert resolve_client_ip(request, PROXIES) == "198.51.100.8"


@pytest.mark.parametrize(
    "forwarded", ["not-an-ip", "198.51.100.7, garbage", "unknown", "", "1.2.3.4.5"]
)
def test_resolve_client_ip_malformed_forwarded_falls_back(forwarded: str) -> None:
    """A malformed X-Forwarded-For falls back to X-Real-IP."""
    request = make_request("10.0.0.1", {"X-Forwarded-For": forwarded, "X-Real-IP": "198.51.100.8"})
    assert resolve_client_ip(request, PROXIES) == "198.51.100.8"


def test_resolve_client_ip_malformed_everything_falls_back_to_peer() -> None:
    """Malformed X-Forwarded-For and X-Real-IP fall back to the peer."""
    request = make_request("10.0.0.1", {"X-Forwarded-For": "bogus", "X-Real-IP": "also bogus"})
    assert resolve_client_ip(request, PROXIES) == "10.0.0.1"


def test_resolve_client_ip_oversized_forwarded_ignored() -> None:
    """An oversized X-Forwarded-For is not parsed."""
    huge = ", ".join(["198.51.100.7"] * 1000)
    request = make_request("10.0.0.1", {"X-Forwarded-For": huge})
    assert resolve_client_ip(request, PROXIES) == "10.0.0.1"


def test_resolve_client_ip_ipv4_mapped_peer_normalised() -> None:
    """An IPv4-mapped IPv6 peer is reported and matched as IPv4."""
    assert resolve_client_ip(make_request("::ffff:203.0.113.5"), ()) == "203.0.113.5"
    request = make_request("::ffff:10.0.0.1", {"X-Forwarded-For": "::ffff:198.51.100.7"})
    assert resolve_client_ip(request, PROXIES) == "198.51.100.7"


def test_resolve_client_ip_ipv6_proxy_and_ports() -> None:
    """IPv6 proxies work, and entries with ports are understood."""
    request = make_request(
        "2001:db8:ffff::1", {"X-Forwarded-For": "[2001:db8:1::5]:4711, 10.0.0.3:80"}
    )
    assert resolve_client_ip(request, PROXIES) == "2001:db8:1::5"


def test_resolve_client_ip_unparseable_peer_returned_as_is() -> None:
    """A peer that is not an IP address is returned unchanged."""
    assert resolve_client_ip(make_request("unix:/tmp/socket"), PROXIES) == "unix:/tmp/socket"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("999.1.1.1", None),
        ("", None),
    ],
)
def test_resolve_client_ip_parse_address(text: str, expected: str | None) -> None:
    """parse_address normalises addresses and rejects garbage."""
    address = parse_address(text)
    assert (None if address is None else str(address)) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1", "must be a list"),
        ({"ip": "10.0.0.1"}, "must be a list"),
        (["10.0.0.300"], "is not an IP address or CIDR range"),
        (["10.0.0.1/8"], "has host bits set (did you mean '10.0.0.0/8'?)"),
        ([5], "entries must be IP addresses or CIDR ranges"),
        ([""], "entries must be IP addresses or CIDR ranges"),
    ],
)
def test_resolve_client_ip_trusted_proxies_config_errors(value: object, message: str) -> None:
    """A malformed trusted_proxies list is a precise ConfigError."""
    with pytest.raises(ConfigError, match=r"^trusted_proxies: ") as info:
        parse_trusted_proxies(value)
    assert message in str(info.value)


def test_resolve_client_ip_trusted_proxies_none_or_empty() -> None:
    """None and an empty list both mean no trusted proxies."""
    assert parse_trusted_proxies(None) == ()
    assert parse_trusted_proxies([]) == ()


# --- ip_whitelist ---------------------------------------------------------------------------


def test_ip_whitelist_exact_ipv4_good() -> None:
    """A listed IPv4 address passes."""
    build_ip_whitelist(["203.0.113.5"])(make_request("203.0.113.5"))


def test_ip_whitelist_cidr_good() -> None:
    """An address inside a listed CIDR range passes."""
    check = build_ip_whitelist(["198.51.100.0/24", "2001:db8::/32"])
    check(make_request("198.51.100.200"))
    check(make_request("2001:db8:abcd::1"))


def test_ip_whitelist_ipv6_exact_good() -> None:
    """IPv6 addresses compare by value, not by spelling."""
    build_ip_whitelist(["2001:DB8:0:0::1"])(make_request("2001:db8::1"))


def test_ip_whitelist_mapped_peer_matches_ipv4_entry() -> None:
    """An IPv4-mapped peer matches an IPv4 entry."""
    build_ip_whitelist(["203.0.113.0/24"])(make_request("::ffff:203.0.113.5"))


def test_ip_whitelist_mapped_entry_matches_ipv4_peer() -> None:
    """An IPv4-mapped entry matches a plain IPv4 peer."""
    build_ip_whitelist(["::ffff:203.0.113.5"])(make_request("203.0.113.5"))


def test_ip_whitelist_bad_ip() -> None:
    """An address outside the list fails with the client address in the reason."""
    check = build_ip_whitelist(["198.51.100.0/24"])
    with pytest.raises(CheckFailed) as info:
        check(make_request("203.0.113.5"))
    assert info.value.reason == "IP 203.0.113.5 not in whitelist"
    assert info.value.status == 401


def test_ip_whitelist_ipv6_client_against_ipv4_list() -> None:
    """An IPv6 client never matches an IPv4-only list (no exception)."""
    check = build_ip_whitelist(["0.0.0.0/0"])
    with pytest.raises(CheckFailed, match="not in whitelist"):
        check(make_request("2001:db8::1"))


def test_ip_whitelist_uses_forwarded_client_behind_trusted_proxy() -> None:
    """Behind a trusted proxy, the forwarded client address is checked."""
    check = build_ip_whitelist(["198.51.100.7"])
    check(make_request("10.0.0.1", {"X-Forwarded-For": "198.51.100.7"}, PROXIES))
    with pytest.raises(CheckFailed, match=r"^IP 6\.6\.6\.6 not in whitelist$"):
        check(make_request("10.0.0.1", {"X-Forwarded-For": "198.51.100.7, 6.6.6.6"}, PROXIES))


def test_ip_whitelist_spoofed_forwarded_from_untrusted_peer() -> None:
    """A client cannot claim a whitelisted address with X-Forwarded-For."""
    check = build_ip_whitelist(["198.51.100.7"])
    with pytest.raises(CheckFailed, match=r"^IP 203\.0\.113\.5 not in whitelist$"):
        check(make_request("203.0.113.5", {"X-Forwarded-For": "198.51.100.7"}, PROXIES))


def test_ip_whitelist_missing_peer_address() -> None:
    """A peer that is not an IP address fails closed."""
    check = build_ip_whitelist(["0.0.0.0/0", "::/0"])
    with pytest.raises(CheckFailed, match="not in whitelist"):
        check(make_request(""))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must list at least one address"),
        ("10.0.0.1", "must be a list"),
        ({"10.0.0.1": True}, "must be a list"),
        (["10.0.0.1", "example.com"], "'example.com' is not an IP address or CIDR range"),
        (["10.0.0.0/33"], "is not an IP address or CIDR range"),
        (["192.168.1.1/24"], "did you mean '192.168.1.0/24'?"),
        (["2001:db8::1/32"], "did you mean '2001:db8::/32'?"),
        ([None], "entries must be IP addresses or CIDR ranges"),
        (["  "], "entries must be IP addresses or CIDR ranges"),
    ],
)
def test_ip_whitelist_config_errors(value: object, message: str) -> None:
    """Each malformed ip_whitelist is a precise ConfigError; no entry is silently skipped."""
    with pytest.raises(ConfigError, match=r"^ip_whitelist: ") as info:
        build_ip_whitelist(value)
    assert message in str(info.value)
