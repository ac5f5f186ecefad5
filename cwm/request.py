"""The read-only view of one inbound webhook request that checks work on.

Checks are pure functions over this object, so they are tested without a
reactor, a socket or a Twisted request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""What a header field name may be made of (an RFC 9110 token); use ``fullmatch``."""


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """One received request, as the checks and modules see it.

    Attributes:
        method: The HTTP method, upper case (``"POST"``).
        path: The decoded request path, without the query string.
        query: Query parameters, decoded, each name mapping to all its values.
        headers: Header names in lower case mapping to all their values in
            the order received (values decoded as ISO-8859-1, byte for byte).
        body: The exact received body bytes.
        peer_ip: The address of the TCP peer (not trusted forwarding headers).
        received_at: When the request arrived, in seconds from the injected clock.
        client_ip: The client's address as the webhook's ``trusted_proxies``
            establish it; set once by the pipeline when the webhook is known
            (empty before), and read by ``ip_whitelist`` and ``rate_limit``.
    """

    method: str
    path: str
    body: bytes
    peer_ip: str
    received_at: float
    headers: Mapping[str, list[str]] = field(default_factory=dict)
    query: Mapping[str, list[str]] = field(default_factory=dict)
    client_ip: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None if absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), possibly empty."""
        return list(self.headers.get(name.lower(), ()))

    def query_value(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None if absent."""
        values = self.query.get(name)
        return values[0] if values else None
