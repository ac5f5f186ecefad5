"""Who is the client: ``trusted_proxies``, ``resolve_client_ip`` and ``ip_whitelist``.

The client is the TCP peer. Forwarding headers are believed only when the
peer is one of the webhook's ``trusted_proxies``; then ``X-Forwarded-For`` is
read from the right, skipping the trusted proxies themselves, because every
entry left of the first untrusted one could have been written by the client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Union

from cwm.auth._config import quote
from cwm.auth.base import CheckFailed
from cwm.errors import ConfigError
from cwm.request import InboundRequest

__all__ = [
    "IPAddress",
    "IPNetwork",
    "IpWhitelistCheck",
    "build_ip_whitelist",
    "parse_address",
    "parse_trusted_proxies",
    "resolve_client_ip",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# "203.0.113.7:4711" and "[2001:db8::1]:4711", as some proxies write them.
_IPV4_WITH_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}")
_IPV6_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?")
# Longer forwarding headers are not parsed at all.
_MAX_FORWARDED = 8192


def _normalise(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) as plain IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress | None:
    """One address as a peer or proxy reports it, normalised; None if it is not one.

    Accepts an optional port (``1.2.3.4:80``, ``[::1]:80``); drops an IPv6 zone.
    """
    text = text.strip()
    match = _IPV4_WITH_PORT.fullmatch(text) or _IPV6_BRACKETED.fullmatch(text)
    if match is not None:
        text = match.group(1)
    text = text.split("%", 1)[0]
    try:
        return _normalise(ipaddress.ip_address(text))
    except ValueError:
        return None


def _parse_network(key: str, entry: object) -> IPNetwork:
    """One list entry (an address or a CIDR range) as a network."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{key}: entries must be IP addresses or CIDR ranges, not {quote(entry)}")
    text = entry.strip()
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(
                f"{key}: {quote(entry)} is not an IP address or CIDR range"
            ) from None
        raise ConfigError(
            f"{key}: {quote(entry)} has host bits set (did you mean '{loose}'?)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            # ::ffff:10.0.0.0/104 is 10.0.0.0/8: compare with normalised clients.
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _parse_networks(key: str, value: object) -> tuple[IPNetwork, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: must be a list of IP addresses or CIDR ranges")
    return tuple(_parse_network(key, entry) for entry in value)


def parse_trusted_proxies(value: object) -> tuple[IPNetwork, ...]:
    """Parse the top-level ``trusted_proxies`` key (None or absent: no proxies)."""
    if value is None:
        return ()
    return _parse_networks("trusted_proxies", value)


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    # Membership across versions is simply False, never an exception.
    return any(address in network for network in networks)


def _forwarded_client(
    request: InboundRequest, trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The rightmost untrusted X-Forwarded-For address, or None if unusable."""
    entries: list[str] = []
    for value in request.header_values("X-Forwarded-For"):
        if len(value) > _MAX_FORWARDED:
            return None
        entries.extend(value.split(","))
    if not entries:
        return None
    address: IPAddress | None = None
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            # Whoever wrote this entry cannot be trusted with the ones before it.
            return None
        if not _within(address, trusted_proxies):
            return address
    # Every hop is a trusted proxy: the leftmost is the furthest we can see.
    return address


def resolve_client_ip(request: InboundRequest, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, or what a trusted proxy peer says it forwarded."""
    if not trusted_proxies and ":" not in request.peer_ip:
        # Twisted reports an IPv4 peer in canonical dotted form; only IPv6
        # (possibly IPv4-mapped) peers need normalising.
        return request.peer_ip
    peer = parse_address(request.peer_ip)
    if peer is None:
        return request.peer_ip
    if not _within(peer, trusted_proxies):
        return str(peer)
    forwarded = _forwarded_client(request, trusted_proxies)
    if forwarded is not None:
        return str(forwarded)
    real_ip = request.header("X-Real-IP")
    if real_ip is not None and len(real_ip) <= _MAX_FORWARDED:
        address = parse_address(real_ip)
        if address is not None:
            return str(address)
    return str(peer)


class IpWhitelistCheck:
    """The client address (``InboundRequest.client_ip``) must be in one of the allowed networks."""

    __slots__ = ("networks",)

    # Forwarding headers say who the client is; they hold no secret.
    secret_headers: frozenset[str] = frozenset()
    secret_params: frozenset[str] = frozenset()

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self.networks = tuple(networks)

    def __call__(self, request: InboundRequest) -> None:
        client = request.client_ip
        address = parse_address(client)
        if address is None or not _within(address, self.networks):
            raise CheckFailed(f"IP {client[:64]} not in whitelist")


def build_ip_whitelist(value: object) -> IpWhitelistCheck:
    """Build the ``ip_whitelist`` check from a non-empty list of addresses and CIDR ranges."""
    networks = _parse_networks("ip_whitelist", value)
    if not networks:
        raise ConfigError("ip_whitelist: must list at least one address or CIDR range")
    return IpWhitelistCheck(networks)
