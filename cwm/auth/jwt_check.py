"""The ``jwt`` check: a signed JSON Web Token in ``Authorization: Bearer <jwt>``.

PyJWT verifies the signature (with exactly the configured algorithm, so an
``HS256`` token can never be checked against an RSA public key used as an
HMAC secret, and ``none`` is never accepted), the audience and the issuer.
PyJWT reads the wall clock for ``exp``/``nbf``/``iat`` and cannot be given
another time, so those three are checked here against the time the request
was received, which keeps the check deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cwm.auth._config import (
    optional_bool,
    optional_number,
    quote,
    reject_unknown,
    require_mapping,
    require_text,
    required_text,
)
from cwm.auth.base import CheckFailed
from cwm.errors import ConfigError
from cwm.request import InboundRequest

__all__ = ["JWT_ALGORITHMS", "JwtCheck", "build_jwt"]

_KEY = "jwt"
_OPTIONS = ("secret", "algorithm", "issuer", "audience", "verify_exp", "leeway_seconds")

JWT_ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)
_EC_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
# Longer tokens are refused before they are parsed.
_MAX_TOKEN = 8192


def _bearer_token(request: InboundRequest) -> str:
    value = request.header("Authorization")
    if value is None or not value.strip():
        raise CheckFailed("Missing Authorization header")
    scheme, space, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not space or not token or token[0].isspace():
        raise CheckFailed("Authorization header must be 'Bearer <token>'")
    if len(token) > _MAX_TOKEN:
        raise CheckFailed("Invalid JWT token")
    return token


def _number_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, None when absent, CheckFailed when not a number."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckFailed(f"Invalid JWT token: {name} claim must be a number")
    return float(value)


def _failure(error: jwt.PyJWTError) -> CheckFailed:
    """The client-safe reason for a PyJWT error (PyJWT's own text is not passed on)."""
    if isinstance(error, jwt.InvalidSignatureError):
        return CheckFailed("Invalid JWT signature")
    if isinstance(error, jwt.InvalidAlgorithmError):
        return CheckFailed("Invalid JWT token: algorithm not allowed")
    if isinstance(error, jwt.InvalidAudienceError):
        return CheckFailed("Invalid JWT audience")
    if isinstance(error, jwt.InvalidIssuerError):
        return CheckFailed("Invalid JWT issuer")
    if isinstance(error, jwt.MissingRequiredClaimError):
        if error.claim == "aud":
            return CheckFailed("Invalid JWT audience")
        if error.claim == "iss":
            return CheckFailed("Invalid JWT issuer")
    return CheckFailed("Invalid JWT token")


class JwtCheck:
    """The request must carry a valid JWT signed with the configured key."""

    __slots__ = ("_algorithm", "_audience", "_issuer", "_key", "_leeway", "_verify_exp")

    secret_headers: frozenset[str] = frozenset({"authorization"})
    secret_params: frozenset[str] = frozenset()

    def __init__(
        self,
        key: Any,
        algorithm: str,
        *,
        issuer: str | list[str] | None = None,
        audience: str | list[str] | None = None,
        verify_exp: bool = True,
        leeway_seconds: float = 0.0,
    ) -> None:
        self._key = key
        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._verify_exp = verify_exp
        self._leeway = leeway_seconds

    def __call__(self, request: InboundRequest) -> None:
        token = _bearer_token(request)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.PyJWTError as error:
            raise _failure(error) from None
        self._check_times(claims, request.received_at)

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        expires = _number_claim(claims, "exp")
        if self._verify_exp:
            if expires is None:
                raise CheckFailed("Invalid JWT token: missing exp claim")
            if expires <= now - self._leeway:
                raise CheckFailed("JWT token expired")
        for name in ("nbf", "iat"):
            moment = _number_claim(claims, name)
            if moment is not None and moment > now + self._leeway:
                raise CheckFailed("JWT token not yet valid")


def _claim_values(options: Mapping[str, Any], field: str) -> str | list[str] | None:
    """``issuer``/``audience``: a string or a non-empty list of strings."""
    value = options.get(field)
    if value is None:
        return None
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{_KEY}: {field} list must not be empty")
        return [require_text(_KEY, f"each {field}", item) for item in value]
    return require_text(_KEY, field, value)


def _prepare_key(algorithm: str, secret: str) -> Any:
    """The verification key, parsed once; a key unfit for the algorithm is an error."""
    algorithm_object = jwt.get_algorithm_by_name(algorithm)
    try:
        key = algorithm_object.prepare_key(secret)
    except (jwt.InvalidKeyError, UnsupportedAlgorithm, ValueError, TypeError):
        if algorithm.startswith("HS"):
            raise ConfigError(
                f"{_KEY}: {algorithm} needs a shared secret, not a public key or certificate"
            ) from None
        raise ConfigError(f"{_KEY}: secret must be a PEM public key for {algorithm}") from None
    if algorithm.startswith("HS"):
        return key
    if algorithm.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError(f"{_KEY}: secret must be a PEM EC public key for {algorithm}")
        if not isinstance(key.curve, _EC_CURVES[algorithm]):
            raise ConfigError(
                f"{_KEY}: {algorithm} needs a {_EC_CURVES[algorithm].name} key, "
                f"not {key.curve.name}"
            )
    elif not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{_KEY}: secret must be a PEM RSA public key for {algorithm}")
    return key


def build_jwt(value: object) -> JwtCheck:
    """Build the ``jwt`` check from its config object."""
    options = require_mapping(_KEY, value)
    reject_unknown(_KEY, options, _OPTIONS)
    secret = required_text(_KEY, options, "secret")
    raw_algorithm = options.get("algorithm")
    if raw_algorithm is None:
        raw_algorithm = "HS256"
    algorithm = raw_algorithm.upper() if isinstance(raw_algorithm, str) else None
    if algorithm not in JWT_ALGORITHMS:
        raise ConfigError(
            f"{_KEY}: algorithm must be one of {', '.join(JWT_ALGORITHMS)}, "
            f"not {quote(raw_algorithm)}"
        )
    key = _prepare_key(algorithm, secret)
    return JwtCheck(
        key,
        algorithm,
        issuer=_claim_values(options, "issuer"),
        audience=_claim_values(options, "audience"),
        verify_exp=optional_bool(_KEY, options, "verify_exp", True),
        leeway_seconds=optional_number(_KEY, options, "leeway_seconds", 0.0, allow_zero=True),
    )
