"""Rotated channel tokens through the hub and the admin API: Redis is handed hashes, never a token.

The buffer is a fake holding the channel's token fields as Redis would; the
real Redis side is in tests/integration/test_connect_tokens.py.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cwm.connect.admin import ConnectAdmin
from cwm.connect.channels import ChannelConfig, digest, token_key
from cwm.connect.hub import Channel, ConnectHub
from cwm.settings import parse_settings
from tests.unit.test_connect_hub import OWNER, RecordingBuffer, _sync

NOW = 1_800_000_000.0


class TokenBuffer(RecordingBuffer):
    """Keeps the channel's token fields as the Redis hash would."""

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    async def tokens(self, channel: str) -> dict[str, str]:
        return dict(self.fields)

    async def store_tokens(self, channel: str, fields: list[str], replacing: str = "") -> bool:
        self.calls.append(("store_tokens", replacing))
        if replacing and self.fields.get("current") != replacing:
            return False
        self.fields = dict(zip(fields[::2], fields[1::2], strict=True))
        return True


def hub_over(buffer: TokenBuffer, key: bytes | None = token_key(None, "admin")) -> tuple[ConnectHub, Channel, Clock]:
    clock = Clock()
    clock.advance(NOW)
    hub = ConnectHub(buffer, buffer, clock, "me", token_key=key)  # type: ignore[arg-type]
    hub.register(OWNER, ChannelConfig(name="ch", token="configured"))
    channel = hub.channel("ch")
    assert channel is not None
    return hub, channel, clock


def authorize(hub: ConnectHub, channel: Channel, token: str) -> bool:
    return _sync.successResultOf(Deferred.fromCoroutine(hub.authorize(channel, token)))


def plain_text_entry(grace_until: float = NOW + 60) -> dict[str, str]:
    """What an older cwm stored after a rotation from "configured" to "ch_tok_rotated"."""
    return {
        "current": "ch_tok_rotated",
        "previous": "configured",
        "previous_expires_at": repr(grace_until),
        "config_digest": digest("configured"),
    }


def test_rotation_answers_the_token_once_and_hands_redis_only_hashes() -> None:
    buffer = TokenBuffer()
    hub, channel, clock = hub_over(buffer)
    token, _ = _sync.successResultOf(Deferred.fromCoroutine(hub.rotate(channel, 60)))
    assert token.startswith("ch_tok_")
    assert not any(secret in value for value in buffer.fields.values() for secret in (token, "configured"))
    assert authorize(hub, channel, token) and authorize(hub, channel, "configured")
    clock.advance(60)
    assert authorize(hub, channel, token) and not authorize(hub, channel, "configured")


def test_a_plain_text_entry_keeps_working_and_is_hashed_on_first_read() -> None:
    buffer = TokenBuffer(plain_text_entry())
    hub, channel, clock = hub_over(buffer)
    assert authorize(hub, channel, "ch_tok_rotated")
    assert "current" not in buffer.fields and "ch_tok_rotated" not in buffer.fields.values()
    assert "configured" not in buffer.fields.values()
    assert buffer.calls.count(("store_tokens", "ch_tok_rotated")) == 1
    # Same answers afterwards, from the hashes; no second write.
    assert authorize(hub, channel, "ch_tok_rotated") and authorize(hub, channel, "configured")
    assert not authorize(hub, channel, "wrong")
    clock.advance(60)
    assert not authorize(hub, channel, "configured")
    assert [c for c in buffer.calls if c[0] == "store_tokens"] == [("store_tokens", "ch_tok_rotated")]


def test_a_rotation_between_the_read_and_the_hashing_wins() -> None:
    buffer = TokenBuffer(plain_text_entry())
    hub, channel, _ = hub_over(buffer)
    original = buffer.store_tokens

    async def rotated_meanwhile(channel_name: str, fields: list[str], replacing: str = "") -> bool:
        buffer.fields = {"current_hash": "h", "previous_hash": "", "previous_expires_at": "0",
                         "config_digest": "d", "key_id": "k"}
        return await original(channel_name, fields, replacing)

    buffer.store_tokens = rotated_meanwhile  # type: ignore[method-assign]
    authorize(hub, channel, "ch_tok_rotated")
    assert buffer.fields["current_hash"] == "h"  # not overwritten by the stale entry's hashes


def test_without_any_key_a_plain_text_entry_still_works_unchanged() -> None:
    buffer = TokenBuffer(plain_text_entry())
    hub, channel, _ = hub_over(buffer, key=None)
    assert authorize(hub, channel, "ch_tok_rotated") and not authorize(hub, channel, "wrong")
    assert buffer.fields == plain_text_entry()


def test_admin_rotate_token_body_is_unchanged() -> None:
    buffer = TokenBuffer()
    hub, _, clock = hub_over(buffer)
    treq = StubTreq(ConnectAdmin(hub, "admin", clock).resource())
    d = treq.request("POST", "http://cwm.test/channels/ch/rotate-token", data=b'{"grace_period_seconds": 30}',
                     headers={"Authorization": "Bearer admin", "Content-Type": "application/json"})
    treq.flush()
    response = _sync.successResultOf(d)
    body: dict[str, Any] = json.loads(_sync.successResultOf(response.content()))
    assert response.code == 200 and set(body) == {"channel", "new_token", "old_token_expires_at", "message"}
    assert body["new_token"].startswith("ch_tok_") and len(body["new_token"]) == 55
    assert body["new_token"] not in buffer.fields.values()


def test_the_key_setting_is_read_and_kept_out_of_reprs() -> None:
    s = parse_settings({}, {"WEBHOOK_CONNECT_ENABLED": "true", "WEBHOOK_CONNECT_TOKEN_KEY": " k3y "}, "/")
    assert s.connect is not None and s.connect.token_key == "k3y" and "k3y" not in repr(s)
    s = parse_settings({}, {"WEBHOOK_CONNECT_ENABLED": "true"}, "/")
    assert s.connect is not None and s.connect.token_key is None
