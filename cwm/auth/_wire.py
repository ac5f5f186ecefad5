"""Turning received text and configured secrets into the bytes that are compared.

Header values arrive decoded as ISO-8859-1, byte for byte, so encoding them
back to ISO-8859-1 gives the exact bytes the sender put on the wire; a secret
from the config is text and is compared as its UTF-8 bytes. A sender that
puts a non-ASCII secret on the wire as UTF-8 therefore matches.
"""

from __future__ import annotations

import hmac


def header_bytes(value: str) -> bytes:
    """The wire bytes of a header value (ISO-8859-1; UTF-8 if it cannot be)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def header_text(value: str) -> str:
    """A header value as the text the sender meant: UTF-8 if its bytes are, else as is."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def text_bytes(value: str) -> bytes:
    """The UTF-8 bytes of a configured secret or a decoded query value."""
    return value.encode("utf-8", "surrogatepass")


def equal(received: bytes, expected: bytes) -> bool:
    """Compare two byte strings in constant time (for equal lengths)."""
    return hmac.compare_digest(received, expected)
