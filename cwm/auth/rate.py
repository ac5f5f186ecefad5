"""The ``rate_limit`` check: at most N accepted requests per sliding window.

A sliding-window log: the times of the requests let through in the last
window, per webhook or per client address. Memory is bounded: a log never
holds more than ``max_requests`` times, expired times are pruned on every
call, and at most ``max_clients`` client addresses are tracked, the least
recently seen being forgotten first.

The state lives in the check object, built once per config entry and used
only on the reactor thread, so it needs no lock. A config reload builds a new
check and so starts a fresh window.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

from cwm.auth._config import (
    optional_choice,
    optional_number,
    quote,
    reject_unknown,
    require_mapping,
)
from cwm.auth.base import CheckFailed
from cwm.errors import ConfigError
from cwm.request import InboundRequest

__all__ = ["DEFAULT_MAX_CLIENTS", "RateLimitCheck", "build_rate_limit"]

_KEY = "rate_limit"
_OPTIONS = ("max_requests", "window_seconds", "per")
_PER = ("webhook", "client_ip")
DEFAULT_MAX_CLIENTS = 10_000


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}"


class RateLimitCheck:
    """Refuse a request (429) when its key already used the window's quota."""

    __slots__ = (
        "_logs",
        "_max_clients",
        "max_requests",
        "per",
        "window_seconds",
    )

    secret_headers: frozenset[str] = frozenset()
    secret_params: frozenset[str] = frozenset()

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        per: str = "webhook",
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if max_requests < 1 or max_clients < 1:
            raise ValueError("max_requests and max_clients must be >= 1")
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.per = per
        self._max_clients = max_clients
        # Key -> times of accepted requests, oldest first; least recently seen key first.
        self._logs: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def tracked_keys(self) -> int:
        """How many keys (client addresses, or the one webhook) hold a log."""
        return len(self._logs)

    def _key(self, request: InboundRequest) -> str:
        return request.client_ip if self.per == "client_ip" else ""

    def _log(self, key: str) -> deque[float]:
        log = self._logs.get(key)
        if log is None:
            log = deque(maxlen=self.max_requests)
            self._logs[key] = log
            while len(self._logs) > self._max_clients:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(key)
        return log

    def __call__(self, request: InboundRequest) -> None:
        now = request.received_at
        log = self._log(self._key(request))
        # A time t is inside the window while t > now - window.
        horizon = now - self.window_seconds
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) >= self.max_requests:
            retry_after = max(1, math.ceil(log[0] + self.window_seconds - now))
            raise CheckFailed(
                f"Rate limit exceeded: {self.max_requests} requests per "
                f"{_seconds_text(self.window_seconds)} seconds",
                status=429,
                headers={"Retry-After": str(retry_after)},
            )
        log.append(now)


# Each tracked key keeps one timestamp per allowed request, so the quota is
# capped to keep the exact sliding log's memory bounded.
MAX_REQUESTS_LIMIT = 100_000


def build_rate_limit(
    value: object,
    *,
    max_clients: int = DEFAULT_MAX_CLIENTS,
) -> RateLimitCheck:
    """Build the ``rate_limit`` check from ``{"max_requests", "window_seconds", "per"}``."""
    options = require_mapping(_KEY, value)
    reject_unknown(_KEY, options, _OPTIONS)
    max_requests = options.get("max_requests")
    if max_requests is None:
        max_requests = 100
    if (
        isinstance(max_requests, bool)
        or not isinstance(max_requests, int)
        or not 1 <= max_requests <= MAX_REQUESTS_LIMIT
    ):
        raise ConfigError(
            f"{_KEY}: max_requests must be an integer from 1 to {MAX_REQUESTS_LIMIT}, "
            f"not {quote(max_requests)}"
        )
    window_seconds = optional_number(_KEY, options, "window_seconds", 60.0, allow_zero=False)
    per = optional_choice(_KEY, options, "per", _PER) or "webhook"
    return RateLimitCheck(max_requests, window_seconds, per, max_clients)
