#!/usr/bin/env python
"""Webhook Connect benchmark (cloud side): one SSE client, then one WebSocket client.

    .venv/bin/python bench/connect_bench.py          # or: bash bench/connect.sh; ~1-2 minutes
    MESSAGES=20000 ROUNDS=5 .venv/bin/python bench/connect_bench.py
    .venv/bin/python bench/connect_bench.py --protocols ws --concurrency 8

Set-up: a throwaway ``redis-server`` (append-only, ``appendfsync everysec``, no
RDB snapshots) and ``twistd --pidfile= -n cwm`` with Webhook Connect on and one
webhook, ``bench``, whose ``webhook_connect`` module queues every POST on the
channel ``bench`` (``max_in_flight`` 100). cwm (and, by default, Redis) are
pinned to core 0 with ``taskset``; this script pins itself to core 1.

Method: this script is the whole client, one Twisted process. A run opens ONE
connector connection (an SSE stream, or a WebSocket), waits for its
``connected`` event, then POSTs N messages to ``/webhook/bench`` with a fixed
number of POSTs in flight (``--concurrency``, treq over a persistent
connection pool). Every body is a GitHub-like push event of exactly
``BODY_BYTES`` bytes that carries the run's id, a sequence number and the
``time.perf_counter()`` of the moment its POST was issued. The connector acks
each message as it arrives: over SSE with ``POST /connect/ack`` (same pool),
over the WebSocket with an ``ack`` frame. Figures per run:

- **delivered msgs/s**: N / (first POST issued -> last message settled). SSE:
  settled = the last ack POST answered 200 (``outcome: acked``). WebSocket
  (acks are not answered): settled = the admin stats show ``messages_delivered``
  up by N, polled every 10 ms once the last ack frame has been sent.
- **POST msgs/s**: N / (first POST issued -> last POST answered).
- **latency**: per message, the moment its event/frame reached the client
  minus the ``sent_at`` in its payload (one process, one clock).
- **CPU**: ``utime + stime`` of cwm and of redis-server (``/proc/PID/stat``)
  and of this process (``os.times``) over the run, per message / per second.

One warm-up run per protocol, then ``--rounds`` rounds with both protocols
(order alternating); the table gives the medians of the rounds. Every run is
checked: every POST answered 200, every posted sequence number arrived exactly
once (none lost, none duplicated, none redelivered, none from another run),
every SSE ack answered 200, and the channel's admin stats afterwards show
``messages_delivered`` up by exactly N, nothing queued, in flight, expired or
dead-lettered. Any failure, timeout or traceback in cwm's log makes the run
invalid: the report then says why at the top, is written as
``connect-<UTC date>-INVALID.md`` and the exit status is 1.

Every wait is bounded: requests, connects and closes by ``REQUEST_TIMEOUT``,
a whole run by ``--run-timeout``, start-up by ``--ready-timeout``. Redis and
cwm are stopped (TERM, then KILL) and the temp dir removed at the end, on
failure, Ctrl-C or SIGTERM too (``--keep-tmp`` keeps the logs).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
import treq
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
reactor: Any = _reactor
T = TypeVar("T")

WEBHOOK = "bench"
CHANNEL = "bench"
CHANNEL_TOKEN = "tok"
ADMIN_TOKEN = "adm"
BODY_BYTES = 400
REQUEST_TIMEOUT = 10.0
"""Seconds any one request, connect, close or stats check may take."""
STATS_POLL = 0.01
"""Seconds between admin stats polls while waiting for the WebSocket acks to land."""
PROTOCOLS = {"sse": "SSE", "ws": "WebSocket"}


def say(message: str) -> None:
    print(f"[connect-bench] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark cannot go on (a process died, a bound was exceeded, an answer was wrong)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop everything, write no report."""


# --- options ---------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Webhook Connect benchmark: one SSE client, then one WebSocket client (see bench/README.rst).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=_env_int("MESSAGES", 5000), help="messages per measured run (env MESSAGES)")
    p.add_argument("--warmup", type=int, default=_env_int("WARMUP", 500), help="messages of the warm-up run per protocol (env WARMUP)")
    p.add_argument("--rounds", type=int, default=_env_int("ROUNDS", 3), help="measured runs per protocol (env ROUNDS)")
    p.add_argument("--concurrency", type=int, default=_env_int("CONCURRENCY", 32), help="POSTs kept in flight (env CONCURRENCY)")
    p.add_argument("--protocols", default=os.environ.get("PROTOCOLS", "sse,ws"), help="comma-separated: sse, ws (env PROTOCOLS)")
    p.add_argument("--max-in-flight", type=int, default=_env_int("MAX_IN_FLIGHT", 100), help="the channel's max_in_flight")
    p.add_argument("--run-timeout", type=float, default=float(_env_int("RUN_TIMEOUT", 120)), help="seconds one run may take")
    p.add_argument("--ready-timeout", type=float, default=float(_env_int("READY_TIMEOUT", 30)), help="seconds start-up may take")
    p.add_argument("--server-cpu", type=int, default=_env_int("SERVER_CPU", 0), help="core cwm is pinned to")
    p.add_argument("--redis-cpu", default=os.environ.get("REDIS_CPU", "0"), help="core redis-server is pinned to ('none': not pinned)")
    p.add_argument("--client-cpu", type=int, default=_env_int("CLIENT_CPU", 1), help="core this client is pinned to")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="directory of the results file")
    p.add_argument("--keep-tmp", action="store_true", default=os.environ.get("KEEP_TMP", "0") == "1",
                   help="keep the temp dir (cwm's and redis's logs) (env KEEP_TMP=1)")
    o = p.parse_args(argv)
    o.protocols = [name.strip() for name in o.protocols.split(",") if name.strip()]
    if not o.protocols or any(name not in PROTOCOLS for name in o.protocols):
        p.error(f"--protocols: expected a comma-separated list of {', '.join(PROTOCOLS)}")
    for name in ("messages", "rounds", "concurrency", "max_in_flight"):
        if getattr(o, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if o.warmup < 0:
        p.error("--warmup must not be negative")
    o.redis_cpu = None if o.redis_cpu.strip().lower() in ("", "none") else int(o.redis_cpu)
    return o


# --- small helpers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 5,000 samples is the 4,950th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def push_event(run: str, seq: int, sent_at: float) -> bytes:
    """A GitHub-like push event of exactly BODY_BYTES bytes carrying the benchmark's fields."""
    event: dict[str, Any] = {
        "ref": "refs/heads/main",
        "after": "9c5e2a1f04b7a3e8d6f2c1b0a9e8d7c6b5a4f3e2",
        "repository": {"id": 70121, "full_name": "acme/billing-api", "private": True},
        "pusher": {"name": "release-bot"},
        "sender": {"login": "release-bot", "id": 90210},
        "head_commit": {"message": "Release 4.2.1", "timestamp": "2026-11-24T09:00:00Z"},
        "bench": {"run": run, "seq": seq, "sent_at": sent_at},
        "pad": "",
    }
    size = len(json.dumps(event, separators=(",", ":")))
    if size > BODY_BYTES:
        raise BenchError(f"the push event is {size} bytes, over BODY_BYTES={BODY_BYTES}")
    event["pad"] = "-" * (BODY_BYTES - size)
    return json.dumps(event, separators=(",", ":")).encode()


def webhook_entry(max_in_flight: int) -> dict[str, Any]:
    """The one webhook of webhooks.json: every POST queued on the channel."""
    return {
        "data_type": "json",
        "module": "webhook_connect",
        "module-config": {
            "channel": CHANNEL,
            "channel_token": CHANNEL_TOKEN,
            "max_queue_size": 100000,
            "max_in_flight": max_in_flight,
        },
    }


def bounded(work: Coroutine[Any, Any, T] | Deferred[T], seconds: float) -> Deferred[T]:
    """``work`` as a Deferred that fails with TimeoutError after ``seconds`` (and cancels it)."""
    d: Deferred[T] = Deferred.fromCoroutine(work) if not isinstance(work, Deferred) else work
    return d.addTimeout(seconds, reactor)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


# --- the server side: redis-server and cwm ---------------------------------------------------


class Servers:
    """redis-server and ``twistd -n cwm`` as child processes, stopped by ``stop()``."""

    def __init__(self, options: argparse.Namespace, tmp: Path) -> None:
        self.options = options
        self.tmp = tmp
        self.redis: subprocess.Popen[bytes] | None = None
        self.cwm: subprocess.Popen[bytes] | None = None
        self.redis_port = 0
        self.port = 0
        self.cwm_log = tmp / "cwm.log"
        self.prefix = f"cwm-bench-{os.getpid()}-{int(time.time())}"

    @staticmethod
    def _pinned(cpu: int | None, argv: list[str]) -> list[str]:
        return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (Debian: apt-get install redis-server)")
        data = self.tmp / "redis"
        data.mkdir()
        for _ in range(5):  # a free port can be taken between the probe and the bind
            self.redis_port = free_port()
            argv = [
                binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data),
                "--daemonize", "no", "--logfile", str(data / "redis.log"),
            ]
            self.redis = subprocess.Popen(self._pinned(self.options.redis_cpu, argv), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + self.options.ready_timeout
            while self.redis.poll() is None and time.monotonic() < deadline:
                if self._redis_pong():
                    return
                time.sleep(0.05)
            self._stop(self.redis)
        raise BenchError(f"redis-server did not answer PING (see {data / 'redis.log'})")

    def _redis_pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_cwm(self) -> None:
        (self.tmp / "webhooks.json").write_text(json.dumps({WEBHOOK: webhook_entry(self.options.max_in_flight)}, indent=2))
        (self.tmp / "connections.json").write_text("{}")
        env = dict(os.environ)
        env.update(
            WEBHOOK_CONNECT_ENABLED="true",
            WEBHOOK_CONNECT_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            WEBHOOK_CONNECT_ADMIN_TOKEN=ADMIN_TOKEN,
            WEBHOOK_CONNECT_KEY_PREFIX=self.prefix,
        )
        if subprocess.run([sys.executable, "-c", "import cwm"], cwd="/", capture_output=True).returncode:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.port = free_port()
        argv = [
            TWISTD, "--pidfile=", "-n", "cwm", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--webhooks", str(self.tmp / "webhooks.json"), "--connections", str(self.tmp / "connections.json"),
        ]
        with open(self.cwm_log, "wb") as log:
            self.cwm = subprocess.Popen(self._pinned(self.options.server_cpu, argv), cwd=self.tmp, env=env,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.options.ready_timeout
        while time.monotonic() < deadline:
            if self.cwm.poll() is not None:
                raise BenchError(f"cwm exited during start-up (status {self.cwm.returncode}):\n{self.log_tail()}")
            if "configuration loaded" in self.cwm_log.read_text(errors="replace") and self._health() == 200:
                return
            time.sleep(0.05)
        raise BenchError(f"cwm was not ready within {self.options.ready_timeout:g} s:\n{self.log_tail()}")

    def _health(self) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:
            return 0
        finally:
            connection.close()

    def check_alive(self) -> None:
        for name, process in (("redis-server", self.redis), ("cwm", self.cwm)):
            if process is None or process.poll() is not None:
                raise BenchError(f"{name} is no longer running")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.cwm_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_problems(self) -> list[str]:
        """Lines of cwm's log that say something went wrong (tracebacks, unhandled errors)."""
        text = self.cwm_log.read_text(errors="replace") if self.cwm_log.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or "Unhandled" in line or "#critical]" in line]

    @staticmethod
    def _stop(process: subprocess.Popen[bytes] | None) -> None:
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        self._stop(self.cwm)
        self._stop(self.redis)


# --- the client side -------------------------------------------------------------------------


class Delivery:
    """What one run posted and what its connector received and settled."""

    def __init__(self, run: str, messages: int) -> None:
        self.run = run
        self.messages = messages
        self.first_post = 0.0
        self.posts_done = 0.0
        self.posting = True
        self.posted: set[int] = set()  # answered 200
        self.post_failures: list[str] = []
        self.latency: dict[int, float] = {}  # seq -> seconds, first delivery
        self.deliveries = 0  # webhook events/frames seen, duplicates included
        self.duplicates = 0
        self.redelivered = 0  # delivery_count > 1
        self.strays: list[str] = []  # not from this run
        self.errors: list[str] = []  # anything else wrong on the connection
        self.acks_done = 0  # acks answered (SSE) or sent (WS), failed or not
        self.ack_failures: list[str] = []
        self.last_ack = 0.0
        self.max_backlog = 0  # posted (200) but not yet received, sampled at each POST answer
        self.finished: Deferred[None] = Deferred()

    def post_answered(self, seq: int, failure: str | None) -> None:
        if failure is None:
            self.posted.add(seq)
            self.max_backlog = max(self.max_backlog, len(self.posted) - len(self.latency))
        else:
            self.post_failures.append(f"seq {seq}: {failure}")

    def all_posted(self, at: float) -> None:
        self.posts_done = at
        self.posting = False
        self._check()

    def received(self, message: Any, at: float) -> None:
        """One ``webhook`` event/frame: its wire form, received at ``at`` (perf_counter)."""
        self.deliveries += 1
        payload = message.get("payload") if isinstance(message, dict) else None
        mark = payload.get("bench") if isinstance(payload, dict) else None
        if not isinstance(mark, dict) or mark.get("run") != self.run or not isinstance(mark.get("seq"), int):
            self.strays.append(str(message)[:200])
            return
        if message.get("delivery_count", 1) != 1:
            self.redelivered += 1
        seq = mark["seq"]
        if seq in self.latency:
            self.duplicates += 1
        else:
            self.latency[seq] = at - float(mark["sent_at"])

    def ack_answered(self, at: float, failure: str | None) -> None:
        self.acks_done += 1
        if failure is None:
            self.last_ack = max(self.last_ack, at)
        else:
            self.ack_failures.append(failure)
        self._check()

    def error(self, text: str) -> None:
        self.errors.append(text)
        if not self.finished.called:
            self.finished.errback(BenchError(text))

    def _check(self) -> None:
        if (
            not self.posting
            and not self.finished.called
            and self.acks_done >= self.deliveries - len(self.strays)
            and self.posted <= self.latency.keys()
        ):
            self.finished.callback(None)

    def missing(self) -> list[int]:
        return sorted(self.posted - self.latency.keys())


class SSEReader(Protocol):
    """Parses a text/event-stream body; calls ``on_event(name, data, at)`` per event."""

    def __init__(self, on_event: Callable[[str, str, float], None]) -> None:
        self._on_event = on_event
        self._buffer = b""
        self._name = ""
        self._data: list[str] = []
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        at = time.perf_counter()
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:
                if self._data or self._name:
                    self._on_event(self._name or "message", "\n".join(self._data), at)
                self._name, self._data = "", []
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if key == "event":
                    self._name = value
                elif key == "data":
                    self._data.append(value)
                # "id:" and "retry:" are not needed here

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.closed.called:
            self.closed.callback(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class BenchSocket(WebSocketClientProtocol):
    """The WebSocket connector: acks every webhook frame as it arrives."""

    factory: BenchSocketFactory

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        at = time.perf_counter()
        f = self.factory
        try:
            frame = json.loads(payload)
        except ValueError:
            f.delivery.error(f"not JSON: {payload[:200]!r}")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "webhook":
            f.delivery.received(frame, at)
            self.sendMessage(json.dumps({"type": "ack", "message_id": frame["message_id"]}).encode())
            f.delivery.ack_answered(time.perf_counter(), None)
        elif kind == "connected":
            if not f.connected.called:
                f.connected.callback(str(frame["connection_id"]))
        elif kind != "heartbeat":
            f.delivery.error(f"unexpected frame: {payload[:200]!r}")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        f = self.factory
        if not f.connected.called:
            f.connected.errback(BenchError(f"WebSocket closed before 'connected' ({code} {reason})"))
        elif not f.closing:
            f.delivery.error(f"the server closed the WebSocket ({code} {reason})")
        if not f.closed.called:
            f.closed.callback(None)


class BenchSocketFactory(WebSocketClientFactory):
    protocol = BenchSocket

    def __init__(self, url: str, delivery: Delivery) -> None:
        super().__init__(url, headers={"Authorization": f"Bearer {CHANNEL_TOKEN}"})
        self.setProtocolOptions(openHandshakeTimeout=REQUEST_TIMEOUT, closeHandshakeTimeout=REQUEST_TIMEOUT)
        self.delivery = delivery
        self.connected: Deferred[str] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.closing = False
        self.socket: BenchSocket | None = None

    def buildProtocol(self, addr: Any) -> BenchSocket:
        self.socket = super().buildProtocol(addr)
        return self.socket


@dataclass
class RunResult:
    protocol: str
    label: str  # "warm-up" or the round number
    messages: int
    delivery: Delivery
    settled_at: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds over the run: cwm, redis, client
    stats_before: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.label != "warm-up"

    @property
    def seconds(self) -> float:
        """First POST -> settled; NaN if it never settled (a failed run)."""
        if self.settled_at <= self.delivery.first_post:
            return float("nan")
        return self.settled_at - self.delivery.first_post

    @property
    def delivered_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def post_rate(self) -> float:
        return self.messages / (self.delivery.posts_done - self.delivery.first_post)

    def latency_ms(self, p: float) -> float:
        latencies = list(self.delivery.latency.values())
        return 1000 * percentile(latencies, p) if latencies else float("nan")

    def cpu_us_per_message(self, who: str) -> float:
        return 1e6 * self.cpu[who] / self.messages


class Bench:
    """The client: runs one protocol at a time against one cwm."""

    def __init__(self, options: argparse.Namespace, servers: Servers) -> None:
        self.options = options
        self.servers = servers
        self.base = f"http://127.0.0.1:{servers.port}"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = options.concurrency + options.max_in_flight + 8
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.stream_http = HTTPClient(Agent(reactor))  # the SSE stream: a connection of its own
        self.counter = 0

    async def close(self) -> None:
        await self.pool.closeCachedConnections()

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            response = await self.http.request(method, url, headers=headers, data=body, allow_redirects=False)
            return response.code, await response.content()

        return await bounded(go(), REQUEST_TIMEOUT)

    async def stats(self) -> dict[str, Any]:
        code, body = await self.request(
            "GET", f"{self.base}/admin/webhook-connect/channels/{CHANNEL}/stats", {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        if code != 200:
            raise BenchError(f"admin stats answered {code}: {body[:200]!r}")
        stats: dict[str, Any] = json.loads(body)
        return stats

    async def wait_stats(self, check: Callable[[dict[str, Any]], bool], seconds: float) -> tuple[dict[str, Any], float]:
        """Poll the admin stats until ``check`` holds; (stats, when). The last stats if it never did."""
        deadline = time.perf_counter() + seconds
        while True:
            stats = await self.stats()
            at = time.perf_counter()
            if check(stats) or at >= deadline:
                return stats, at
            await sleep(STATS_POLL)

    async def post_all(self, delivery: Delivery) -> None:
        """POST the run's messages, ``concurrency`` at a time."""
        url = f"{self.base}/webhook/{WEBHOOK}"
        headers = {"Content-Type": "application/json"}
        seqs: Iterator[int] = iter(range(delivery.messages))

        async def worker() -> None:
            for seq in seqs:  # one iterator shared by every worker
                sent_at = time.perf_counter()
                delivery.first_post = delivery.first_post or sent_at
                try:
                    code, body = await self.request("POST", url, headers, push_event(delivery.run, seq, sent_at))
                except Exception as e:
                    delivery.post_answered(seq, f"{type(e).__name__}: {e}")
                    continue
                delivery.post_answered(seq, None if code == 200 else f"{code} {body[:200]!r}")

        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(self.options.concurrency)])
        delivery.all_posted(time.perf_counter())

    async def run(self, protocol: str, label: str, messages: int) -> RunResult:
        self.servers.check_alive()
        self.counter += 1
        result = RunResult(protocol, label, messages, Delivery(f"{protocol}-{self.counter}", messages))
        say(f"{PROTOCOLS[protocol]} {label}: {messages} messages")
        opened = self.open_sse if protocol == "sse" else self.open_ws
        close = await opened(result.delivery)
        try:
            result.stats_before = await self.stats()
            before = self.cpu_snapshot()
            posting = Deferred.fromCoroutine(self.post_all(result.delivery))
            try:
                await bounded(gatherResults([posting, result.delivery.finished], consumeErrors=True),
                              self.options.run_timeout)
            except Exception as e:
                d = result.delivery
                reason = e.subFailure.value if isinstance(e, FirstError) else e
                raise BenchError(
                    f"{PROTOCOLS[protocol]} {label}: {type(reason).__name__} {reason} after {len(d.posted)} POSTs"
                    f" answered 200, {len(d.latency)} messages received, {d.acks_done} acks"
                ) from None
            if protocol == "sse":
                result.settled_at = result.delivery.last_ack
            else:  # WebSocket acks are not answered: the stats tell when they all landed
                expected = result.stats_before["messages_delivered"] + len(result.delivery.posted)
                stats, result.settled_at = await self.wait_stats(
                    lambda s: s["messages_delivered"] >= expected, REQUEST_TIMEOUT
                )
            after = self.cpu_snapshot()
            result.cpu = {who: after[who] - before[who] for who in before}
        finally:
            await close()
        await self.check(result)
        return result

    def cpu_snapshot(self) -> dict[str, float]:
        assert self.servers.cwm is not None and self.servers.redis is not None
        return {
            "cwm": cpu_seconds(self.servers.cwm.pid),
            "redis": cpu_seconds(self.servers.redis.pid),
            "client": own_cpu_seconds(),
        }

    async def open_sse(self, delivery: Delivery) -> Callable[[], Awaitable[None]]:
        """Open the SSE stream; returns the call that closes it."""
        connected: Deferred[str] = Deferred()
        connection_id = ""
        ack_headers: dict[str, str] = {}

        async def ack(message_id: str) -> None:
            url = f"{self.base}/connect/ack?message_id={message_id}&status=ack"
            try:
                code, body = await self.request("POST", url, ack_headers)
                outcome = json.loads(body).get("outcome") if code == 200 else None
            except Exception as e:
                delivery.ack_answered(time.perf_counter(), f"{message_id}: {type(e).__name__}: {e}")
                return
            at = time.perf_counter()
            delivery.ack_answered(at, None if outcome == "acked" else f"{message_id}: {code} {body[:200]!r}")

        def on_event(name: str, data: str, at: float) -> None:
            if name == "webhook":
                message = json.loads(data)
                delivery.received(message, at)
                Deferred.fromCoroutine(ack(message["message_id"]))
            elif name == "connected" and not connected.called:
                connected.callback(json.loads(data)["connection_id"])
            elif name == "error":
                delivery.error(f"the server ended the stream: {data}")

        response = await bounded(
            self.stream_http.get(f"{self.base}/connect/stream/{CHANNEL}/sse",
                                 headers={"Authorization": f"Bearer {CHANNEL_TOKEN}"}, unbuffered=True),
            REQUEST_TIMEOUT,
        )
        if response.code != 200:
            raise BenchError(f"the SSE stream answered {response.code}: {(await response.content())[:200]!r}")
        reader = SSEReader(on_event)
        response.deliverBody(reader)
        connection_id = await bounded(connected, REQUEST_TIMEOUT)
        ack_headers.update({"X-Connection-ID": connection_id, "Authorization": f"Bearer {CHANNEL_TOKEN}"})

        async def close() -> None:
            reader.close()
            await bounded(reader.closed, REQUEST_TIMEOUT)

        return close

    async def open_ws(self, delivery: Delivery) -> Callable[[], Awaitable[None]]:
        """Open the WebSocket; returns the call that closes it."""
        factory = BenchSocketFactory(f"ws://127.0.0.1:{self.servers.port}/connect/stream/{CHANNEL}", delivery)
        connector = connectWS(factory, timeout=REQUEST_TIMEOUT)
        try:
            await bounded(factory.connected, REQUEST_TIMEOUT)
        except Exception:
            connector.disconnect()
            raise

        async def close() -> None:
            factory.closing = True
            if factory.socket is not None:
                factory.socket.sendClose(1000)
            await bounded(factory.closed, 2 * REQUEST_TIMEOUT)

        return close

    async def check(self, result: RunResult) -> None:
        """What makes the run invalid: the client's counts, then the channel's stats."""
        d, problems = result.delivery, result.problems
        if d.post_failures:
            problems.append(f"{len(d.post_failures)} POSTs failed, e.g. {d.post_failures[0]}")
        if missing := d.missing():
            problems.append(f"{len(missing)} messages lost (posted, never received), e.g. seq {missing[:5]}")
        if d.duplicates:
            problems.append(f"{d.duplicates} messages received twice")
        if d.redelivered:
            problems.append(f"{d.redelivered} messages arrived with delivery_count > 1")
        if d.strays:
            problems.append(f"{len(d.strays)} messages not from this run, e.g. {d.strays[0]}")
        if d.ack_failures:
            problems.append(f"{len(d.ack_failures)} acks failed, e.g. {d.ack_failures[0]}")
        problems.extend(d.errors)
        expected = result.stats_before["messages_delivered"] + len(d.posted)
        zero = ("messages_queued", "messages_in_flight")
        same = ("messages_expired", "messages_dead_lettered")

        def settled(s: dict[str, Any]) -> bool:
            return s["messages_delivered"] == expected and all(s[k] == 0 for k in zero) and s["connected_clients"] == 0

        result.stats_after, _ = await self.wait_stats(settled, REQUEST_TIMEOUT)
        after, before = result.stats_after, result.stats_before
        delta = after["messages_delivered"] - before["messages_delivered"]
        if delta != len(d.posted):
            problems.append(f"stats: messages_delivered went up by {delta}, not {len(d.posted)}")
        for key in zero:
            if after[key]:
                problems.append(f"stats: {key} is {after[key]} after the run")
        for key in same:
            if after[key] != before[key]:
                problems.append(f"stats: {key} went from {before[key]} to {after[key]}")
        if after["connected_clients"]:
            problems.append(f"stats: {after['connected_clients']} clients still connected after the close")


async def measure(options: argparse.Namespace, servers: Servers, results: list[RunResult]) -> None:
    """Warm-up per protocol, then the rounds (protocol order alternating); appends to ``results``."""
    bench = Bench(options, servers)
    try:
        if options.warmup:
            for protocol in options.protocols:
                results.append(await bench.run(protocol, "warm-up", options.warmup))
        for number in range(1, options.rounds + 1):
            order = options.protocols if number % 2 else options.protocols[::-1]
            for protocol in order:
                results.append(await bench.run(protocol, str(number), options.messages))
    finally:
        await bench.close()


def run_reactor(options: argparse.Namespace, servers: Servers, results: list[RunResult]) -> None:
    """Run ``measure`` on the reactor; raises what it raised (or BenchError if interrupted)."""
    outcome: list[Failure | None] = []

    def done(result: Any) -> None:
        outcome.append(result if isinstance(result, Failure) else None)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(measure(options, servers, results)).addBoth(done))
    reactor.run()
    if not outcome:
        raise Interrupted()
    if outcome[0] is not None:
        outcome[0].raiseException()


# --- the report ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_facts(servers: Servers) -> dict[str, str]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu_model = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = run("git", "rev-parse", "--short", "HEAD") or "?"
    if run("git", "status", "--porcelain", "--", "cwm"):
        commit += " + uncommitted changes in cwm/"
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu_model,
        "kernel": f"{platform.system()} {platform.release()}",
        "load average before": " ".join(open("/proc/loadavg", encoding="ascii").read().split()[:3]),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Twisted / treq / autobahn": f"{version('twisted')} / {version('treq')} / {version('autobahn')}",
        "redis-server": run("redis-server", "--version").replace("Redis server ", ""),
        "cwm commit": commit,
    }


def report(options: argparse.Namespace, facts: dict[str, str], results: list[RunResult], failure: str | None,
           log_problems: list[str], started: datetime.datetime, cwm_rss: float) -> tuple[str, bool]:
    """The Markdown report, and whether the run is valid."""
    problems = [f"{PROTOCOLS[r.protocol]} {r.label}: {p}" for r in results for p in r.problems]
    if failure:
        problems.append(failure)
    problems += [f"cwm's log: {line}" for line in log_problems[:10]]
    measured = [r for r in results if r.measured]
    for protocol in options.protocols:
        if len([r for r in measured if r.protocol == protocol]) < options.rounds:
            problems.append(f"{PROTOCOLS[protocol]}: fewer measured runs than {options.rounds}")
    valid = not problems

    out: list[str] = [f"# Webhook Connect benchmark, {started:%Y-%m-%d %H:%M:%S} UTC", ""]
    if not valid:
        out += ["**INVALID RUN**:", ""] + [f"- {p}" for p in problems] + [""]
    out += [
        f"One connector at a time (one SSE stream, or one WebSocket) on channel `{CHANNEL}`; this client posts "
        f"{options.messages:,} messages per run to `POST /webhook/{WEBHOOK}` ({options.concurrency} POSTs in flight, "
        f"{BODY_BYTES}-byte JSON push events) and acks each message as it arrives. cwm on core {options.server_cpu}, "
        f"redis-server on {'core ' + str(options.redis_cpu) if options.redis_cpu is not None else 'any core'}, "
        f"this client (one Twisted process: treq, autobahn) on core {options.client_cpu}. "
        f"Medians of {options.rounds} rounds after one warm-up run of {options.warmup:,} messages per protocol.",
        "",
        "| protocol | delivered msgs/s (first POST → last ack) | POST msgs/s | latency p50 ms | latency p99 ms "
        "| cwm CPU µs/msg | redis CPU µs/msg | client CPU µs/msg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for protocol in options.protocols:
        runs = [r for r in measured if r.protocol == protocol]
        if not runs:
            continue
        out.append(
            f"| {PROTOCOLS[protocol]} | {median([r.delivered_rate for r in runs]):,.0f} "
            f"| {median([r.post_rate for r in runs]):,.0f} "
            f"| {median([r.latency_ms(50) for r in runs]):.1f} | {median([r.latency_ms(99) for r in runs]):.1f} "
            f"| {median([r.cpu_us_per_message('cwm') for r in runs]):,.0f} "
            f"| {median([r.cpu_us_per_message('redis') for r in runs]):,.0f} "
            f"| {median([r.cpu_us_per_message('client') for r in runs]):,.0f} |"
        )
    out += [
        "",
        "- **delivered msgs/s**: messages / (first POST issued → last message settled). SSE: the last "
        "`POST /connect/ack` answered 200 `acked`. WebSocket (acks are frames, not answered): the admin stats "
        f"showed `messages_delivered` up by N, polled every {STATS_POLL * 1000:g} ms after the last ack frame was sent.",
        "- **POST msgs/s**: messages / (first POST issued → last POST answered 200).",
        "- **latency**: message received by the client (SSE event / WebSocket frame) minus the `sent_at` in its "
        "payload (when its POST was issued), same process clock. With the POSTs faster than delivery, the "
        "backlog grows during a run and the latency includes the wait in the queue (see *max backlog* below).",
        "- **CPU µs/msg**: utime + stime over the run (from the first POST to settled), per message.",
        "",
        "## Runs",
        "",
        "| protocol | run | messages | seconds | delivered msgs/s | POST msgs/s | p50 ms | p90 ms | p99 ms | max ms "
        "| max backlog | cwm CPU % | redis CPU % | client CPU % | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        busy = {who: 100 * r.cpu[who] / r.seconds for who in r.cpu}
        out.append(
            f"| {PROTOCOLS[r.protocol]} | {r.label} | {r.messages:,} | {r.seconds:.2f} | {r.delivered_rate:,.0f} "
            f"| {r.post_rate:,.0f} | {r.latency_ms(50):.1f} | {r.latency_ms(90):.1f} | {r.latency_ms(99):.1f} "
            f"| {r.latency_ms(100):.1f} | {r.delivery.max_backlog:,} | {busy['cwm']:.0f} | {busy['redis']:.0f} "
            f"| {busy['client']:.0f} | {'ok' if not r.problems else 'FAILED'} |"
        )
    out += [
        "",
        "*max backlog*: the most messages posted (answered 200) but not yet received by the client, sampled at each "
        "POST answer. *CPU %*: of one core, over the run's seconds. *checks*: every POST answered 200; every posted "
        "sequence number received exactly once, with `delivery_count` 1 and none from another run; every SSE ack "
        "answered 200 `acked`; afterwards the channel's admin stats show `messages_delivered` up by exactly the "
        "messages posted, 0 queued, 0 in flight, no new expired or dead-lettered messages, 0 connected clients.",
        "",
        "## Settings",
        "",
        f"- messages per measured run: {options.messages:,}; warm-up: {options.warmup:,} per protocol; "
        f"rounds: {options.rounds} (protocol order alternating)",
        f"- POSTs in flight: {options.concurrency}; body: {BODY_BYTES} bytes of JSON (a GitHub-like push event with "
        "`bench: {run, seq, sent_at}`), `Content-Type: application/json`, no authorization",
        f"- webhooks.json: `{json.dumps(webhook_entry(options.max_in_flight), separators=(', ', ': '))}`"
        " (other channel settings at their defaults: ack timeout 30 s, heartbeat 30 s, max 5 deliveries)",
        "- cwm: `twistd --pidfile= -n cwm --listen tcp:PORT:interface=127.0.0.1`, stdout and stderr to a file; "
        "`WEBHOOK_CONNECT_ENABLED=true`, a fresh `WEBHOOK_CONNECT_KEY_PREFIX`, the admin token set",
        "- redis-server: `--save \"\" --appendonly yes --appendfsync everysec`, loopback, a fresh temp dir",
        "- client: SSE acks over a persistent `HTTPConnectionPool` shared with the POSTs "
        f"(up to {options.concurrency + options.max_in_flight + 8} kept connections), the SSE stream on a "
        "connection of its own; WebSocket acks as `{\"type\": \"ack\", \"message_id\": ...}` frames",
        f"- bounds: {REQUEST_TIMEOUT:g} s per request/connect/close/stats wait, {options.run_timeout:g} s per run",
        f"- cwm RSS at the end: {cwm_rss:.1f} MiB",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {key} | {value} |" for key, value in facts.items()]
    out += [
        "",
        "Absolute figures depend on the machine and its load (this VM varies ±10-20 % between runs): compare runs "
        "made on the same machine, before and after a change.",
        "",
    ]
    return "\n".join(out), valid


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    if (os.cpu_count() or 1) < 2:
        say("needs 2 CPUs (cwm on one, this client on the other)")
        return 1
    if shutil.which("taskset") is None:
        say("taskset is missing (util-linux)")
        return 1
    def interrupt(*_: Any) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, interrupt)  # the reactor has its own handlers while it runs
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="cwm-connect-bench."))
    servers = Servers(options, tmp)
    results: list[RunResult] = []
    failure: str | None = None
    facts: dict[str, str] = {}
    cwm_rss = float("nan")
    keep = options.keep_tmp
    try:
        facts = machine_facts(servers)
        os.sched_setaffinity(0, {options.client_cpu})
        servers.start_redis()
        say(f"redis-server on port {servers.redis_port}")
        servers.start_cwm()
        say(f"cwm ready on port {servers.port}")
        try:
            run_reactor(options, servers, results)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # a BenchError, a timeout...: the runs so far are reported, as invalid
            failure = f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e)
        if servers.cwm is not None and servers.cwm.poll() is None:
            cwm_rss = rss_mib(servers.cwm.pid)
        text, valid = report(options, facts, results, failure, servers.log_problems(), started, cwm_rss)
        options.results.mkdir(parents=True, exist_ok=True)
        path = options.results / f"connect-{started:%Y-%m-%d}{'' if valid else '-INVALID'}.md"
        path.write_text(text)
        print(text)
        say(f"results written to {path}")
        if not valid:
            say(f"last lines of cwm's log:\n{servers.log_tail()}")
            keep = True
        return 0 if valid else 1
    except BenchError as e:
        say(f"FAILED: {e}")
        keep = True
        return 1
    except (Interrupted, KeyboardInterrupt):
        say("interrupted: no report written")
        return 130
    finally:
        servers.stop()
        if keep:
            say(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
