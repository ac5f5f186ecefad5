"""The file configuration source: webhooks.json and connections.json, with live reload.

A change is noticed however the file is replaced: rewritten in place, replaced
by an atomic rename, or swapped through a symlink (Kubernetes ConfigMap
style), because the watcher compares what ``stat`` (following links) and the
content say rather than waiting for one kind of filesystem event. A file that
is missing or does not parse keeps the last good version serving, so a
half-written file is never seen by a request.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from cwm.config.model import DEFAULT_NAMESPACE
from cwm.config.store import ConfigStore
from cwm.errors import ConfigError

POLL_INTERVAL = 0.25
# A file modified this recently is re-read even when stat looks unchanged:
# filesystem timestamps are coarse, so a same-size rewrite can keep its mtime.
_RECENT = 2.0


class Unreadable(ConfigError):
    """The file is missing or is not a JSON object; the reason says which."""


def read_document(path: str, label: str) -> tuple[dict[str, Any], bytes]:
    """Read and parse a config file; the document and the bytes it came from.

    Raises:
        Unreadable: missing, unreadable, not JSON, or not an object.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Unreadable(f"{label} file {path} does not exist") from None
    except OSError as e:
        raise Unreadable(f"cannot read {label} file {path}: {e.strerror}") from None
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise Unreadable(f"{label} file {path} is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise Unreadable(f"{label} file {path} must hold a JSON object")
    return document, data


@dataclass
class _WatchedFile:
    """One config file and what was last seen and last loaded of it."""

    path: FilePath
    label: str
    stat_key: tuple[int, ...] | None = None
    content_hash: bytes | None = None
    loaded_hash: bytes | None = None
    document: dict[str, Any] | None = None
    error: str | None = None
    changed_at: float | None = None

    def observe(self, now: float) -> bool:
        """Look at the file; return True if it differs from the last look."""
        try:
            st = os.stat(self.path.path)
        except OSError:
            key: tuple[int, ...] | None = None
            recent = False
        else:
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            recent = now - st.st_mtime < _RECENT
        changed = key != self.stat_key
        self.stat_key = key
        if changed or recent:
            digest = self._hash()
            changed = changed or digest != self.content_hash
            self.content_hash = digest
        return changed

    def _hash(self) -> bytes | None:
        try:
            with open(self.path.path, "rb") as f:
                return hashlib.blake2b(f.read(), digest_size=16).digest()
        except OSError:
            return None

    def read(self) -> dict[str, Any]:
        document, data = read_document(self.path.path, self.label)
        self.loaded_hash = hashlib.blake2b(data, digest_size=16).digest()
        return document


class FileConfigSource(Service):
    """Loads both files into the store at start, then on change and on request."""

    _log = Logger()

    def __init__(
        self,
        store: ConfigStore,
        webhooks: FilePath,
        connections: FilePath | None,
        clock: IReactorTime,
        watching: bool = False,
        debounce: float = 3.0,
        poll_interval: float = POLL_INTERVAL,
        install_reload_signal: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    ) -> None:
        self._store = store
        # Without a connections file there are no connections (the connector's case).
        self._files = tuple(
            _WatchedFile(path, label)
            for path, label in ((webhooks, "webhooks"), (connections, "connections"))
            if path is not None
        )
        self._clock = clock
        self._watching = watching
        self._debounce = debounce
        self._poll_interval = poll_interval
        self._install_reload_signal = install_reload_signal
        self._remove_signal: Callable[[], None] | None = None
        self._poll: LoopingCall | None = None
        self.last_reload: float | None = None

    @property
    def errors(self) -> list[str]:
        """Why a file could not be used at its last read (the last good version serves)."""
        return [f.error for f in self._files if f.error]

    def startService(self) -> None:
        super().startService()
        now = self._clock.seconds()
        for f in self._files:
            f.observe(now)
        self.reload("start")
        if self._install_reload_signal is not None:
            self._remove_signal = self._install_reload_signal(lambda: self.reload("SIGHUP"))
        if self._watching:
            self._poll = LoopingCall(self._tick)
            self._poll.clock = self._clock
            self._poll.start(self._poll_interval, now=False).addErrback(
                lambda f: self._log.failure("config file watcher stopped", f)
            )

    def stopService(self) -> None:
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._remove_signal is not None:
            self._remove_signal()
            self._remove_signal = None

    def reload(self, why: str) -> None:
        """Read both files now and apply what parses; keep the last good version of the rest."""
        for f in self._files:
            try:
                f.document = f.read()
                f.error = None
            except Unreadable as e:
                f.error = str(e)  # f.document keeps the last good version
                self._log.error(
                    "{why}: {reason}; the last good {label} configuration keeps serving",
                    why=why,
                    reason=f.error,
                    label=f.label,
                )
        documents = {f.label: f.document or {} for f in self._files}
        self._store.replace_all(
            {DEFAULT_NAMESPACE: documents["webhooks"]}, documents.get("connections", {})
        )
        self._store.mark_loaded()
        self.last_reload = self._clock.seconds()
        serving, valid_connections = self._store.counts()
        self._log.info(
            "configuration {state} ({why}): {webhooks} webhooks, {connections} connections, "
            "{rejected} rejected",
            state="kept, a file is unusable" if self.errors else "loaded",
            why=why,
            webhooks=serving,
            connections=valid_connections,
            rejected=len(self._store.rejections),
        )

    def _tick(self) -> None:
        try:
            now = self._clock.seconds()
            for f in self._files:
                if f.observe(now):
                    f.changed_at = now
            pending = [f for f in self._files if f.changed_at is not None]
            if pending and all(now - f.changed_at >= self._debounce for f in pending):  # type: ignore[operator]
                for f in pending:
                    f.changed_at = None
                if any(f.content_hash != f.loaded_hash for f in pending):
                    self.reload("file changed")
        except Exception:
            self._log.failure("checking the config files failed")
