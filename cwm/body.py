"""Parsing a webhook body by the entry's ``data_type``: pure functions over bytes."""

from __future__ import annotations

import codecs
import json
from typing import Any

from cwm.errors import HTTPError

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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(data_type: str, body: bytes, content_type: str | None) -> Any:
    """The payload a module receives.

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
        payload = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPError(400, f"Malformed JSON payload: nesting deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as e:
        raise HTTPError(400, f"Malformed JSON payload: {e}") from None
    problem = _shape_problem(payload)
    if problem:
        raise HTTPError(400, f"Malformed JSON payload: {problem}")
    return payload


def _shape_problem(payload: Any) -> str | None:
    """Depth and string-size limits, checked without recursion."""
    if isinstance(payload, str):
        return _string_problem(payload)
    if not isinstance(payload, (dict, list)):
        return None
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nesting deeper than {MAX_JSON_DEPTH}"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and len(key) > MAX_JSON_STRING:
                return _string_problem(key)
            if isinstance(value, str):
                if len(value) > MAX_JSON_STRING:
                    return _string_problem(value)
            elif isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
    return None


def _string_problem(value: str) -> str | None:
    if len(value) > MAX_JSON_STRING:
        return f"a string is longer than {MAX_JSON_STRING} characters"
    return None
