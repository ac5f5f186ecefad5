"""Unit tests for the shared-secret checks in cwm.auth.tokens."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import pytest

from cwm.auth.base import CheckFailed
from cwm.auth.tokens import (
    build_authorization,
    build_basic_auth,
    build_header_auth,
    build_query_auth,
)
from cwm.errors import ConfigError
from cwm.request import InboundRequest
from tests.unit.inbound import inbound

SECRET = "s3cr3t-T0ken-value"


def make_request(
    headers: Mapping[str, str | Sequence[str]] | None = None,
    query: Mapping[str, str | Sequence[str]] | None = None,
) -> InboundRequest:
    return inbound(headers, query=query)


def basic(credentials: str, encoding: str = "utf-8") -> str:
    return "Basic " + base64.b64encode(credentials.encode(encoding)).decode("ascii")


def failure_of(check: object, request: InboundRequest) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        check(request)  # type: ignore[operator]
    return info.value


# --- authorization --------------------------------------------------------------------------


def test_authorization_bearer_good() -> None:
    """The exact Bearer token passes."""
    check = build_authorization(f"Bearer {SECRET}")
    check(make_request({"Authorization": f"Bearer {SECRET}"}))


def test_authorization_bearer_trailing_whitespace_trimmed() -> None:
    """Trailing whitespace after the token is ignored."""
    check = build_authorization(f"Bearer {SECRET}")
    check(make_request({"Authorization": f"Bearer {SECRET}  "}))


def test_authorization_bearer_wrong_token() -> None:
    """A different token fails with a reason that does not echo the secret."""
    check = build_authorization(f"Bearer {SECRET}")
    failure = failure_of(check, make_request({"Authorization": "Bearer nope"}))
    assert failure.reason == "Invalid authorization token"
    assert failure.status == 401
    assert SECRET not in str(failure)


def test_authorization_bearer_missing_header() -> None:
    """No Authorization header is its own reason."""
    check = build_authorization(f"Bearer {SECRET}")
    assert failure_of(check, make_request()).reason == "Missing Authorization header"


def test_authorization_bearer_blank_header() -> None:
    """A blank Authorization header counts as missing."""
    check = build_authorization(f"Bearer {SECRET}")
    failure = failure_of(check, make_request({"Authorization": "   "}))
    assert failure.reason == "Missing Authorization header"


@pytest.mark.parametrize(
    "value",
    [
        f"bearer {SECRET}",
        f"BEARER {SECRET}",
        f"Bearer  {SECRET}",
        f"Bearer\t{SECRET}",
        "Bearer ",
        "Bearer",
        SECRET,
        f"Token {SECRET}",
    ],
)
def test_authorization_bearer_malformed(value: str) -> None:
    """Anything but exactly 'Bearer <token>' is a format failure."""
    check = build_authorization(f"Bearer {SECRET}")
    failure = failure_of(check, make_request({"Authorization": value}))
    assert failure.reason == "Authorization header must be 'Bearer <token>'"


def test_authorization_bearer_prefix_of_token_fails() -> None:
    """A token that is only a prefix of the secret fails."""
    check = build_authorization(f"Bearer {SECRET}")
    failure = failure_of(check, make_request({"Authorization": f"Bearer {SECRET[:-1]}"}))
    assert failure.reason == "Invalid authorization token"


def test_authorization_whole_value_good() -> None:
    """Without Bearer, the whole header value is compared."""
    check = build_authorization(f"Token {SECRET}")
    check(make_request({"Authorization": f"Token {SECRET}"}))


def test_authorization_whole_value_wrong() -> None:
    """Without Bearer, a different value fails."""
    check = build_authorization(f"Token {SECRET}")
    failure = failure_of(check, make_request({"Authorization": f"token {SECRET}"}))
    assert failure.reason == "Invalid authorization token"


def test_authorization_whole_value_configured_whitespace_stripped() -> None:
    """Whitespace around the configured value is ignored."""
    check = build_authorization(f"  {SECRET} ")
    check(make_request({"Authorization": SECRET}))


def test_authorization_non_ascii_secret_matches_utf8_wire_bytes() -> None:
    """A non-ASCII secret matches its UTF-8 bytes as received (latin-1 decoded)."""
    secret = "clé-ünïcode-0123456789"
    check = build_authorization(f"Bearer {secret}")
    wire = f"Bearer {secret}".encode().decode("latin-1")
    check(make_request({"Authorization": wire}))


@pytest.mark.parametrize("value", [f"Bearer {SECRET}\r\nX: y", "Bearer " + "a" * 9000, "a\x00b"])
def test_authorization_malformed_header_refused(value: str) -> None:
    """Control characters or an oversized value are refused before comparing."""
    check = build_authorization("Bearer " + "a" * 9000)
    failure = failure_of(check, make_request({"Authorization": value}))
    assert failure.reason == "Invalid Authorization header"


@pytest.mark.parametrize("value", ["", "   ", 42, ["Bearer x"], {"token": "x"}, True])
def test_authorization_config_not_a_non_empty_string(value: object) -> None:
    """A blank or non-string config value is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"^authorization: "):
        build_authorization(value)


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    "])
def test_authorization_config_bearer_without_token(value: str) -> None:
    """'Bearer' with no token is a ConfigError."""
    with pytest.raises(ConfigError, match="needs a token"):
        build_authorization(value)


def test_authorization_secret_never_in_messages() -> None:
    """No failure reason of the check contains the secret."""
    check = build_authorization(f"Bearer {SECRET}")
    for value in [None, "Bearer x", "bearer " + SECRET, SECRET, "Bearer " + SECRET + "x"]:
        headers = {} if value is None else {"Authorization": value}
        failure = failure_of(check, make_request(headers))
        assert SECRET not in failure.reason
        assert SECRET not in str(failure)
    assert SECRET not in repr(check)


# --- basic_auth -----------------------------------------------------------------------------

BASIC = {"username": "alice", "password": "correct horse battery"}


def test_basic_auth_good() -> None:
    """The right username and password pass."""
    check = build_basic_auth(BASIC)
    check(make_request({"Authorization": basic("alice:correct horse battery")}))


def test_basic_auth_scheme_case_insensitive() -> None:
    """The scheme name is case-insensitive (RFC 7617)."""
    check = build_basic_auth(BASIC)
    value = basic("alice:correct horse battery").replace("Basic", "basic")
    check(make_request({"Authorization": value}))


def test_basic_auth_password_with_colon() -> None:
    """Credentials split at the first ':' only, so a password may contain ':'."""
    check = build_basic_auth({"username": "alice", "password": "a:b:c"})
    check(make_request({"Authorization": basic("alice:a:b:c")}))


def test_basic_auth_latin1_fallback() -> None:
    """Credentials that are not UTF-8 are decoded as latin-1."""
    check = build_basic_auth({"username": "alice", "password": "pässwörd"})
    check(make_request({"Authorization": basic("alice:pässwörd", "latin-1")}))


def test_basic_auth_utf8_credentials() -> None:
    """UTF-8 credentials are decoded as UTF-8."""
    check = build_basic_auth({"username": "zoë", "password": "пароль-123"})
    check(make_request({"Authorization": basic("zoë:пароль-123")}))


@pytest.mark.parametrize(
    "credentials",
    ["alice:wrong", "bob:correct horse battery", "bob:wrong", "alice:", ":correct horse battery"],
)
def test_basic_auth_wrong_credentials(credentials: str) -> None:
    """A wrong username or password fails with one reason and a challenge."""
    check = build_basic_auth(BASIC)
    failure = failure_of(check, make_request({"Authorization": basic(credentials)}))
    assert failure.reason == "Invalid credentials"
    assert failure.status == 401
    assert failure.headers == {"WWW-Authenticate": 'Basic realm="cwm"'}


def test_basic_auth_missing_header() -> None:
    """No Authorization header fails with the challenge header."""
    failure = failure_of(build_basic_auth(BASIC), make_request())
    assert failure.reason == "Missing Authorization header"
    assert failure.headers["WWW-Authenticate"] == 'Basic realm="cwm"'


@pytest.mark.parametrize(
    "value",
    ["Bearer abc", "Basic", "Basic ", "Basicabc", "Digest username=alice"],
)
def test_basic_auth_wrong_scheme(value: str) -> None:
    """Another scheme or no credentials is a format failure."""
    failure = failure_of(build_basic_auth(BASIC), make_request({"Authorization": value}))
    assert failure.reason == "Authorization header must be 'Basic <base64 credentials>'"
    assert "WWW-Authenticate" in failure.headers


@pytest.mark.parametrize(
    "encoded",
    ["not base64!", "YWxpY2U6cHc", "YWxpY2U6c2VjcmV0=x", "YWxp Y2U6", "YWxpY2U6c2VjcmV0==="],
)
def test_basic_auth_malformed_base64(encoded: str) -> None:
    """Non-strict base64 (bad alphabet, padding or whitespace) is refused."""
    value = "Basic " + encoded
    failure = failure_of(build_basic_auth(BASIC), make_request({"Authorization": value}))
    assert failure.reason == "Invalid Basic auth encoding"


def test_basic_auth_no_colon() -> None:
    """Decoded credentials without ':' are a format failure."""
    value = basic("alicecorrect horse battery")
    failure = failure_of(build_basic_auth(BASIC), make_request({"Authorization": value}))
    assert failure.reason == "Invalid Basic auth credentials format"


def test_basic_auth_compares_both_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both fields are compared even when the username is already wrong."""
    import cwm.auth.tokens as tokens

    calls: list[tuple[bytes, bytes]] = []
    real = tokens.equal

    def spy(received: bytes, expected: bytes) -> bool:
        calls.append((received, expected))
        return real(received, expected)

    monkeypatch.setattr(tokens, "equal", spy)
    check = build_basic_auth(BASIC)
    with pytest.raises(CheckFailed):
        check(make_request({"Authorization": basic("mallory:x")}))
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alice:pw", "must be an object"),
        (None, "must be an object"),
        ({"username": "alice"}, "password is required"),
        ({"password": "pw"}, "username is required"),
        ({"username": "", "password": "pw"}, "username must not be empty"),
        ({"username": "alice", "password": "  "}, "password must not be empty"),
        ({"username": 1, "password": "pw"}, "username must be a non-empty string"),
        ({"username": "alice", "password": ["pw"]}, "password must be a non-empty string"),
        ({"username": "al:ice", "password": "pw"}, "username must not contain ':'"),
        ({"username": "alice", "password": "pw", "realm": "x"}, "unknown option 'realm'"),
    ],
)
def test_basic_auth_config_errors(value: object, message: str) -> None:
    """Each malformed basic_auth config is a precise ConfigError."""
    with pytest.raises(ConfigError, match=r"^basic_auth: ") as info:
        build_basic_auth(value)
    assert message in str(info.value)


def test_basic_auth_secret_never_in_messages() -> None:
    """Neither the password nor the config leaks into reasons or errors."""
    password = "Sup3r-Secret-Pa55"
    check = build_basic_auth({"username": "alice", "password": password})
    for value in [basic("alice:nope"), basic("alice"), "Basic !!", "Bearer " + password]:
        failure = failure_of(check, make_request({"Authorization": value}))
        assert password not in str(failure)
    with pytest.raises(ConfigError) as info:
        build_basic_auth({"username": "", "password": password})
    assert password not in str(info.value)
    assert password not in repr(check)


# --- header_auth ----------------------------------------------------------------------------


def test_header_auth_good_default_header() -> None:
    """The key in X-API-Key passes."""
    check = build_header_auth({"api_key": SECRET})
    check(make_request({"X-API-Key": SECRET}))


def test_header_auth_case_insensitive_by_default() -> None:
    """By default the key compares case-insensitively."""
    check = build_header_auth({"api_key": SECRET})
    check(make_request({"x-api-key": SECRET.upper()}))


def test_header_auth_case_sensitive() -> None:
    """With case_sensitive, a different case fails."""
    check = build_header_auth({"api_key": SECRET, "case_sensitive": True})
    check(make_request({"X-API-Key": SECRET}))
    failure = failure_of(check, make_request({"X-API-Key": SECRET.upper()}))
    assert failure.reason == "Invalid API key in header: X-API-Key"


def test_header_auth_custom_header() -> None:
    """A custom header name is looked up case-insensitively and named in reasons."""
    check = build_header_auth({"api_key": SECRET, "header_name": "X-Hook-Key"})
    check(make_request({"x-hook-key": SECRET}))
    failure = failure_of(check, make_request({"X-API-Key": SECRET}))
    assert failure.reason == "Missing required header: X-Hook-Key"


def test_header_auth_wrong_key() -> None:
    """A wrong key fails without echoing the secret."""
    check = build_header_auth({"api_key": SECRET})
    failure = failure_of(check, make_request({"X-API-Key": "guess"}))
    assert failure.reason == "Invalid API key in header: X-API-Key"
    assert SECRET not in str(failure)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": ""}, {"X-API-Key": "   "}])
def test_header_auth_missing(headers: dict[str, str]) -> None:
    """An absent or empty header is missing."""
    check = build_header_auth({"api_key": SECRET})
    failure = failure_of(check, make_request(headers))
    assert failure.reason == "Missing required header: X-API-Key"


def test_header_auth_non_ascii_key_case_insensitive() -> None:
    """A non-ASCII key sent as UTF-8 matches case-insensitively."""
    check = build_header_auth({"api_key": "ÄPI-schlüssel"})
    wire = "äpi-SCHLÜSSEL".encode().decode("latin-1")
    check(make_request({"X-API-Key": wire}))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("key", "must be an object"),
        ({}, "api_key is required"),
        ({"api_key": None}, "api_key is required"),
        ({"api_key": ""}, "api_key must not be empty"),
        ({"api_key": 123}, "api_key must be a non-empty string"),
        ({"api_key": "k", "header_name": ""}, "header_name must not be empty"),
        ({"api_key": "k", "header_name": "X API Key"}, "not a valid HTTP header name"),
        ({"api_key": "k", "header_name": "X-Key:"}, "not a valid HTTP header name"),
        ({"api_key": "k", "case_sensitive": "yes"}, "case_sensitive must be true or false"),
        ({"api_key": "k", "header": "X-Key"}, "unknown option 'header'"),
    ],
)
def test_header_auth_config_errors(value: object, message: str) -> None:
    """Each malformed header_auth config is a precise ConfigError."""
    with pytest.raises(ConfigError, match=r"^header_auth: ") as info:
        build_header_auth(value)
    assert message in str(info.value)


# --- query_auth -----------------------------------------------------------------------------


def test_query_auth_good_default_parameter() -> None:
    """The key in ?api_key= passes."""
    check = build_query_auth({"api_key": SECRET})
    check(make_request(query={"api_key": SECRET}))


def test_query_auth_case_insensitive_by_default() -> None:
    """By default the key compares case-insensitively."""
    check = build_query_auth({"api_key": SECRET})
    check(make_request(query={"api_key": SECRET.swapcase()}))


def test_query_auth_case_sensitive() -> None:
    """With case_sensitive, a different case fails."""
    check = build_query_auth({"api_key": SECRET, "case_sensitive": True})
    failure = failure_of(check, make_request(query={"api_key": SECRET.swapcase()}))
    assert failure.reason == "Invalid API key in query parameter: api_key"


def test_query_auth_custom_parameter() -> None:
    """A custom parameter name is used and named in reasons."""
    check = build_query_auth({"api_key": SECRET, "parameter_name": "token.v2"})
    check(make_request(query={"token.v2": SECRET}))
    failure = failure_of(check, make_request(query={"api_key": SECRET}))
    assert failure.reason == "Missing required query parameter: token.v2"


def test_query_auth_wrong_key() -> None:
    """A wrong key fails without echoing the secret."""
    check = build_query_auth({"api_key": SECRET})
    failure = failure_of(check, make_request(query={"api_key": "guess"}))
    assert failure.reason == "Invalid API key in query parameter: api_key"
    assert SECRET not in str(failure)


@pytest.mark.parametrize("query", [{}, {"api_key": ""}, {"API_KEY": SECRET}])
def test_query_auth_missing(query: dict[str, str]) -> None:
    """An absent or empty parameter is missing (names are case-sensitive)."""
    check = build_query_auth({"api_key": SECRET})
    failure = failure_of(check, make_request(query=query))
    assert failure.reason == "Missing required query parameter: api_key"


@pytest.mark.parametrize("value", ["x" * 1001, SECRET + "\x00", SECRET + "\n"])
def test_query_auth_malformed_value(value: str) -> None:
    """Oversized values or values with control characters never match."""
    check = build_query_auth({"api_key": SECRET})
    failure = failure_of(check, make_request(query={"api_key": value}))
    assert failure.reason == "Invalid API key in query parameter: api_key"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["k"], "must be an object"),
        ({"parameter_name": "key"}, "api_key is required"),
        ({"api_key": "  "}, "api_key must not be empty"),
        ({"api_key": 5}, "api_key must be a non-empty string"),
        ({"api_key": "k", "parameter_name": "a b"}, "parameter_name must match"),
        ({"api_key": "k", "parameter_name": "a&b"}, "parameter_name must match"),
        ({"api_key": "k", "parameter_name": "a" * 101}, "parameter_name must match"),
        ({"api_key": "k", "parameter_name": 7}, "parameter_name must be a non-empty string"),
        ({"api_key": "k", "case_sensitive": 1}, "case_sensitive must be true or false"),
        ({"api_key": "k", "param": "x"}, "unknown option 'param'"),
    ],
)
def test_query_auth_config_errors(value: object, message: str) -> None:
    """Each malformed query_auth config is a precise ConfigError."""
    with pytest.raises(ConfigError, match=r"^query_auth: ") as info:
        build_query_auth(value)
    assert message in str(info.value)


def test_query_auth_secret_never_in_messages() -> None:
    """No reason of header_auth or query_auth contains the key."""
    header_check = build_header_auth({"api_key": SECRET})
    query_check = build_query_auth({"api_key": SECRET})
    for request in [make_request(), make_request({"X-API-Key": "x"}, {"api_key": "x"})]:
        for check in (header_check, query_check):
            assert SECRET not in str(failure_of(check, request))
    assert SECRET not in repr(header_check) + repr(query_check)
