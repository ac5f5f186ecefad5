"""The listening socket's backlog: Twisted's default of 50 overflows under a burst of connections."""

from __future__ import annotations

import re

DEFAULT_BACKLOG = 511  # what nginx and Redis use
SOMAXCONN = "/proc/sys/net/core/somaxconn"
# Endpoint types whose strports description takes a ``backlog`` argument.
_WITH_BACKLOG = ("tcp", "tcp6", "ssl", "unix")


def default_backlog(somaxconn_path: str = SOMAXCONN) -> int:
    """511, or the kernel's ``somaxconn`` when lower (the kernel would cut it there anyway)."""
    try:
        with open(somaxconn_path, encoding="ascii") as f:  # off-reactor: settings, before the reactor runs
            kernel = int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_BACKLOG
    return max(1, min(DEFAULT_BACKLOG, kernel))


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``:backlog=N`` added, unless it names a backlog or its type has none."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _WITH_BACKLOG or re.search(r"(?<!\\):backlog=", description):
        return description
    return f"{description}:backlog={backlog}"
