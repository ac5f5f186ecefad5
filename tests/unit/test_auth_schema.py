"""Unit tests for the json_schema payload check."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

from cwm.auth.base import CheckFailed
from cwm.auth.schema import build_json_schema
from cwm.errors import ConfigError
from cwm.request import InboundRequest

REQUEST = InboundRequest(
    method="POST", path="/webhook/ns/hook", body=b"", peer_ip="192.0.2.10", received_at=0.0
)

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "items"],
    "properties": {
        "id": {"type": "integer"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
    },
    "$defs": {
        "item": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}
    },
}


def failure_of(payload: Any, schema: dict[str, Any] = ORDER_SCHEMA) -> CheckFailed:
    check = build_json_schema(schema)
    with pytest.raises(CheckFailed) as info:
        check(REQUEST, payload)
    return info.value


def test_json_schema_good() -> None:
    """A payload matching the schema passes."""
    build_json_schema(ORDER_SCHEMA)(REQUEST, {"id": 1, "items": [{"sku": "a"}]})


def test_json_schema_bad_type_with_path() -> None:
    """A wrong type fails with 400, the message and its JSON path."""
    failure = failure_of({"id": 1, "items": [{"sku": "a"}, {"sku": 5}]})
    assert failure.status == 400
    assert failure.reason == (
        "JSON schema validation failed: 5 is not of type 'string' (at $.items[1].sku)"
    )


def test_json_schema_missing_property() -> None:
    """A missing required property fails at the object's path."""
    failure = failure_of({"items": []})
    assert failure.reason == (
        "JSON schema validation failed: 'id' is a required property (at $)"
    )


def test_json_schema_wrong_root_type() -> None:
    """A payload of the wrong root type fails."""
    assert failure_of([1, 2]).reason.startswith("JSON schema validation failed: [1, 2] is not")


def test_json_schema_long_message_truncated() -> None:
    """The error message is cut to 200 characters; the path is kept."""
    failure = failure_of({"id": "x" * 1000, "items": []})
    message = failure.reason.removeprefix("JSON schema validation failed: ")
    text, _, path = message.rpartition(" (at ")
    assert len(text) == 200
    assert text.endswith("...")
    assert path == "$.id)"


def test_json_schema_bytes_payload_parsed() -> None:
    """A raw (blob) payload is parsed as JSON before validation."""
    check = build_json_schema(ORDER_SCHEMA)
    check(REQUEST, b'{"id": 1, "items": []}')
    with pytest.raises(CheckFailed, match=r"\(at \$\.id\)$"):
        check(REQUEST, b'{"id": "1", "items": []}')


def test_json_schema_malformed_bytes_payload() -> None:
    """A raw payload that is not JSON fails with 400, by the same rules as a json webhook's body."""
    failure = failure_of(b"{not json")
    assert failure.reason.startswith("Malformed JSON payload: ")
    assert failure.status == 400
    deep = failure_of(b"[" * 100_000)
    assert (deep.status, deep.reason) == (400, "Malformed JSON payload: nesting deeper than 50")
    assert failure_of(b'{"a": NaN}').status == 400


def test_json_schema_missing_payload() -> None:
    """A missing (None) payload is validated like JSON null."""
    assert failure_of(None).reason.startswith("JSON schema validation failed: None is not")


def test_json_schema_draft7_schema() -> None:
    """An explicit older dialect is honoured."""
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"n": {"type": "number"}},
        "properties": {"n": {"$ref": "#/definitions/n"}},
    }
    check = build_json_schema(schema)
    check(REQUEST, {"n": 1.5})
    with pytest.raises(CheckFailed):
        check(REQUEST, {"n": "x"})


def test_json_schema_embedded_id_reference() -> None:
    """A $ref to a subschema's own $id resolves without any fetch."""
    schema = {
        "$id": "https://example.com/root.json",
        "$defs": {"name": {"$id": "name.json", "type": "string"}},
        "properties": {"name": {"$ref": "name.json"}},
    }
    check = build_json_schema(schema)
    check(REQUEST, {"name": "x"})
    with pytest.raises(CheckFailed):
        check(REQUEST, {"name": 1})


def test_json_schema_boolean_schemas() -> None:
    """true accepts everything and false rejects everything."""
    build_json_schema(True)(REQUEST, {"any": "thing"})
    with pytest.raises(CheckFailed):
        build_json_schema(False)(REQUEST, {})


def test_json_schema_remote_ref_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote $ref is a ConfigError and no network access is attempted."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a remote $ref was fetched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    schema = {"properties": {"a": {"$ref": "https://example.com/schemas/a.json"}}}
    with pytest.raises(ConfigError, match=r"^json_schema: \$ref 'https://example.com/schemas/a"):
        build_json_schema(schema)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([], "must be a JSON Schema object"),
        ("{}", "must be a JSON Schema object"),
        (5, "must be a JSON Schema object"),
        ({"type": "strng"}, "invalid schema"),
        ({"properties": {"a": {"minimum": "zero"}}}, "invalid schema"),
        ({"required": "id"}, "invalid schema"),
        ({"$schema": "https://example.com/my-dialect"}, "is not a known JSON Schema dialect"),
        ({"$schema": 7}, "is not a known JSON Schema dialect"),
        ({"$ref": "#/$defs/missing"}, "$ref '#/$defs/missing' cannot be resolved"),
        ({"items": {"$ref": "file:///etc/passwd"}}, "cannot be resolved"),
        ({"$ref": "other.json"}, "cannot be resolved"),
    ],
)
def test_json_schema_config_errors(schema: object, message: str) -> None:
    """Each bad schema is a precise ConfigError naming json_schema."""
    with pytest.raises(ConfigError, match=r"^json_schema: ") as info:
        build_json_schema(schema)
    assert message in str(info.value)


def test_json_schema_metaschema_reference_allowed() -> None:
    """A $ref to a bundled meta-schema resolves locally."""
    check = build_json_schema({"$ref": "https://json-schema.org/draft/2020-12/schema"})
    check(REQUEST, {"type": "string"})
    with pytest.raises(CheckFailed):
        check(REQUEST, {"type": 12})
