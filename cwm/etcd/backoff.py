"""Retry pacing for the etcd thread: full-jitter exponential backoff, reset after a healthy period."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays before reconnecting: uniform in [0, min(maximum, initial * 2**attempt)].

    Full jitter spreads the reconnects of many instances after an etcd
    outage. After the connection has been healthy for ``healthy_reset``
    seconds the next failure starts again from ``initial``.
    """

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        healthy_reset: float = 60.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.healthy_reset = healthy_reset
        self._random = random_fraction
        self.attempt = 0
        self._healthy_since: float | None = None

    def ceiling(self) -> float:
        """The largest delay the next failure may wait."""
        return min(self.maximum, self.initial * (2.0**self.attempt))

    def healthy(self, now: float) -> None:
        """The connection works (from ``now`` on, if it was not already)."""
        if self._healthy_since is None:
            self._healthy_since = now

    def failed(self, now: float) -> float:
        """The connection failed at ``now``: how long to wait before the next try."""
        if self._healthy_since is not None and now - self._healthy_since >= self.healthy_reset:
            self.attempt = 0
        self._healthy_since = None
        delay = self._random() * self.ceiling()
        self.attempt = min(self.attempt + 1, 32)
        return delay
