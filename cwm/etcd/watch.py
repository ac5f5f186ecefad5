"""Following an etcd prefix from a dedicated thread, race-free, and handing it to the reactor.

The thread snapshots the prefix at revision R, then watches from R+1, so no
write between the two is missed or applied twice. It resumes from the last
revision seen after any stream error (relisting if that is compacted), with
full-jitter backoff, and talks to the reactor only through
``callFromThread``. It never uses the reactor's shared thread pool: a blocked
watch there would wedge DNS and ``reactor.stop()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger

from cwm.etcd.backoff import Backoff
from cwm.etcd.mirror import DELETE, PUT, STALE, STARTING, SYNCED, Change, Entry, PrefixMirror

# Event.type in etcd's kv.proto.
_EVENT_DELETE = 1
STOP_TIMEOUT = 1.0


class WatchStreamLike(Protocol):
    """What the watch needs of an open Watch call (cwm.etcd.client.WatchStream)."""

    def responses(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class WatchClient(Protocol):
    """What the watch needs of the blocking client (cwm.etcd.client.EtcdClient)."""

    def authenticate(self) -> None: ...

    def forget_token(self) -> None: ...

    def range_prefix(self, prefix: bytes) -> tuple[Sequence[Any], int]: ...

    def open_watch(self, prefix: bytes, start_revision: int) -> WatchStreamLike: ...

    def close(self) -> None: ...


class WatchErrors(Protocol):
    """The error classes of cwm.etcd.client, injected to keep this module testable."""

    @property
    def Compacted(self) -> type[Exception]: ...  # noqa: N802 (a class, by name)

    @property
    def AuthExpired(self) -> type[Exception]: ...  # noqa: N802

    def classify(self, error: BaseException) -> Exception: ...

    def classify_cancel_reason(self, reason: str) -> type[Exception]: ...


class _Restart(Exception):
    """Internal: leave the current stream and go on at ``step``."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


class PrefixWatch(Service):
    """A subscription to an etcd prefix: a snapshot, then every PUT and DELETE, into a mirror.

    ``mirror`` lives on the reactor thread; this service's thread only ever
    reaches it through ``reactor.callFromThread``.
    """

    _log = Logger()

    def __init__(
        self,
        client_factory: Callable[[], WatchClient],
        errors: WatchErrors,
        prefix: bytes,
        mirror: PrefixMirror,
        reactor: Any,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "etcd-watch",
    ) -> None:
        self._client_factory = client_factory
        self._errors = errors
        self._prefix = prefix
        self.mirror = mirror
        self._reactor: IReactorFromThreads = reactor
        self._clock: IReactorTime = reactor
        self._backoff = backoff or Backoff()
        self._monotonic = monotonic
        self._thread_name = name
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStreamLike | None = None
        self._client: WatchClient | None = None
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        # Only the watch thread touches these two.
        self._last = 0
        self._step = "snapshot"
        self._auth_restarts = 0

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self.thd_run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        """Cancel the stream and let the thread finish; fires once it has."""
        super().stopService()
        self._stopping.set()
        with self._lock:
            stream, self._stream = self._stream, None
            client = self._client
        if stream is not None:
            stream.close()
        if client is not None:
            # The thread may be in a unary call (snapshot, status, authenticate)
            # that would block until its deadline; closing the channel ends it now.
            client.close()
        stopped = self._stopped
        if stopped is None or stopped.called:
            return Deferred.fromCoroutine(_nothing())
        waiter: Deferred[None] = Deferred()
        stopped.chainDeferred(waiter)
        return waiter.addTimeout(STOP_TIMEOUT * 5, self._clock).addErrback(self._stop_timed_out)

    def _stop_timed_out(self, failure: Any) -> None:
        self._log.failure("the etcd watch thread did not stop in time", failure)

    # --- the thread -------------------------------------------------------------------------

    def thd_run(self) -> None:
        """The thread's whole life: snapshot, watch, back off, resume; until stopped."""
        try:
            while not self._stopping.is_set():
                try:
                    self._thd_step()
                except _Restart as restart:
                    if self._stopping.is_set():
                        break
                    if restart.step == "auth" and self._auth_restarts > 0:
                        # Refused again right after authenticating: a real
                        # permission problem, not an expired token. Pace it.
                        restart = _Restart("backoff", restart.reason)
                    self._auth_restarts = self._auth_restarts + 1 if restart.step == "auth" else 0
                    if restart.step == "backoff":
                        self._thd_backoff(restart.reason)
                    else:
                        self._step = restart.step
                except Exception as error:
                    if self._stopping.is_set():
                        break
                    self._thd_backoff(self._thd_describe(error))
        finally:
            self._thd_drop_client()
            self._reactor.callFromThread(self._thread_done)

    def _thread_done(self) -> None:
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def _thd_step(self) -> None:
        client = self._thd_client()
        if self._step == "auth":
            try:
                client.authenticate()
            except Exception as error:
                raise _Restart("backoff", self._thd_describe(error)) from None
            self._step = self._thd_resume_step()
        if self._step == "snapshot":
            self._thd_snapshot(client)
            self._step = "watch"
        if self._step == "watch":
            self._thd_watch(client)

    def _thd_resume_step(self) -> str:
        """Where to go on: watch from the last revision seen, or snapshot if none yet."""
        return "watch" if self._last else "snapshot"

    def _thd_client(self) -> WatchClient:
        with self._lock:
            client = self._client
        if client is None:
            client = self._client_factory()
            with self._lock:
                self._client = client
            if self._stopping.is_set():
                # stopService may have looked for a client before this one existed.
                client.close()
        return client

    def _thd_snapshot(self, client: WatchClient) -> None:
        try:
            kvs, revision = client.range_prefix(self._prefix)
        except Exception as error:
            raise self._thd_restart(error) from None
        entries = [Entry(bytes(kv.key), bytes(kv.value), int(kv.mod_revision)) for kv in kvs]
        self._last = revision
        self._reactor.callFromThread(self.mirror.apply_snapshot, entries, revision)
        self._backoff.healthy(self._monotonic())

    def _thd_watch(self, client: WatchClient) -> None:
        stream = client.open_watch(self._prefix, self._last + 1)
        with self._lock:
            if self._stopping.is_set():
                stream.close()
                return
            self._stream = stream
        pending: list[Any] = []
        try:
            for response in stream.responses():
                if self._stopping.is_set():
                    return
                if response.created:
                    if response.canceled:
                        raise self._thd_cancelled(response.cancel_reason)
                    self._reactor.callFromThread(self.mirror.set_state, SYNCED, "")
                    self._backoff.healthy(self._monotonic())
                    self._auth_restarts = 0
                    continue
                if response.compact_revision:
                    raise _Restart(
                        "snapshot", f"revision {self._last + 1} was compacted (at {response.compact_revision})"
                    )
                if response.canceled:
                    raise _Restart("backoff", f"watch canceled: {response.cancel_reason or 'no reason'}")
                pending.extend(response.events)
                if response.fragment:
                    continue
                events, pending = pending, []
                if events:
                    changes = [_change(event) for event in events]
                    self._last = changes[-1].revision
                    self._reactor.callFromThread(self.mirror.apply_events, changes)
                elif response.header.revision:
                    self._last = max(self._last, int(response.header.revision))
                    self._reactor.callFromThread(self.mirror.progress, self._last)
            if not self._stopping.is_set():
                raise _Restart("backoff", "the watch stream ended")
        except _Restart:
            raise
        except Exception as error:
            if self._stopping.is_set():
                return
            raise self._thd_restart(error) from None
        finally:
            with self._lock:
                if self._stream is stream:
                    self._stream = None
            stream.close()

    def _thd_cancelled(self, reason: str) -> _Restart:
        kind = self._errors.classify_cancel_reason(reason)
        if issubclass(kind, self._errors.Compacted):
            return _Restart("snapshot", f"watch create refused: {reason}")
        if issubclass(kind, self._errors.AuthExpired):
            return _Restart("auth", f"watch create refused: {reason}")
        return _Restart("backoff", f"watch create refused: {reason}")

    def _thd_restart(self, error: BaseException) -> _Restart:
        classified = self._errors.classify(error)
        if isinstance(classified, self._errors.Compacted):
            return _Restart("snapshot", str(classified))
        if isinstance(classified, self._errors.AuthExpired):
            return _Restart("auth", str(classified))
        return _Restart("backoff", str(classified))

    def _thd_describe(self, error: BaseException) -> str:
        try:
            return str(self._errors.classify(error))
        except Exception:
            return f"{type(error).__name__}: {error}"

    def _thd_drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _close_quietly(client)

    def _thd_backoff(self, reason: str) -> None:
        delay = self._backoff.failed(self._monotonic())
        # self._last, not mirror.snapshots: the mirror belongs to the reactor thread.
        self._reactor.callFromThread(self.mirror.set_state, STALE if self._last else STARTING, reason)
        self._reactor.callFromThread(
            self._log.warn,
            "etcd watch of {prefix} interrupted: {reason}; retrying in {delay:.2f} s",
            prefix=self._prefix.decode("utf-8", "replace"),
            reason=reason,
            delay=delay,
        )
        # The client is kept: its calls fail over between endpoints themselves
        # (a stream that found its endpoint unavailable makes the next open
        # check it first) and gRPC reconnects its channel; a new client would
        # start again at the first endpoint. Its token may have expired while
        # the stream held it unused, so the next call authenticates first.
        with self._lock:
            client = self._client
        if client is not None:
            client.forget_token()
        self._step = self._thd_resume_step()
        self._stopping.wait(delay)


def _close_quietly(client: Any) -> None:
    """Close a client that is being given up on; its own errors no longer matter."""
    try:
        client.close()
    except Exception:
        pass


def _change(event: Any) -> Change:
    kv = event.kv
    if event.type == _EVENT_DELETE:
        return Change(DELETE, bytes(kv.key), b"", int(kv.mod_revision))
    return Change(PUT, bytes(kv.key), bytes(kv.value), int(kv.mod_revision))


async def _nothing() -> None:
    return None


__all__ = ["PrefixWatch", "STARTING", "SYNCED", "STALE"]
