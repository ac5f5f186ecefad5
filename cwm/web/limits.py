"""HTTP/1.1 limits enforced while the request streams in, before the body is buffered.

Twisted's own channel answers a bare ``400`` (or simply drops the connection,
for an over-long header line) with no reason. cwm's channel answers every such
rejection itself, as JSON ``{"detail": ...}``: 413 for a body over the limit
(as soon as Content-Length says so, or as soon as a chunked body passes it,
without reading the rest), 431 for too many or too large headers, 414 for an
over-long request line, 400 with the reason for malformed framing.
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import unquote_to_bytes
from typing import Any

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from cwm.request import HEADER_NAME

MAX_HEADERS = 100
MAX_HEADER_LINE = 16 * 1024
MAX_HEADER_BYTES = 256 * 1024
# After a rejection the client may still be sending; its bytes are discarded
# for this long (so it can read the answer) and then the connection is cut.
LINGER_SECONDS = 2.0

_log = Logger()


def json_error_bytes(detail: str) -> bytes:
    """The body of every error answer."""
    return json.dumps({"detail": detail}).encode("utf-8")


class LimitedRequest(server.Request):
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


class LimitedChannel(http.HTTPChannel):
    """An HTTPChannel whose rejections carry a reason and happen early."""

    maxHeaders = MAX_HEADERS
    MAX_LENGTH = MAX_HEADER_LINE
    totalHeadersSize = MAX_HEADER_BYTES
    max_body_bytes = 10 * 1024 * 1024

    _rejected = False
    _header_line: bytes | None = None
    _linger: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return  # discarded unread while the answer drains (see reject)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        super().rawDataReceived(data)

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
        # Before Twisted answers "100 Continue": a client that waits for it
        # never sends the oversized body at all.
        if self.length is not None and self.length > self.max_body_bytes:
            self.reject(
                413,
                f"Payload too large: {self.length} bytes (max: {self.max_body_bytes})",
            )
            return
        super().allHeadersReceived()

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

    def reject(self, code: int, detail: str) -> None:
        """Answer ``code`` with ``detail`` now, then stop reading this connection."""
        if self._rejected or self.transport is None:
            return
        self._rejected = True
        if code == 400 and self._receivedHeaderSize > self.totalHeadersSize:
            code, detail = 431, "Request headers too large"
        body = json_error_bytes(detail)
        phrase = http.RESPONSES.get(code, b"Error")
        head = b"HTTP/1.1 %d %s\r\n" % (code, phrase)
        head += b"Content-Type: application/json\r\n"
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(body),)
        self.transport.write(head + body)
        _log.info("rejected a request from {peer}: {code} {detail}", peer=self.transport.getPeer(), code=code, detail=detail)
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

    def allContentReceived(self) -> None:
        if self._rejected:
            return
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)


class LimitedSite(server.Site):
    """A Site using LimitedChannel, no form parsing, and no access log.

    Every webhook outcome is logged once by the pipeline; Twisted's access log
    would add a second line per request at a third of the server's CPU.
    """

    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(self, resource: Any, max_body_bytes: int, reactor: Any, timeout: float = 60.0) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=reactor, timeout=timeout)
        self.max_body_bytes = max_body_bytes

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.max_body_bytes = self.max_body_bytes
        return channel

    def getContentFile(self, length: int | None) -> BytesIO:
        # twisted.web.server.Request.gotLength asks the site: always memory.
        return BytesIO()

    def log(self, request: Any) -> None:
        pass
