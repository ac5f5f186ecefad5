"""Channel settings and token rotation rules (no Redis: the stored state is passed in)."""

from __future__ import annotations

import re

import pytest

from cwm.connect.channels import (
    ChannelConfig,
    TokenState,
    digest,
    parse_channel_config,
    rotate,
    token_accepted,
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


def test_config_token_until_rotated() -> None:
    assert token_accepted("cfg", "cfg", None, NOW)
    assert not token_accepted("other", "cfg", None, NOW)
    assert not token_accepted("", "cfg", None, NOW)


def test_rotation_grace_period_then_only_the_new_token() -> None:
    state = rotate("cfg", None, NOW, 60)
    assert re.fullmatch(r"ch_tok_[0-9a-f]{48}", state.current)
    assert token_accepted(state.current, "cfg", state, NOW)
    assert token_accepted("cfg", "cfg", state, NOW + 59)
    assert not token_accepted("cfg", "cfg", state, NOW + 60)
    assert token_accepted(state.current, "cfg", state, NOW + 10_000)
    # A second rotation: the token in force (the first rotated one) gets the grace period.
    again = rotate("cfg", state, NOW + 100, 30)
    assert token_accepted(state.current, "cfg", again, NOW + 129)
    assert not token_accepted("cfg", "cfg", again, NOW + 101)


def test_reload_with_the_same_config_token_keeps_the_rotation_a_changed_one_takes_over() -> None:
    state = rotate("cfg", None, NOW, 0)
    assert not token_accepted("cfg", "cfg", state, NOW + 1)  # same config: rotation holds
    assert token_accepted("brand-new", "brand-new", state, NOW + 1)  # operator changed it
    assert not token_accepted(state.current, "brand-new", state, NOW + 1)


def test_state_round_trips_through_redis_fields() -> None:
    state = rotate("cfg", None, NOW, 60)
    flat = state.as_redis()
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert TokenState.from_redis(fields) == state
    assert TokenState.from_redis({"current": "x"}) is None
    assert state.config_digest == digest("cfg") and "cfg" not in repr(state) and state.current not in repr(state)
