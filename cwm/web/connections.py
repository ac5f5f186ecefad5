"""What the HTTP listener lets clients hold: open connections, their deadlines' settings, shedding.

Every open connection of the site is in one table. Those waiting for the
client (idle between requests, or reading a request's head or body) are kept
in the order their wait began, so that when the table is full, or the process
nears its file-descriptor limit, the connection that has kept the server
waiting longest is closed to make room for the new one. Connections whose
request is being answered, and Webhook Connect streams, are never shed.

Refused, shed and timed-out clients are counted and logged as one summary
line per interval, never one line per client: a flood must not become a log
flood.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

SUMMARY_INTERVAL = 10.0
# A waiting connection may be shed once it has kept the server waiting this long.
SHED_GRACE = 1.0
# How many of the oldest waiting connections are looked at to find one to shed.
SHED_SCAN = 64
# Connections are shed (or, failing that, refused) once a new connection's file
# descriptor comes this close to the soft limit: the rest is kept for the files,
# outbound connections and client libraries that serving a request needs.
MIN_FD_HEADROOM = 32


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may keep the server waiting, and how many connections it may open.

    Attributes:
        header_timeout: Seconds from a request's first byte (or from the
            connection, for its first request) to the end of its head; not
            extended by more bytes.
        body_timeout: Seconds a request body may go without a byte; the whole
            body must also average at least ``MIN_BODY_RATE`` bytes/s after its
            first ``body_timeout`` seconds.
        idle_timeout: Seconds a keep-alive connection may wait for its next request.
        max_connections: Open connections past which new ones are closed at
            once (after shedding a waiting one, when one has waited long enough).
        fd_limit: The process's soft limit on open files, or None not to watch it.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    fd_limit: int | None = None

    @property
    def fd_headroom(self) -> int:
        return MIN_FD_HEADROOM if self.fd_limit is None else max(MIN_FD_HEADROOM, self.fd_limit // 16)


class Peer(Protocol):
    """What the table needs of a connection (LimitedChannel)."""

    def shed_candidate(self, now: float) -> bool:
        """Whether it has kept the server waiting long enough to be shed."""

    def shed(self) -> None:
        """Close it now, without an answer."""

    def fileno(self) -> int | None:
        """Its file descriptor, when it has one."""


class ConnectionTable:
    """The open connections of one site; tallies what it refused, shed and timed out."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, limits: ConnectionLimits, interval: float = SUMMARY_INTERVAL) -> None:
        self._clock = clock
        self.limits = limits
        self._interval = interval
        self._open: set[Peer] = set()
        self._waiting: dict[Peer, None] = {}  # insertion order: the oldest wait first
        self._streams: set[Peer] = set()
        self._closing: set[Peer] = set()  # closed by this side, descriptor not yet released
        self._fd_offset = 0  # descriptors in use other than connections, as last seen
        self.tally: Counter[str] = Counter()  # since the last summary line
        self.totals: Counter[str] = Counter()  # since start
        self._summary: LoopingCall | None = None

    @property
    def open_count(self) -> int:
        return len(self._open)

    def count(self, what: str) -> None:
        """One more client refused, shed, timed out or rejected (``what`` names which)."""
        self.tally[what] += 1
        self.totals[what] += 1

    def admit(self) -> bool:
        """Whether a new connection may be built; when full, sheds a waiting one to make room.

        Full is at ``max_connections``, or when the new connection's descriptor
        would come within the headroom of the file-descriptor limit (predicted
        from the last connection's descriptor: refusing here closes the socket
        at once, before more are accepted, so the process never meets EMFILE).
        """
        limits = self.limits
        full = len(self._open) >= limits.max_connections
        if limits.fd_limit is not None:
            in_use = len(self._open) + len(self._closing)
            full = full or in_use + self._fd_offset >= limits.fd_limit - limits.fd_headroom
        if not full:
            return True
        # A shed connection's descriptor is freed a moment later: bound how many are in flight.
        if len(self._closing) < limits.fd_headroom // 2 and self._shed_one():
            return True
        self.count("refused")
        return False

    def opened(self, peer: Peer) -> bool:
        """Register a new connection; False when it must be closed at once (no descriptors to spare)."""
        self._open.add(peer)
        self._waiting[peer] = None
        limit = self.limits.fd_limit
        fd = peer.fileno()
        if limit is None or fd is None or fd < 0:
            return True
        self._fd_offset = fd - (len(self._open) + len(self._closing) - 1)
        if fd < limit - self.limits.fd_headroom // 2:
            return True
        self.count("refused")  # only when descriptors were taken by something else meanwhile
        self.closing(peer)
        return False

    def waiting(self, peer: Peer) -> None:
        """``peer`` starts waiting for its client (idle, or a new request's head)."""
        self._waiting.pop(peer, None)
        self._streams.discard(peer)
        self._waiting[peer] = None

    def busy(self, peer: Peer) -> None:
        """``peer``'s request is being answered: never shed meanwhile."""
        self._waiting.pop(peer, None)

    def streaming(self, peer: Peer) -> None:
        """``peer`` carries a Webhook Connect stream, which keeps its own heartbeat rules."""
        self._waiting.pop(peer, None)
        self._streams.add(peer)

    def closing(self, peer: Peer) -> None:
        """``peer`` is being closed by this side: it no longer counts as open, but holds its descriptor."""
        self._open.discard(peer)
        self._waiting.pop(peer, None)
        self._streams.discard(peer)
        self._closing.add(peer)

    def closed(self, peer: Peer) -> None:
        self._open.discard(peer)
        self._waiting.pop(peer, None)
        self._streams.discard(peer)
        self._closing.discard(peer)

    def handed_over(self, peer: Peer) -> None:
        """``peer``'s connection now belongs to another protocol (a WebSocket): no longer counted."""
        self.closed(peer)

    def _shed_one(self) -> bool:
        now = self._clock.seconds()
        for scanned, peer in enumerate(self._waiting):
            if scanned >= SHED_SCAN:
                break
            if peer.shed_candidate(now):
                self.closing(peer)
                self.count("shed")
                peer.shed()
                return True
        return False

    def start(self) -> None:
        """Start the summary line."""
        if self._summary is None:
            self._summary = LoopingCall(self.log_summary)
            self._summary.clock = self._clock
            self._summary.start(self._interval, now=False).addErrback(self._summary_failed)

    def stop(self) -> None:
        """Stop the summary line, after a last one for what the interval had so far."""
        if self._summary is not None and self._summary.running:
            self._summary.stop()
        self._summary = None
        self.log_summary()

    def _summary_failed(self, failure: Failure) -> None:
        self._log.failure("the HTTP connection summary stopped", failure)

    def log_summary(self) -> None:
        """Log, in one line, what happened to clients since the last line; nothing when nothing did."""
        if not self.tally:
            return
        tally, self.tally = self.tally, Counter()
        self._log.info(
            "HTTP clients in the last {interval:g} s: {refused} refused at the connection limit, "
            "{shed} shed to make room, {header_timeouts} header timeouts, {body_timeouts} body timeouts, "
            "{idle_closed} idle connections closed, {rejected} malformed or oversized requests rejected; "
            "{open} connections open",
            interval=self._interval,
            refused=tally["refused"],
            shed=tally["shed"],
            header_timeouts=tally["header_timeout"],
            body_timeouts=tally["body_timeout"],
            idle_closed=tally["idle_closed"],
            rejected=tally["rejected"],
            open=len(self._open),
        )
