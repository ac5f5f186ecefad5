"""Where the ``log`` module's text goes: stdout through a writer thread, or twistd's log.

A write to stdout blocks when the reader of the pipe stops reading (a full
pipe buffer, a paused terminal, a stuck log collector). The reactor thread
never makes that call: ``StdoutWriter`` hands the text to a thread of its own
through a bounded buffer. The ``log`` module's answer still tells the truth:
its Deferred fires once the text is written and flushed, so a stalled pipe
gives 202 after ``response_timeout``, and a buffer past its bound gives 503
with Retry-After (counted in ``refused``) instead of growing without end.

When twistd runs as a daemon, its stdout is /dev/null: ``LoggerOutput`` then
sends each webhook's text to twistd's log, where the operator looks.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwm.modules.base import ModuleUnavailable

DEFAULT_BUFFER_LIMIT = 8 * 1024 * 1024
"""Characters waiting for stdout at most; past it the log module answers 503."""

FULL_RETRY_AFTER = 5
"""Seconds a sender waits before retrying while stdout is not keeping up."""

STOP_TIMEOUT = 10.0
"""Seconds ``stopService`` waits for the buffered text to be written."""


def _reason(error: BaseException) -> str:
    # ValueError: the stream was closed.
    return getattr(error, "strerror", None) or type(error).__name__


class StdoutWriter(Service):
    """Writes text to a stream from a thread of its own, through a bounded buffer.

    Args:
        reactor: Provides ``callFromThread`` and ``IReactorTime``.
        stream: The text stream (the process's stdout).
        limit: Characters that may wait at most.
    """

    _log = Logger()

    def __init__(self, reactor: Any, stream: IO[str], limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self._reactor = reactor
        self._stream = stream
        self._limit = limit
        self._ready = threading.Condition()
        # Shared with the thread, under _ready: (text, its Deferred) waiting to be written.
        self._queue: deque[tuple[str, Deferred[None]]] = deque()
        self._stopping = False
        # Reactor thread only.
        self.buffered = 0
        self.refused = 0
        self._refusing = False
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self.thd_run, name="cwm-stdout", daemon=True)
        self._thread.start()

    def write(self, text: str) -> Deferred[None]:
        """Queue ``text``; the Deferred fires once it is written and flushed.

        Fails at once with ModuleUnavailable (503, Retry-After) when the
        buffer would pass its bound, and with it later if the write fails.
        """
        if not self.running:  # no thread will write it: stopping, or never started
            return fail(ModuleUnavailable("could not write to stdout: the writer has stopped", FULL_RETRY_AFTER))
        if self.buffered and self.buffered + len(text) > self._limit:
            self.refused += 1
            if not self._refusing:
                self._refusing = True
                self._log.warn(
                    "stdout is not keeping up: {buffered} characters wait; webhooks for the log module get 503",
                    buffered=self.buffered,
                )
            return fail(
                ModuleUnavailable(
                    "could not write to stdout: the output buffer is full", retry_after=FULL_RETRY_AFTER
                )
            )
        written: Deferred[None] = Deferred()
        self.buffered += len(text)
        with self._ready:
            self._queue.append((text, written))
            self._ready.notify()
        return written

    def thd_run(self) -> None:
        """The thread: write whatever waits, flush once per batch, report back; until stopped and drained."""
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    break
                batch = list(self._queue)
                self._queue.clear()
            error: BaseException | None = None
            try:
                for text, _ in batch:
                    self._stream.write(text)  # off-reactor: the writer thread
                self._stream.flush()  # off-reactor
            except (OSError, ValueError) as e:
                error = e
            self._reactor.callFromThread(self._written, batch, error)
        self._reactor.callFromThread(self._thread_ended)

    def _written(self, batch: list[tuple[str, Deferred[None]]], error: BaseException | None) -> None:
        self.buffered -= sum(len(text) for text, _ in batch)
        if self._refusing and self.buffered * 2 <= self._limit:
            self._refusing = False
            self._log.info("stdout keeps up again; {refused} webhooks were refused so far", refused=self.refused)
        if error is not None:
            reason = _reason(error)
            self._log.error("could not write {count} webhooks to stdout: {reason}", count=len(batch), reason=reason)
        for _, written in batch:
            if error is None:
                written.callback(None)
            else:
                written.errback(Failure(ModuleUnavailable(f"could not write to stdout: {reason}")))

    def _thread_ended(self) -> None:
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def stopService(self) -> Deferred[None]:
        """Write what is buffered, then end the thread; the wait is bounded (a pipe may never drain)."""
        super().stopService()
        with self._ready:
            self._stopping = True
            self._ready.notify()
        stopped = self._stopped
        if stopped is None or stopped.called:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        stopped.chainDeferred(waiter)

        def gave_up(failure: Failure) -> None:
            self._log.warn(
                "stdout did not take the last {buffered} characters within {timeout} s",
                buffered=self.buffered,
                timeout=STOP_TIMEOUT,
            )

        return waiter.addTimeout(STOP_TIMEOUT, self._reactor).addErrback(gave_up)


LOG_TEXT_LIMIT = 64 * 1024
"""Characters of one webhook's text sent to twistd's log; the rest is cut, and the cut said."""


class LoggerOutput:
    """Sends each webhook's text to twistd's log: for a daemon, whose stdout is /dev/null.

    twistd's log observers write each event on the reactor thread, so one
    event is kept to ``LOG_TEXT_LIMIT`` characters: a 10 MB body must not
    become a 10 MB write there. (Run with ``-n`` to see whole bodies on stdout.)
    """

    _log = Logger(namespace="cwm.modules.log")

    def __init__(self, limit: int = LOG_TEXT_LIMIT) -> None:
        self._limit = limit

    def write(self, text: str) -> Deferred[None]:
        text = text.rstrip("\n")
        if len(text) > self._limit:
            cut = len(text) - self._limit
            text = f"{text[: self._limit]}... [{cut} more characters not logged]"
        self._log.info("{webhook_text}", webhook_text=text)
        return succeed(None)


class DirectOutput:
    """Writes to a stream at once, on the calling thread: for tests over an in-memory stream."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> Deferred[None]:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError) as error:
            return fail(ModuleUnavailable(f"could not write to stdout: {_reason(error)}"))
        return succeed(None)
