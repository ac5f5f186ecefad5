"""The ``hmac`` check: a signature over the raw body, generic or in a provider's scheme.

Generic mode reads ``<digest>`` or ``<alg>=<digest>`` from one header (the
upstream format). A ``provider`` preset fixes the header, algorithm, encoding
and signed bytes of that provider; the ones that sign a timestamp (Stripe,
Slack, Standard Webhooks) also get a replay window, checked against the time
the request was received (upstream's HMAC check has no replay window).

Received signatures are decoded to bytes first and compared with the computed
digest in constant time. ``secret`` may be a list while a key is rotated: any
one of them matching passes.

``slack_url_verification`` recognises the signed handshake Slack sends when a
Request URL is configured, so that the pipeline can echo its challenge.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cwm.auth._config import (
    optional_choice,
    optional_number,
    optional_text,
    reject_unknown,
    require_mapping,
    require_text,
    quote,
)
from cwm.auth._wire import equal, header_bytes, text_bytes
from cwm.auth.base import CheckFailed
from cwm.errors import ConfigError
from cwm.request import HEADER_NAME, InboundRequest

__all__ = [
    "ALGORITHMS",
    "ENCODINGS",
    "PROVIDERS",
    "HmacCheck",
    "build_hmac",
    "slack_url_verification",
]

_KEY = "hmac"
_OPTIONS = ("secret", "header", "algorithm", "encoding", "provider", "tolerance_seconds")

ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
# Digest sizes in bytes, looked up once instead of building a hash per request.
_DIGEST_SIZES: Mapping[str, int] = {name: make().digest_size for name, make in ALGORITHMS.items()}
_SHA256_SIZE = _DIGEST_SIZES["sha256"]
ENCODINGS = ("hex", "base64")
PROVIDERS = ("github", "stripe", "slack", "shopify", "standard-webhooks")

_DEFAULT_HEADER = "X-HMAC-Signature"
_DEFAULT_TOLERANCE = 300.0
# The providers that sign a timestamp, so a replay window applies.
_TIMED_PROVIDERS = ("stripe", "slack", "standard-webhooks")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_WHSEC_PREFIX = "whsec_"
# Slack's handshake body is about 150 bytes and its challenge about 50 characters.
_HANDSHAKE_MAX_BODY = 4096
_HANDSHAKE_MAX_CHALLENGE = 1024

_INVALID_FORMAT = "Invalid signature format"
_INVALID_SIGNATURE = "Invalid HMAC signature"
_INVALID_TIMESTAMP = "Missing or invalid timestamp"
_OUTSIDE_TOLERANCE = "Signature timestamp outside tolerance"


def _decode_hex(text: str, size: int) -> bytes | None:
    """The digest ``text`` holds in hex (any case), or None if it is not one."""
    if len(text) != 2 * size or not _HEX.fullmatch(text):
        return None
    return binascii.unhexlify(text)


def _decode_base64(text: str, size: int) -> bytes | None:
    """The digest ``text`` holds in standard base64, or None if it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


_DECODERS: Mapping[str, Callable[[str, int], bytes | None]] = {
    "hex": _decode_hex,
    "base64": _decode_base64,
}


def _required_header(request: InboundRequest, names: Sequence[str]) -> str:
    """The first of ``names`` the request carries, stripped, or CheckFailed naming the first."""
    for name in names:
        value = request.header(name)
        if value is not None and value.strip():
            return value.strip()
    raise CheckFailed(f"Missing {names[0]} header")


def _timestamp(text: str | None) -> tuple[int, bytes]:
    """A Unix timestamp in ASCII digits: its value, and its bytes as they were signed."""
    if text is None or not _TIMESTAMP.fullmatch(text.strip()):
        raise CheckFailed(_INVALID_TIMESTAMP)
    digits = text.strip()
    return int(digits), digits.encode("ascii")


@dataclass(frozen=True, slots=True)
class _Signed:
    """What a request claims: the bytes that were signed and the signatures sent."""

    message: bytes
    signatures: tuple[bytes, ...]
    timestamp: int | None = None


class _Scheme(Protocol):
    @property
    def signature_headers(self) -> tuple[str, ...]:
        """The headers a signature may be read from."""

    def extract(self, request: InboundRequest) -> _Signed:
        """The signed bytes and received signatures, or CheckFailed."""


@dataclass(frozen=True, slots=True)
class _BodyScheme:
    """One header, one digest over the raw body (generic, GitHub, Shopify)."""

    headers: tuple[str, ...]
    algorithm: str
    encoding: str
    prefix: str | None = None
    prefix_required: bool = False

    @property
    def signature_headers(self) -> tuple[str, ...]:
        return self.headers

    def extract(self, request: InboundRequest) -> _Signed:
        value = _required_header(request, self.headers)
        if self.prefix is not None and value[: len(self.prefix)].lower() == self.prefix:
            value = value[len(self.prefix) :]
        elif self.prefix_required:
            raise CheckFailed(_INVALID_FORMAT)
        size = _DIGEST_SIZES[self.algorithm]
        signature = _DECODERS[self.encoding](value, size)
        if signature is None:
            raise CheckFailed(_INVALID_FORMAT)
        return _Signed(request.body, (signature,))


@dataclass(frozen=True, slots=True)
class _StripeScheme:
    """``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` over ``"{t}.{body}"``."""

    header: str

    @property
    def signature_headers(self) -> tuple[str, ...]:
        return (self.header,)

    def extract(self, request: InboundRequest) -> _Signed:
        value = _required_header(request, (self.header,))
        timestamp: str | None = None
        v1: list[str] = []
        for item in value.split(","):
            name, equals, content = item.strip().partition("=")
            if not equals:
                continue
            if name == "t" and timestamp is None:
                timestamp = content
            elif name == "v1":
                # Only v1 counts: v0 and unknown schemes would allow a downgrade.
                v1.append(content)
        if not v1:
            raise CheckFailed(_INVALID_FORMAT)
        when, when_bytes = _timestamp(timestamp)
        size = _SHA256_SIZE
        signatures = tuple(
            signature
            for signature in (_decode_hex(text, size) for text in v1)
            if signature is not None
        )
        if not signatures:
            raise CheckFailed(_INVALID_FORMAT)
        return _Signed(when_bytes + b"." + request.body, signatures, when)


@dataclass(frozen=True, slots=True)
class _SlackScheme:
    """``X-Slack-Signature: v0=<hex>`` over ``"v0:{timestamp}:{body}"``."""

    header: str
    timestamp_header: str = "X-Slack-Request-Timestamp"

    @property
    def signature_headers(self) -> tuple[str, ...]:
        return (self.header,)

    def extract(self, request: InboundRequest) -> _Signed:
        value = _required_header(request, (self.header,))
        if not value.startswith("v0="):
            raise CheckFailed(_INVALID_FORMAT)
        signature = _decode_hex(value[3:], _SHA256_SIZE)
        if signature is None:
            raise CheckFailed(_INVALID_FORMAT)
        when, when_bytes = _timestamp(request.header(self.timestamp_header))
        return _Signed(b"v0:" + when_bytes + b":" + request.body, (signature,), when)


@dataclass(frozen=True, slots=True)
class _StandardWebhooksScheme:
    """Standard Webhooks (and Svix): ``v1,<base64>`` entries over ``"{id}.{ts}.{body}"``."""

    header: str | None = None

    @property
    def signature_headers(self) -> tuple[str, ...]:
        return (self.header,) if self.header is not None else ("webhook-signature", "svix-signature")

    def extract(self, request: InboundRequest) -> _Signed:
        if self.header is not None:
            value = _required_header(request, (self.header,))
            prefix = "svix-" if request.header("webhook-id") is None else "webhook-"
        elif request.header("webhook-signature") is not None:
            value, prefix = _required_header(request, ("webhook-signature",)), "webhook-"
        elif request.header("svix-signature") is not None:
            value, prefix = _required_header(request, ("svix-signature",)), "svix-"
        else:
            raise CheckFailed("Missing webhook-signature header")
        message_id = request.header(f"{prefix}id")
        if message_id is None or not message_id.strip():
            raise CheckFailed(f"Missing {prefix}id header")
        message_id = message_id.strip()
        if "." in message_id:
            # The id is followed by "." in the signed bytes: one in it is ambiguous.
            raise CheckFailed(f"Invalid {prefix}id header")
        when, when_bytes = _timestamp(request.header(f"{prefix}timestamp"))
        size = _SHA256_SIZE
        signatures: list[bytes] = []
        for entry in value.split():
            version, comma, text = entry.partition(",")
            if version != "v1" or not comma:
                continue
            signature = _decode_base64(text, size)
            if signature is not None:
                signatures.append(signature)
        if not signatures:
            raise CheckFailed(_INVALID_FORMAT)
        message = header_bytes(message_id) + b"." + when_bytes + b"." + request.body
        return _Signed(message, tuple(signatures), when)


class HmacCheck:
    """The request must carry a valid HMAC signature made with one of the keys."""

    __slots__ = ("_algorithm", "_keys", "_scheme", "_tolerance", "provider", "secret_headers")

    # A signature proves who sent the body, so it is masked too: within the
    # replay window (or forever, without one) it lets its bytes be sent again.
    secret_params: frozenset[str] = frozenset()

    def __init__(
        self,
        scheme: _Scheme,
        keys: Sequence[bytes],
        algorithm: str = "sha256",
        tolerance_seconds: float | None = None,
        provider: str | None = None,
    ) -> None:
        self.provider = provider
        self.secret_headers = frozenset(name.lower() for name in scheme.signature_headers)
        self._scheme = scheme
        self._keys = tuple(keys)
        self._algorithm = ALGORITHMS[algorithm]
        self._tolerance = tolerance_seconds

    def __call__(self, request: InboundRequest) -> None:
        signed = self._scheme.extract(request)
        if self._tolerance is not None:
            # Checked first: it is cheap, and a stale request needs no HMAC.
            if signed.timestamp is None:
                raise CheckFailed(_INVALID_TIMESTAMP)
            if abs(request.received_at - signed.timestamp) > self._tolerance:
                raise CheckFailed(_OUTSIDE_TOLERANCE)
        matched = False
        # Every key is tried against every signature: no early exit to time.
        for key in self._keys:
            digest = hmac.new(key, signed.message, self._algorithm).digest()
            for signature in signed.signatures:
                matched |= equal(signature, digest)
        if not matched:
            raise CheckFailed(_INVALID_SIGNATURE)


def slack_url_verification(body: bytes) -> str | None:
    """The challenge of Slack's ``url_verification`` handshake, None for any other body.

    Slack checks an Events API Request URL by POSTing a signed
    ``{"type": "url_verification", "challenge": "...", "token": "..."}`` and
    expects the challenge back (as text, a form or ``{"challenge": ...}``).
    """
    if len(body) > _HANDSHAKE_MAX_BODY or b"url_verification" not in body:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("type") != "url_verification":
        return None
    challenge = document.get("challenge")
    if not isinstance(challenge, str) or not challenge or len(challenge) > _HANDSHAKE_MAX_CHALLENGE:
        return None
    return challenge


def _secrets(options: Mapping[str, Any]) -> tuple[str, ...]:
    value = options.get("secret")
    if value is None:
        raise ConfigError(f"{_KEY}: secret is required")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{_KEY}: secret list must not be empty")
        return tuple(require_text(_KEY, "each secret in the list", item) for item in value)
    return (require_text(_KEY, "secret", value),)


def _standard_webhooks_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret: base64 after an optional ``whsec_``.

    The padding may be left out, as the official SDKs allow.
    """
    encoded = secret.strip()
    if encoded.startswith(_WHSEC_PREFIX):
        encoded = encoded[len(_WHSEC_PREFIX) :]
    if "=" not in encoded:
        encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigError(
            f"{_KEY}: a standard-webhooks secret must be base64 after the 'whsec_' prefix"
        )
    return key


def _fixed(
    options: Mapping[str, Any],
    field: str,
    chosen: str | None,
    allowed: Sequence[str],
    provider: str,
) -> str:
    """A provider's fixed algorithm or encoding; a conflicting explicit value is an error."""
    if chosen is not None and chosen not in allowed:
        raise ConfigError(
            f"{_KEY}: provider {provider!r} uses {field} "
            f"{' or '.join(repr(name) for name in allowed)}, not {quote(options[field])}"
        )
    return chosen if chosen is not None else allowed[0]


def build_hmac(value: object) -> HmacCheck:
    """Build the ``hmac`` check from its config object."""
    options = require_mapping(_KEY, value)
    reject_unknown(_KEY, options, _OPTIONS)
    secrets = _secrets(options)
    header_override = options.get("header") is not None
    header = optional_text(_KEY, options, "header", _DEFAULT_HEADER)
    if not HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{_KEY}: header is not a valid HTTP header name")
    algorithm = optional_choice(_KEY, options, "algorithm", tuple(ALGORITHMS), fold_case=True)
    encoding = optional_choice(_KEY, options, "encoding", ENCODINGS, fold_case=True)
    provider = optional_choice(_KEY, options, "provider", PROVIDERS, fold_case=True)
    if provider in _TIMED_PROVIDERS:
        tolerance: float | None = optional_number(
            _KEY, options, "tolerance_seconds", _DEFAULT_TOLERANCE, allow_zero=False
        )
    elif options.get("tolerance_seconds") is not None:
        raise ConfigError(
            f"{_KEY}: tolerance_seconds only applies to providers that sign a timestamp "
            f"({', '.join(_TIMED_PROVIDERS)}); this scheme has no replay window"
        )
    else:
        tolerance = None

    scheme: _Scheme
    if provider is None:
        algorithm = algorithm or "sha256"
        # Upstream's format: "<digest>" or "<alg>=<digest>" (so GitHub's works too).
        scheme = _BodyScheme((header,), algorithm, encoding or "hex", prefix=f"{algorithm}=")
    elif provider == "github":
        algorithm = _fixed(options, "algorithm", algorithm, ("sha256", "sha1"), provider)
        _fixed(options, "encoding", encoding, ("hex",), provider)
        default = "X-Hub-Signature-256" if algorithm == "sha256" else "X-Hub-Signature"
        scheme = _BodyScheme(
            (header if header_override else default,),
            algorithm,
            "hex",
            prefix=f"{algorithm}=",
            prefix_required=True,
        )
    else:
        algorithm = _fixed(options, "algorithm", algorithm, ("sha256",), provider)
        if provider == "shopify":
            _fixed(options, "encoding", encoding, ("base64",), provider)
            names: tuple[str, ...] = (
                (header,) if header_override else ("X-Shopify-Hmac-Sha256", "Shopify-Hmac-Sha256")
            )
            scheme = _BodyScheme(names, algorithm, "base64")
        elif provider == "stripe":
            _fixed(options, "encoding", encoding, ("hex",), provider)
            scheme = _StripeScheme(header if header_override else "Stripe-Signature")
        elif provider == "slack":
            _fixed(options, "encoding", encoding, ("hex",), provider)
            scheme = _SlackScheme(header if header_override else "X-Slack-Signature")
        else:
            _fixed(options, "encoding", encoding, ("base64",), provider)
            scheme = _StandardWebhooksScheme(header if header_override else None)

    if provider == "standard-webhooks":
        keys = tuple(_standard_webhooks_key(secret) for secret in secrets)
    else:
        keys = tuple(text_bytes(secret) for secret in secrets)
    return HmacCheck(scheme, keys, algorithm, tolerance, provider)
