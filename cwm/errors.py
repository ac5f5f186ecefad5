"""Exceptions shared across cwm's layers."""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why.

    Raised while parsing an entry (the entry is then rejected on its own) or a
    setting (start-up stops with that one line).
    """


class HTTPError(Exception):
    """An answer other than success, with the precise reason for the client.

    Rendered in one place as JSON ``{"detail": reason}``.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers: Mapping[str, str] = headers or {}

    @property
    def reason(self) -> str:
        """The client-safe reason (the ``detail`` of the answer)."""
        return self.detail
