"""The ``json_schema`` check: the parsed payload must match a JSON Schema.

The schema is checked and its validator built once. References resolve only
inside the schema itself and against the bundled JSON Schema meta-schemas:
a ``$ref`` to any other URL is a config error, and nothing is ever fetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import referencing.exceptions
from jsonschema import exceptions as schema_exceptions  # type: ignore[import-untyped]
from jsonschema import validators
from jsonschema_specifications import REGISTRY as META_SCHEMAS  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012, UnknownDialect, specification_with

from cwm.auth._config import quote
from cwm.auth.base import CheckFailed
from cwm.body import parse_body
from cwm.errors import ConfigError, HTTPError
from cwm.request import InboundRequest

if TYPE_CHECKING:
    # Public as the return type of Registry.resolver(), not exported by name.
    from referencing._core import Resolver

__all__ = ["JsonSchemaCheck", "build_json_schema"]

_KEY = "json_schema"
# How much of a validation message a client gets back.
_MESSAGE_LIMIT = 200


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JsonSchemaCheck:
    """The payload must be valid against the configured schema (400 otherwise)."""

    __slots__ = ("_validator",)

    def __init__(self, validator: Any) -> None:
        """Wrap a ready jsonschema validator (built by build_json_schema)."""
        self._validator = validator

    def __call__(self, request: InboundRequest, payload: Any) -> None:
        if isinstance(payload, (bytes, bytearray)):
            # A blob webhook still has its schema applied to the body as JSON,
            # parsed by the same rules (charset, depth, size) as a json webhook.
            try:
                payload = parse_body("json", bytes(payload), request.header("content-type"))
            except HTTPError as e:
                raise CheckFailed(e.detail, status=e.status) from None
        try:
            error = schema_exceptions.best_match(self._validator.iter_errors(payload))
        except referencing.exceptions.Unresolvable:
            # build_json_schema refuses unresolvable $ref; a dynamic one can slip by.
            raise CheckFailed("JSON schema reference could not be resolved", status=500) from None
        if error is not None:
            message = _shorten(error.message, _MESSAGE_LIMIT)
            raise CheckFailed(
                f"JSON schema validation failed: {message} (at {error.json_path})", status=400
            )


def _known_dialect(dialect: str) -> bool:
    try:
        specification_with(dialect)
    except UnknownDialect:
        return False
    return True


def _check_references(resource: Resource[Any], resolver: Resolver[Any]) -> None:
    """Refuse any ``$ref`` in the schema that does not resolve without fetching."""
    contents = resource.contents
    if isinstance(contents, Mapping):
        reference = contents.get("$ref")
        if isinstance(reference, str):
            try:
                resolver.lookup(reference)
            except referencing.exceptions.Unresolvable:
                raise ConfigError(
                    f"{_KEY}: $ref {reference[:100]!r} cannot be resolved "
                    "(only references inside the schema are allowed)"
                ) from None
    for subresource in resource.subresources():
        _check_references(subresource, resolver.in_subresource(subresource))


def build_json_schema(value: object) -> JsonSchemaCheck:
    """Build the ``json_schema`` check from a JSON Schema object."""
    if not isinstance(value, (Mapping, bool)):
        raise ConfigError(f"{_KEY}: must be a JSON Schema object, not {type(value).__name__}")
    if isinstance(value, Mapping) and "$schema" in value:
        dialect = value["$schema"]
        if not isinstance(dialect, str) or not _known_dialect(dialect):
            raise ConfigError(
                f"{_KEY}: $schema {quote(dialect)} is not a known JSON Schema dialect"
            )
    try:
        validator_class = validators.validator_for(value)
        validator_class.check_schema(value)
    except schema_exceptions.SchemaError as error:
        path = error.json_path
        raise ConfigError(
            f"{_KEY}: invalid schema: {_shorten(error.message, _MESSAGE_LIMIT)} (at {path})"
        ) from None
    resource = Resource.from_contents(value, default_specification=DRAFT202012)
    _check_references(resource, META_SCHEMAS.resolver_with_root(resource))
    # An empty registry: jsonschema then adds only its bundled meta-schemas and
    # never retrieves a remote document.
    validator = validator_class(value, registry=Registry())
    return JsonSchemaCheck(validator)
