"""Writing keys to etcd from a dedicated thread, optionally on a lease that is kept alive.

With a TTL the publisher grants a lease, puts its keys on it and keeps it
alive; if the lease is lost anyway (a long pause, an outage) it grants a new
one and puts every key again. A clean stop revokes the lease so the keys
vanish at once instead of after the TTL. Without a TTL keys simply persist.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

_STOP = object()
STOP_TIMEOUT = 5.0


class PublisherClient(Protocol):
    """What the publisher needs of cwm.etcd.client.EtcdClient."""

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int: ...

    def lease_grant(self, ttl: int) -> tuple[int, int]: ...

    def lease_keepalive(self, lease_id: int) -> int: ...

    def lease_revoke(self, lease_id: int) -> None: ...

    def close(self) -> None: ...


class LeasedPublisher(Service):
    """Puts keys (on a kept-alive lease when ``ttl`` is set) and revokes them on stop."""

    _log = Logger()

    def __init__(
        self,
        client_factory: Callable[[], PublisherClient],
        reactor: Any,
        ttl: int | None = None,
        name: str = "etcd-publisher",
    ) -> None:
        self._client_factory = client_factory
        self._reactor = reactor
        self.ttl = ttl
        self._thread_name = name
        self._work: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        # Only the publisher thread touches these.
        self._client: PublisherClient | None = None
        self.lease_id = 0
        self._published: dict[bytes, bytes] = {}

    # --- reactor side -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self.thd_run, name=self._thread_name, daemon=True)
        self._thread.start()

    def publish(self, key: bytes, value: bytes) -> Deferred[int]:
        """Put ``key`` (on the lease, if any); fires with the write's revision."""
        done: Deferred[int] = Deferred()
        self._work.put((key, value, done))
        return done

    def stopService(self) -> Deferred[None]:
        """Revoke the lease (its keys vanish at once), then end the thread."""
        super().stopService()
        self._work.put(_STOP)
        stopped = self._stopped
        if stopped is None or stopped.called:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        waiter: Deferred[None] = Deferred()
        stopped.chainDeferred(waiter)
        return waiter.addTimeout(STOP_TIMEOUT, self._reactor).addErrback(
            lambda f: self._log.failure("the etcd publisher did not stop in time", f)
        )

    # --- the thread ---------------------------------------------------------------------------

    def thd_run(self) -> None:
        """Serve puts; between them keep the lease alive every third of its TTL."""
        interval = max(1.0, self.ttl / 3.0) if self.ttl else None
        try:
            while True:
                try:
                    item = self._work.get(timeout=interval)
                except queue.Empty:
                    self.thd_keepalive()
                    continue
                if item is _STOP:
                    self.thd_revoke()
                    return
                key, value, done = item
                try:
                    revision = self.thd_put(key, value)
                except Exception as error:
                    self._reactor.callFromThread(done.errback, Failure(error))
                else:
                    self._reactor.callFromThread(done.callback, revision)
        finally:
            self._drop_client()
            stopped = self._stopped
            if stopped is not None:
                self._reactor.callFromThread(_fire, stopped)

    def thd_client(self) -> PublisherClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def thd_put(self, key: bytes, value: bytes) -> int:
        """Put one key, on the lease when there is a TTL (granting one if needed)."""
        # Remembered first: if this put fails, the lease keep-alive puts it
        # again once etcd answers.
        self._published[key] = value
        client = self.thd_client()
        if self.ttl and not self.lease_id:
            self.lease_id, _ = client.lease_grant(self.ttl)
        return client.put(key, value, self.lease_id)

    def thd_keepalive(self) -> None:
        """Renew the lease; if etcd lost it, take a new one and put every key again."""
        if not self.ttl:
            return
        try:
            client = self.thd_client()
            remaining = client.lease_keepalive(self.lease_id) if self.lease_id else 0
            if remaining > 0:
                return
            self._log_from_thread("lease {lease} expired; registering again", lease=self.lease_id)
            self.lease_id, _ = client.lease_grant(self.ttl)
            for key, value in self._published.items():
                client.put(key, value, self.lease_id)
        except Exception as error:
            # The client is kept: its calls fail over between endpoints and
            # renew an expired token themselves; the next tick tries again.
            self._log_from_thread(
                "keeping the etcd lease alive failed: {error}", error=f"{type(error).__name__}: {error}"
            )

    def thd_revoke(self) -> None:
        """Revoke the lease so its keys disappear now rather than after the TTL."""
        if not self.lease_id:
            return
        try:
            self.thd_client().lease_revoke(self.lease_id)
        except Exception as error:
            self._log_from_thread(
                "revoking etcd lease {lease} failed: {error}", lease=self.lease_id, error=str(error)
            )
        self.lease_id = 0

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None

    def _log_from_thread(self, format: str, **fields: Any) -> None:
        self._reactor.callFromThread(self._log.warn, format, **fields)


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)
