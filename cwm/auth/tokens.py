"""Shared-secret checks: ``authorization``, ``basic_auth``, ``header_auth``, ``query_auth``.

Each builder validates its config value once and returns a check object; the
check compares what the request carries with the configured secret in
constant time, as bytes. Check objects keep their secrets out of ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cwm.auth._config import (
    optional_bool,
    optional_text,
    reject_unknown,
    require_mapping,
    require_text,
    required_text,
)
from cwm.auth._wire import equal, header_bytes, header_text, text_bytes
from cwm.auth.base import CheckFailed
from cwm.errors import ConfigError
from cwm.request import HEADER_NAME, InboundRequest

__all__ = [
    "AuthorizationCheck",
    "BasicAuthCheck",
    "HeaderAuthCheck",
    "QueryAuthCheck",
    "build_authorization",
    "build_basic_auth",
    "build_header_auth",
    "build_query_auth",
]

_BEARER = "Bearer "
# Longer Authorization values are refused before any comparison.
_MAX_AUTHORIZATION = 8192
# Longer query values are refused before any comparison.
_MAX_QUERY_VALUE = 1000
_FORBIDDEN_CHARS = re.compile(r"[\r\n\x00]")
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
# Strict base64: the standard alphabet, correct padding, no whitespace.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_AUTHORIZATION: frozenset[str] = frozenset({"authorization"})
_NONE: frozenset[str] = frozenset()


def _authorization_value(request: InboundRequest) -> str:
    """The Authorization header, or CheckFailed if missing or unusable."""
    value = request.header("Authorization")
    if value is None or not value.strip():
        raise CheckFailed("Missing Authorization header")
    if len(value) > _MAX_AUTHORIZATION or _FORBIDDEN_CHARS.search(value):
        raise CheckFailed("Invalid Authorization header")
    return value


class AuthorizationCheck:
    """The request's Authorization header must equal a configured value.

    With a configured ``Bearer <token>``, the request must send exactly
    ``Bearer <token>`` (scheme case-sensitive, one space, trailing whitespace
    ignored) and only the token is compared. Otherwise the whole header value
    is compared.
    """

    __slots__ = ("_bearer", "_expected")

    secret_headers = _AUTHORIZATION
    secret_params = _NONE

    def __init__(self, expected: str) -> None:
        expected = expected.strip()
        self._bearer = expected.startswith(_BEARER)
        secret = expected[len(_BEARER) :].strip() if self._bearer else expected
        self._expected = text_bytes(secret)

    def __call__(self, request: InboundRequest) -> None:
        value = _authorization_value(request).rstrip()
        if self._bearer:
            token = value[len(_BEARER) :]
            if not value.startswith(_BEARER) or not token or token[0].isspace():
                raise CheckFailed("Authorization header must be 'Bearer <token>'")
            received = token
        else:
            received = value.strip()
        if not equal(header_bytes(received), self._expected):
            raise CheckFailed("Invalid authorization token")


def build_authorization(value: object) -> AuthorizationCheck:
    """Build the ``authorization`` check from its config value (a string)."""
    expected = require_text("authorization", "the value", value)
    stripped = expected.strip()
    if stripped == _BEARER.strip() or (
        stripped.startswith(_BEARER) and not stripped[len(_BEARER) :].strip()
    ):
        raise ConfigError("authorization: 'Bearer' needs a token after it")
    return AuthorizationCheck(expected)


class BasicAuthCheck:
    """HTTP Basic credentials (RFC 7617) must match the configured pair."""

    __slots__ = ("_password", "_username")

    secret_headers = _AUTHORIZATION
    secret_params = _NONE

    #: Sent with every failure so that clients know which scheme to use.
    challenge: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": 'Basic realm="cwm"'})

    def __init__(self, username: str, password: str) -> None:
        self._username = text_bytes(username)
        self._password = text_bytes(password)

    def _fail(self, reason: str) -> CheckFailed:
        return CheckFailed(reason, headers=self.challenge)

    def __call__(self, request: InboundRequest) -> None:
        try:
            value = _authorization_value(request)
        except CheckFailed as failure:
            raise self._fail(failure.reason) from None
        scheme, space, encoded = value.partition(" ")
        if scheme.lower() != "basic" or not space or not encoded:
            raise self._fail("Authorization header must be 'Basic <base64 credentials>'")
        encoded = encoded.rstrip()
        if not encoded:
            raise self._fail("Authorization header must be 'Basic <base64 credentials>'")
        if not _BASE64.fullmatch(encoded):
            raise self._fail("Invalid Basic auth encoding")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise self._fail("Invalid Basic auth encoding") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        username, colon, password = text.partition(":")
        if not colon:
            raise self._fail("Invalid Basic auth credentials format")
        # Both comparisons always run, so timing does not tell which one failed.
        username_ok = equal(text_bytes(username), self._username)
        password_ok = equal(text_bytes(password), self._password)
        if not (username_ok & password_ok):
            raise self._fail("Invalid credentials")


def build_basic_auth(value: object) -> BasicAuthCheck:
    """Build the ``basic_auth`` check from ``{"username", "password"}``."""
    options = require_mapping("basic_auth", value)
    reject_unknown("basic_auth", options, ("username", "password"))
    username = required_text("basic_auth", options, "username")
    password = required_text("basic_auth", options, "password")
    if ":" in username:
        raise ConfigError("basic_auth: username must not contain ':'")
    return BasicAuthCheck(username, password)


def _fold(value: str, case_sensitive: bool) -> str:
    return value if case_sensitive else value.lower()


class HeaderAuthCheck:
    """An API key sent in a named header."""

    __slots__ = ("_case_sensitive", "_expected", "header_name", "secret_headers")

    secret_params = _NONE

    def __init__(self, api_key: str, header_name: str, case_sensitive: bool) -> None:
        self.header_name = header_name
        self.secret_headers = frozenset({header_name.lower()})
        self._case_sensitive = case_sensitive
        self._expected = text_bytes(_fold(api_key, case_sensitive))

    def __call__(self, request: InboundRequest) -> None:
        value = request.header(self.header_name)
        if value is None or not value.strip():
            raise CheckFailed(f"Missing required header: {self.header_name}")
        received = text_bytes(_fold(header_text(value.strip()), self._case_sensitive))
        if not equal(received, self._expected):
            raise CheckFailed(f"Invalid API key in header: {self.header_name}")


def build_header_auth(value: object) -> HeaderAuthCheck:
    """Build the ``header_auth`` check from ``{"api_key", "header_name", "case_sensitive"}``."""
    options = require_mapping("header_auth", value)
    reject_unknown("header_auth", options, ("api_key", "header_name", "case_sensitive"))
    api_key = required_text("header_auth", options, "api_key")
    header_name = optional_text("header_auth", options, "header_name", "X-API-Key")
    if not HEADER_NAME.fullmatch(header_name):
        raise ConfigError("header_auth: header_name is not a valid HTTP header name")
    case_sensitive = optional_bool("header_auth", options, "case_sensitive", False)
    return HeaderAuthCheck(api_key, header_name, case_sensitive)


class QueryAuthCheck:
    """An API key sent as a query parameter."""

    __slots__ = ("_case_sensitive", "_expected", "parameter_name", "secret_params")

    secret_headers = _NONE

    def __init__(self, api_key: str, parameter_name: str, case_sensitive: bool) -> None:
        self.parameter_name = parameter_name
        self.secret_params = frozenset({parameter_name})
        self._case_sensitive = case_sensitive
        self._expected = text_bytes(_fold(api_key, case_sensitive))

    def __call__(self, request: InboundRequest) -> None:
        value = request.query_value(self.parameter_name)
        if not value:
            raise CheckFailed(f"Missing required query parameter: {self.parameter_name}")
        if len(value) > _MAX_QUERY_VALUE:
            raise CheckFailed(f"Invalid API key in query parameter: {self.parameter_name}")
        received = text_bytes(_fold(value, self._case_sensitive))
        if not equal(received, self._expected):
            raise CheckFailed(f"Invalid API key in query parameter: {self.parameter_name}")


def build_query_auth(value: object) -> QueryAuthCheck:
    """Build the ``query_auth`` check from ``{"api_key", "parameter_name", "case_sensitive"}``."""
    options: Mapping[str, Any] = require_mapping("query_auth", value)
    reject_unknown("query_auth", options, ("api_key", "parameter_name", "case_sensitive"))
    api_key = required_text("query_auth", options, "api_key")
    parameter_name = optional_text("query_auth", options, "parameter_name", "api_key")
    if not _PARAMETER_NAME.fullmatch(parameter_name):
        raise ConfigError("query_auth: parameter_name must match [A-Za-z0-9_.-]{1,100}")
    case_sensitive = optional_bool("query_auth", options, "case_sensitive", False)
    return QueryAuthCheck(api_key, parameter_name, case_sensitive)
