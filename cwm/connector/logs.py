"""The connector's log level (``CONNECTOR_LOG_LEVEL``): its own events below it are not emitted."""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


@implementer(ILogObserver)
class _LevelGate:
    """Forwards events at or above ``minimum`` to the global log publisher."""

    def __init__(self) -> None:
        self.minimum = LogLevel.info

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if level is None or level >= self.minimum:
            globalLogPublisher(event)


_gate = _LevelGate()


def set_level(name: str) -> None:
    """Apply a level name of the settings (``debug`` ... ``critical``)."""
    _gate.minimum = LEVELS[name]


def connector_logger() -> Logger:
    """A Logger whose events obey the connector's level; use as a class attribute."""
    return Logger(observer=_gate)
