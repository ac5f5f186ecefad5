"""Channel settings from a ``webhook_connect`` module-config, and channel tokens.

A channel's token starts as the config's ``channel_token``. A rotation (admin
API) stores the new token, the previous one and when the previous one stops
working in Redis, so it holds on every instance and across restarts; the
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
        max_message_size=_whole(config, "max_message_size", MAX_MESSAGE_SIZE, 1024, 64 * 1024 * 1024),
        forward_credentials=forward,
        heartbeat_interval_seconds=_whole(config, "heartbeat_interval_seconds", 30, 1, 3600),
        dead_letter_max=_whole(config, "dead_letter_max", DEAD_LETTER_MAX, 1, 1_000_000),
    )


def digest(token: str) -> str:
    """What is stored about a config token: enough to notice it changed, not to use it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh channel token in upstream's shape: ``ch_tok_`` and 48 hex characters."""
    return "ch_tok_" + secrets.token_hex(24)


@dataclass(frozen=True)
class TokenState:
    """A channel's tokens as stored in Redis after a rotation (all text, as Redis returns it)."""

    current: str = field(repr=False)
    previous: str = field(repr=False)
    previous_expires_at: float
    config_digest: str

    @classmethod
    def from_redis(cls, fields: Mapping[str, str]) -> TokenState | None:
        try:
            return cls(
                current=fields["current"],
                previous=fields.get("previous", ""),
                previous_expires_at=float(fields.get("previous_expires_at", 0)),
                config_digest=fields["config_digest"],
            )
        except (KeyError, ValueError):
            return None

    def as_redis(self) -> list[str]:
        return [
            "current", self.current,
            "previous", self.previous,
            "previous_expires_at", repr(self.previous_expires_at),
            "config_digest", self.config_digest,
        ]


def token_accepted(given: str, config_token: str, state: TokenState | None, now: float) -> bool:
    """Whether ``given`` opens the channel: constant-time against each valid token."""
    if state is None or state.config_digest != digest(config_token):
        valid = [config_token]
    else:
        valid = [state.current]
        if state.previous and now < state.previous_expires_at:
            valid.append(state.previous)
    given_bytes = given.encode()
    accepted = False
    for token in valid:
        accepted |= hmac.compare_digest(given_bytes, token.encode())
    return accepted


def rotate(config_token: str, state: TokenState | None, now: float, grace_seconds: float) -> TokenState:
    """The state after a rotation: a new token, the one in force until now valid for the grace period."""
    in_force = config_token if state is None or state.config_digest != digest(config_token) else state.current
    return TokenState(
        current=new_token(),
        previous=in_force,
        previous_expires_at=now + grace_seconds,
        config_digest=digest(config_token),
    )
