"""Hostile and idle clients against the real ``twistd -n cwm``: slowloris, idle, flood, the fd limit."""

from __future__ import annotations

import http.client
import re
import resource
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.integration.connect_clients import SSEClient, WSClient
from tests.integration.cwm_process import CwmProcess, start_cwm
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

WEBHOOKS = {"logged": {"module": "log"}}
HEADER_TIMEOUT = 8
STALL = b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nX-Slow: "


def open_stalled(port: int, count: int, head: bytes = STALL) -> list[socket.socket]:
    """``count`` connections that each sent half a request head and then stop."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(head)
        sockets.append(s)
    return sockets


def closed_by_server(s: socket.socket, wait: float) -> bytes | None:
    """What the server sent before closing ``s`` within ``wait`` seconds, or None while it stays open."""
    readable, _, _ = select.select([s], [], [], wait)
    if not readable:
        return None
    data = b""
    s.settimeout(wait)
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def still_open(sockets: list[socket.socket], wait: float) -> list[socket.socket]:
    """Those of ``sockets`` the server has not closed within ``wait`` seconds."""
    pending, deadline = set(sockets), time.monotonic() + wait
    while pending and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(pending), [], [], left)
        for s in readable:
            if closed_by_server(s, 1) is not None:
                pending.discard(s)
    return [s for s in sockets if s in pending]


SUMMARY = re.compile(
    r"HTTP clients in the last [\d.]+ s: (?P<refused>\d+) refused at the connection limit, (?P<shed>\d+) shed to make "
    r"room, (?P<header_timeouts>\d+) header timeouts, (?P<body_timeouts>\d+) body timeouts, (?P<idle_closed>\d+) idle "
    r"connections closed, (?P<rejected>\d+) malformed or oversized requests rejected"
)


def summary_totals(cwm: CwmProcess) -> Counter[str]:
    """The sums of every summary line logged so far."""
    totals: Counter[str] = Counter()
    for line in list(cwm.lines):
        if found := SUMMARY.search(line):
            totals.update({k: int(v) for k, v in found.groupdict().items()})
    return totals


def post_timed(connection: http.client.HTTPConnection) -> float:
    started = time.monotonic()
    connection.request("POST", "/webhook/logged", b'{"a": 1}', {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    return time.monotonic() - started


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


def test_slowloris_500_stalled_connections_leave_a_normal_client_fast(
    tmp_path: Path, closing: list[socket.socket]
) -> None:
    """500 connections trickle their heads one byte at a time; a normal client keeps p99 < 200 ms,
    and every stalled one is answered 408 at the header deadline, which its trickle does not extend."""
    cwm = start_cwm(tmp_path, WEBHOOKS, env={"HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT)})
    try:
        started = time.monotonic()
        stalled = open_stalled(cwm.port, 500)
        closing.extend(stalled)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                for s in stalled:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        connection = http.client.HTTPConnection("127.0.0.1", cwm.port, timeout=10)
        samples = [post_timed(connection) for _ in range(300)]
        connection.close()
        assert time.monotonic() - started < HEADER_TIMEOUT, "the normal client must run while all 500 are held"
        assert p99(samples) < 0.2, f"p99 {p99(samples) * 1000:.1f} ms"

        answers = [closed_by_server(s, max(0.0, HEADER_TIMEOUT + 5 - (time.monotonic() - started))) for s in stalled]
        stop.set()
        trickler.join(5)
        assert all(a is not None and a.startswith(b"HTTP/1.1 408 ") for a in answers)
        assert time.monotonic() - started < HEADER_TIMEOUT + 5
        cwm.wait_until(lambda: summary_totals(cwm)["header_timeouts"] == 500, 25)
    finally:
        cwm.stop()


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    cwm = start_cwm(tmp_path, WEBHOOKS, env={"HTTP_IDLE_TIMEOUT": "1.5"})
    try:
        with socket.create_connection(("127.0.0.1", cwm.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nServer: cwm\r\n" in answer
            idle_from = time.monotonic()
            assert closed_by_server(s, 10) == b""
            waited = time.monotonic() - idle_from
        assert 1.4 <= waited < 5, waited
    finally:
        cwm.stop()


def test_connection_flood_past_max_connections(tmp_path: Path, closing: list[socket.socket]) -> None:
    """Past MAX_CONNECTIONS new connections are closed at once and counted in one summary line;
    once the stalled ones have waited a moment, a normal client still gets through."""
    cwm = start_cwm(tmp_path, WEBHOOKS, env={"MAX_CONNECTIONS": "50", "HTTP_HEADER_TIMEOUT": "60"})
    try:
        flood = open_stalled(cwm.port, 200, b"")
        closing.extend(flood)
        kept = still_open(flood, 1.0)
        assert len(kept) == 50
        # The stalled ones are older than the shedding grace now: a new client makes room.
        for _ in range(5):
            code, _, _ = cwm.post("/webhook/logged")
            assert code == 200
        # Counted, and logged as summary lines (one per 10 s), not one line per client.
        cwm.wait_until(lambda: summary_totals(cwm)["refused"] == 150 and summary_totals(cwm)["shed"] >= 1, 25)
        assert sum(1 for line in cwm.lines if "refused" in line) <= 2
        # Usually one is shed, then each POST's connection is closed before the next; a POST
        # that arrives before the server has seen its predecessor's close sheds one more.
        shed = summary_totals(cwm)["shed"]
        assert 1 <= shed <= 5 and len(still_open(kept, 0.5)) == 50 - shed
    finally:
        cwm.stop()


def start_with_fd_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nofile: int, **kwargs: Any) -> CwmProcess:
    """cwm started as under ``ulimit -n nofile``."""
    popen = subprocess.Popen
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def limited(*args: Any, **kw: Any) -> Any:
        return popen(*args, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard)), **kw)

    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", limited)
        return start_cwm(tmp_path, WEBHOOKS, **kwargs)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def test_fd_limit_stalled_connections_are_shed_for_new_posts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[socket.socket]
) -> None:
    """Under ``ulimit -n 256``, 400 stalled connections never make new POSTs fail, and nothing spins."""
    cwm = start_with_fd_limit(tmp_path, monkeypatch, 256, env={"HTTP_HEADER_TIMEOUT": "120"})
    try:
        stalled = open_stalled(cwm.port, 400)
        closing.extend(stalled)
        # New POSTs, each on a fresh connection, all served while the table is full of stalled ones.
        deadline = time.monotonic() + 20
        served = 0
        while served < 50 and time.monotonic() < deadline:
            try:
                code, _, _ = cwm.post("/webhook/logged")
            except (ConnectionError, http.client.HTTPException):
                continue  # closed at once while every stalled one is younger than the shedding grace
            assert code == 200
            served += 1
        assert served == 50
        for _ in range(50):
            assert cwm.post("/webhook/logged")[0] == 200
        before, started = cpu_seconds(cwm.process.pid), time.monotonic()
        assert cwm.request("GET", "/health")[0] == 200
        cwm.wait_until(lambda: summary_totals(cwm)["shed"] > 0, 25)
        used = cpu_seconds(cwm.process.pid) - before
        assert used < 0.5 * (time.monotonic() - started) + 0.2, "busy loop at the fd limit"
        assert not any("EMFILE" in line for line in cwm.lines)
    finally:
        cwm.stop()


@pytest_twisted.ensureDeferred
async def test_connect_streams_outlive_the_http_timeouts_and_leave_no_slot_behind(
    tmp_path: Path, redis: RedisServer, redis_prefix: str
) -> None:
    """Webhook Connect streams keep their own heartbeat rules: an SSE stream outlives short HTTP
    timeouts, and WebSockets, once handed to their protocol, hold no MAX_CONNECTIONS slot after they close."""
    channel, token = "ch-http", "tok-http-1"
    env = {
        "WEBHOOK_CONNECT_ENABLED": "true",
        "WEBHOOK_CONNECT_REDIS_URL": redis.url,
        "WEBHOOK_CONNECT_KEY_PREFIX": redis_prefix,
        "WEBHOOK_CONNECT_INSTANCE_ID": "test-http",
        "HTTP_HEADER_TIMEOUT": "1",
        "HTTP_IDLE_TIMEOUT": "1",
        "MAX_CONNECTIONS": "3",
    }
    hooks = {"relay": {"module": "webhook_connect", "data_type": "json",
                       "module-config": {"channel": channel, "channel_token": token}}}
    cwm = start_cwm(tmp_path, hooks, env=env)
    try:
        cwm.wait_for(r"configuration loaded")
        base = f"http://127.0.0.1:{cwm.port}"
        stream = await SSEClient.open(base, channel, token)
        for _ in range(4):  # more than the cap: each must give its slot back
            socket_client = await WSClient.open(cwm.port, channel, token)
            await socket_client.close()
        await deferLater(reactor, 2.5, lambda: None)  # past both HTTP timeouts
        code, _, _ = await deferToThread(cwm.post, "/webhook/relay", {"n": 1})
        assert code == 200
        message, _ = await stream.next_webhook()
        assert message["payload"] == {"n": 1}
        stream.close()
    finally:
        cwm.stop()
