"""Pure checks of an HTTP/1.1 request head, byte by byte as it arrives.

Twisted's parser waits for a CRLF before it looks at a line, so a bare-LF
request, a TLS ClientHello or binary garbage would sit unanswered until a
timeout. These checks look at the unfinished line too, so the channel can
answer 400 at the first byte that no valid request could contain; and they
refuse what Twisted would accept but RFC 9112 does not (folded header lines,
control characters in a value, a Host the router cannot bind).
"""

from __future__ import annotations

import re

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_FIELD_VALUE = rb"\t\x20-\x7e\x80-\xff"  # HTAB, SP, VCHAR, obs-text

# What the start of a request line may look like while it is still arriving.
_REQUEST_LINE_START = re.compile(rb"[%s]*(?: [\x21-\x7e]*(?: [\x21-\x7e]*)?)?" % _TCHAR)
_TOKEN = re.compile(rb"[%s]+" % _TCHAR)
_HEADER_LINE = re.compile(rb"[%s]+:[%s]*" % (_TCHAR, _FIELD_VALUE))
_HEADER_LINE_START = re.compile(rb"[%s]*(?::[%s]*)?" % (_TCHAR, _FIELD_VALUE))
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A line is checked in full only up to here; past it only new bytes are scanned.
_START_BYTES = 512

BARE_LF = "Bare LF line ending (lines must end with CRLF)"
MALFORMED_REQUEST_LINE = "Malformed request line"
OBS_FOLD = "Folded header line (obs-fold) not accepted"
CONTROL_IN_HEADER = "Header contains a control character"
INVALID_HEADER_NAME = "Invalid header name"


def partial_line_problem(pending: bytes, new: int, request_line: bool) -> str | None:
    """Why the unfinished line ``pending`` cannot start a valid line, or None.

    ``new`` is how many of its last bytes arrived just now (the others were
    checked before); ``request_line`` says whether a request line is expected.
    """
    fresh = pending[-new - 1 :] if new < len(pending) else pending
    if b"\n" in fresh:
        return BARE_LF
    if b"\r" in fresh[:-1]:  # a CR can only be the first half of the CRLF
        return MALFORMED_REQUEST_LINE if request_line else CONTROL_IN_HEADER
    start = pending[:_START_BYTES].rstrip(b"\r")
    if request_line:
        if _CONTROL.search(fresh) or not _REQUEST_LINE_START.fullmatch(start):
            return MALFORMED_REQUEST_LINE
        return None
    if start[:1] in (b" ", b"\t"):
        return OBS_FOLD
    if _CONTROL.search(fresh):
        return CONTROL_IN_HEADER
    if not _HEADER_LINE_START.fullmatch(start):
        return _header_line_reason(start)
    return None


def _header_line_reason(line: bytes) -> str:
    name, colon, _ = line.partition(b":")
    return CONTROL_IN_HEADER if colon and _TOKEN.fullmatch(name) else INVALID_HEADER_NAME


def header_line_problem(line: bytes) -> str | None:
    """Why a complete header line (CRLF removed) is refused where Twisted would take it, or None.

    Lines Twisted already refuses (no colon, NUL, CR) are left to it, which
    gives them their own reasons.
    """
    if not line:
        return None
    if b"\n" in line:
        return BARE_LF
    if line[:1] in (b" ", b"\t"):
        return OBS_FOLD
    if b":" not in line or b"\x00" in line or b"\r" in line:
        return None
    if not _HEADER_LINE.fullmatch(line):
        return _header_line_reason(line)
    return None


_PORT = re.compile(rb"[0-9]*")
_REG_NAME = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_IP_LITERAL = re.compile(rb"\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]")


def host_problem(value: bytes) -> str | None:
    """Why a Host header value (RFC 9112 §3.2: ``uri-host [":" port]``) is refused, or None.

    A name must also pass the IDNA encoding the URL router applies to it
    (labels of 1 to 63 characters), so that no Host can make routing fail.
    """
    if value.startswith(b"["):
        literal, bracket, rest = value.partition(b"]")
        if not bracket or not _IP_LITERAL.fullmatch(literal + bracket):
            return "Invalid Host header"
        if rest and not (rest[:1] == b":" and _PORT.fullmatch(rest[1:])):
            return "Invalid Host header (bad port)"
        return None
    name, colon, port = value.partition(b":")
    if colon and not _PORT.fullmatch(port):
        return "Invalid Host header (bad port)"
    if not _REG_NAME.fullmatch(name):
        return "Invalid Host header"
    try:
        name.decode("ascii").encode("idna")
    except UnicodeError:
        return "Invalid Host header (not a valid host name)"
    return None
