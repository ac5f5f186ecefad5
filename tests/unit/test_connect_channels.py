"""Channel settings and token rotation rules (no Redis: the stored state is passed in)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from cwm.connect.channels import (
    ChannelConfig,
    ChannelTokens,
    TokenState,
    digest,
    parse_channel_config,
    token_key,
)
from cwm.errors import ConfigError

NOW = 1_800_000_000.0


def test_defaults_are_upstreams_plus_ours() -> None:
    config = parse_channel_config({"channel": "ch-1", "channel_token": "tok"})
    assert config == ChannelConfig(name="ch-1", token="tok")
    assert (config.ttl_seconds, config.max_queue_size, config.max_connections, config.max_in_flight) == (
        86400, 10000, 10, 100,
    )
    assert (config.ack_timeout_seconds, config.max_deliveries, config.forward_credentials) == (30.0, 5, False)
    assert "tok" not in repr(config)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"channel_token": "t"}, "module-config.channel: required"),
        ({"channel": "a b", "channel_token": "t"}, "module-config.channel"),
        ({"channel": "c"}, "module-config.channel_token: required"),
        ({"channel": "c", "channel_token": "t", "max_queue_size": 0}, "module-config.max_queue_size"),
        ({"channel": "c", "channel_token": "t", "max_in_flight": True}, "module-config.max_in_flight"),
        ({"channel": "c", "channel_token": "t", "ack_timeout_seconds": 0}, "module-config.ack_timeout_seconds"),
        ({"channel": "c", "channel_token": "t", "forward_credentials": "yes"}, "module-config.forward_credentials"),
        ({"channel": "c", "channel_token": "t", "nope": 1}, "module-config.nope: unknown key"),
    ],
)
def test_invalid_configs_name_the_key(config: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        parse_channel_config(config)


KEY = token_key(None, "admin")
assert KEY is not None
TOKENS = ChannelTokens(KEY)


def accepted(given: str, config_token: str, state: TokenState | None, now: float) -> bool:
    return TOKENS.accepted(given, config_token, state, now, "ch")


def test_config_token_until_rotated() -> None:
    assert accepted("cfg", "cfg", None, NOW)
    assert not accepted("other", "cfg", None, NOW)
    assert not accepted("", "cfg", None, NOW)


def test_rotation_grace_period_then_only_the_new_token() -> None:
    token, state = TOKENS.rotate("cfg", None, NOW, 60)
    assert re.fullmatch(r"ch_tok_[0-9a-f]{48}", token)
    assert accepted(token, "cfg", state, NOW)
    assert accepted("cfg", "cfg", state, NOW + 59)
    assert not accepted("cfg", "cfg", state, NOW + 60)
    assert accepted(token, "cfg", state, NOW + 10_000)
    # A second rotation: the token in force (the first rotated one) gets the grace period.
    second, again = TOKENS.rotate("cfg", state, NOW + 100, 30)
    assert accepted(token, "cfg", again, NOW + 129) and accepted(second, "cfg", again, NOW + 129)
    assert not accepted("cfg", "cfg", again, NOW + 101)
    assert not accepted(token, "cfg", again, NOW + 130)


def test_reload_with_the_same_config_token_keeps_the_rotation_a_changed_one_takes_over() -> None:
    token, state = TOKENS.rotate("cfg", None, NOW, 0)
    assert not accepted("cfg", "cfg", state, NOW + 1)  # same config: rotation holds
    assert accepted("brand-new", "brand-new", state, NOW + 1)  # operator changed it
    assert not accepted(token, "brand-new", state, NOW + 1)
    # Rotating then puts the changed config token in its grace period.
    _, after = TOKENS.rotate("brand-new", state, NOW + 2, 60)
    assert accepted("brand-new", "brand-new", after, NOW + 3) and not accepted(token, "brand-new", after, NOW + 3)


def test_state_round_trips_through_redis_fields_which_hold_no_token() -> None:
    token, state = TOKENS.rotate("config-token", None, NOW, 60)
    flat = state.as_redis()
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert TokenState.from_redis(fields) == state
    assert set(fields) == {"current_hash", "previous_hash", "previous_expires_at", "config_digest", "key_id"}
    assert not any(secret in value for value in flat for secret in (token, "config-token"))
    assert token not in repr(state)


def test_hashes_are_keyed() -> None:
    """Without the key a hash in Redis tells nothing: not even a plain SHA-256 of the token."""
    token, state = TOKENS.rotate("cfg", None, NOW, 60)
    assert state.current != hashlib.sha256(token.encode()).hexdigest()
    assert state.current != ChannelTokens(token_key("other key", None)).hash(token)
    assert token_key("k", "admin") == token_key("k", None) != token_key(None, "admin")
    assert token_key(None, None) is None and token_key("", "") is None


def test_a_plain_text_entry_of_an_older_cwm_still_works_and_hashes_the_same() -> None:
    legacy = TokenState.from_redis(
        {"current": "ch_tok_new", "previous": "cfg", "previous_expires_at": repr(NOW + 60),
         "config_digest": digest("cfg")}
    )
    assert legacy is not None and not legacy.hashed
    hashed = TOKENS.migrate(legacy, "cfg")
    assert hashed.hashed and "ch_tok_new" not in hashed.as_redis() and "cfg" not in hashed.as_redis()
    for state in (legacy, hashed):
        assert accepted("ch_tok_new", "cfg", state, NOW)
        assert accepted("cfg", "cfg", state, NOW + 59) and not accepted("cfg", "cfg", state, NOW + 60)
        assert not accepted("wrong", "cfg", state, NOW)
        # The config token changed since the rotation: it is in force, the rotated one is void.
        assert accepted("other", "other", state, NOW) and not accepted("ch_tok_new", "other", state, NOW)
    void = TOKENS.migrate(legacy, "changed")
    assert accepted("changed", "changed", void, NOW) and not accepted("ch_tok_new", "changed", void, NOW)


@pytest.fixture
def logged_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_hashes_made_with_another_key_open_nothing(logged_events: list[dict[str, Any]]) -> None:
    """Fail closed: which token was rotated away cannot be told; the operator is told once why."""
    token, state = ChannelTokens(token_key("old key", None)).rotate("cfg", None, NOW, 3600)
    tokens = ChannelTokens(KEY)
    for given in (token, "cfg", token, "cfg"):
        assert not tokens.accepted(given, "cfg", state, NOW, "ch")
    warnings = [e for e in logged_events if "hashed with another key" in e.get("log_format", "")]
    assert len(warnings) == 1  # once per channel and key, not per attempt
    assert token not in str(warnings[0]) and "old key" not in str(warnings[0])
    # Rotating again with this key recovers the channel.
    fresh, recovered = tokens.rotate("cfg", state, NOW, 3600)
    assert accepted(fresh, "cfg", recovered, NOW) and not accepted(token, "cfg", recovered, NOW)
    assert not accepted("cfg", "cfg", recovered, NOW)
