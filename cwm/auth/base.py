"""What every check is: a callable over an InboundRequest that raises on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from cwm.errors import HTTPError
from cwm.request import InboundRequest


class CheckFailed(HTTPError):
    """The request did not pass a check; the pipeline answers it as it is.

    Attributes:
        reason: A precise, client-safe reason (never contains a secret).
        status: The HTTP status to answer with: 401 for credentials and
            signatures, 429 for the rate limit, 400 for the schema.
        headers: Extra response headers (``Retry-After`` for 429).
    """

    def __init__(
        self,
        reason: str,
        status: int = 401,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, reason, headers)


class Check(Protocol):
    """One check of a webhook, built once per config entry.

    Attributes:
        secret_headers: Lower-case names of the request headers the check
            reads a credential or a signature from; the ``log`` module masks
            them. Headers that only say who the client is (``X-Forwarded-For``)
            or when it signed (a timestamp) are not listed.
        secret_params: Names of the query parameters it reads a credential from.
    """

    secret_headers: frozenset[str]
    secret_params: frozenset[str]

    def __call__(self, request: InboundRequest) -> None:
        """Return if the request passes; raise CheckFailed otherwise."""


class PayloadCheck(Protocol):
    """A check over the parsed payload (runs after body parsing)."""

    def __call__(self, request: InboundRequest, payload: Any) -> None:
        """Return if the payload passes; raise CheckFailed otherwise."""
