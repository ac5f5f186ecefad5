"""Hostile request heads are answered at once, in JSON, by the channel (StringTransport)."""

from __future__ import annotations

import pytest
from klein import Klein
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from cwm.web.framing import host_problem
from cwm.web.limits import LimitedChannel, NamedRequest
from tests.unit.channel import answer
from tests.unit.channel import connect as connect_to


class Echo(Resource):
    """Answers with the body it got."""

    isLeaf = True

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        return b"ok"

    def render_POST(self, request):  # type: ignore[no-untyped-def]
        return b"got " + request.content.getvalue()


def connect(resource: Resource | None = None, max_body: int = 1000) -> tuple[LimitedChannel, StringTransport]:
    return connect_to(resource or Echo(), max_body)


def routed() -> Resource:
    app = Klein()

    @app.route("/x")
    def x(request):  # type: ignore[no-untyped-def]
        return b"routed"

    return app.resource()


@pytest.mark.parametrize("host", [b"127.0..1", b"..", b"a" * 64 + b".example", b"a" * 64])
def test_host_the_router_rejects_is_json_400(host: bytes) -> None:
    """A Host werkzeug's router cannot bind is a 400 with a reason, not a 500 page and a logged traceback."""
    channel, transport = connect(routed())
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    status, body = answer(transport)
    assert status == 400 and body["detail"].startswith("Invalid Host header")


def test_host_with_byte_ff_is_json_400() -> None:
    """A non-ASCII Host is refused before Klein could answer text/html."""
    channel, transport = connect(routed())
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\xff\r\n\r\n")
    assert answer(transport) == (400, {"detail": "Invalid Host header"})


@pytest.mark.parametrize(
    "host", [b"example.com", b"example.com:8080", b"127.0.0.1:80", b"[::1]:8000", b"xn--bcher-kva.example", b"a" * 63]
)
def test_valid_hosts_are_routed(host: bytes) -> None:
    channel, transport = connect(routed())
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200") and b"routed" in transport.value()


def test_missing_host_in_http11_is_400_but_fine_in_http10() -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one Host."""
    channel, transport = connect()
    channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
    assert answer(transport) == (400, {"detail": "Missing Host header (required in HTTP/1.1)"})
    channel, transport = connect()
    channel.dataReceived(b"GET /x HTTP/1.0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.0 200")


def test_two_host_headers_are_400() -> None:
    channel, transport = connect()
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert answer(transport) == (400, {"detail": "More than one Host header"})


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n 2\r\n\r\nhi",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\tchunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-A: one\r\n two\r\n\r\nhi",
    ],
)
def test_folded_header_lines_are_refused(head: bytes) -> None:
    """obs-fold is refused (RFC 9112 §5.2), never unfolded and used, Content-Length and Transfer-Encoding included."""
    channel, transport = connect()
    channel.dataReceived(head)
    assert answer(transport) == (400, {"detail": "Folded header line (obs-fold) not accepted"})


@pytest.mark.parametrize(
    "data, detail",
    [
        (b"GET /x HTTP/1.1\nHost: a\n\n", "Bare LF line ending (lines must end with CRLF)"),
        (b"GET /x HTTP/1.1\r\nHost: a\n", "Bare LF line ending (lines must end with CRLF)"),
        (bytes.fromhex("16030100c4010000c00303") + b"\x00" * 32, "Malformed request line"),
        (b"\x8f\x01\x02garbage", "Malformed request line"),
        (b"GET /x\x01", "Malformed request line"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x01", "Header contains a control character"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX A: b", "Invalid header name"),
    ],
)
def test_unfinished_garbage_is_answered_at_once(data: bytes, detail: str) -> None:
    """No CRLF has arrived, yet no valid request can start like this: 400 now, not at a timeout."""
    channel, transport = connect()
    channel.dataReceived(data)
    assert answer(transport) == (400, {"detail": detail})


def test_garbage_one_byte_at_a_time_is_answered_at_the_first_bad_byte() -> None:
    channel, transport = connect()
    for byte in b"POST /x HTTP/1.1\r\nHost: a\r\nX-A: ok":
        channel.dataReceived(bytes([byte]))
    assert transport.value() == b""
    channel.dataReceived(b"\x7f")
    assert answer(transport)[0] == 400


def test_control_character_in_a_complete_header_value_is_400() -> None:
    channel, transport = connect()
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x1bc\r\n\r\n")
    assert answer(transport) == (400, {"detail": "Header contains a control character"})


def test_chunk_size_over_the_limit_is_413_before_its_data() -> None:
    """A chunk size line announcing more than the body limit is answered 413 at once."""
    channel, transport = connect(max_body=1000)
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"10\r\n0123456789abcdef\r\n")
    assert transport.value() == b""
    channel.dataReceived(b"FFFFFF\r\nab")
    status, body = answer(transport)
    assert status == 413 and "1000 bytes" in body["detail"]


def test_body_with_lf_and_pipelined_requests_in_one_segment() -> None:
    """The early checks look only at the head: a body may hold bare LFs, and pipelined requests pass."""
    channel, transport = connect()
    body = b'{\n "a": 1\n}\n'
    first = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    second = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    channel.dataReceived(first + second)
    assert transport.value().count(b"HTTP/1.1 200") == 2
    assert b"got " + body in transport.value()


@pytest.mark.parametrize("request_line", [b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n"])
def test_server_header_names_cwm_only(request_line: bytes) -> None:
    """Every answer says ``Server: cwm``, never Twisted's name and version."""
    channel, transport = connect(routed())
    channel.dataReceived(request_line)
    head = transport.value().partition(b"\r\n\r\n")[0]
    assert b"\r\nServer: cwm\r\n" in head and b"TwistedWeb" not in head


def test_server_header_on_early_rejections() -> None:
    channel, transport = connect()
    channel.dataReceived(b"\x16\x03\x01")
    assert b"\r\nServer: cwm\r\n" in transport.value()


@pytest.mark.parametrize(
    "value, ok",
    [(b"", True), (b"a:", True), (b"a:x", False), (b"[::1", False), (b"[::1]x", False), (b"a b", False),
     (b"%41.example", True), (b"a..b", False), (b"a.b.", True)],
)
def test_host_problem(value: bytes, ok: bool) -> None:
    assert (host_problem(value) is None) == ok


def test_named_request_on_a_plain_site() -> None:
    """The connector's status page (a plain Site) answers ``Server: cwm`` too."""
    site = Site(Echo(), requestFactory=NamedRequest, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = transport.value().partition(b"\r\n\r\n")[0]
    assert b"\r\nServer: cwm\r\n" in head and b"TwistedWeb" not in head
    channel.connectionLost(None)
