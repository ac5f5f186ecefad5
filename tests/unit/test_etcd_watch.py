"""The etcd mirror, the backoff policy and the watch state machine, with a scripted fake client."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from cwm.etcd.backoff import Backoff
from cwm.etcd.mirror import DELETE, PUT, STALE, STARTING, SYNCED, Change, Entry, PrefixMirror
from cwm.etcd.watch import PrefixWatch

_sync = SynchronousTestCase()

# --- mirror -----------------------------------------------------------------------------------


def test_mirror_snapshot_diff_reports_adds_changes_and_deletes() -> None:
    """A new snapshot is compared with the old contents; vanished keys become DELETEs."""
    mirror = PrefixMirror()
    seen: list[tuple[list[Change], bool]] = []
    mirror.subscribe(lambda changes, snapshot: seen.append((list(changes), snapshot)))
    mirror.apply_snapshot([Entry(b"a", b"1", 2), Entry(b"b", b"1", 3)], 5)
    assert mirror.state == SYNCED and mirror.revision == 5
    changes = mirror.apply_snapshot([Entry(b"a", b"1", 2), Entry(b"b", b"2", 7), Entry(b"c", b"1", 8)], 9)
    assert sorted((c.kind, c.key) for c in changes) == [(PUT, b"b"), (PUT, b"c")]
    changes = mirror.apply_snapshot([Entry(b"c", b"1", 8)], 10)
    assert sorted((c.kind, c.key) for c in changes) == [(DELETE, b"a"), (DELETE, b"b")]
    assert [s for _, s in seen] == [True, True, True]
    assert set(mirror.entries) == {b"c"}


def test_mirror_events_skip_replays_and_move_revision_after_batch() -> None:
    """Events at or below the held revision are replays; one txn's events share a revision."""
    mirror = PrefixMirror()
    mirror.apply_snapshot([Entry(b"a", b"1", 4)], 5)
    applied = mirror.apply_events(
        [Change(PUT, b"a", b"old", 5), Change(PUT, b"x", b"1", 6), Change(DELETE, b"a", b"", 6)]
    )
    assert [(c.kind, c.key) for c in applied] == [(PUT, b"x"), (DELETE, b"a")]
    assert mirror.revision == 6 and set(mirror.entries) == {b"x"}


def test_mirror_progress_never_goes_back_and_wakes_waiters() -> None:
    """progress() only raises the revision; when_revision fires once reached."""
    mirror = PrefixMirror()
    waiting = mirror.when_revision(10)
    _sync.assertNoResult(waiting)
    mirror.progress(12)
    assert _sync.successResultOf(waiting) == 12
    mirror.progress(3)
    assert mirror.revision == 12
    assert _sync.successResultOf(mirror.when_revision(11)) == 12


def test_mirror_subscriber_error_is_logged_not_raised(logged_failures: list[Any]) -> None:
    """A failing subscriber does not stop the mirror."""
    mirror = PrefixMirror()
    mirror.subscribe(lambda changes, snapshot: 1 / 0)  # type: ignore[func-returns-value]
    mirror.apply_snapshot([Entry(b"a", b"1", 1)], 1)
    assert mirror.entries and len(logged_failures) == 1
    logged_failures.clear()


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_full_jitter_doubles_to_the_cap() -> None:
    """Delays are random() * min(max, initial * 2**n)."""
    backoff = Backoff(initial=1.0, maximum=60.0, random_fraction=lambda: 1.0)
    assert [backoff.failed(0.0) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    half = Backoff(initial=1.0, maximum=60.0, random_fraction=lambda: 0.5)
    assert [half.failed(0.0) for _ in range(3)] == [0.5, 1.0, 2.0]


def test_backoff_resets_after_a_healthy_period_only() -> None:
    """Healthy for healthy_reset seconds resets the schedule; a shorter spell does not."""
    backoff = Backoff(initial=1.0, maximum=60.0, healthy_reset=60.0, random_fraction=lambda: 1.0)
    backoff.failed(0.0)
    backoff.failed(1.0)
    backoff.healthy(10.0)
    assert backoff.failed(30.0) == 4.0
    backoff.healthy(40.0)
    assert backoff.failed(100.0) == 1.0


# --- the watch state machine --------------------------------------------------------------------


class Compacted(Exception):
    pass


class AuthExpired(Exception):
    pass


class Unavailable(Exception):
    pass


class FakeErrors:
    """Stands in for cwm.etcd.client's classification."""

    Compacted = Compacted
    AuthExpired = AuthExpired

    def classify(self, error: BaseException) -> Exception:
        return error if isinstance(error, Exception) else Unavailable(str(error))

    def classify_cancel_reason(self, reason: str) -> type[Exception]:
        if "compacted" in reason:
            return Compacted
        if "auth token" in reason or "permission denied" in reason:
            return AuthExpired
        return Unavailable


@dataclass
class KV:
    key: bytes
    value: bytes = b""
    mod_revision: int = 0


@dataclass
class Header:
    revision: int = 0


@dataclass
class Event:
    type: int
    kv: KV


@dataclass
class Response:
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    fragment: bool = False
    events: list[Event] = field(default_factory=list)
    header: Header = field(default_factory=Header)


def put(key: bytes, value: bytes, revision: int) -> Event:
    return Event(0, KV(key, value, revision))


def delete(key: bytes, revision: int) -> Event:
    return Event(1, KV(key, b"", revision))


class Stream:
    def __init__(self, items: list[Any], on_end: Any) -> None:
        self.items = items
        self.on_end = on_end
        self.closed = False

    def responses(self) -> Iterator[Any]:
        for item in self.items:
            if isinstance(item, BaseException):
                raise item
            yield item
        self.on_end()

    def close(self) -> None:
        self.closed = True


class ScriptedClient:
    """Plays back snapshots and streams; stops the watch when the script runs out."""

    def __init__(self, script: dict[str, list[Any]], watch: list[PrefixWatch]) -> None:
        self.snapshots = script["snapshots"]
        self.streams = script["streams"]
        self.watch = watch
        self.calls: list[tuple[Any, ...]] = []
        self.closed = 0

    def authenticate(self) -> None:
        self.calls.append(("authenticate",))

    def forget_token(self) -> None:
        self.calls.append(("forget_token",))

    def range_prefix(self, prefix: bytes) -> tuple[Sequence[Any], int]:
        self.calls.append(("range", prefix))
        snapshot = self.snapshots.pop(0)
        if isinstance(snapshot, BaseException):
            raise snapshot
        return snapshot

    def open_watch(self, prefix: bytes, start_revision: int) -> Stream:
        self.calls.append(("watch", start_revision))
        if not self.streams:
            self.watch[0]._stopping.set()
            return Stream([], lambda: None)
        items = self.streams.pop(0)
        return Stream(items, lambda: None)

    def close(self) -> None:
        self.closed += 1


class SyncReactor:
    """callFromThread runs at once: the test drives thd_run on its own thread."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def seconds(self) -> float:
        return 0.0


class RecordingMirror(PrefixMirror):
    """A mirror that remembers every state the watch set, with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[tuple[str, str]] = []

    def set_state(self, state: str, reason: str = "") -> None:
        self.states.append((state, reason))
        super().set_state(state, reason)


def run(script: dict[str, list[Any]]) -> tuple[PrefixWatch, ScriptedClient, list[float]]:
    holder: list[PrefixWatch] = []
    client = ScriptedClient(script, holder)
    delays: list[float] = []
    backoff = Backoff(random_fraction=lambda: 0.0)
    original = backoff.failed

    def failed(now: float) -> float:
        delays.append(original(now))
        return 0.0

    backoff.failed = failed  # type: ignore[method-assign]
    watch = PrefixWatch(lambda: client, FakeErrors(), b"/p/", RecordingMirror(), SyncReactor(), backoff=backoff)
    holder.append(watch)
    watch.thd_run()
    return watch, client, delays


def created(revision: int = 0) -> Response:
    return Response(created=True, header=Header(revision))


def test_watch_snapshot_then_events_then_progress() -> None:
    """Snapshot at R, watch from R+1, apply events, advance on progress."""
    watch, client, _ = run(
        {
            "snapshots": [([KV(b"/p/a", b"1", 3)], 7)],
            "streams": [
                [
                    created(),
                    Response(events=[put(b"/p/b", b"2", 8)], header=Header(8)),
                    Response(header=Header(15)),
                ]
            ],
        }
    )
    assert client.calls[:2] == [("range", b"/p/"), ("watch", 8)]
    assert watch.mirror.entries.keys() == {b"/p/a", b"/p/b"}
    assert watch.mirror.revision == 15
    # The stream ended by itself: resumed from the progress revision + 1,
    # on the same client with its token refreshed first.
    assert client.calls[2:4] == [("forget_token",), ("watch", 16)]


def test_watch_resumes_from_last_event_not_header() -> None:
    """A header revision ahead of the events is not trusted for resuming."""
    _, client, delays = run(
        {
            "snapshots": [([], 10)],
            "streams": [[created(), Response(events=[put(b"/p/a", b"1", 11)], header=Header(50)), Unavailable("socket closed")]],
        }
    )
    assert ("watch", 12) in client.calls
    assert len(delays) == 1


def test_watch_compacted_reply_relists_and_deletes_vanished_keys() -> None:
    """compact_revision on the stream leads to a new snapshot whose diff removes deleted keys."""
    watch, client, delays = run(
        {
            "snapshots": [([KV(b"/p/a", b"1", 3), KV(b"/p/b", b"1", 4)], 5), ([KV(b"/p/b", b"1", 4)], 40)],
            "streams": [[created(), Response(canceled=True, compact_revision=30)]],
        }
    )
    assert [c for c in client.calls if c[0] == "range"] == [("range", b"/p/"), ("range", b"/p/")]
    assert watch.mirror.entries.keys() == {b"/p/b"} and watch.mirror.revision == 40
    assert ("watch", 41) in client.calls
    assert delays == []  # a relist is not a failure to back off from


@pytest.mark.parametrize(
    "reason",
    [
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
    ],
)
def test_watch_create_refused_for_auth_reauthenticates(reason: str) -> None:
    """created+canceled with an auth reason (3.4.23 and 3.5.1 texts) re-authenticates, then resumes."""
    watch, client, delays = run(
        {
            "snapshots": [([], 5)],
            "streams": [[Response(created=True, canceled=True, cancel_reason=reason)], [created()]],
        }
    )
    assert client.calls[:4] == [("range", b"/p/"), ("watch", 6), ("authenticate",), ("watch", 6)]
    assert len(delays) == 1  # only when the second stream ended, none for the re-auth


def test_watch_refused_again_after_auth_backs_off() -> None:
    """A create refused right after re-authenticating is a real permission problem: it backs off."""
    refused = Response(created=True, canceled=True, cancel_reason="etcdserver: permission denied")
    _, client, delays = run({"snapshots": [([], 5)], "streams": [[refused], [refused], [refused]]})
    # Re-authentication alternates with backoff delays: never a tight loop.
    assert client.calls.count(("authenticate",)) == 2
    assert len(delays) == 1


def test_watch_create_refused_as_compacted_relists() -> None:
    """created+canceled because the start revision is compacted leads to a relist."""
    _, client, _ = run(
        {
            "snapshots": [([], 5), ([], 9)],
            "streams": [[Response(created=True, canceled=True, cancel_reason="etcdserver: mvcc: required revision has been compacted")]],
        }
    )
    assert [c for c in client.calls if c[0] == "range"] == [("range", b"/p/")] * 2


def test_watch_reassembles_fragments() -> None:
    """Events split over fragmented responses are applied as one batch."""
    watch, _, _ = run(
        {
            "snapshots": [([KV(b"/p/a", b"1", 1), KV(b"/p/b", b"1", 1), KV(b"/p/c", b"1", 1)], 1)],
            "streams": [
                [
                    created(),
                    Response(fragment=True, events=[delete(b"/p/a", 2)], header=Header(2)),
                    Response(fragment=True, events=[delete(b"/p/b", 2)], header=Header(2)),
                    Response(events=[delete(b"/p/c", 2)], header=Header(2)),
                ]
            ],
        }
    )
    assert watch.mirror.entries == {} and watch.mirror.revision == 2


def test_watch_unavailable_backs_off_and_goes_stale() -> None:
    """A stream error marks the mirror STALE and waits a backoff delay before resuming."""
    watch, client, delays = run(
        {"snapshots": [([], 3)], "streams": [[created(), Unavailable("no leader")], [created()]]}
    )
    states = watch.mirror.states  # type: ignore[attr-defined]
    assert states[:3] == [(SYNCED, ""), (STALE, "no leader"), (SYNCED, "")]
    assert len(delays) == 2  # the error, then the end of the last scripted stream
    # The same client resumes (its calls fail over between endpoints themselves),
    # authenticating again first: the token may have expired while unused.
    assert client.calls[1:4] == [("watch", 4), ("forget_token",), ("watch", 4)]


def test_watch_snapshot_failure_before_first_sync_stays_starting() -> None:
    """If etcd is unreachable at start the mirror stays STARTING, not STALE."""
    holder: list[Any] = []
    states: list[str] = []
    mirror = PrefixMirror()
    original = mirror.set_state

    def record(state: str, reason: str = "") -> None:
        states.append(state)
        original(state, reason)
        if len(states) >= 2:
            holder[0]._stopping.set()

    mirror.set_state = record  # type: ignore[method-assign]

    def factory() -> Any:
        raise Unavailable("connection refused")

    watch = PrefixWatch(factory, FakeErrors(), b"/p/", mirror, SyncReactor(), backoff=Backoff(random_fraction=lambda: 0.0))
    holder.append(watch)
    watch.thd_run()
    assert states == [STARTING, STARTING] and mirror.state == STARTING
