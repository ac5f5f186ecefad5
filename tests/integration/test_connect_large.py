"""A 10 MB webhook through Webhook Connect never stalls the reactor: neither queuing it nor sending it.

Against a real ``twistd -n cwm`` and a real redis-server. A probe sends GET
/health over and over (``HealthProbe``) while a 10 MB JSON webhook is queued
on a ``webhook_connect`` entry, then while it is delivered over SSE; the
worst probe of each phase is held to the same bound as a 10 MB body under
``save_to_disk`` or ``log``. The connector side reads the message as the
project's connector does and gets the exact bytes and payload.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cwm.connector.message import Message
from tests.integration.cwm_process import CwmProcess, start_cwm
from tests.integration.redis_server import RedisServer
from tests.integration.test_reactor_stalls import (
    PROBE_TIMEOUT,
    TEN_MB_HEALTH_BOUND,
    HealthProbe,
    post_in_thread,
    ten_mb_json,
    wait_for,
)

pytestmark = pytest.mark.integration

TOKEN = "tok_large"


class SSEReader:
    """One SSE stream read in a thread from a plain socket.

    The thread only stores what arrives and counts the ends of events
    (blank lines): it shares the test process with ``HealthProbe``, whose
    timings a parse of a 20 MB event (or http.client's chunk reading) would
    disturb. ``events`` takes the chunked encoding apart later.
    """

    def __init__(self, port: int, channel: str) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self._sock.sendall(
            f"GET /connect/stream/{channel}/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\nX-Connector-ID: large\r\n\r\n".encode()
        )
        self._chunks: list[bytes] = []
        self.ended = 0  # events complete so far (a blank line never spans the chunk framing here)
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = b""
        try:
            while True:
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    return
                self._chunks.append(chunk)
                self.ended += (last + chunk).count(b"\n\n")
                last = chunk[-1:]
        except OSError as error:
            if not self._closing:
                self.error = error

    def _body(self) -> bytes:
        raw = b"".join(self._chunks)
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        pieces, index = [], 0
        while True:
            line_end = rest.find(b"\r\n", index)
            if line_end < 0:
                break
            size = int(rest[index:line_end], 16)
            if size == 0 or line_end + 2 + size > len(rest):
                break
            pieces.append(rest[line_end + 2 : line_end + 2 + size])
            index = line_end + 2 + size + 2
        return b"".join(pieces)

    def events(self) -> list[tuple[str, str]]:
        """(name, data) of each complete event so far."""
        found = []
        for block in self._body().split(b"\n\n")[: self.ended]:
            name, data = "message", []
            for line in block.decode().split("\n"):
                key, _, value = line.partition(": ")
                if key == "event":
                    name = value
                elif key == "data":
                    data.append(value)
            found.append((name, "".join(data)))
        return found

    def wait_for_webhook(self, timeout: float) -> str:
        """The data of the first webhook event, waited for up to ``timeout`` seconds."""
        seen = [0]

        def arrived() -> bool:
            if self.error is not None:
                return True
            if self.ended == seen[0]:
                return False
            seen[0] = self.ended
            return any(name == "webhook" for name, _ in self.events())

        wait_for(arrived, timeout, "a webhook event")
        assert self.error is None, self.error
        return next(data for name, data in self.events() if name == "webhook")

    def close(self) -> None:
        self._closing = True
        self._sock.shutdown(socket.SHUT_RDWR)  # ends the reader's recv
        self._thread.join(PROBE_TIMEOUT)
        self._sock.close()


@pytest.fixture(scope="module")
def big_body() -> bytes:
    return ten_mb_json()


@pytest.fixture
def cloud(tmp_path: Path, redis: RedisServer, redis_prefix: str) -> Iterator[CwmProcess]:
    webhooks = {
        "bulk": {
            "data_type": "json",
            "module": "webhook_connect",
            "module-config": {"channel": "bulk", "channel_token": TOKEN, "max_message_size": 16 * 1024 * 1024},
        }
    }
    environ = {
        "WEBHOOK_CONNECT_ENABLED": "true",
        "WEBHOOK_CONNECT_REDIS_URL": redis.url,
        "WEBHOOK_CONNECT_KEY_PREFIX": redis_prefix,
        "WEBHOOK_CONNECT_ADMIN_TOKEN": "admin_secret_123",
        "WEBHOOK_CONNECT_INSTANCE_ID": "test-large",
    }
    process = start_cwm(tmp_path, webhooks, env=environ)
    try:
        process.wait_for(r"configuration loaded")
        yield process
    finally:
        process.stop()


def test_ten_mb_webhook_queued_and_sent_over_sse_does_not_stall_health(cloud: CwmProcess, big_body: bytes) -> None:
    """Queuing: the envelope is encoded on the file threads. Sending: the stored text is spliced, never parsed."""
    assert cloud.post("/webhook/bulk", {"event": "warm"})[0] == 200
    warm = SSEReader(cloud.port, "bulk")  # takes the small message, so the big one is next
    try:
        ack = json.loads(warm.wait_for_webhook(10))
        connection_id = json.loads(next(data for name, data in warm.events() if name == "connected"))["connection_id"]
        status = cloud.request(
            "POST", f"/connect/ack?message_id={ack['message_id']}&status=ack",
            headers={"X-Connection-ID": connection_id, "Authorization": f"Bearer {TOKEN}"},
        )[0]
        assert status == 200
    finally:
        warm.close()

    with HealthProbe(cloud.port) as probe:
        wait_for(lambda: len(probe.latencies) >= 5, 10, "the first probes")
        before = len(probe.latencies)
        thread, result = post_in_thread(cloud, "/webhook/bulk", big_body)
        thread.join(60)
        queuing = probe.latencies[before:]
        assert result.get("status") == 200, result
        answered = len(probe.latencies)
        wait_for(lambda: len(probe.latencies) >= answered + 20, 10)

        before = len(probe.latencies)
        reader = SSEReader(cloud.port, "bulk")
        try:
            wait_for(lambda: reader.ended >= 2 or reader.error is not None, 60, "the 10 MB message over SSE")
            sent = len(probe.latencies)
            wait_for(lambda: len(probe.latencies) >= sent + 20, 10)
            sending = probe.latencies[before:]
        finally:
            reader.close()
    print(
        f"10 MB via webhook_connect: queuing {len(queuing)} probes, worst {max(queuing) * 1000:.1f} ms;"
        f" sending over SSE {len(sending)} probes, worst {max(sending) * 1000:.1f} ms"
    )
    wire: dict[str, Any] = json.loads(reader.wait_for_webhook(0))
    message = Message.from_wire(wire)
    assert message.body == big_body
    assert message.payload == json.loads(big_body)
    assert message.webhook_id == "bulk" and message.delivery_count == 1 and message.sequence == 2
    assert sorted(wire) == sorted(
        ["type", "message_id", "sequence", "webhook_id", "timestamp", "headers", "payload", "body_base64",
         "delivery_count", "stream_id"]
    )
    assert len(queuing) >= 5 and len(sending) >= 5, "too few probes overlapped the work to say anything"
    assert max(queuing) < TEN_MB_HEALTH_BOUND, f"/health took {max(queuing):.3f} s while a 10 MB webhook was queued"
    assert max(sending) < TEN_MB_HEALTH_BOUND, f"/health took {max(sending):.3f} s while a 10 MB webhook was sent"
