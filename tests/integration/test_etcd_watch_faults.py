"""The PrefixWatch under etcd faults, on the real reactor and a real etcd 3.5.1.

Compaction while disconnected and at create, a restart, a frozen server
(SIGSTOP), expired tokens and missing permissions, fragmented responses,
progress notifications and shutdown. Every wait is bounded and on an event
(the mirror's state or revision, a Put's revision, the watch thread reaching
a point, a log line, a thread ending); the only fixed waits are where time
itself is under test.

The watch thread is observed and paused through the client factory: each
client it builds is wrapped in a :class:`RecordingClient` that notes the
calls, records every watch response, and can hold the thread just before it
opens a watch stream (:class:`Gate`), which gives the test a deterministic
window in which the watch is not connected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from cwm.etcd import client as etcd_client
from cwm.etcd.backoff import Backoff
from cwm.etcd.client import EtcdClient, EtcdOptions, WatchStream
from cwm.etcd.mirror import DELETE, PUT, STALE, STARTING, SYNCED, Change, PrefixMirror
from cwm.etcd.watch import PrefixWatch
from tests.integration.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
HOLD_LIMIT = 30.0
MIB = 1024 * 1024
# etcd's smallest keepalive interval (--grpc-keepalive-min-time): a frozen
# server is noticed within this plus the ping timeout.
KEEPALIVE_MS = 5000


def bounded(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


async def in_thread(f: Callable[..., Any], *args: Any) -> Any:
    """Blocking calls of the test itself (etcd, etcdctl, joins) run off the reactor thread."""
    return await deferToThread(f, *args)


def options(address: tuple[str, int], **kwargs: Any) -> EtcdOptions:
    return EtcdOptions(endpoints=(address,), timeout=2.0, **kwargs)


def backoff(initial: float = 0.2, maximum: float = 1.0, fraction: Callable[[], float] | None = None) -> Backoff:
    if fraction is None:
        return Backoff(initial=initial, maximum=maximum)
    return Backoff(initial=initial, maximum=maximum, random_fraction=fraction)


# --- observing the watch thread -----------------------------------------------------------------


class Gate:
    """While closed, the watch thread waits here before opening a watch stream.

    :meth:`close` returns a Deferred that fires on the reactor when the
    thread arrives, so the test knows the watch is disconnected and will
    resume from the revision it had (the window a backoff delay gives, without
    depending on how long anything takes).
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._arrived: Deferred[None] | None = None

    def close(self) -> Deferred[None]:
        self._arrived = Deferred()
        self._open.clear()
        return self._arrived

    def open(self) -> None:
        self._open.set()

    def thd_pass(self) -> None:
        if self._open.is_set():
            return
        reactor.callFromThread(self._tell_arrived)  # type: ignore[attr-defined]
        self._open.wait(HOLD_LIMIT)

    def _tell_arrived(self) -> None:
        if self._arrived is not None and not self._arrived.called:
            self._arrived.callback(None)


@dataclass(frozen=True)
class Seen:
    """One watch response, as the watch thread received it."""

    created: bool
    canceled: bool
    compact_revision: int
    fragment: bool
    revisions: tuple[int, ...]


@dataclass
class Probe:
    """What every client of one subscription did, in order; shared by the clients the factory makes."""

    gate: Gate = field(default_factory=Gate)
    calls: list[tuple[float, str, str]] = field(default_factory=list)
    responses: list[Seen] = field(default_factory=list)
    streams: list[WatchStream] = field(default_factory=list)
    waiters: list[tuple[str, int, Deferred[None]]] = field(default_factory=list)

    def note(self, call: str) -> None:
        """From the watch thread: record ``call`` and wake :meth:`when_called` waiters on the reactor."""
        self.calls.append((time.monotonic(), call, threading.current_thread().name))
        reactor.callFromThread(self._wake)  # type: ignore[attr-defined]

    def when_called(self, call: str, count: int = 1) -> Deferred[None]:
        """Fires once ``call`` has been made ``count`` times in all."""
        d: Deferred[None] = Deferred()
        self.waiters.append((call, count, d))
        self._wake()
        return d

    def _wake(self) -> None:
        pending, self.waiters = self.waiters, []
        for call, count, d in pending:
            if len(self.times(call)) >= count:
                d.callback(None)
            else:
                self.waiters.append((call, count, d))

    def times(self, call: str) -> list[float]:
        return [at for at, name, _ in list(self.calls) if name == call]

    def threads(self) -> set[str]:
        """Names of the threads the calls were made from."""
        return {thread for _, _, thread in list(self.calls)}


class RecordingClient:
    """An EtcdClient that reports to a Probe (the PrefixWatch's WatchClient seam)."""

    def __init__(self, client: EtcdClient, probe: Probe) -> None:
        self._client = client
        self._probe = probe

    def authenticate(self) -> None:
        self._probe.note("authenticate")
        self._client.authenticate()

    def forget_token(self) -> None:
        self._probe.note("forget_token")
        self._client.forget_token()

    def range_prefix(self, prefix: bytes) -> tuple[Sequence[Any], int]:
        self._probe.note("range")
        return self._client.range_prefix(prefix)

    def open_watch(self, prefix: bytes, start_revision: int) -> RecordingStream:
        self._probe.gate.thd_pass()
        self._probe.note("watch")
        stream = self._client.open_watch(prefix, start_revision)
        self._probe.streams.append(stream)
        return RecordingStream(stream, self._probe)

    def close(self) -> None:
        self._client.close()


class RecordingStream:
    def __init__(self, stream: WatchStream, probe: Probe) -> None:
        self._stream = stream
        self._probe = probe

    def responses(self) -> Iterator[Any]:
        for response in self._stream.responses():
            self._probe.responses.append(
                Seen(
                    created=response.created,
                    canceled=response.canceled,
                    compact_revision=response.compact_revision,
                    fragment=response.fragment,
                    revisions=tuple(event.kv.mod_revision for event in response.events),
                )
            )
            yield response

    def close(self) -> None:
        self._stream.close()


class Subscription:
    """A PrefixWatch, its mirror and its probe, recording every change set delivered."""

    def __init__(
        self,
        address: tuple[str, int],
        prefix: str,
        etcd_options: EtcdOptions | None = None,
        retry: Backoff | None = None,
        name: str = "etcd-watch",
    ) -> None:
        self.prefix = prefix.encode()
        self.probe = Probe()
        self.held: Deferred[None] = Deferred()
        self.options = etcd_options or options(address)
        self.mirror = PrefixMirror()
        self.batches: list[tuple[list[Change], bool]] = []
        self.mirror.subscribe(lambda changes, snapshot: self.batches.append((list(changes), snapshot)))
        self.watch = PrefixWatch(
            self._connect, etcd_client, self.prefix, self.mirror, reactor, backoff=retry, name=name
        )

    def _connect(self) -> RecordingClient:
        self.probe.note("connect")
        return RecordingClient(EtcdClient(self.options), self.probe)

    def start(self) -> None:
        self.watch.startService()

    async def stop(self) -> None:
        self.probe.gate.open()
        if self.watch.running:
            await bounded(self.watch.stopService(), 10.0)

    def changes(self) -> list[Change]:
        return [c for batch, snapshot in self.batches if not snapshot for c in batch]

    def contents(self) -> dict[bytes, bytes]:
        return {key: entry.value for key, entry in self.mirror.entries.items()}

    def when_state(self, state: str) -> Deferred[None]:
        return self.mirror.when(lambda m: m.state == state)


@pytest_twisted.async_yield_fixture
async def subscribe(
    etcd: EtcdServer, fresh_etcd: Callable[..., EtcdServer]
) -> AsyncIterator[Callable[..., Subscription]]:
    """Start subscriptions; each is stopped (gate opened first) before any server goes away."""
    made: list[Subscription] = []

    def start(address: tuple[str, int], prefix: str, held: bool = False, **kwargs: Any) -> Subscription:
        """``held``: the thread stops at the gate before its first watch (``sub.held`` fires then)."""
        sub = Subscription(address, prefix, **kwargs)
        made.append(sub)
        if held:
            sub.held = sub.probe.gate.close()
        sub.start()
        return sub

    yield start
    for sub in made:
        await sub.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., EtcdClient]]:
    """The test's own blocking clients (writes, fresh Ranges), closed afterwards."""
    made: list[EtcdClient] = []

    def make(address: tuple[str, int], **kwargs: Any) -> EtcdClient:
        c = EtcdClient(options(address, **kwargs))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


async def fresh_range(c: EtcdClient, prefix: bytes) -> tuple[dict[bytes, bytes], int]:
    kvs, revision = await in_thread(c.range_prefix, prefix)
    return {bytes(kv.key): bytes(kv.value) for kv in kvs}, revision


# --- compaction -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_compaction_while_disconnected_relists(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any, connect: Any
) -> None:
    """Server down; meanwhile (after it is back) keys change and history is compacted: the watch relists."""
    server = fresh_etcd()
    prefix = b"/c/"
    writer = connect(server.address)
    for name in (b"a", b"b", b"c"):
        await in_thread(writer.put, prefix + name, b"1")
    sub = subscribe(server.address, "/c/", retry=backoff())
    await bounded(sub.mirror.when(lambda m: m.state == SYNCED and len(m.entries) == 3))
    live = await in_thread(writer.put, prefix + b"c", b"2")
    await bounded(sub.mirror.when_revision(live))

    arrived = sub.probe.gate.close()
    await in_thread(server.stop)
    await bounded(sub.when_state(STALE))
    await bounded(arrived)  # the thread is about to resume from `live + 1`
    await in_thread(server.start)
    writer = connect(server.address)  # the old channel saw the server go away
    await in_thread(writer.delete, prefix + b"a")
    await in_thread(writer.put, prefix + b"b", b"2")
    await in_thread(writer.put, prefix + b"d", b"1")
    await in_thread(writer.put, prefix + b"e", b"1")
    latest = await in_thread(writer.delete, prefix + b"e")  # created and deleted unseen
    await in_thread(writer.compact, latest, True)
    assert sub.mirror.state == STALE and sub.mirror.snapshots == 1
    sub.probe.gate.open()

    await bounded(sub.mirror.when(lambda m: m.snapshots == 2 and m.state == SYNCED))
    expected, _ = await fresh_range(writer, prefix)
    assert sub.contents() == expected == {prefix + b"b": b"2", prefix + b"c": b"2", prefix + b"d": b"1"}
    assert sub.mirror.revision >= latest
    # The resumed watch was created, then canceled as compacted at `latest`.
    assert any(seen.canceled and seen.compact_revision == latest for seen in sub.probe.responses)
    diff, is_snapshot = sub.batches[-1]
    assert is_snapshot and Change(DELETE, prefix + b"a", b"", sub.mirror.revision) in diff
    # Writes after the relist arrive on the new stream.
    after = await in_thread(writer.put, prefix + b"f", b"1")
    await bounded(sub.mirror.when_revision(after))
    assert sub.contents()[prefix + b"f"] == b"1"


@pytest_twisted.ensureDeferred
async def test_compaction_at_create_relists(
    etcd: EtcdServer, etcd_prefix: str, subscribe: Any, connect: Any
) -> None:
    """Snapshot at R, then history compacted past R+1 before the watch opens: created, canceled, relist."""
    prefix = etcd_prefix.encode()
    writer = connect(etcd.address)
    for i in range(3):
        await in_thread(writer.put, prefix + f"k{i}".encode(), b"1")
    sub = subscribe(etcd.address, etcd_prefix, held=True)
    await bounded(sub.held)  # snapshot taken, watch not open yet
    await bounded(sub.mirror.when(lambda m: m.snapshots == 1))
    first_revision = sub.mirror.revision
    await in_thread(writer.delete, prefix + b"k0")
    latest = await in_thread(writer.put, prefix + b"k3", b"1")
    await in_thread(writer.compact, latest, True)
    sub.probe.gate.open()

    await bounded(sub.mirror.when(lambda m: m.snapshots == 2))
    expected, _ = await fresh_range(writer, prefix)
    assert sub.contents() == expected and prefix + b"k0" not in expected and prefix + b"k3" in expected
    created, canceled = sub.probe.responses[:2]
    assert created.created and not created.canceled
    assert canceled.canceled and not canceled.created and canceled.compact_revision == latest > first_revision + 1
    assert sub.probe.times("range")[1] > sub.probe.times("watch")[0]  # relisted after the refused resume


# --- restart and a frozen server ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restart_resumes_within_the_backoff_bound(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any, connect: Any
) -> None:
    """Restart on the same dir and ports: the watch resumes (no relist) within the largest backoff delay.

    First restart: the watch is held until a write has been made on the
    restarted server, so that write can only come from resuming at the last
    revision seen + 1. Second restart: not held; the time from etcd being
    healthy again to the mirror being SYNCED is measured against the bound.
    """
    server = fresh_etcd()
    prefix = b"/r/"
    retry = backoff(initial=0.5, maximum=2.0)
    sub = subscribe(server.address, "/r/", retry=retry)
    await bounded(sub.when_state(SYNCED))
    writer = connect(server.address)
    before = await in_thread(writer.put, prefix + b"before", b"1")
    await bounded(sub.mirror.when_revision(before))

    arrived = sub.probe.gate.close()
    await in_thread(server.restart)
    await bounded(arrived)
    writer = connect(server.address)  # the old channel saw the server go away
    missed = await in_thread(writer.put, prefix + b"missed", b"1")
    assert sub.mirror.state == STALE
    sub.probe.gate.open()
    await bounded(sub.mirror.when_revision(missed))
    assert Change(PUT, prefix + b"missed", b"1", missed) in sub.changes()
    assert sub.mirror.snapshots == 1 and sub.mirror.state == SYNCED

    await in_thread(server.stop)
    # Down long enough for the delays to reach their cap: the bound is then `maximum`.
    await bounded(sub.mirror.when(lambda m: m.state == STALE and retry.ceiling() >= retry.maximum))
    synced = sub.when_state(SYNCED).addCallback(lambda _: time.monotonic())

    def restart() -> float:
        server.start()
        return time.monotonic()

    up = await in_thread(restart)
    recovery = await bounded(synced) - up
    print(f"\nmeasured: restart recovery {recovery:.2f} s (bound {retry.maximum} s + 1.5 s)")
    assert recovery < retry.maximum + 1.5
    writer = connect(server.address)
    after = await in_thread(writer.put, prefix + b"after", b"1")
    await bounded(sub.mirror.when_revision(after))
    assert sub.contents() == {prefix + b"before": b"1", prefix + b"missed": b"1", prefix + b"after": b"1"}
    assert sub.mirror.snapshots == 1


@pytest_twisted.ensureDeferred
async def test_sigstop_is_noticed_by_keepalive_and_sigcont_recovers(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any, connect: Any
) -> None:
    """A frozen etcd: STALE within keepalive interval + ping timeout (~10 s); SYNCED again after SIGCONT."""
    server = fresh_etcd()
    prefix = b"/s/"
    etcd_options = options(server.address, keepalive_time_ms=KEEPALIVE_MS)
    sub = subscribe(server.address, "/s/", etcd_options=etcd_options, retry=backoff(initial=0.5, maximum=2.0))
    await bounded(sub.when_state(SYNCED))
    writer = connect(server.address)
    before = await in_thread(writer.put, prefix + b"before", b"1")
    await bounded(sub.mirror.when_revision(before))

    paused = time.monotonic()
    server.pause()
    try:
        await bounded(sub.when_state(STALE), 20.0)
        detection = time.monotonic() - paused
    finally:
        server.resume()
    bound = (etcd_options.keepalive_time_ms + etcd_options.ping_timeout_ms) / 1000
    print(f"\nmeasured: SIGSTOP detected after {detection:.2f} s (bound {bound} s): {sub.mirror.reason}")
    assert detection < bound + 3.0
    assert "UNAVAILABLE" in sub.mirror.reason
    assert sub.contents() == {prefix + b"before": b"1"}  # the last good data is kept while STALE

    await bounded(sub.when_state(SYNCED))
    writer = connect(server.address)  # a fresh channel: the old one may still wait on the frozen connection
    after = await in_thread(writer.put, prefix + b"after", b"1")
    await bounded(sub.mirror.when_revision(after))
    assert sub.contents() == {prefix + b"before": b"1", prefix + b"after": b"1"}
    assert sub.mirror.snapshots == 1


@pytest_twisted.ensureDeferred
async def test_stop_is_prompt_while_etcd_is_frozen(fresh_etcd: Callable[..., EtcdServer], subscribe: Any) -> None:
    """A thread blocked in a unary call to a frozen etcd (5 s deadline) still stops within 1 s."""
    server = fresh_etcd()
    server.pause()
    try:
        sub = subscribe(server.address, "/f/", etcd_options=EtcdOptions(endpoints=(server.address,), timeout=5.0))
        await bounded(sub.probe.when_called("range"), 5.0)
        stopping = time.monotonic()
        await bounded(sub.watch.stopService(), 10.0)
        elapsed = time.monotonic() - stopping
    finally:
        server.resume()
    print(f"\nmeasured: stop while blocked on a frozen etcd {elapsed:.3f} s")
    assert elapsed < 1.0
    # Stopping is not a failure: no reason, no retry reported.
    assert sub.mirror.snapshots == 0 and sub.mirror.state == STARTING and sub.mirror.reason == ""


# --- authentication -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_expired_token_reauthenticates_on_reconnect(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any, connect: Any
) -> None:
    """--auth-token-ttl 2: the watch's token expires while its stream lives; the next stream re-authenticates."""
    server = fresh_etcd("--auth-token-ttl", "2", log_level="info")
    await in_thread(server.enable_auth, "rootpw", "app", "apppw", "/cfg/")
    prefix = b"/cfg/"
    app = options(server.address, username="app", password="apppw")
    sub = subscribe(server.address, "/cfg/", etcd_options=app, retry=backoff())
    await bounded(sub.when_state(SYNCED))
    writer = connect(server.address, username="root", password="rootpw")
    first = await in_thread(writer.put, prefix + b"a", b"1")
    await bounded(sub.mirror.when_revision(first))

    # Nothing uses the watch's token once its stream is open (a simple token's TTL slides with use).
    expired = await in_thread(server.wait_for_log, '"deleted a simple token","user-name":"app"', TIMEOUT)
    assert expired, server.log_tail()
    # Force a reconnect: end the stream as a network failure would.
    opened = len(sub.probe.streams)
    sub.probe.streams[-1].close()
    await bounded(sub.when_state(STALE))
    meanwhile = await in_thread(writer.put, prefix + b"b", b"1")
    await bounded(sub.when_state(SYNCED))
    after = await in_thread(writer.put, prefix + b"c", b"1")
    await bounded(sub.mirror.when_revision(after))
    assert sub.contents() == {prefix + b"a": b"1", prefix + b"b": b"1", prefix + b"c": b"1"}
    assert [c.revision for c in sub.changes()] == [first, meanwhile, after]
    assert sub.mirror.snapshots == 1 and len(sub.probe.streams) == opened + 1
    # The new stream was accepted at once: its create was not refused for the stale token.
    assert not any(seen.created and seen.canceled for seen in sub.probe.responses)


@pytest_twisted.ensureDeferred
async def test_permission_denied_never_syncs_and_backs_off(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any
) -> None:
    """A user without rights on the prefix: STARTING with the reason, retries paced by the backoff."""
    server = fresh_etcd()
    await in_thread(server.enable_auth, "rootpw", "app", "apppw", "/cfg/")
    app = options(server.address, username="app", password="apppw")
    # Deterministic delays: 0.5, then 1.0 s each time.
    retry = backoff(initial=0.5, maximum=1.0, fraction=lambda: 1.0)
    sub = subscribe(server.address, "/other/", etcd_options=app, retry=retry)
    await bounded(sub.mirror.when(lambda m: "permission" in m.reason.lower()))
    assert sub.mirror.state == STARTING and sub.mirror.snapshots == 0, sub.mirror.reason

    # Three more attempts, then their pace: each gap is one backoff delay.
    before = len(sub.probe.times("range"))
    await bounded(sub.probe.when_called("range", before + 3), 15.0)
    times = sub.probe.times("range")
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"\nmeasured: gaps between snapshot attempts while permission is denied: {gaps}")
    assert len(gaps) >= 3
    assert min(gaps) >= retry.initial * 0.9, gaps
    assert all(gap <= retry.maximum + 1.0 for gap in gaps), gaps
    assert sub.mirror.state == STARTING and "permission" in sub.mirror.reason.lower()
    assert sub.probe.times("watch") == []


# --- big revisions, progress ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fragmented_responses_are_reassembled(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any, connect: Any
) -> None:
    """--max-request-bytes 1 MiB: responses over it + 512 KiB come in fragments; all of them are applied.

    Deletes carry keys only (no prev_kv), so to make one revision's deletes
    big the keys themselves are long: five 0.35 MB keys with 0.55 MB values
    (each Put ~0.9 MB, under the request limit). The five Puts are made
    while the watch is held, so its catch-up (5 revisions, ~4.5 MB) is
    fragmented too.
    """
    server = fresh_etcd("--max-request-bytes", str(MIB))
    prefix = b"/frag/"
    sub = subscribe(server.address, "/frag/", held=True)
    await bounded(sub.held)
    writer = connect(server.address)
    keys = [prefix + b"big/" + bytes([ord("a") + i]) * 350_000 for i in range(5)]
    value = b"v" * 550_000
    for key in keys:
        await in_thread(writer.put, key, value)
    sub.probe.gate.open()
    await bounded(sub.mirror.when(lambda m: len(m.entries) == 5))
    assert sub.mirror.entries.keys() == set(keys)
    assert any(seen.fragment for seen in sub.probe.responses), "the catch-up was not fragmented"

    deleted = await in_thread(writer.delete_prefix, prefix + b"big/")
    await bounded(sub.mirror.when_revision(deleted))
    assert sub.mirror.entries == {}
    # One revision, split over several responses, applied as one batch of five deletes.
    split = [seen for seen in sub.probe.responses if deleted in seen.revisions]
    assert len(split) >= 2 and split[0].fragment and not split[-1].fragment
    assert sum(len(seen.revisions) for seen in split) == 5
    last_batch, is_snapshot = sub.batches[-1]
    assert not is_snapshot and sorted(c.key for c in last_batch) == keys
    assert {(c.kind, c.revision) for c in last_batch} == {(DELETE, deleted)}


@pytest_twisted.ensureDeferred
async def test_progress_notifications_advance_the_revision(
    fresh_etcd: Callable[..., EtcdServer], subscribe: Any, connect: Any
) -> None:
    """--experimental-watch-progress-notify-interval 1s: writes elsewhere move the mirror's revision."""
    server = fresh_etcd("--experimental-watch-progress-notify-interval", "1s")
    sub = subscribe(server.address, "/watched/")
    await bounded(sub.when_state(SYNCED))
    start = sub.mirror.revision
    writer = connect(server.address)
    elsewhere = 0
    for i in range(3):
        elsewhere = await in_thread(writer.put, f"/elsewhere/{i}".encode(), b"1")
    assert elsewhere > start
    await bounded(sub.mirror.when(lambda m: m.revision >= elsewhere))
    assert sub.mirror.entries == {} and sub.changes() == [] and sub.mirror.snapshots == 1


# --- shutdown -------------------------------------------------------------------------------------


def watch_related(threads: set[threading.Thread]) -> set[threading.Thread]:
    """Threads other than the reactor pool's (the test's own blocking calls use that)."""
    return {t for t in threads if not t.name.startswith("PoolThread-")}


@pytest_twisted.ensureDeferred
async def test_stop_is_prompt_and_leaves_no_thread(
    etcd: EtcdServer, etcd_prefix: str, subscribe: Any, connect: Any
) -> None:
    """stopService within 1 s; no watch or gRPC thread left; the reactor's pool is never used by the watch."""
    writer = connect(etcd.address)
    await in_thread(writer.status)
    pool = reactor.getThreadPool()  # type: ignore[attr-defined]
    before = set(threading.enumerate())
    name = f"etcd-watch-{etcd_prefix.strip('/')}"
    sub = subscribe(etcd.address, etcd_prefix, name=name)
    await bounded(sub.when_state(SYNCED))
    written = await in_thread(writer.put, etcd_prefix.encode() + b"k", b"1")
    await bounded(sub.mirror.when_revision(written))
    # Every etcd call of the watch ran on its own thread, never on a pool worker: DNS still resolves.
    assert sub.probe.threads() == {name}
    assert not any(t.name == name for t in pool.threads)
    assert await bounded(reactor.resolve("localhost"), 5.0)
    during = watch_related(set(threading.enumerate()) - before)
    assert any(t.name == name for t in during), during

    stopping = time.monotonic()
    await bounded(sub.watch.stopService(), 5.0)
    elapsed = time.monotonic() - stopping
    print(f"\nmeasured: stop of a live watch {elapsed:.3f} s; threads it had: {sorted(t.name for t in during)}")
    assert elapsed < 1.0
    assert sub.mirror.state == SYNCED and sub.mirror.reason == ""  # stopping is not a failure
    for thread in during:
        await in_thread(thread.join, 5.0)
    left = watch_related(set(threading.enumerate()) - before)
    assert left == set(), sorted(t.name for t in left)


# --- several endpoints ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reconnect_keeps_the_client_that_failed_over(
    etcd: EtcdServer, etcd_prefix: str, subscribe: Any, connect: Any
) -> None:
    """ETCD_ENDPOINTS with a dead first member: after a stream failure the watch resumes on the
    live member with the same client, instead of a new one that starts at the dead member again."""
    dead = ("127.0.0.1", free_port())
    two = EtcdOptions(endpoints=(dead, etcd.address), timeout=2.0)
    sub = subscribe(etcd.address, etcd_prefix, etcd_options=two, retry=backoff())
    await bounded(sub.when_state(SYNCED))  # the snapshot is done: what follows comes by the stream
    writer = connect(etcd.address)
    first = await in_thread(writer.put, etcd_prefix.encode() + b"a", b"1")
    await bounded(sub.mirror.when_revision(first))
    sub.probe.streams[-1].close()  # a network failure on the live member's stream
    await bounded(sub.when_state(STALE))
    await bounded(sub.when_state(SYNCED))
    after = await in_thread(writer.put, etcd_prefix.encode() + b"b", b"1")
    await bounded(sub.mirror.when_revision(after))
    assert sub.contents() == {etcd_prefix.encode() + b"a": b"1", etcd_prefix.encode() + b"b": b"1"}
    assert len(sub.probe.times("connect")) == 1
