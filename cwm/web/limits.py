"""HTTP/1.1 limits enforced while the request streams in, before the body is buffered.

Twisted's own channel answers a bare ``400`` (or simply drops the connection,
for an over-long header line) with no reason. cwm's channel answers every such
rejection itself, as JSON ``{"detail": ...}``: 413 for a body over the limit
(as soon as Content-Length or a chunk size says so, or as soon as a chunked
body passes it, without reading the rest), 431 for too many or too large
headers, 414 for an over-long request line, 400 with the reason for malformed
framing (at the first byte no valid request could contain) or a bad Host, 408
when the client is too slow.

Deadlines replace Twisted's idle timeout, which every byte re-arms (a client
sending one byte every 20 s held a connection forever): the head of a request
must arrive within ``header_timeout`` of its first byte (of the connection, for
the first request), a body may not pause
longer than ``body_timeout`` nor crawl below ``MIN_BODY_RATE``, and a
keep-alive connection is closed after ``idle_timeout`` without a request. A
request being answered has no deadline here (the pipeline bounds its own
work), and Webhook Connect's streams keep their own heartbeat rules
(``mark_streaming``).
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import unquote_to_bytes
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest

from cwm.request import HEADER_NAME
from cwm.web.connections import SHED_GRACE, ConnectionLimits, ConnectionTable
from cwm.web.framing import header_line_problem, host_problem, partial_line_problem

MAX_HEADERS = 100
MAX_HEADER_LINE = 16 * 1024
MAX_HEADER_BYTES = 256 * 1024
# After a rejection the client may still be sending; its bytes are discarded
# for this long (so it can read the answer) and then the connection is cut.
LINGER_SECONDS = 2.0
# After its first body_timeout seconds a body must have averaged this many
# bytes a second (one byte a second would otherwise hold a connection for as
# long as the body limit allows).
MIN_BODY_RATE = 500.0
SERVER = b"cwm"

_HEAD, _BODY, _BUSY, _IDLE, _STREAM, _CLOSING = "head", "body", "busy", "idle", "stream", "closing"


def json_error_bytes(detail: str) -> bytes:
    """The body of every error answer."""
    return json.dumps({"detail": detail}).encode("utf-8")


class NamedRequest(server.Request):
    """A request whose answer says ``Server: cwm``; Twisted's would name itself and its version."""

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.responseHeaders.setRawHeaders(b"Server", [SERVER])
        super().write(data)


class LimitedRequest(NamedRequest):
    """A request that counts its body as it arrives and keeps it in memory.

    The body is capped by the channel, so it never needs a temporary file.
    """

    _body_seen = 0

    def process(self) -> None:
        # Klein would answer a non-UTF-8 path with a plain-text body.
        try:
            unquote_to_bytes(self.path.split(b"?", 1)[0]).decode("utf-8")
        except UnicodeDecodeError:
            body = json_error_bytes("Request path is not valid UTF-8")
            self.setResponseCode(400)
            self.setHeader(b"Content-Type", b"application/json")
            self.setHeader(b"Content-Length", b"%d" % (len(body),))
            self.write(body)
            self.finish()
            return
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        assert isinstance(channel, LimitedChannel)
        self._body_seen += len(data)
        if self._body_seen > channel.max_body_bytes:
            channel.reject(413, f"Payload too large: more than {channel.max_body_bytes} bytes")
            return
        self.content.write(data)  # type: ignore[attr-defined]


def mark_streaming(request: IRequest) -> None:
    """Exempt ``request``'s connection from the HTTP timeouts and shedding: it carries a stream.

    Webhook Connect's SSE, WebSocket and long-poll routes call this on their
    request; a WebSocket's connection leaves the HTTP table here, as the
    WebSocket protocol takes it over.
    """
    channel = getattr(request, "channel", None)
    if isinstance(channel, LimitedChannel):
        upgrade = request.getHeader(b"upgrade") or b""
        channel.mark_streaming(handed_over=upgrade.lower() == b"websocket")


class LimitedChannel(http.HTTPChannel):
    """An HTTPChannel whose rejections carry a reason and happen early, with deadlines on slow clients."""

    maxHeaders = MAX_HEADERS
    MAX_LENGTH = MAX_HEADER_LINE
    totalHeadersSize = MAX_HEADER_BYTES
    max_body_bytes = 10 * 1024 * 1024
    limits = ConnectionLimits()
    table: ConnectionTable | None = None
    clock: IReactorTime | None = None

    _rejected = False
    _header_line: bytes | None = None
    _linger: Any = None
    _phase = _HEAD
    _phase_start = 0.0
    _last_byte = 0.0
    _depth = 0
    _deadline: IDelayedCall | None = None

    # -- connection life and deadlines

    def connectionMade(self) -> None:
        super().connectionMade()
        # The first request's head is due header_timeout after the connection.
        self._enter(_HEAD)
        if self.table is not None and not self.table.opened(self):
            self._phase = _CLOSING
            self._cancel_deadline()
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else 0.0

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self._phase_start = self._last_byte = self._now()
        self._cancel_deadline()
        due = self._due()
        if due is not None:
            self._deadline = self.callLater(max(0.0, due - self._phase_start), self._deadline_passed)
        if self.table is not None:
            if phase in (_HEAD, _IDLE):
                self.table.waiting(self)
            elif phase == _BUSY:
                self.table.busy(self)

    def _due(self) -> float | None:
        limits = self.limits
        if self._phase == _HEAD:
            return self._phase_start + limits.header_timeout
        if self._phase == _IDLE:
            return self._phase_start + limits.idle_timeout
        if self._phase == _BODY:
            seen = self.requests[-1]._body_seen if self.requests else 0
            return min(
                self._last_byte + limits.body_timeout,
                self._phase_start + limits.body_timeout + seen / MIN_BODY_RATE,
            )
        return None

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        due, now = self._due(), self._now()
        if due is None:
            return
        if now < due:  # a body that made progress meanwhile
            self._deadline = self.callLater(due - now, self._deadline_passed)
            return
        if self._phase == _BODY:
            self._count("body_timeout")
            self.reject(408, f"Request body timeout: no progress for {self.limits.body_timeout:g} s, "
                             f"or slower than {MIN_BODY_RATE:g} bytes/s", counted=True)
        elif self._phase == _HEAD and (hasattr(self, "_command") or self._buffer.strip()):
            self._count("header_timeout")
            self.reject(408, f"Request header timeout: the request head must arrive within "
                             f"{self.limits.header_timeout:g} s", counted=True)
        else:
            self._count("header_timeout" if self._phase == _HEAD else "idle_closed")
            self._close_quietly()

    def _count(self, what: str) -> None:
        if self.table is not None:
            self.table.count(what)

    def _close_quietly(self) -> None:
        """Close a connection that has no request in progress; cut it if the client never reads."""
        self._phase = _CLOSING
        if self.table is not None:
            self.table.closing(self)
        self.setTimeout(None)
        self.loseConnection()
        self._linger = self.callLater(LINGER_SECONDS, self._cut)

    def shed_candidate(self, now: float) -> bool:
        if self._phase in (_HEAD, _IDLE):
            return now - self._phase_start >= SHED_GRACE
        return self._phase == _BODY and now - self._last_byte >= SHED_GRACE

    def shed(self) -> None:
        self._phase = _CLOSING
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def fileno(self) -> int | None:
        fileno = getattr(self.transport, "fileno", None)
        try:
            return int(fileno()) if fileno is not None else None
        except (OSError, ValueError):
            return None

    def mark_streaming(self, handed_over: bool = False) -> None:
        """See ``mark_streaming``."""
        self._phase = _STREAM
        self._cancel_deadline()
        if self.table is not None:
            if handed_over:
                self.table.handed_over(self)
                self.table = None
            else:
                self.table.streaming(self)

    # -- reading

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return  # discarded unread while the answer drains (see reject)
        if self._phase == _IDLE:
            self._enter(_HEAD)  # the next request's head is due header_timeout from its first byte
        if self._phase == _BODY:
            self._last_byte = self._now()
        self._depth += 1
        try:
            super().dataReceived(data)
        finally:
            self._depth -= 1
        if self._depth == 0 and not self._rejected and self.line_mode and self._buffer:
            problem = partial_line_problem(self._buffer, len(data), not hasattr(self, "_command"))
            if problem is not None:
                self.reject(400, problem)

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        if hasattr(self, "_command"):
            problem = header_line_problem(line)
        else:
            problem = "Bare LF line ending (lines must end with CRLF)" if b"\n" in line else None
        if problem is not None:
            self.reject(400, problem)
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        super().rawDataReceived(data)
        if not self._rejected and self._phase == _BODY:
            self._check_chunk_size()

    def _check_chunk_size(self) -> None:
        # A chunk size line says at once how much more is coming: no need to wait for it.
        decoder = self._transferDecoder
        if getattr(decoder, "state", None) == "BODY" and self.requests:
            coming = self.requests[-1]._body_seen + getattr(decoder, "length", 0)
            if coming > self.max_body_bytes:
                self.reject(413, f"Payload too large: a chunk of the body goes past {self.max_body_bytes} bytes")

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self.reject(431, f"Too many request headers (max {self.maxHeaders})")
            return False
        self._header_line = line
        try:
            return bool(super().headerReceived(line))
        finally:
            self._header_line = None

    def lineLengthExceeded(self, line: bytes) -> None:
        if hasattr(self, "_command"):
            self.reject(431, f"Request header line too large (max {self.MAX_LENGTH} bytes)")
        else:
            self.reject(414, f"Request line too long (max {self.MAX_LENGTH} bytes)")

    def allHeadersReceived(self) -> None:
        problem = self._host_problem()
        if problem is not None:
            self.reject(400, problem)
            return
        # Before Twisted answers "100 Continue": a client that waits for it
        # never sends the oversized body at all.
        if self.length is not None and self.length > self.max_body_bytes:
            self.reject(
                413,
                f"Payload too large: {self.length} bytes (max: {self.max_body_bytes})",
            )
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._enter(_BODY)

    def _host_problem(self) -> str | None:
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host")
        if not hosts:
            return "Missing Host header (required in HTTP/1.1)" if self._version == b"HTTP/1.1" else None
        if len(hosts) > 1:
            return "More than one Host header"
        return host_problem(hosts[0])

    def allContentReceived(self) -> None:
        if self._rejected:
            return
        self._enter(_BUSY)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Waiting for the next request (or, when not persistent, for the close);
        # a stream that ended is an ordinary connection again.
        self._enter(_IDLE)
        super().requestDone(request)

    # -- rejecting

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.reject(400, self._bad_request_reason())

    def _bad_request_reason(self) -> str:
        line = self._header_line
        if line is None:
            if self._receivedHeaderSize > self.totalHeadersSize:
                return "Request headers too large"
            if not hasattr(self, "_command"):
                return "Malformed request line"
            return "Malformed request body framing"
        if b":" not in line:
            return "Malformed header line (no ':')"
        name, _, value = line.partition(b":")
        if not HEADER_NAME.fullmatch(name.decode("latin-1")):
            return "Invalid header name"
        if any(c in value for c in b"\x00\r\n"):
            return "Header value contains CR, LF or NUL"
        if name.lower() in (b"content-length", b"transfer-encoding"):
            return "Invalid or conflicting Content-Length / Transfer-Encoding"
        return "Malformed header"

    def reject(self, code: int, detail: str, counted: bool = False) -> None:
        """Answer ``code`` with ``detail`` now, then stop reading this connection.

        Counted in the summary line (``counted`` when the caller already did).
        """
        if self._rejected or self.transport is None:
            return
        self._rejected = True
        if code == 400 and self._receivedHeaderSize > self.totalHeadersSize:
            code, detail = 431, "Request headers too large"
        if not counted:
            self._count("rejected")
        body = json_error_bytes(detail)
        phrase = http.RESPONSES.get(code, b"Error")
        head = b"HTTP/1.1 %d %s\r\n" % (code, phrase)
        head += b"Server: %s\r\nContent-Type: application/json\r\n" % (SERVER,)
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(body),)
        self.transport.write(head + body)
        self._phase = _CLOSING
        self._cancel_deadline()
        if self.table is not None:
            self.table.closing(self)  # never a shed candidate while it lingers
        self.setTimeout(None)
        if ITCPTransport.providedBy(self.transport):
            # Send the answer and a FIN, discard whatever the client still sends
            # for a little while so it can read the answer, then cut.
            self.transport.loseWriteConnection()
            self._linger = self.callLater(LINGER_SECONDS, self._cut)
        else:
            self.transport.loseConnection()

    def _cut(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        self._phase = _CLOSING
        if self.table is not None:
            self.table.closed(self)
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)


class RefusedConnection(Protocol):
    """A connection refused at the cap, on a listener that cannot be given ``None``: cut at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]


class LimitedSite(server.Site):
    """A Site using LimitedChannel, no form parsing, and no access log.

    Every webhook outcome is logged once by the pipeline; Twisted's access log
    would add a second line per request at a third of the server's CPU.
    """

    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: Any,
        max_body_bytes: int,
        reactor: Any,
        limits: ConnectionLimits | None = None,
        wrapped: bool = False,
    ) -> None:
        """``wrapped``: the listener wraps the site's protocols (TLS), so a refused
        connection gets a protocol that aborts it rather than ``None``."""
        # Twisted's own timeout is off: the channel's deadlines replace it.
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=reactor, timeout=None)
        self.max_body_bytes = max_body_bytes
        self.wrapped = wrapped
        self.limits = limits or ConnectionLimits()
        self.connections = ConnectionTable(reactor, self.limits)

    def buildProtocol(self, addr: Any) -> Any:
        if not self.connections.admit():
            # A TCP or UNIX port closes the socket at once when given None,
            # before it accepts more; a TLS wrapper needs a protocol to wrap.
            return RefusedConnection() if self.wrapped else None
        channel = super().buildProtocol(addr)
        channel.max_body_bytes = self.max_body_bytes
        channel.limits = self.limits
        channel.table = self.connections
        channel.clock = self.reactor
        return channel

    def startFactory(self) -> None:
        super().startFactory()
        self.connections.start()

    def stopFactory(self) -> None:
        self.connections.stop()
        super().stopFactory()

    def getContentFile(self, length: int | None) -> BytesIO:
        # twisted.web.server.Request.gotLength asks the site: always memory.
        return BytesIO()

    def log(self, request: Any) -> None:
        pass
