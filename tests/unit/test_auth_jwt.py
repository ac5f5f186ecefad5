"""Unit tests for the jwt check (tokens are made with PyJWT in the tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_module
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cwm.auth.base import CheckFailed
from cwm.auth.jwt_check import build_jwt
from cwm.errors import ConfigError
from cwm.request import InboundRequest
from tests.unit.inbound import inbound

NOW = 1_700_000_000.0
SECRET = "jwt-shared-secret-for-the-tests-" + "0123456789abcdef" * 2


def make_request(authorization: str | None, received_at: float = NOW) -> InboundRequest:
    headers = {} if authorization is None else {"authorization": authorization}
    return inbound(headers, received_at=received_at)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def hs_token(claims: dict[str, Any] | None = None, key: str = SECRET, alg: str = "HS256") -> str:
    payload = {"sub": "sender", "exp": int(NOW) + 60} if claims is None else claims
    return jwt.encode(payload, key, algorithm=alg)


def failure_of(check: object, request: InboundRequest) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        check(request)  # type: ignore[operator]
    assert info.value.status == 401
    assert SECRET not in str(info.value)
    return info.value


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def unsigned_token(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


# --- good tokens ----------------------------------------------------------------------------


def test_jwt_hs256_good() -> None:
    """A valid HS256 token passes."""
    build_jwt({"secret": SECRET})(make_request(bearer(hs_token())))


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_jwt_other_hmac_algorithms_good(algorithm: str) -> None:
    """HS384 and HS512 tokens pass when configured."""
    check = build_jwt({"secret": SECRET, "algorithm": algorithm})
    check(make_request(bearer(hs_token(alg=algorithm))))


def test_jwt_rs256_good(rsa_key: rsa.RSAPrivateKey) -> None:
    """An RS256 token verifies against the PEM public key."""
    check = build_jwt({"secret": pem_public(rsa_key), "algorithm": "RS256"})
    token = jwt.encode({"exp": int(NOW) + 60}, rsa_key, algorithm="RS256")
    check(make_request(bearer(token)))


def test_jwt_es256_good(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """An ES256 token verifies against the PEM public key."""
    check = build_jwt({"secret": pem_public(ec_key), "algorithm": "ES256"})
    token = jwt.encode({"exp": int(NOW) + 60}, ec_key, algorithm="ES256")
    check(make_request(bearer(token)))


def test_jwt_time_comes_from_received_at() -> None:
    """exp is checked against received_at, not the wall clock."""
    check = build_jwt({"secret": SECRET})
    token = hs_token({"exp": 1000})
    check(make_request(bearer(token), received_at=999.0))
    failure = failure_of(check, make_request(bearer(token), received_at=1000.0))
    assert failure.reason == "JWT token expired"


def test_jwt_audience_and_issuer_good() -> None:
    """Matching aud and iss pass; aud may be a list on either side."""
    check = build_jwt({"secret": SECRET, "audience": ["cwm", "other"], "issuer": "https://idp"})
    claims = {"exp": int(NOW) + 60, "aud": "cwm", "iss": "https://idp"}
    check(make_request(bearer(hs_token(claims))))
    claims["aud"] = ["x", "other"]
    check(make_request(bearer(hs_token(claims))))


def test_jwt_unconfigured_audience_not_checked() -> None:
    """A token with aud/iss passes when neither is configured."""
    claims = {"exp": int(NOW) + 60, "aud": "anyone", "iss": "anybody"}
    build_jwt({"secret": SECRET})(make_request(bearer(hs_token(claims))))


def test_jwt_lowercase_bearer_scheme_accepted() -> None:
    """The Bearer scheme name is case-insensitive (RFC 6750)."""
    build_jwt({"secret": SECRET})(make_request("bearer " + hs_token()))


# --- time claims ----------------------------------------------------------------------------


def test_jwt_expired() -> None:
    """A token whose exp has passed fails."""
    token = hs_token({"exp": int(NOW) - 1})
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "JWT token expired"


def test_jwt_expired_within_leeway() -> None:
    """leeway_seconds tolerates a slightly expired token."""
    token = hs_token({"exp": int(NOW) - 10})
    build_jwt({"secret": SECRET, "leeway_seconds": 30})(make_request(bearer(token)))
    check = build_jwt({"secret": SECRET, "leeway_seconds": 5})
    assert failure_of(check, make_request(bearer(token))).reason == "JWT token expired"


def test_jwt_missing_exp_required() -> None:
    """With verify_exp (the default), a token without exp fails."""
    token = hs_token({"sub": "sender"})
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT token: missing exp claim"


def test_jwt_verify_exp_false() -> None:
    """With verify_exp false, missing and past exp are both accepted."""
    check = build_jwt({"secret": SECRET, "verify_exp": False})
    check(make_request(bearer(hs_token({"sub": "sender"}))))
    check(make_request(bearer(hs_token({"exp": 1}))))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_jwt_not_yet_valid(claim: str) -> None:
    """nbf or iat in the future (beyond leeway) fails."""
    token = hs_token({"exp": int(NOW) + 600, claim: int(NOW) + 120})
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "JWT token not yet valid"
    build_jwt({"secret": SECRET, "leeway_seconds": 120})(make_request(bearer(token)))


@pytest.mark.parametrize("value", ["soon", True, None, [1]])
def test_jwt_malformed_exp(value: object) -> None:
    """A non-numeric exp is an invalid token."""
    token = hs_token({"exp": value})
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT token: exp claim must be a number"


# --- bad tokens -----------------------------------------------------------------------------


def test_jwt_wrong_secret() -> None:
    """A token signed with another secret has an invalid signature."""
    token = hs_token(key="another-secret-of-sufficient-length-" + "x" * 40)
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT signature"


def test_jwt_tampered_payload() -> None:
    """Changing the payload breaks the signature."""
    header, _payload, signature = hs_token().split(".")
    forged = unsigned_token({"sub": "admin", "exp": int(NOW) + 60}, {"alg": "HS256"}).split(".")[1]
    token = f"{header}.{forged}.{signature}"
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT signature"


def test_jwt_wrong_audience() -> None:
    """A token for another audience fails; so does one without aud."""
    check = build_jwt({"secret": SECRET, "audience": "cwm"})
    token = hs_token({"exp": int(NOW) + 60, "aud": "someone-else"})
    assert failure_of(check, make_request(bearer(token))).reason == "Invalid JWT audience"
    token = hs_token({"exp": int(NOW) + 60})
    assert failure_of(check, make_request(bearer(token))).reason == "Invalid JWT audience"


def test_jwt_wrong_issuer() -> None:
    """A token from another issuer fails; so does one without iss."""
    check = build_jwt({"secret": SECRET, "issuer": "https://idp"})
    token = hs_token({"exp": int(NOW) + 60, "iss": "https://evil"})
    assert failure_of(check, make_request(bearer(token))).reason == "Invalid JWT issuer"
    token = hs_token({"exp": int(NOW) + 60})
    assert failure_of(check, make_request(bearer(token))).reason == "Invalid JWT issuer"


def test_jwt_wrong_algorithm_hs256_token_to_rs256_check(rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token 'signed' with the RSA public key is refused by an RS256 check."""
    public_pem = pem_public(rsa_key)
    check = build_jwt({"secret": public_pem, "algorithm": "RS256"})
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"exp": int(NOW) + 60}
    signing_input = unsigned_token(claims, header).rstrip(".")
    mac = hmac_module.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    failure = failure_of(check, make_request(bearer(token)))
    assert failure.reason == "Invalid JWT token: algorithm not allowed"


def test_jwt_wrong_algorithm_hs512_token_to_hs256_check() -> None:
    """A token with another HMAC algorithm than configured is refused."""
    token = hs_token(alg="HS512")
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT token: algorithm not allowed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_jwt_alg_none_refused(alg: str) -> None:
    """An unsigned token (alg none, any case) is refused."""
    token = unsigned_token({"exp": int(NOW) + 60}, {"alg": alg, "typ": "JWT"})
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason.startswith("Invalid JWT")


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b.c", "a.b", "....", "bm90IGpzb24.e30.c2ln", "x" * 9000],
)
def test_jwt_malformed_token(token: str) -> None:
    """Tokens that are not JWTs are invalid."""
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT token"


def test_jwt_non_object_payload() -> None:
    """A signed payload that is not a JSON object is invalid."""
    token = jwt.api_jws.encode(b"[1, 2]", SECRET, algorithm="HS256")
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(bearer(token)))
    assert failure.reason == "Invalid JWT token"


def test_jwt_missing_header() -> None:
    """No Authorization header is its own reason."""
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(None))
    assert failure.reason == "Missing Authorization header"


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer  " + "x", "Token x"])
def test_jwt_malformed_header(value: str) -> None:
    """An Authorization header that is not 'Bearer <token>' is a format failure."""
    failure = failure_of(build_jwt({"secret": SECRET}), make_request(value))
    assert failure.reason == "Authorization header must be 'Bearer <token>'"


# --- config errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("secret", "must be an object"),
        ({}, "secret is required"),
        ({"secret": ""}, "secret must not be empty"),
        ({"secret": 42}, "secret must be a non-empty string"),
        ({"secret": SECRET, "algorithm": "none"}, "algorithm must be one of HS256"),
        ({"secret": SECRET, "algorithm": "HS1"}, "algorithm must be one of"),
        ({"secret": SECRET, "algorithm": "EdDSA"}, "algorithm must be one of"),
        ({"secret": SECRET, "algorithm": ["HS256"]}, "algorithm must be one of"),
        ({"secret": SECRET, "algorithm": "RS256"}, "must be a PEM public key for RS256"),
        ({"secret": SECRET, "algorithm": "ES256"}, "must be a PEM public key for ES256"),
        ({"secret": SECRET, "algorithm": "PS256"}, "must be a PEM public key for PS256"),
        ({"secret": SECRET, "issuer": ""}, "issuer must not be empty"),
        ({"secret": SECRET, "issuer": 7}, "issuer must be a non-empty string"),
        ({"secret": SECRET, "audience": []}, "audience list must not be empty"),
        ({"secret": SECRET, "audience": ["ok", 3]}, "each audience must be a non-empty string"),
        ({"secret": SECRET, "verify_exp": "no"}, "verify_exp must be true or false"),
        ({"secret": SECRET, "leeway_seconds": -1}, "leeway_seconds must be >= 0"),
        ({"secret": SECRET, "leeway_seconds": "5"}, "leeway_seconds must be a number"),
        ({"secret": SECRET, "algorithms": ["HS256"]}, "unknown option 'algorithms'"),
    ],
)
def test_jwt_config_errors(value: object, message: str) -> None:
    """Each malformed jwt config is a precise ConfigError without the secret."""
    with pytest.raises(ConfigError, match=r"^jwt: ") as info:
        build_jwt(value)
    assert message in str(info.value)
    assert SECRET not in str(info.value)


def test_jwt_config_hs256_with_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    """A PEM public key as an HS256 secret (algorithm confusion) is a ConfigError."""
    with pytest.raises(ConfigError, match="HS256 needs a shared secret"):
        build_jwt({"secret": pem_public(rsa_key), "algorithm": "HS256"})


def test_jwt_config_rs256_with_private_key(rsa_key: rsa.RSAPrivateKey) -> None:
    """A private key where a public key belongs is a ConfigError that does not echo it."""
    private = pem_private(rsa_key)
    with pytest.raises(ConfigError, match="PEM RSA public key") as info:
        build_jwt({"secret": private, "algorithm": "RS256"})
    assert "PRIVATE KEY" not in str(info.value)


def test_jwt_config_es256_with_rsa_key(rsa_key: rsa.RSAPrivateKey) -> None:
    """An RSA key for ES256 is a ConfigError."""
    with pytest.raises(ConfigError, match="ES256"):
        build_jwt({"secret": pem_public(rsa_key), "algorithm": "ES256"})


def test_jwt_config_es256_with_wrong_curve() -> None:
    """A P-384 key for ES256 is a ConfigError."""
    key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ConfigError, match="ES256"):
        build_jwt({"secret": pem_public(key), "algorithm": "ES256"})


def test_jwt_config_algorithm_case_folded(rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm names are accepted in any case."""
    check = build_jwt({"secret": pem_public(rsa_key), "algorithm": "rs256"})
    token = jwt.encode({"exp": int(NOW) + 60}, rsa_key, algorithm="RS256")
    check(make_request(bearer(token)))


def test_jwt_secret_never_in_messages() -> None:
    """No failure reason or repr of the check contains the secret."""
    check = build_jwt({"secret": SECRET, "audience": "cwm", "issuer": "idp"})
    tokens = [
        None,
        bearer("garbage"),
        bearer(hs_token({"exp": 1})),
        bearer(hs_token(key=SECRET + "x")),
        bearer(SECRET),
        "Basic " + SECRET,
    ]
    for value in tokens:
        failure_of(check, make_request(value))
    assert SECRET not in repr(check)
