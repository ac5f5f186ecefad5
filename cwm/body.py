"""Parsing a webhook body by the entry's ``data_type``: pure functions over bytes."""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
from json.scanner import py_make_scanner  # type: ignore[attr-defined]
from typing import Any

from cwm.errors import HTTPError

LARGE_BODY = 256 * 1024
"""Bodies over this many bytes are parsed (and serialised again) away from the reactor thread."""

MAX_JSON_DEPTH = 50
MAX_JSON_STRING = 1024 * 1024
_CHARSETS = frozenset(
    codecs.lookup(name).name
    for name in (
        "utf-8",
        "utf-16",
        "utf-16-le",
        "utf-16-be",
        "utf-32",
        "utf-32-le",
        "utf-32-be",
        "latin-1",
        "cp1252",
        "ascii",
    )
)


def charset_of(content_type: str | None) -> str:
    """The charset parameter of a Content-Type value, or utf-8 (RFC 8259's default)."""
    if content_type:
        for parameter in content_type.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset":
                return value.strip().strip('"').lower() or "utf-8"
    return "utf-8"


class _NotJSON(ValueError):
    """A constant the json module accepts and JSON does not (NaN, Infinity)."""


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not valid JSON")


# A \uD800-\uDFFF escape: a UTF-16 surrogate, valid only as half of a pair.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _loads(text: str, yielding: bool) -> Any:
    if not yielding:
        return json.loads(text, parse_constant=_reject_constant)
    # The C scanner holds the GIL for a whole document (0.3 s for 10 MB),
    # stalling every other thread; the Python-level one lets them run every
    # few milliseconds, at several times the cost.
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    decoder.scan_once = py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


def parse_body(data_type: str, body: bytes, content_type: str | None, *, yielding: bool = False) -> Any:
    """The payload a module receives.

    ``yielding``: parse so that other threads keep running (for a large body
    parsed off the reactor thread); slower.

    JSON is refused (400) where a module could not pass it on as JSON: a
    lone surrogate escape (``"\ud800"``: not Unicode, cannot be written as
    UTF-8), a number too large for a double (``1e999``: would become
    Infinity), an integer of more digits than Python converts, NaN and
    Infinity, nesting past ``MAX_JSON_DEPTH`` and strings past
    ``MAX_JSON_STRING``. Every module and the connector parse through here.

    Raises:
        HTTPError: 415 for an unsupported data_type or charset, 400 with the
            reason for a body that is not acceptable JSON.
    """
    if data_type == "blob":
        return body
    if data_type != "json":
        raise HTTPError(415, f"Unsupported data type '{data_type}'")
    charset = charset_of(content_type)
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = ""
    if codec not in _CHARSETS:
        raise HTTPError(415, f"Unsupported charset '{charset}'")
    if not body:
        raise HTTPError(400, "Malformed JSON payload: empty body")
    try:
        text = body.decode(codec)
    except UnicodeDecodeError:
        raise HTTPError(400, f"Malformed JSON payload: body is not valid {charset}") from None
    try:
        payload = _loads(text, yielding)
    except RecursionError:
        raise HTTPError(400, f"Malformed JSON payload: nesting deeper than {MAX_JSON_DEPTH}") from None
    except (json.JSONDecodeError, _NotJSON) as e:
        raise HTTPError(400, f"Malformed JSON payload: {e}") from None
    except ValueError:
        # The only other ValueError: int() refusing a number of too many digits.
        raise HTTPError(
            400, f"Malformed JSON payload: an integer has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    # A strict decode cannot produce a lone surrogate; only a \u escape can.
    problem = _shape_problem(payload, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    if problem:
        raise HTTPError(400, f"Malformed JSON payload: {problem}")
    return payload


def thd_parse_body(data_type: str, body: bytes, content_type: str | None) -> Any:
    """``parse_body`` on a worker thread, leaving the GIL to the reactor thread every few milliseconds."""
    return parse_body(data_type, body, content_type, yielding=True)


ENCODE_PIECE = 10_000
"""Chunks of the Python-level encoder joined at a time by ``encode_in_pieces``."""


def encode_in_pieces(encoder: json.JSONEncoder, value: Any, end: str = "") -> str:
    """``encoder``'s text for ``value`` (plus ``end``), built so that no single step holds the GIL long.

    For a large document on a worker thread: the Python-level encoder yields
    millions of small chunks, and joining (then freeing) them in one call
    holds the GIL for tens of milliseconds; joined a few thousand at a time,
    the last join only copies a few hundred pieces.
    """
    pieces: list[str] = []
    batch: list[str] = []
    for chunk in encoder.iterencode(value):
        batch.append(chunk)
        if len(batch) >= ENCODE_PIECE:
            pieces.append("".join(batch))
            batch = []
    batch.append(end)
    pieces.append("".join(batch))
    return "".join(pieces)


def dismantle(value: Any) -> None:
    """Empty a tree of dicts and lists one item at a time, so that freeing it never holds the GIL long.

    Dropping the last reference to a parsed 10 MB document frees its million
    objects in one C call (10-20 ms with the GIL held); emptied here, on a
    worker thread, other threads run in between. Only for a tree nobody else
    uses any more: it is left empty.
    """
    if not isinstance(value, (dict, list)):
        return
    stack: list[Any] = [value]
    while stack:
        node = stack[-1]
        if not node:
            stack.pop()
            continue
        item = node.popitem()[1] if isinstance(node, dict) else node.pop()
        if isinstance(item, (dict, list)) and item:
            stack.append(item)


def _shape_problem(payload: Any, surrogates: bool) -> str | None:
    """Depth, string size, number range and (with ``surrogates``) lone surrogates, checked without recursion."""
    if not isinstance(payload, (dict, list)):
        return _scalar_problem(payload, surrogates)
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nesting deeper than {MAX_JSON_DEPTH}"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and (surrogates or len(key) > MAX_JSON_STRING):
                problem = _scalar_problem(key, surrogates)
                if problem:
                    return problem
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif isinstance(value, float) or (isinstance(value, str) and (surrogates or len(value) > MAX_JSON_STRING)):
                problem = _scalar_problem(value, surrogates)
                if problem:
                    return problem
    return None


def _scalar_problem(value: Any, surrogates: bool) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "a number is too large (beyond the range of a double, about 1.8e308)"
    if not isinstance(value, str):
        return None
    if len(value) > MAX_JSON_STRING:
        return f"a string is longer than {MAX_JSON_STRING} characters"
    if surrogates:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds a lone UTF-16 surrogate escape (such as \\ud800), which is not Unicode text"
    return None
