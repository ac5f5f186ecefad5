"""Channel settings from a ``webhook_connect`` module-config, and channel tokens.

A channel's token starts as the config's ``channel_token``. A rotation (admin
API) stores keyed hashes of the new token and of the previous one, and when
the previous one stops working, in Redis, so it holds on every instance and
across restarts (the key is not in Redis: see ``token_key``); the
config's token only takes over again if the config's own value changes after
the rotation (the operator set a new one on purpose). A config reload that
leaves ``channel_token`` alone never undoes a rotation (upstream's W-bug).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from cwm.errors import ConfigError
from cwm.modules._config import get_bool, reject_unknown_keys

CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""What a channel may be called (upstream's rule, bounded)."""
_KEYS = frozenset(
    {
        "channel",
        "channel_token",
        "ttl_seconds",
        "max_queue_size",
        "max_connections",
        "max_in_flight",
        "ack_timeout_seconds",
        "max_deliveries",
        "max_message_size",
        "forward_credentials",
        "heartbeat_interval_seconds",
        "dead_letter_max",
    }
)
MAX_MESSAGE_SIZE = 10 * 1024 * 1024
MAX_MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024
"""The largest ``max_message_size`` a channel may set."""
WIRE_ALLOWANCE = 1024 * 1024
"""Room in a wire message for what is not the body: headers, ids, times (the receiver's
request headers are bounded far below this)."""


def max_wire_size(body_bytes: int) -> int:
    """The largest wire message (as JSON) a body of ``body_bytes`` can make.

    The body is carried twice: as ``payload`` (its text, or its parsed JSON),
    where JSON's escapes turn one byte into at most six characters
    (a control character as a six-character escape), and as ``body_base64``.
    """
    return 6 * body_bytes + 4 * ((body_bytes + 2) // 3) + WIRE_ALLOWANCE


DEAD_LETTER_MAX = 10_000
"""Dead letters a channel keeps by default; older ones are dropped (and counted)."""


@dataclass(frozen=True)
class ChannelConfig:
    """What one ``webhook_connect`` entry says about its channel."""

    name: str
    token: str = field(repr=False)
    ttl_seconds: int = 86400
    max_queue_size: int = 10000
    max_connections: int = 10
    max_in_flight: int = 100
    ack_timeout_seconds: float = 30.0
    max_deliveries: int = 5
    max_message_size: int = MAX_MESSAGE_SIZE
    forward_credentials: bool = False
    heartbeat_interval_seconds: int = 30
    dead_letter_max: int = DEAD_LETTER_MAX


def _whole(config: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"module-config.{key}: expected a whole number from {low} to {high}")
    return value


def parse_channel_config(config: Mapping[str, Any]) -> ChannelConfig:
    """Validate a ``webhook_connect`` module-config.

    Raises:
        ConfigError: the reason, never the token.
    """
    reject_unknown_keys(config, _KEYS)
    name = config.get("channel")
    if not isinstance(name, str) or not CHANNEL_NAME.fullmatch(name):
        raise ConfigError(
            "module-config.channel: required; 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    token = config.get("channel_token")
    if not isinstance(token, str) or not token.strip():
        raise ConfigError("module-config.channel_token: required, a non-empty string")
    ack_timeout = config.get("ack_timeout_seconds", 30)
    if isinstance(ack_timeout, bool) or not isinstance(ack_timeout, (int, float)) or not 1 <= ack_timeout <= 86400:
        raise ConfigError("module-config.ack_timeout_seconds: expected a number from 1 to 86400")
    forward = get_bool(config, "forward_credentials", False)
    return ChannelConfig(
        name=name,
        token=token,
        ttl_seconds=_whole(config, "ttl_seconds", 86400, 1, 30 * 86400),
        max_queue_size=_whole(config, "max_queue_size", 10000, 1, 10_000_000),
        max_connections=_whole(config, "max_connections", 10, 1, 10_000),
        max_in_flight=_whole(config, "max_in_flight", 100, 1, 10_000),
        ack_timeout_seconds=float(ack_timeout),
        max_deliveries=_whole(config, "max_deliveries", 5, 1, 1000),
        max_message_size=_whole(config, "max_message_size", MAX_MESSAGE_SIZE, 1024, MAX_MESSAGE_SIZE_LIMIT),
        forward_credentials=forward,
        heartbeat_interval_seconds=_whole(config, "heartbeat_interval_seconds", 30, 1, 3600),
        dead_letter_max=_whole(config, "dead_letter_max", DEAD_LETTER_MAX, 1, 1_000_000),
    )


def digest(token: str) -> str:
    """What an older cwm stored about a config token (plain SHA-256); read only, to migrate its entries."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh channel token in upstream's shape: ``ch_tok_`` and 48 hex characters."""
    return "ch_tok_" + secrets.token_hex(24)


def token_key(explicit: str | None, admin_token: str | None) -> bytes | None:
    """The key channel tokens are hashed with before they go to Redis (never stored there).

    ``WEBHOOK_CONNECT_TOKEN_KEY`` when set, else one derived from the admin
    token (rotation needs the admin API, so a deployment that can rotate has
    one); None when neither is set. Every instance sharing the Redis must
    have the same: a token hashed with another key opens nothing.
    """
    secret = explicit or admin_token
    if not secret:
        return None
    return hmac.new(secret.encode(), b"cwm webhook-connect channel tokens", hashlib.sha256).digest()


@dataclass(frozen=True)
class TokenState:
    """A channel's tokens as stored in Redis after a rotation (all text, as Redis returns it).

    ``current`` and ``previous`` are keyed hashes of the tokens, and
    ``config_digest`` one of the config's token (to notice that it changed);
    ``key_id`` names the key. An entry written by an older cwm has the tokens
    themselves, a plain SHA-256 digest and no ``key_id`` (``""``): it is
    still honoured, and hashed in place as soon as it is read.
    """

    current: str = field(repr=False)
    previous: str = field(repr=False)
    previous_expires_at: float
    config_digest: str
    key_id: str = ""

    @property
    def hashed(self) -> bool:
        return bool(self.key_id)

    @classmethod
    def from_redis(cls, fields: Mapping[str, str]) -> TokenState | None:
        try:
            if "current_hash" in fields:
                return cls(
                    current=fields["current_hash"],
                    previous=fields.get("previous_hash", ""),
                    previous_expires_at=float(fields.get("previous_expires_at", 0)),
                    config_digest=fields["config_digest"],
                    key_id=fields["key_id"] or "?",
                )
            return cls(
                current=fields["current"],
                previous=fields.get("previous", ""),
                previous_expires_at=float(fields.get("previous_expires_at", 0)),
                config_digest=fields["config_digest"],
            )
        except (KeyError, ValueError):
            return None

    def as_redis(self) -> list[str]:
        """The fields of a hashed state (the only kind written)."""
        assert self.hashed, "only hashed token states are stored"
        return [
            "current_hash", self.current,
            "previous_hash", self.previous,
            "previous_expires_at", repr(self.previous_expires_at),
            "config_digest", self.config_digest,
            "key_id", self.key_id,
        ]


class ChannelTokens:
    """Channel token checks and rotations, with tokens kept in Redis only as keyed hashes (HMAC-SHA256)."""

    _log = Logger()

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self.key_id = hmac.new(key, b"key id", hashlib.sha256).hexdigest()[:16] if key is not None else ""
        self._warned: set[tuple[str, str]] = set()

    @property
    def can_hash(self) -> bool:
        return self._key is not None

    def hash(self, token: str) -> str:
        if self._key is None:
            raise RuntimeError("no key to hash channel tokens with (WEBHOOK_CONNECT_TOKEN_KEY)")
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def _usable(self, state: TokenState, channel: str) -> bool:
        """Whether a hashed state was made with this key; logged once per channel and key when not."""
        if state.key_id == self.key_id:
            return True
        if (channel, state.key_id) not in self._warned:
            self._warned.add((channel, state.key_id))
            self._log.warn(
                "channel {channel!r}: its rotated tokens in Redis were hashed with another key (key id {key_id}):"
                " no token opens it until WEBHOOK_CONNECT_TOKEN_KEY (or, without it, WEBHOOK_CONNECT_ADMIN_TOKEN)"
                " is what it was, or its token is rotated again",
                channel=channel,
                key_id=state.key_id,
            )
        return False

    def accepted(self, given: str, config_token: str, state: TokenState | None, now: float, channel: str = "") -> bool:
        """Whether ``given`` opens the channel: constant-time against each valid token (or hash)."""
        if state is None:
            return _any_equal(given, [config_token])
        rotated = [state.current] + ([state.previous] if state.previous and now < state.previous_expires_at else [])
        if state.hashed:
            if not self._usable(state, channel):
                return False
            if hmac.compare_digest(state.config_digest, self.hash(config_token)):
                return _any_equal(self.hash(given), rotated)
            return _any_equal(given, [config_token])  # the config token changed since: it is in force
        if state.config_digest != digest(config_token):
            return _any_equal(given, [config_token])
        return _any_equal(given, rotated)

    def migrate(self, state: TokenState, config_token: str) -> TokenState:
        """The hashed form of a plain-text entry left by an older cwm (same tokens, same grace)."""
        return TokenState(
            current=self.hash(state.current),
            previous=self.hash(state.previous) if state.previous else "",
            previous_expires_at=state.previous_expires_at,
            # An entry whose config token has changed since is void: keep it so.
            config_digest=self.hash(config_token) if state.config_digest == digest(config_token) else "",
            key_id=self.key_id,
        )

    def rotate(
        self, config_token: str, state: TokenState | None, now: float, grace_seconds: float
    ) -> tuple[str, TokenState]:
        """A new token (given once, to the caller) and the state to store: the one in force until
        now valid for the grace period."""
        config_digest = self.hash(config_token)
        if state is not None and not state.hashed:
            state = self.migrate(state, config_token)
        if state is None or (state.key_id == self.key_id and state.config_digest != config_digest):
            in_force = config_digest  # the config's token (never rotated, or changed since)
        elif state.key_id == self.key_id:
            in_force = state.current
        else:
            in_force = ""  # made with another key: which token was in force is unknown
        token = new_token()
        return token, TokenState(
            current=self.hash(token),
            previous=in_force,
            previous_expires_at=now + grace_seconds,
            config_digest=config_digest,
            key_id=self.key_id,
        )


def _any_equal(given: str, valid: list[str]) -> bool:
    """Compares against every valid value, in constant time each, whatever matches first."""
    given_bytes = given.encode()
    accepted = False
    for value in valid:
        accepted |= hmac.compare_digest(given_bytes, value.encode())
    return accepted
