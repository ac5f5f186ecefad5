"""Log observers for twistd's ``--logger`` option.

``twistd --logger=cwm.logs.json_observer cwm`` writes one JSON object per event
to standard output (twistd calls the factory with no arguments).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """A JSON-lines observer on the real standard output."""
    return jsonFileLogObserver(sys.__stdout__)  # type: ignore[arg-type]
