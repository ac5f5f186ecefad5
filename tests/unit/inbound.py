"""Building InboundRequest values for check tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from cwm.auth.ip import IPNetwork, resolve_client_ip
from cwm.request import InboundRequest

Values = Mapping[str, str | Sequence[str]]


def _lists(items: Values | None, lower: bool) -> dict[str, list[str]]:
    return {
        (name.lower() if lower else name): [value] if isinstance(value, str) else list(value)
        for name, value in (items or {}).items()
    }


def inbound(
    headers: Values | None = None,
    *,
    query: Values | None = None,
    body: bytes = b"{}",
    peer_ip: str = "192.0.2.10",
    received_at: float = 1_700_000_000.0,
    trusted_proxies: Sequence[IPNetwork] = (),
) -> InboundRequest:
    """A POST to a webhook with the given parts (header names lower-cased, as the receiver does).

    ``client_ip`` is resolved with ``trusted_proxies``, as the pipeline does once
    it knows the webhook.
    """
    request = InboundRequest(
        method="POST",
        path="/webhook/ns/hook",
        body=body,
        peer_ip=peer_ip,
        received_at=received_at,
        headers=_lists(headers, lower=True),
        query=_lists(query, lower=False),
    )
    return replace(request, client_ip=resolve_client_ip(request, trusted_proxies))
