"""Body parsing by data_type: charsets, JSON limits, blobs, and the 400/415 reasons."""

from __future__ import annotations

import json

import pytest

from cwm.body import MAX_JSON_DEPTH, MAX_JSON_STRING, charset_of, parse_body
from cwm.errors import HTTPError


def fails(data_type: str, body: bytes, content_type: str | None = "application/json") -> HTTPError:
    with pytest.raises(HTTPError) as e:
        parse_body(data_type, body, content_type)
    return e.value


def test_json_utf8_default() -> None:
    """Without a charset, the body is UTF-8 JSON."""
    assert parse_body("json", '{"é": [1, 2.5, null, true]}'.encode(), None) == {"é": [1, 2.5, None, True]}


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-le", "latin-1", "iso-8859-1", "cp1252", "utf-32"])
def test_json_declared_charset(charset: str) -> None:
    """The Content-Type charset decodes the body."""
    body = json.dumps({"name": "café"}, ensure_ascii=False).encode(charset)
    assert parse_body("json", body, f'application/json; charset="{charset}"') == {"name": "café"}


def test_charset_of() -> None:
    """charset_of reads the parameter case-insensitively and defaults to utf-8."""
    assert charset_of("application/json; CharSet=Latin-1") == "latin-1"
    assert charset_of("application/json") == charset_of(None) == "utf-8"


def test_unknown_charset_is_415() -> None:
    """A charset cwm does not decode is 415, naming it."""
    error = fails("json", b"{}", "application/json; charset=klingon")
    assert (error.status, error.detail) == (415, "Unsupported charset 'klingon'")


def test_undecodable_body_is_400() -> None:
    """Bytes that are not valid in the charset are a 400 with the reason."""
    error = fails("json", b'{"a": "\xff"}')
    assert (error.status, error.detail) == (400, "Malformed JSON payload: body is not valid utf-8")


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"[1,]", b"NaN", b'{"a": Infinity}'])
def test_malformed_json_is_400(body: bytes) -> None:
    """Empty, truncated, non-standard JSON (NaN, Infinity) are 400 'Malformed JSON payload'."""
    error = fails("json", body)
    assert error.status == 400 and error.detail.startswith("Malformed JSON payload")


def test_nesting_limit() -> None:
    """Nesting up to the limit passes; one deeper is 400; very deep input never crashes."""
    assert parse_body("json", b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, None)
    error = fails("json", b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert error.detail == f"Malformed JSON payload: nesting deeper than {MAX_JSON_DEPTH}"
    assert fails("json", b"[" * 100_000 + b"]" * 100_000).status == 400
    assert fails("json", b'{"a":' * 60 + b"1" + b"}" * 60).status == 400


def test_string_limit() -> None:
    """A string (value or key) over 1 MiB characters is 400."""
    long = "x" * (MAX_JSON_STRING + 1)
    for document in ({"a": long}, {long: 1}, [long], long):
        assert "longer than" in fails("json", json.dumps(document).encode()).detail
    assert parse_body("json", json.dumps({"a": "x" * MAX_JSON_STRING}).encode(), None)


def test_blob_is_raw_bytes() -> None:
    """blob hands over the body untouched, whatever the content type."""
    assert parse_body("blob", b"\x00\xff{", "application/json") == b"\x00\xff{"


def test_unsupported_data_type_is_415() -> None:
    """Any other data_type is 415, naming it."""
    error = fails("xml", b"<a/>")
    assert (error.status, error.detail) == (415, "Unsupported data type 'xml'")


@pytest.mark.parametrize("yielding", [False, True])
@pytest.mark.parametrize(
    "body",
    [b'{"a": "\\ud800"}', b'["\\udfff"]', b'{"\\udc00": 1}', b'"x\\ud83d"'],
)
def test_lone_surrogate_is_400_not_a_module_failure(body: bytes, yielding: bool) -> None:
    """A lone surrogate escape is not Unicode: refused at the parser, never a 503 from a module."""
    with pytest.raises(HTTPError) as e:
        parse_body("json", body, None, yielding=yielding)
    assert e.value.status == 400 and "lone UTF-16 surrogate" in e.value.detail


def test_a_surrogate_pair_and_an_escaped_backslash_are_fine() -> None:
    assert parse_body("json", b'["\\ud83d\\ude00", "\\\\ud800"]', None) == ["\U0001f600", "\\ud800"]


@pytest.mark.parametrize("yielding", [False, True])
@pytest.mark.parametrize("body", [b"[1e999]", b'{"a": -1e999}', b"1e400"])
def test_number_beyond_a_double_is_400(body: bytes, yielding: bool) -> None:
    """1e999 would become Infinity, which is not JSON: 400."""
    with pytest.raises(HTTPError) as e:
        parse_body("json", body, None, yielding=yielding)
    assert e.value.status == 400 and "number is too large" in e.value.detail


@pytest.mark.parametrize("yielding", [False, True])
def test_huge_integer_is_400_in_cwm_words(yielding: bool) -> None:
    """No Python internals (sys.set_int_max_str_digits) in the reason."""
    with pytest.raises(HTTPError) as e:
        parse_body("json", b"[" + b"9" * 5000 + b"]", None, yielding=yielding)
    assert e.value.status == 400
    assert e.value.detail == "Malformed JSON payload: an integer has more than 4300 digits"
    assert "sys." not in e.value.detail


def test_yielding_parse_gives_the_same_payload() -> None:
    body = json.dumps({"a": [1, 2.5, None, True, "é", {"b": []}]}).encode()
    assert parse_body("json", body, None, yielding=True) == parse_body("json", body, None)
