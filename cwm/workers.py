"""Bounded thread pools for blocking work (file writes, parsing a huge body), each owned by a service.

The reactor's own thread pool also resolves host names; work that may wait
on a stuck disk must never sit there. Each ``ThreadWorkers`` is a service
with its own few threads and a bound on the work waiting for them: past the
bound ``run`` fails at once with ``WorkersBusy`` (the caller answers 503),
so a slow disk costs memory for a bounded number of webhooks, not for all.
Functions handed to ``run`` are named ``thd_*`` and touch no reactor-owned
state: their result or exception comes back through a Deferred.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

STOP_TIMEOUT = 30.0
"""Seconds ``stopService`` waits for the running work to end before it gives up waiting."""


class WorkersBusy(Exception):
    """Every thread is busy and the queue is full (or the pool has stopped)."""


class BlockingWork(Protocol):
    """Runs a blocking function away from the reactor thread."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """``function(*args)`` elsewhere; the Deferred fires with its result or failure.

        Fails with ``WorkersBusy`` at once when no more work can be queued.
        """
        ...


class ThreadWorkers(Service):
    """A few dedicated threads and a bounded queue in front of them.

    Args:
        reactor: Provides ``callFromThread`` and ``IReactorTime``.
        name: Names the threads (``cwm-files-0``...), for stack dumps.
        threads: Most threads at once.
        queue_limit: Most calls accepted at once, running or waiting.
    """

    _log = Logger()

    def __init__(self, reactor: Any, name: str, threads: int, queue_limit: int) -> None:
        if threads < 1 or queue_limit < threads:
            raise ValueError("need at least one thread and a queue limit of at least as many")
        self._name = name
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        # Daemon threads: a call stuck on a dead disk (given up on by
        # stopService after STOP_TIMEOUT) must not keep the process from exiting.
        self._pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
        self._queue_limit = queue_limit
        self.pending = 0
        self.refused = 0
        self._stopped = False

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        self._pool.start()

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._stopped:
            return fail(WorkersBusy(f"the {self._name} threads have stopped"))
        if self.pending >= self._queue_limit:
            self.refused += 1
            return fail(WorkersBusy(f"{self.pending} blocking calls already wait for the {self._name} threads"))
        self.pending += 1

        def done(result: T | Failure) -> T | Failure:
            self.pending -= 1
            return result

        # A caller that cancels (a client that went away) gets its answer at
        # once, but the call still holds its place until the thread is done
        # with it: otherwise cancelling would get around the bound.
        answer: Deferred[T] = Deferred()
        deferToThreadPool(self._reactor, self._pool, function, *args).addBoth(done).chainDeferred(answer)
        return answer

    def stopService(self) -> Deferred[None]:
        """Let the running and queued work finish, then end the threads; fires when they have.

        ``ThreadPool.stop`` joins its threads, which may wait on a stuck disk:
        it runs on a plain thread of its own, and the wait is bounded.
        """
        super().stopService()
        self._stopped = True
        stopped: Deferred[None] = Deferred()

        def fire() -> None:
            if not stopped.called:
                stopped.callback(None)

        def thd_stop() -> None:
            self._pool.stop()
            self._reactor.callFromThread(fire)

        threading.Thread(target=thd_stop, name=f"{self._name}-stop", daemon=True).start()

        def gave_up(failure: Failure) -> None:
            self._log.warn(
                "the {name} threads did not finish within {timeout} s; {pending} calls still run",
                name=self._name,
                timeout=STOP_TIMEOUT,
                pending=self.pending,
            )

        return stopped.addTimeout(STOP_TIMEOUT, self._reactor).addErrback(gave_up)


class InlineWork:
    """Runs the function at once on the calling thread: for tests and one-shot command-line tools."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        try:
            return succeed(function(*args))
        except Exception:
            return fail(Failure())


class NoWorkers:
    """Refuses all work: the default of a module context built without threads (validation only)."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return fail(WorkersBusy("no threads were given for blocking work"))
