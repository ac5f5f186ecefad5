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
    """One check of a webhook, built once per config entry."""

    def __call__(self, request: InboundRequest) -> None:
        """Return if the request passes; raise CheckFailed otherwise."""


class PayloadCheck(Protocol):
    """A check over the parsed payload (runs after body parsing)."""

    def __call__(self, request: InboundRequest, payload: Any) -> None:
        """Return if the payload passes; raise CheckFailed otherwise."""
