"""A reactor-thread mirror of one etcd key prefix: snapshot, then events, with revisions.

Pure Python, no I/O: the watch thread hands it snapshots, event batches and
progress notifications through ``callFromThread``; it works out what changed
and tells its subscribers. It keeps serving the last good data while STALE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.logger import Logger

STARTING = "STARTING"
SYNCED = "SYNCED"
STALE = "STALE"

PUT = "put"
DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as the snapshot saw it; ``revision`` is its mod_revision."""

    key: bytes
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """A PUT or DELETE of one key at ``revision``."""

    kind: str
    key: bytes
    value: bytes
    revision: int


Subscriber = Callable[[Sequence[Change], bool], None]
"""Called with the changes of one snapshot (``True``) or one event batch (``False``)."""


class PrefixMirror:
    """The keys under one prefix, their values and the revision they are current at."""

    _log = Logger()

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.revision = 0
        self.state = STARTING
        self.reason = ""
        self.snapshots = 0
        self._subscribers: list[Subscriber] = []
        self._waiters: list[tuple[Callable[[PrefixMirror], bool], Deferred[None]]] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber`` with every future change set."""
        self._subscribers.append(subscriber)

    def apply_snapshot(self, entries: Iterable[Entry], revision: int) -> list[Change]:
        """Replace the contents with a snapshot taken at ``revision``.

        The difference is reported as changes: keys missing from the snapshot
        were deleted while nobody watched (after a compaction, for example).
        """
        fresh = {entry.key: entry for entry in entries}
        changes = [
            Change(DELETE, key, b"", revision) for key in self.entries if key not in fresh
        ]
        for key, entry in fresh.items():
            old = self.entries.get(key)
            if old is None or old.value != entry.value:
                changes.append(Change(PUT, key, entry.value, entry.revision))
        self.entries = fresh
        self.revision = revision
        self.snapshots += 1
        self._publish(changes, True)
        self._set_state(SYNCED, "")  # wakes the waiters
        return changes

    def apply_events(self, changes: Sequence[Change]) -> list[Change]:
        """Apply one batch of watch events, ignoring those already applied.

        An event at or below the revision held before this batch is a replay
        (a resume overlapping what was seen), so it is skipped. Several events
        of one transaction share a revision, so the revision moves only after
        the whole batch.
        """
        before = self.revision
        applied = [change for change in changes if change.revision > before]
        for change in applied:
            if change.kind == PUT:
                self.entries[change.key] = Entry(change.key, change.value, change.revision)
            else:
                self.entries.pop(change.key, None)
        if applied:
            self.revision = max(before, applied[-1].revision)
            self._publish(applied, False)
        self._wake()
        return applied

    def progress(self, revision: int) -> None:
        """Everything up to ``revision`` has been seen; never moves backwards."""
        if revision > self.revision:
            self.revision = revision
            self._wake()

    def when_revision(self, revision: int) -> Deferred[int]:
        """Fires with the mirror's revision once it is at least ``revision``."""
        return self.when(lambda m: m.revision >= revision).addCallback(lambda _: self.revision)

    def when(self, predicate: Callable[[PrefixMirror], bool]) -> Deferred[None]:
        """Fires once ``predicate(self)`` holds, checked after every change of state or data."""
        d: Deferred[None] = Deferred()
        if predicate(self):
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def set_state(self, state: str, reason: str = "") -> None:
        """Called by the watch: STARTING, SYNCED or STALE, with why."""
        self._set_state(state, reason)

    def _set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            self._log.info(
                "etcd mirror {old} -> {new}{why}",
                old=self.state,
                new=state,
                why=f" ({reason})" if reason else "",
            )
        self.state = state
        self.reason = reason
        self._wake()

    def _publish(self, changes: Sequence[Change], snapshot: bool) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(changes, snapshot)
            except Exception:
                self._log.failure("an etcd mirror subscriber failed")

    def _wake(self) -> None:
        if self._waiters:
            pending = self._waiters
            self._waiters = []
            for predicate, waiter in pending:
                if predicate(self):
                    waiter.callback(None)
                else:
                    self._waiters.append((predicate, waiter))
