"""Unit tests for the hmac check: generic mode and the provider presets.

The provider vectors: GitHub's from its documentation, Standard Webhooks' from
the standard-webhooks Python SDK's tests; Stripe's, Slack's and Shopify's made
with Python's ``hmac`` over the same body and timestamp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence

import pytest

from cwm.auth.base import CheckFailed
from cwm.auth.signatures import build_hmac
from cwm.errors import ConfigError
from cwm.request import InboundRequest
from tests.unit.inbound import inbound

VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_TS = 1614265330

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

STRIPE_SECRET = "whsec_test_secret"
STRIPE_V1 = "10c96c6fd3f320fcfc264cdc4f476c15060ede8e8a08404cea2ddf3b72544a9c"

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_SIGNATURE = "v0=d0ca9022c46ea8440684409ebca881c0cac81415e599d8e04c2c156ff8a8ebb8"

SHOPIFY_SECRET = "shpss_test_secret"
SHOPIFY_SIGNATURE = "ZGA9SRoAY8ipvy3fT1GzyLyr2+KQlTc2GMtSrIsbtUY="

GENERIC_SECRET = "generic-shared-secret-0123456789"

ALL_SECRETS = (
    GITHUB_SECRET,
    SW_SECRET,
    STRIPE_SECRET,
    SLACK_SECRET,
    SHOPIFY_SECRET,
    GENERIC_SECRET,
)


def make_request(
    headers: Mapping[str, str | Sequence[str]] | None = None,
    body: bytes = VECTOR_BODY,
    received_at: float = VECTOR_TS,
) -> InboundRequest:
    return inbound(headers, body=body, received_at=received_at)


def failure_of(check: object, request: InboundRequest) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        check(request)  # type: ignore[operator]
    failure = info.value
    assert failure.status == 401
    for secret in ALL_SECRETS:
        assert secret not in str(failure)
    return failure


def hex_mac(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def b64_mac(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, algorithm).digest()).decode()


def stripe_headers(signature: str = f"t={VECTOR_TS},v1={STRIPE_V1}") -> dict[str, str]:
    return {"Stripe-Signature": signature}


def slack_headers(
    signature: str = SLACK_SIGNATURE, timestamp: str = str(VECTOR_TS)
) -> dict[str, str]:
    return {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": timestamp}


def sw_headers(
    signature: str = SW_SIGNATURE,
    prefix: str = "webhook-",
    message_id: str = SW_ID,
    timestamp: str = str(VECTOR_TS),
) -> dict[str, str]:
    return {
        f"{prefix}id": message_id,
        f"{prefix}timestamp": timestamp,
        f"{prefix}signature": signature,
    }


# --- generic mode ---------------------------------------------------------------------------


def test_hmac_generic_bare_hex_good() -> None:
    """A bare hex sha256 digest in X-HMAC-Signature passes."""
    check = build_hmac({"secret": GENERIC_SECRET})
    check(make_request({"X-HMAC-Signature": hex_mac(GENERIC_SECRET, VECTOR_BODY)}))


def test_hmac_generic_prefixed_hex_good() -> None:
    """An '<alg>=<hex>' value passes, with the hex in upper case too."""
    check = build_hmac({"secret": GENERIC_SECRET})
    digest = hex_mac(GENERIC_SECRET, VECTOR_BODY).upper()
    check(make_request({"x-hmac-signature": f"sha256={digest}"}))


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512", "SHA512"])
def test_hmac_generic_algorithms(algorithm: str) -> None:
    """Each supported algorithm verifies its own digest, bare and prefixed."""
    check = build_hmac({"secret": GENERIC_SECRET, "algorithm": algorithm})
    digest = hex_mac(GENERIC_SECRET, VECTOR_BODY, algorithm.lower())
    check(make_request({"X-HMAC-Signature": digest}))
    check(make_request({"X-HMAC-Signature": f"{algorithm.lower()}={digest}"}))


def test_hmac_generic_wrong_algorithm_prefix() -> None:
    """A prefix naming another algorithm is a format failure."""
    check = build_hmac({"secret": GENERIC_SECRET})
    value = "sha1=" + hex_mac(GENERIC_SECRET, VECTOR_BODY, "sha1")
    assert failure_of(check, make_request({"X-HMAC-Signature": value})).reason == (
        "Invalid signature format"
    )


def test_hmac_generic_base64_good() -> None:
    """With encoding base64, a standard base64 digest passes, bare or prefixed."""
    check = build_hmac({"secret": GENERIC_SECRET, "encoding": "base64"})
    digest = b64_mac(GENERIC_SECRET, VECTOR_BODY)
    check(make_request({"X-HMAC-Signature": digest}))
    check(make_request({"X-HMAC-Signature": f"sha256={digest}"}))


def test_hmac_generic_custom_header() -> None:
    """A custom header is read, case-insensitively, and named when missing."""
    check = build_hmac({"secret": GENERIC_SECRET, "header": "X-Signature"})
    check(make_request({"x-signature": hex_mac(GENERIC_SECRET, VECTOR_BODY)}))
    failure = failure_of(check, make_request({"X-HMAC-Signature": "00"}))
    assert failure.reason == "Missing X-Signature header"


def test_hmac_generic_github_style_via_header() -> None:
    """Upstream's way to verify GitHub (header + sha256= prefix) still works."""
    check = build_hmac({"secret": GITHUB_SECRET, "header": "X-Hub-Signature-256"})
    check(make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, body=GITHUB_BODY))


def test_hmac_generic_wrong_signature() -> None:
    """A well-formed digest made with another secret fails."""
    check = build_hmac({"secret": GENERIC_SECRET})
    value = hex_mac("another-secret", VECTOR_BODY)
    failure = failure_of(check, make_request({"X-HMAC-Signature": value}))
    assert failure.reason == "Invalid HMAC signature"


def test_hmac_generic_tampered_body() -> None:
    """A digest of another body fails."""
    check = build_hmac({"secret": GENERIC_SECRET})
    value = hex_mac(GENERIC_SECRET, VECTOR_BODY)
    request = make_request({"X-HMAC-Signature": value}, body=VECTOR_BODY + b" ")
    assert failure_of(check, request).reason == "Invalid HMAC signature"


def test_hmac_generic_missing_header() -> None:
    """No signature header fails naming the header."""
    check = build_hmac({"secret": GENERIC_SECRET})
    assert failure_of(check, make_request()).reason == "Missing X-HMAC-Signature header"


@pytest.mark.parametrize(
    "value",
    [
        "zz" * 32,
        "abcd",
        "ab " * 32,
        "sha256=",
        "sha256=" + "0" * 63,
        "0" * 128,
        "sha256:" + "0" * 64,
    ],
)
def test_hmac_generic_malformed_hex(value: str) -> None:
    """Non-hex, wrong-length or badly prefixed values are format failures."""
    check = build_hmac({"secret": GENERIC_SECRET})
    failure = failure_of(check, make_request({"X-HMAC-Signature": value}))
    assert failure.reason == "Invalid signature format"


@pytest.mark.parametrize("value", ["not base64!!", "AAAA", "YWJj\nZGVm", "sha256=%%%"])
def test_hmac_generic_malformed_base64(value: str) -> None:
    """Invalid or wrong-length base64 is a format failure."""
    check = build_hmac({"secret": GENERIC_SECRET, "encoding": "base64"})
    failure = failure_of(check, make_request({"X-HMAC-Signature": value}))
    assert failure.reason == "Invalid signature format"


def test_hmac_generic_rotation_any_secret_passes() -> None:
    """With a list of secrets, a signature made with any one of them passes."""
    check = build_hmac({"secret": ["old-secret-value", GENERIC_SECRET]})
    for secret in ("old-secret-value", GENERIC_SECRET):
        check(make_request({"X-HMAC-Signature": hex_mac(secret, VECTOR_BODY)}))
    failure = failure_of(check, make_request({"X-HMAC-Signature": hex_mac("x", VECTOR_BODY)}))
    assert failure.reason == "Invalid HMAC signature"


def test_hmac_generic_utf8_secret() -> None:
    """The key is the secret's UTF-8 bytes."""
    secret = "sécret-ключ"
    check = build_hmac({"secret": secret})
    digest = hmac.new(secret.encode("utf-8"), VECTOR_BODY, hashlib.sha256).hexdigest()
    check(make_request({"X-HMAC-Signature": digest}))


# --- github ---------------------------------------------------------------------------------


def test_hmac_github_vector() -> None:
    """GitHub's documented vector verifies."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github"})
    check(make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, body=GITHUB_BODY))


def test_hmac_github_no_replay_window() -> None:
    """GitHub signs no timestamp: any receive time verifies."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github"})
    check(make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, GITHUB_BODY, received_at=0))


def test_hmac_github_tampered_body() -> None:
    """The GitHub vector signature does not verify another body."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github"})
    request = make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, body=b"Hello, World?")
    assert failure_of(check, request).reason == "Invalid HMAC signature"


def test_hmac_github_missing_header() -> None:
    """No X-Hub-Signature-256 fails naming it."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github"})
    request = make_request({"X-HMAC-Signature": GITHUB_SIGNATURE}, body=GITHUB_BODY)
    assert failure_of(check, request).reason == "Missing X-Hub-Signature-256 header"


@pytest.mark.parametrize(
    "value",
    [GITHUB_SIGNATURE.removeprefix("sha256="), "sha1=" + "0" * 40, "sha256=xyz", "sha256"],
)
def test_hmac_github_malformed(value: str) -> None:
    """GitHub signatures need the sha256= prefix and 64 hex digits."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github"})
    request = make_request({"X-Hub-Signature-256": value}, body=GITHUB_BODY)
    assert failure_of(check, request).reason == "Invalid signature format"


def test_hmac_github_sha1_legacy() -> None:
    """algorithm sha1 switches GitHub to X-Hub-Signature with sha1=."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github", "algorithm": "sha1"})
    value = "sha1=" + hex_mac(GITHUB_SECRET, GITHUB_BODY, "sha1")
    check(make_request({"X-Hub-Signature": value}, body=GITHUB_BODY))
    request = make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, body=GITHUB_BODY)
    assert failure_of(check, request).reason == "Missing X-Hub-Signature header"


def test_hmac_github_header_override() -> None:
    """A configured header overrides GitHub's signature header."""
    check = build_hmac({"secret": GITHUB_SECRET, "provider": "github", "header": "X-Sig"})
    check(make_request({"X-Sig": GITHUB_SIGNATURE}, body=GITHUB_BODY))
    request = make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, body=GITHUB_BODY)
    assert failure_of(check, request).reason == "Missing X-Sig header"


def test_hmac_github_rotation() -> None:
    """A GitHub check with two secrets accepts the vector signed by either."""
    check = build_hmac({"secret": ["new-github-secret", GITHUB_SECRET], "provider": "github"})
    check(make_request({"X-Hub-Signature-256": GITHUB_SIGNATURE}, body=GITHUB_BODY))


# --- stripe ---------------------------------------------------------------------------------


def test_hmac_stripe_vector() -> None:
    """The Stripe vector verifies at its own timestamp."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    check(make_request(stripe_headers()))


def test_hmac_stripe_inside_tolerance() -> None:
    """Receive times up to the tolerance either side verify."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    check(make_request(stripe_headers(), received_at=VECTOR_TS + 300))
    check(make_request(stripe_headers(), received_at=VECTOR_TS - 300))


@pytest.mark.parametrize("received_at", [VECTOR_TS + 301, VECTOR_TS - 301, 1_900_000_000])
def test_hmac_stripe_outside_tolerance(received_at: float) -> None:
    """A timestamp more than 300 s from the receive time fails."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    failure = failure_of(check, make_request(stripe_headers(), received_at=received_at))
    assert failure.reason == "Signature timestamp outside tolerance"


def test_hmac_stripe_custom_tolerance() -> None:
    """tolerance_seconds widens or narrows the window."""
    wide = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe", "tolerance_seconds": 3600})
    wide(make_request(stripe_headers(), received_at=VECTOR_TS + 3000))
    narrow = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe", "tolerance_seconds": 5})
    failure = failure_of(narrow, make_request(stripe_headers(), received_at=VECTOR_TS + 6))
    assert failure.reason == "Signature timestamp outside tolerance"


def test_hmac_stripe_multiple_v1_and_v0_ignored() -> None:
    """Any v1 may match (rolling secret); v0 entries are never used."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    value = f"t={VECTOR_TS},v1={'0' * 64},v1={STRIPE_V1},v0={'1' * 64}"
    check(make_request(stripe_headers(value)))
    spaced = f"t={VECTOR_TS}, v1={STRIPE_V1}"
    check(make_request(stripe_headers(spaced)))


def test_hmac_stripe_v0_only_is_not_accepted() -> None:
    """A valid signature under v0 does not count (no downgrade)."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    failure = failure_of(check, make_request(stripe_headers(f"t={VECTOR_TS},v0={STRIPE_V1}")))
    assert failure.reason == "Invalid signature format"


def test_hmac_stripe_tampered_body() -> None:
    """The vector signature does not verify another body."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    request = make_request(stripe_headers(), body=b'{"test": 2432232315}')
    assert failure_of(check, request).reason == "Invalid HMAC signature"


def test_hmac_stripe_tampered_timestamp() -> None:
    """Changing t (still within tolerance) breaks the signature."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    request = make_request(stripe_headers(f"t={VECTOR_TS + 1},v1={STRIPE_V1}"))
    assert failure_of(check, request).reason == "Invalid HMAC signature"


def test_hmac_stripe_secret_used_as_is() -> None:
    """The whsec_ secret is the key as-is, not base64-decoded."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    signed = f"{VECTOR_TS}.".encode() + VECTOR_BODY
    assert hex_mac(STRIPE_SECRET, signed) == STRIPE_V1
    check(make_request(stripe_headers()))


def test_hmac_stripe_rotation() -> None:
    """With two secrets, the vector verifies via the matching one."""
    check = build_hmac({"secret": ["whsec_new_secret", STRIPE_SECRET], "provider": "stripe"})
    check(make_request(stripe_headers()))


def test_hmac_stripe_missing_header() -> None:
    """No Stripe-Signature fails naming it."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    assert failure_of(check, make_request()).reason == "Missing Stripe-Signature header"


@pytest.mark.parametrize(
    "value",
    [f"v1={STRIPE_V1}", f"t=abc,v1={STRIPE_V1}", f"t=-5,v1={STRIPE_V1}", f"t=,v1={STRIPE_V1}"],
)
def test_hmac_stripe_missing_or_invalid_timestamp(value: str) -> None:
    """A missing or non-numeric t is its own reason."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    failure = failure_of(check, make_request(stripe_headers(value)))
    assert failure.reason == "Missing or invalid timestamp"


@pytest.mark.parametrize(
    "value", [f"t={VECTOR_TS}", f"t={VECTOR_TS},v1=nothex", f"t={VECTOR_TS},v1=abcd", "garbage"]
)
def test_hmac_stripe_malformed(value: str) -> None:
    """No usable v1 signature is a format failure."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    failure = failure_of(check, make_request(stripe_headers(value)))
    assert failure.reason == "Invalid signature format"


# --- slack ----------------------------------------------------------------------------------


def test_hmac_slack_vector() -> None:
    """The Slack vector verifies at its own timestamp."""
    check = build_hmac({"secret": SLACK_SECRET, "provider": "slack"})
    check(make_request(slack_headers()))


def test_hmac_slack_inside_and_outside_tolerance() -> None:
    """Five minutes either way verify; one second more fails."""
    check = build_hmac({"secret": SLACK_SECRET, "provider": "slack"})
    check(make_request(slack_headers(), received_at=VECTOR_TS + 300))
    failure = failure_of(check, make_request(slack_headers(), received_at=VECTOR_TS + 301))
    assert failure.reason == "Signature timestamp outside tolerance"
    failure = failure_of(check, make_request(slack_headers(), received_at=VECTOR_TS - 301))
    assert failure.reason == "Signature timestamp outside tolerance"


def test_hmac_slack_tampered_body() -> None:
    """The vector signature does not verify another body."""
    check = build_hmac({"secret": SLACK_SECRET, "provider": "slack"})
    request = make_request(slack_headers(), body=b"token=x&text=hi")
    assert failure_of(check, request).reason == "Invalid HMAC signature"


def test_hmac_slack_rotation() -> None:
    """With two secrets, the vector verifies via the matching one."""
    check = build_hmac({"secret": [SLACK_SECRET, "other-signing-secret"], "provider": "slack"})
    check(make_request(slack_headers()))


def test_hmac_slack_missing_signature() -> None:
    """No X-Slack-Signature fails naming it."""
    check = build_hmac({"secret": SLACK_SECRET, "provider": "slack"})
    request = make_request({"X-Slack-Request-Timestamp": str(VECTOR_TS)})
    assert failure_of(check, request).reason == "Missing X-Slack-Signature header"


@pytest.mark.parametrize("timestamp", [None, "", "soon", "1614265330.5", "¹⁶¹⁴"])
def test_hmac_slack_missing_or_invalid_timestamp(timestamp: str | None) -> None:
    """A missing or non-integer timestamp is its own reason."""
    check = build_hmac({"secret": SLACK_SECRET, "provider": "slack"})
    headers = {"X-Slack-Signature": SLACK_SIGNATURE}
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    assert failure_of(check, make_request(headers)).reason == "Missing or invalid timestamp"


@pytest.mark.parametrize(
    "signature", [SLACK_SIGNATURE.removeprefix("v0="), "v1=" + "0" * 64, "v0=zz", "v0="]
)
def test_hmac_slack_malformed(signature: str) -> None:
    """Slack signatures need v0= and 64 hex digits."""
    check = build_hmac({"secret": SLACK_SECRET, "provider": "slack"})
    failure = failure_of(check, make_request(slack_headers(signature=signature)))
    assert failure.reason == "Invalid signature format"


# --- shopify --------------------------------------------------------------------------------


def test_hmac_shopify_vector() -> None:
    """The Shopify vector verifies in X-Shopify-Hmac-Sha256."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify"})
    check(make_request({"X-Shopify-Hmac-Sha256": SHOPIFY_SIGNATURE}))


def test_hmac_shopify_events_header() -> None:
    """The newer Shopify-Hmac-Sha256 header is accepted too."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify"})
    check(make_request({"shopify-hmac-sha256": SHOPIFY_SIGNATURE}))


def test_hmac_shopify_hex_refused() -> None:
    """A hex digest (the classic Shopify bug) is not accepted."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify"})
    value = hex_mac(SHOPIFY_SECRET, VECTOR_BODY)
    failure = failure_of(check, make_request({"X-Shopify-Hmac-Sha256": value}))
    assert failure.reason == "Invalid signature format"


def test_hmac_shopify_tampered_body() -> None:
    """The vector signature does not verify another body."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify"})
    request = make_request({"X-Shopify-Hmac-Sha256": SHOPIFY_SIGNATURE}, body=b"{}")
    assert failure_of(check, request).reason == "Invalid HMAC signature"


def test_hmac_shopify_rotation() -> None:
    """Old and new client secrets both verify during a rotation."""
    check = build_hmac({"secret": ["shpss_new", SHOPIFY_SECRET], "provider": "shopify"})
    check(make_request({"X-Shopify-Hmac-Sha256": SHOPIFY_SIGNATURE}))
    check(make_request({"X-Shopify-Hmac-Sha256": b64_mac("shpss_new", VECTOR_BODY)}))


def test_hmac_shopify_missing_header() -> None:
    """No Shopify header fails naming X-Shopify-Hmac-Sha256."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify"})
    assert failure_of(check, make_request()).reason == "Missing X-Shopify-Hmac-Sha256 header"


@pytest.mark.parametrize("value", ["!!!", SHOPIFY_SIGNATURE[:-1], "sha256=" + SHOPIFY_SIGNATURE])
def test_hmac_shopify_malformed(value: str) -> None:
    """Broken base64 is a format failure."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify"})
    failure = failure_of(check, make_request({"X-Shopify-Hmac-Sha256": value}))
    assert failure.reason == "Invalid signature format"


def test_hmac_shopify_header_override() -> None:
    """A configured header replaces both Shopify header names."""
    check = build_hmac({"secret": SHOPIFY_SECRET, "provider": "shopify", "header": "X-Sig"})
    check(make_request({"X-Sig": SHOPIFY_SIGNATURE}))
    failure = failure_of(check, make_request({"X-Shopify-Hmac-Sha256": SHOPIFY_SIGNATURE}))
    assert failure.reason == "Missing X-Sig header"


# --- standard-webhooks ----------------------------------------------------------------------


def test_hmac_standard_webhooks_vector() -> None:
    """The Standard Webhooks reference vector verifies."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    check(make_request(sw_headers()))


def test_hmac_standard_webhooks_svix_headers() -> None:
    """The svix- header names carry the same scheme."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    check(make_request(sw_headers(prefix="svix-")))


def test_hmac_standard_webhooks_secret_without_prefix() -> None:
    """The whsec_ prefix is optional."""
    secret = SW_SECRET.removeprefix("whsec_")
    check = build_hmac({"secret": secret, "provider": "standard-webhooks"})
    check(make_request(sw_headers()))


def test_hmac_standard_webhooks_signature_list() -> None:
    """Any v1 entry of the list may match; v1a and unknown versions are ignored."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    value = f"v1a,{'A' * 86}== v2,xyz v1,{'A' * 43}= {SW_SIGNATURE}"
    check(make_request(sw_headers(signature=value)))


def test_hmac_standard_webhooks_only_non_v1() -> None:
    """A list with no v1 entry is a format failure."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    value = SW_SIGNATURE.replace("v1,", "v2,")
    failure = failure_of(check, make_request(sw_headers(signature=value)))
    assert failure.reason == "Invalid signature format"


@pytest.mark.parametrize("received_at", [VECTOR_TS + 301, VECTOR_TS - 301])
def test_hmac_standard_webhooks_too_old_and_too_new(received_at: float) -> None:
    """Timestamps too old and too new are both refused."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    failure = failure_of(check, make_request(sw_headers(), received_at=received_at))
    assert failure.reason == "Signature timestamp outside tolerance"


def test_hmac_standard_webhooks_inside_tolerance() -> None:
    """Timestamps within five minutes either way verify."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    check(make_request(sw_headers(), received_at=VECTOR_TS + 299.5))
    check(make_request(sw_headers(), received_at=VECTOR_TS - 300))


def test_hmac_standard_webhooks_tampered() -> None:
    """Changing the body or the message id breaks the signature."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    failure = failure_of(check, make_request(sw_headers(), body=b'{"test": 1}'))
    assert failure.reason == "Invalid HMAC signature"
    failure = failure_of(check, make_request(sw_headers(message_id="msg_other")))
    assert failure.reason == "Invalid HMAC signature"


def test_hmac_standard_webhooks_rotation() -> None:
    """With two secrets, the vector verifies via the matching one."""
    other = "whsec_" + base64.b64encode(b"another key of 24+ bytes!!").decode()
    check = build_hmac({"secret": [other, SW_SECRET], "provider": "standard-webhooks"})
    check(make_request(sw_headers()))


def test_hmac_standard_webhooks_missing_signature() -> None:
    """No webhook-signature (nor svix-signature) fails naming it."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    headers = sw_headers()
    del headers["webhook-signature"]
    assert failure_of(check, make_request(headers)).reason == "Missing webhook-signature header"


def test_hmac_standard_webhooks_missing_id() -> None:
    """No webhook-id fails naming it."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    headers = sw_headers()
    del headers["webhook-id"]
    assert failure_of(check, make_request(headers)).reason == "Missing webhook-id header"


def test_hmac_standard_webhooks_id_with_dot() -> None:
    """A message id containing '.' (ambiguous in the signed bytes) is refused."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    failure = failure_of(check, make_request(sw_headers(message_id="msg.1")))
    assert failure.reason == "Invalid webhook-id header"


@pytest.mark.parametrize("timestamp", [None, "yesterday", "1614265330.0", "-1614265330"])
def test_hmac_standard_webhooks_missing_or_invalid_timestamp(timestamp: str | None) -> None:
    """A missing or non-integer timestamp is its own reason."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    headers = sw_headers()
    if timestamp is None:
        del headers["webhook-timestamp"]
    else:
        headers["webhook-timestamp"] = timestamp
    assert failure_of(check, make_request(headers)).reason == "Missing or invalid timestamp"


@pytest.mark.parametrize("value", ["v1,!!!", "v1,", "v1", SW_SIGNATURE.removeprefix("v1,")])
def test_hmac_standard_webhooks_malformed(value: str) -> None:
    """Entries without a decodable v1 signature are a format failure."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks"})
    failure = failure_of(check, make_request(sw_headers(signature=value)))
    assert failure.reason == "Invalid signature format"


def test_hmac_standard_webhooks_header_override() -> None:
    """A configured header replaces webhook-signature; id and timestamp stay."""
    check = build_hmac({"secret": SW_SECRET, "provider": "standard-webhooks", "header": "X-Sig"})
    headers = sw_headers()
    headers["X-Sig"] = headers.pop("webhook-signature")
    check(make_request(headers))
    assert failure_of(check, make_request(sw_headers())).reason == "Missing X-Sig header"


# --- config errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("secret", "must be an object"),
        ({}, "secret is required"),
        ({"secret": None}, "secret is required"),
        ({"secret": ""}, "secret must not be empty"),
        ({"secret": 12345}, "secret must be a non-empty string"),
        ({"secret": []}, "secret list must not be empty"),
        ({"secret": ["ok", ""]}, "each secret in the list must not be empty"),
        ({"secret": ["ok", 5]}, "each secret in the list must be a non-empty string"),
        ({"secret": "s", "algorithm": "md5"}, "algorithm must be one of 'sha1', 'sha256'"),
        ({"secret": "s", "algorithm": 256}, "algorithm must be one of"),
        ({"secret": "s", "encoding": "base32"}, "encoding must be one of 'hex', 'base64'"),
        ({"secret": "s", "provider": "twilio"}, "provider must be one of 'github'"),
        ({"secret": "s", "header": ""}, "header must not be empty"),
        ({"secret": "s", "header": "Bad Header"}, "header is not a valid HTTP header name"),
        ({"secret": "s", "tolerance_seconds": 60}, "tolerance_seconds only applies"),
        ({"secret": "s", "provider": "github", "tolerance_seconds": 60}, "tolerance_seconds only"),
        ({"secret": "s", "provider": "stripe", "tolerance_seconds": 0}, "must be > 0"),
        ({"secret": "s", "provider": "slack", "tolerance_seconds": -1}, "must be > 0"),
        ({"secret": "s", "provider": "slack", "tolerance_seconds": "300"}, "must be a number"),
        ({"secret": "s", "provider": "slack", "tolerance_seconds": True}, "must be a number"),
        ({"secret": "s", "provider": "github", "algorithm": "sha512"}, "provider 'github' uses"),
        ({"secret": "s", "provider": "github", "encoding": "base64"}, "provider 'github' uses"),
        ({"secret": "s", "provider": "stripe", "algorithm": "sha1"}, "provider 'stripe' uses"),
        ({"secret": "s", "provider": "shopify", "encoding": "hex"}, "provider 'shopify' uses"),
        ({"secret": "s", "provider": "slack", "encoding": "base64"}, "provider 'slack' uses"),
        ({"secret": "s", "prefix": "sha256="}, "unknown option 'prefix'"),
    ],
)
def test_hmac_config_errors(value: object, message: str) -> None:
    """Each malformed hmac config is a precise ConfigError."""
    with pytest.raises(ConfigError, match=r"^hmac: ") as info:
        build_hmac(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "secret", ["whsec_not*base64!", "whsec_", "whsec_abcde", "plain text secret"]
)
def test_hmac_config_standard_webhooks_secret_not_base64(secret: str) -> None:
    """A standard-webhooks secret that is not base64 is a ConfigError without the secret."""
    with pytest.raises(ConfigError, match="must be base64 after the 'whsec_' prefix") as info:
        build_hmac({"secret": secret, "provider": "standard-webhooks"})
    key_text = secret.removeprefix("whsec_")
    assert not key_text or key_text not in str(info.value)


def test_hmac_config_matching_explicit_values_accepted() -> None:
    """Explicit algorithm/encoding equal to the provider's are fine; names fold case."""
    build_hmac({"secret": "s", "provider": "Shopify", "algorithm": "SHA256", "encoding": "base64"})
    build_hmac({"secret": "s", "provider": "stripe", "encoding": "hex", "tolerance_seconds": 1.5})


def test_hmac_secret_never_in_messages() -> None:
    """No reason, ConfigError or repr contains a configured secret."""
    for provider in (None, "github", "stripe", "slack", "shopify"):
        config: dict[str, object] = {"secret": [GENERIC_SECRET, GITHUB_SECRET]}
        if provider is not None:
            config["provider"] = provider
        check = build_hmac(config)
        assert GENERIC_SECRET not in repr(check)
        requests = [{}, {"X-HMAC-Signature": GENERIC_SECRET}, stripe_headers(), slack_headers()]
        for headers in requests:
            with pytest.raises(CheckFailed) as info:
                check(make_request(headers))
            assert GENERIC_SECRET not in str(info.value)
            assert GITHUB_SECRET not in str(info.value)
    with pytest.raises(ConfigError) as config_info:
        build_hmac({"secret": GENERIC_SECRET, "algorithm": "md5"})
    assert GENERIC_SECRET not in str(config_info.value)


def test_hmac_stripe_timestamp_signed_as_sent() -> None:
    """The timestamp is signed exactly as sent (leading zeros kept)."""
    check = build_hmac({"secret": STRIPE_SECRET, "provider": "stripe"})
    t = f"0{VECTOR_TS}"
    signature = hex_mac(STRIPE_SECRET, f"{t}.".encode() + VECTOR_BODY)
    check(make_request(stripe_headers(f"t={t},v1={signature}")))
    failure = failure_of(check, make_request(stripe_headers(f"t={t},v1={STRIPE_V1}")))
    assert failure.reason == "Invalid HMAC signature"
