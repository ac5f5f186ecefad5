"""What a slow, idle or numerous client can hold (StringTransport, Clock): deadlines, the cap, shedding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from cwm.web.connections import SHED_GRACE, ConnectionLimits
from cwm.web.limits import LINGER_SECONDS, LimitedChannel, LimitedSite, mark_streaming

LIMITS = ConnectionLimits(header_timeout=10, body_timeout=30, idle_timeout=60, max_connections=3)


class App(Resource):
    """``/slow`` never answers by itself (the request is kept); anything else answers at once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        return b"got %d" % (len(request.content.getvalue()),)


@implementer(ITCPTransport)
class TCPLikeTransport(StringTransport):
    """A StringTransport that can half-close and abort, with a file descriptor number."""

    aborted = False

    def __init__(self, fileno: int | None = None) -> None:
        super().__init__()
        self._fileno = fileno

    def fileno(self) -> int:
        return -1 if self._fileno is None else self._fileno

    def loseWriteConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.aborted = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Server:
    def __init__(self, limits: ConnectionLimits = LIMITS, max_body: int = 10_000_000) -> None:
        self.clock = Clock()
        self.app = App()
        self.site = LimitedSite(self.app, max_body_bytes=max_body, reactor=self.clock, limits=limits)

    def connect(self, fileno: int | None = None) -> tuple[LimitedChannel | None, TCPLikeTransport]:
        channel = self.site.buildProtocol(None)
        transport = TCPLikeTransport(fileno)
        if channel is not None:
            channel.makeConnection(transport)
        return channel, transport

    def close(self, channel: LimitedChannel) -> None:
        channel.connectionLost(Failure(ConnectionDone()))


def status(transport: StringTransport) -> int | None:
    data = transport.value()
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None


def detail(transport: StringTransport) -> str:
    return str(json.loads(transport.value().partition(b"\r\n\r\n")[2])["detail"])


def test_header_deadline_is_not_extended_by_trickled_bytes() -> None:
    """One header byte a second does not keep the head open past header_timeout (Twisted re-armed per byte)."""
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    for byte in b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: abcdefghij":
        channel.dataReceived(bytes([byte]))
        server.clock.advance(0.25)
        if transport.value():
            break
    assert status(transport) == 408
    assert detail(transport) == "Request header timeout: the request head must arrive within 10 s"
    assert server.site.connections.totals["header_timeout"] == 1


def test_half_request_line_gets_408_at_the_header_deadline() -> None:
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"POST /web")
    server.clock.advance(9.9)
    assert transport.value() == b""
    server.clock.advance(0.1)
    assert status(transport) == 408
    server.clock.advance(LINGER_SECONDS)
    assert transport.aborted


def test_silent_new_connection_is_closed_without_answer_at_the_header_deadline() -> None:
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    server.clock.advance(10)
    assert transport.value() == b"" and transport.disconnecting


def test_idle_keep_alive_is_closed_after_idle_timeout() -> None:
    """After an answer, the connection may wait idle_timeout for its next request, then it is closed."""
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status(transport) == 200 and not transport.disconnecting
    server.clock.advance(59)
    assert not transport.disconnecting
    server.clock.advance(1)
    assert transport.disconnecting
    assert server.site.connections.totals["idle_closed"] == 1
    server.clock.advance(LINGER_SECONDS)
    assert transport.aborted  # a client that never reads its last answer is cut
    server.close(channel)
    assert server.clock.getDelayedCalls() == []


def test_next_request_on_keep_alive_gets_the_header_deadline_from_its_first_byte() -> None:
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    server.clock.advance(50)
    transport.clear()
    channel.dataReceived(b"GET /x HT")
    server.clock.advance(9.9)
    assert transport.value() == b""
    server.clock.advance(0.1)
    assert status(transport) == 408


def test_stray_crlf_after_a_request_is_closed_quietly_not_answered_408() -> None:
    """A client may have a new request in flight: a 408 it did not ask for would be read as its answer."""
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\r\n")
    transport.clear()
    server.clock.advance(10)
    assert transport.value() == b"" and transport.disconnecting


def test_body_that_stops_gets_408_after_body_timeout() -> None:
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
    server.clock.advance(29.9)
    assert transport.value() == b""
    server.clock.advance(0.1)
    assert status(transport) == 408 and detail(transport).startswith("Request body timeout")
    assert server.site.connections.totals["body_timeout"] == 1


def test_body_one_byte_a_second_is_cut_near_body_timeout() -> None:
    """Each byte re-arms the pause timer, but the body must average MIN_BODY_RATE after body_timeout."""
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    elapsed = 0
    while not transport.value() and elapsed < 100:
        channel.dataReceived(b"x")
        server.clock.advance(1)
        elapsed += 1
    assert status(transport) == 408
    assert 30 <= elapsed <= 31


def test_body_at_a_fair_rate_may_take_longer_than_body_timeout() -> None:
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n")
    for _ in range(60):  # 1,000 bytes a second for a minute
        channel.dataReceived(b"x" * 1000)
        server.clock.advance(1)
    assert status(transport) == 200 and transport.value().endswith(b"got 60000")


def test_request_being_answered_has_no_deadline() -> None:
    """A request the application is still answering is not timed out by the HTTP layer."""
    server = Server()
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    server.clock.advance(3600)
    assert transport.value() == b"" and not transport.disconnecting
    request = server.app.pending.pop()
    request.write(b"late")
    request.finish()
    assert status(transport) == 200


def test_streaming_request_is_neither_timed_out_nor_shed_and_idles_after() -> None:
    server = Server(ConnectionLimits(header_timeout=10, body_timeout=30, idle_timeout=60, max_connections=1))
    channel, transport = server.connect()
    assert channel is not None
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    request = server.app.pending.pop()
    mark_streaming(request)
    server.clock.advance(3600)
    other, _ = server.connect()
    assert other is None  # the stream is not shed to make room
    assert not transport.disconnecting
    request.finish()
    server.clock.advance(60)
    assert transport.disconnecting  # an ordinary keep-alive connection again


def test_websocket_stream_leaves_the_table() -> None:
    server = Server(ConnectionLimits(max_connections=1))
    channel, _ = server.connect()
    assert channel is not None
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    mark_streaming(server.app.pending.pop())
    assert server.site.connections.open_count == 0
    assert server.connect()[0] is not None


def test_connections_past_the_cap_are_refused_and_counted() -> None:
    server = Server()
    for _ in range(3):
        assert server.connect()[0] is not None
    assert server.connect()[0] is None
    assert server.site.connections.totals["refused"] == 1


def test_at_the_cap_a_stalled_connection_is_shed_for_a_new_one() -> None:
    """Once the oldest waiting connection has kept the server waiting SHED_GRACE, it makes room."""
    server = Server()
    stalled = [server.connect() for _ in range(3)]
    stalled[0][0].dataReceived(b"GET /x HTTP/1.1\r\n")  # type: ignore[union-attr]
    server.clock.advance(SHED_GRACE)
    channel, transport = server.connect()
    assert channel is not None
    assert stalled[0][1].aborted and not stalled[1][1].aborted
    assert server.site.connections.totals["shed"] == 1
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status(transport) == 200


def test_busy_connections_are_never_shed() -> None:
    server = Server()
    for _ in range(3):
        channel, _ = server.connect()
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")  # type: ignore[union-attr]
    server.clock.advance(100)
    assert server.connect()[0] is None


FD_LIMITS = ConnectionLimits(max_connections=10_000, fd_limit=256)  # headroom 32: new ones up to fd 223


def test_near_the_fd_limit_stalled_connections_are_shed_first() -> None:
    """A connection that would take a descriptor near the soft limit sheds a stalled one instead of meeting EMFILE."""
    server = Server(FD_LIMITS)
    low = [server.connect(fileno=fd) for fd in range(220, 224)]
    server.clock.advance(SHED_GRACE)
    channel, transport = server.connect(fileno=224)
    assert channel is not None and not transport.aborted
    assert [t.aborted for _, t in low] == [True, False, False, False]
    assert server.site.connections.totals["shed"] == 1


def test_near_the_fd_limit_with_nothing_to_shed_the_new_connection_is_refused_at_once() -> None:
    server = Server(FD_LIMITS)
    for fd in range(220, 224):
        server.connect(fileno=fd)
    assert server.connect(fileno=224)[0] is None  # the port closes the socket before accepting more
    assert server.site.connections.totals["refused"] == 1


def test_a_descriptor_past_the_headroom_is_closed_at_once() -> None:
    """When something else took the descriptors meanwhile, the new connection is closed, never served into EMFILE."""
    server = Server(FD_LIMITS)
    channel, transport = server.connect(fileno=245)
    assert transport.aborted
    assert server.site.connections.totals["refused"] == 1
    assert server.site.connections.open_count == 0


def test_one_summary_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused and timed-out clients are logged as one line per interval, not one per client."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("cwm.web"):
            lines.append(formatEvent(event))

    server = Server()
    server.site.startFactory()
    globalLogPublisher.addObserver(observe)
    try:
        server.clock.advance(5)
        for _ in range(50):
            server.connect()
        server.clock.advance(10)  # 47 refused by t=10; the 3 silent ones closed at t=15
        server.clock.advance(10)
        assert lines == [
            "HTTP clients in the last 10 s: 47 refused at the connection limit, 0 shed to make room, "
            "0 header timeouts, 0 body timeouts, 0 idle connections closed, "
            "0 malformed or oversized requests rejected; 3 connections open",
            "HTTP clients in the last 10 s: 0 refused at the connection limit, 0 shed to make room, "
            "3 header timeouts, 0 body timeouts, 0 idle connections closed, "
            "0 malformed or oversized requests rejected; 0 connections open",  # the 3 timed out are closing
        ]
        server.clock.advance(30)
        assert len(lines) == 2  # nothing new, no line
    finally:
        globalLogPublisher.removeObserver(observe)
        server.site.stopFactory()


def test_no_timer_left_after_the_connection_is_lost() -> None:
    server = Server()
    channel, _ = server.connect()
    assert channel is not None
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n1")
    server.close(channel)
    assert server.clock.getDelayedCalls() == []
    assert server.site.connections.open_count == 0


def test_on_a_wrapping_listener_a_refused_connection_is_a_protocol_that_aborts() -> None:
    """A TLS listener wraps what buildProtocol returns: None there logged two tracebacks per refused client."""
    from cwm.web.limits import RefusedConnection

    server = Server(ConnectionLimits(max_connections=1))
    server.site.wrapped = True
    assert server.connect()[0] is not None
    refused = server.site.buildProtocol(None)
    assert isinstance(refused, RefusedConnection)
    transport = TCPLikeTransport()
    refused.makeConnection(transport)
    assert transport.aborted and server.site.connections.totals["refused"] == 1


def test_a_rejected_connection_lingering_for_its_answer_is_no_shed_candidate() -> None:
    """While it lingers so the client can read its 400, it holds its descriptor but is no longer waiting."""
    server = Server()
    rejected, _ = server.connect()
    assert rejected is not None
    rejected.dataReceived(b"\x16\x03\x01garbage")
    stalled, stalled_transport = server.connect()
    server.clock.advance(SHED_GRACE)
    assert server.site.connections.open_count == 1
    server.connect()
    server.connect()
    assert server.connect()[0] is not None  # room made by shedding the stalled one, not the lingering one
    assert stalled_transport.aborted
