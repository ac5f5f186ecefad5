"""Request limits enforced by the channel while the request streams in (StringTransport, Clock)."""

from __future__ import annotations


import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

from cwm.web.limits import LINGER_SECONDS, LimitedChannel, LimitedSite
from tests.unit.channel import answer
from tests.unit.channel import connect as connect_to


class Echo(Resource):
    """Answers with the body length it got."""

    isLeaf = True

    def render_POST(self, request):  # type: ignore[no-untyped-def]
        return b"got %d" % (len(request.content.getvalue()),)


def connect(max_body: int = 1000) -> tuple[LimitedChannel, StringTransport]:
    return connect_to(Echo(), max_body)


def test_content_length_over_limit_is_413_before_body() -> None:
    """A Content-Length over the limit is answered 413 right after the headers."""
    channel, transport = connect(1000)
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
    status, body = answer(transport)
    assert status == 413
    assert body == {"detail": "Payload too large: 5000 bytes (max: 1000)"}
    assert transport.disconnecting
    # What the client still sends is ignored, never buffered.
    channel.dataReceived(b"x" * 5000)
    assert transport.value().count(b"HTTP/1.1") == 1


def test_expect_continue_over_limit_gets_413_not_100() -> None:
    """A client that waits for 100 Continue gets the 413 instead and never sends the body."""
    channel, transport = connect(10)
    channel.dataReceived(
        b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
    )
    assert b"100 Continue" not in transport.value()
    assert answer(transport)[0] == 413


def test_chunked_body_over_limit_is_413_midstream() -> None:
    """A chunked body is counted as it arrives and cut as soon as it passes the limit."""
    channel, transport = connect(10)
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"8\r\n12345678\r\n")
    assert transport.value() == b""
    channel.dataReceived(b"8\r\n12345678\r\n0\r\n\r\n")
    status, body = answer(transport)
    assert status == 413 and "more than 10 bytes" in body["detail"]
    assert transport.value().count(b"HTTP/1.1") == 1


def test_body_within_limit_is_served() -> None:
    """A body exactly at the limit reaches the resource."""
    channel, transport = connect(10)
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789")
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert transport.value().endswith(b"got 10")


def test_too_many_headers_is_431() -> None:
    """The 101st header is answered 431 with the limit in the reason."""
    channel, transport = connect()
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    channel.dataReceived(b"POST /x HTTP/1.1\r\n" + headers + b"\r\n")
    assert answer(transport) == (431, {"detail": "Too many request headers (max 100)"})


def test_hundred_headers_are_fine() -> None:
    """Exactly 100 headers are accepted."""
    channel, transport = connect()
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(98))
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n" + headers + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")


def test_header_line_over_16k_is_431() -> None:
    """A header line over 16 KiB gets 431 instead of a silently dropped connection."""
    channel, transport = connect()
    channel.dataReceived(b"POST /x HTTP/1.1\r\nX-Big: " + b"a" * (16 * 1024 + 1) + b"\r\n\r\n")
    status, body = answer(transport)
    assert status == 431 and "16384" in body["detail"]


def test_request_line_too_long_is_414() -> None:
    """An over-long request line is 414."""
    channel, transport = connect()
    channel.dataReceived(b"POST /" + b"a" * (16 * 1024 + 1) + b" HTTP/1.1\r\n")
    assert answer(transport)[0] == 414


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"POST /x HTTP/1.1\r\nX-Bad: a\x00b\r\n\r\n", "Header value contains CR, LF or NUL"),
        (b"POST /x HTTP/1.1\r\nX-Bad: a\rb\r\n\r\n", "Header value contains CR, LF or NUL"),
        (b"POST /x HTTP/1.1\r\nNoColonHere\r\n\r\n", "Malformed header line (no ':')"),
        (b"POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "Invalid or conflicting Content-Length / Transfer-Encoding"),
        (b"NONSENSE\r\n\r\n", "Malformed request line"),
    ],
)
def test_malformed_requests_get_json_400(raw: bytes, reason: str) -> None:
    """Rejections Twisted itself makes carry a JSON body with the reason."""
    channel, transport = connect()
    channel.dataReceived(raw)
    assert answer(transport) == (400, {"detail": reason})


def test_non_utf8_path_is_json_400() -> None:
    """A path that is not UTF-8 is a JSON 400, not Klein's plain text."""
    channel, transport = connect()
    channel.dataReceived(b"POST /%ff HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert answer(transport) == (400, {"detail": "Request path is not valid UTF-8"})


@implementer(ITCPTransport)
class TCPLikeTransport(StringTransport):
    """A StringTransport that can half-close, as a TCP transport can."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def test_rejection_half_closes_then_cuts_after_linger() -> None:
    """On TCP the answer is followed by a FIN; what the client still sends is dropped; then the cut."""
    clock = Clock()
    site = LimitedSite(Echo(), max_body_bytes=10, reactor=clock)
    channel = site.buildProtocol(None)
    transport = TCPLikeTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\n")
    assert answer(transport)[0] == 413
    assert transport.write_closed and not transport.aborted
    channel.dataReceived(b"y" * 100_000)
    assert channel._buffer == b""
    clock.advance(LINGER_SECONDS)
    assert transport.aborted
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_client_closing_first_cancels_the_linger_timer() -> None:
    """When the client closes after reading the answer, no timer is left behind."""
    clock = Clock()
    site = LimitedSite(Echo(), max_body_bytes=10, reactor=clock)
    channel = site.buildProtocol(None)
    transport = TCPLikeTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\n")
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == [] and not transport.aborted
