"""Rotated channel tokens against a real ``twistd -n cwm`` and redis-server: Redis holds no token.

Every key of the Redis is scanned and every value read, whatever its type.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted

from cwm.connect.buffer import StreamBuffer
from tests.integration.connect_clients import call
from tests.integration.redis_server import RedisServer
from tests.integration.test_connect_buffer import connect
from tests.integration.test_connect_cloud import Cloud, admin, base, cloud, hook

pytestmark = pytest.mark.integration

__all__ = ["cloud"]  # the fixture, shared with test_connect_cloud

CONFIGURED = "configured-channel-token-1f3a"


async def everything_in(server: RedisServer) -> str:
    """Every key and value of the Redis, as one text."""
    redis = await connect(server)
    try:
        seen: list[str] = []
        cursor = "0"
        while True:
            cursor, keys = await redis.execute_command("SCAN", cursor, "COUNT", "1000")
            for key in keys:
                kind = str(await redis.execute_command("TYPE", key))
                read = {
                    "string": ("GET", key),
                    "hash": ("HGETALL", key),
                    "stream": ("XRANGE", key, "-", "+"),
                    "list": ("LRANGE", key, "0", "-1"),
                    "set": ("SMEMBERS", key),
                    "zset": ("ZRANGE", key, "0", "-1", "WITHSCORES"),
                }[kind]
                seen.append(f"{key} {kind} {await redis.execute_command(*read)!r}")
            if str(cursor) == "0":
                return "\n".join(seen)
    finally:
        await redis.disconnect()


async def poll_code(port: int, channel: str, token: str) -> int:
    url = f"http://127.0.0.1:{port}/connect/stream/{channel}/poll?timeout=1"
    return (await call("GET", url, headers={"Authorization": f"Bearer {token}"}))[0]  # type: ignore[no-any-return]


def secrets_of(*tokens: str) -> list[str]:
    """The tokens and their plain SHA-256 digests (a digest of a guessable token is as good as the token)."""
    return [*tokens, *(hashlib.sha256(t.encode()).hexdigest() for t in tokens)]


@pytest_twisted.ensureDeferred
async def test_rotated_tokens_are_stored_as_keyed_hashes_only(cloud: Cloud) -> None:
    process = cloud.start({"h": hook("hashed", CONFIGURED)})
    code, body, _ = await admin(process, "POST", "/channels/hashed/rotate-token", {"grace_period_seconds": 3600})
    assert code == 200
    first = body["new_token"]
    code, body, _ = await admin(process, "POST", "/channels/hashed/rotate-token", {"grace_period_seconds": 3600})
    second = body["new_token"]
    dump = await everything_in(cloud.redis)
    assert ":tokens" in dump and "current_hash" in dump  # the entry is there...
    for secret in secrets_of(first, second, CONFIGURED):
        assert secret not in dump  # ...with no token in it
    assert (await poll_code(process.port, "hashed", second), await poll_code(process.port, "hashed", first),
            await poll_code(process.port, "hashed", CONFIGURED)) == (204, 204, 401)
    # Another instance with the same key (derived from the same admin token) agrees.
    other = cloud.start({"h": hook("hashed", CONFIGURED)}, name="b")
    assert await poll_code(other.port, "hashed", second) == 204
    # One with another key refuses every token (it cannot tell which was rotated away).
    stranger = cloud.start({"h": hook("hashed", CONFIGURED)}, name="c", WEBHOOK_CONNECT_TOKEN_KEY="another key")
    assert (await poll_code(stranger.port, "hashed", second), await poll_code(stranger.port, "hashed", CONFIGURED)) == (
        401, 401)
    stranger.wait_for("hashed with another key")


@pytest_twisted.ensureDeferred
async def test_a_plain_text_entry_of_an_older_cwm_keeps_working_and_is_hashed(
    cloud: Cloud, redis: RedisServer, redis_prefix: str
) -> None:
    rotated = "ch_tok_" + "ab" * 24
    redis_connection = await connect(redis)
    try:
        key = StreamBuffer(redis_connection, redis_prefix).keys("legacy").tokens
        await redis_connection.execute_command(
            "HSET", key, "current", rotated, "previous", CONFIGURED, "previous_expires_at", "4102444800.0",
            "config_digest", hashlib.sha256(CONFIGURED.encode()).hexdigest(),
        )
    finally:
        await redis_connection.disconnect()
    process = cloud.start({"h": hook("legacy", CONFIGURED)}, WEBHOOK_CONNECT_TOKEN_KEY="the token key")
    assert await poll_code(process.port, "legacy", rotated) == 204
    process.wait_for("found in plain text now stored hashed")
    dump = await everything_in(cloud.redis)
    for secret in secrets_of(rotated, CONFIGURED):
        assert secret not in dump
    assert (await poll_code(process.port, "legacy", rotated), await poll_code(process.port, "legacy", CONFIGURED),
            await poll_code(process.port, "legacy", "wrong")) == (204, 204, 401)
    code, body, _ = await call("GET", f"{base(process)}/connect/status/legacy",
                               headers={"Authorization": f"Bearer {rotated}"})
    assert code == 200 and body["channel"] == "legacy"

