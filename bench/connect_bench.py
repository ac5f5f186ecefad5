#!/usr/bin/env python
"""Webhook Connect benchmark (cloud side): one SSE client, then one WebSocket client.

    .venv/bin/python bench/connect_bench.py          # or: bash bench/connect.sh; ~3 minutes
    MESSAGES=20000 ROUNDS=5 .venv/bin/python bench/connect_bench.py
    .venv/bin/python bench/connect_bench.py --protocols ws --concurrency 8 --paced-rate 0

Set-up: a throwaway ``redis-server`` (append-only, ``appendfsync everysec``, no
RDB snapshots) and ``twistd --pidfile= -n cwm`` with Webhook Connect on and one
webhook, ``bench``, whose ``webhook_connect`` module queues every POST on the
channel ``bench`` (``max_in_flight`` 100). cwm (and, by default, Redis) are
pinned to core 0 with ``taskset``; this script pins itself to core 1.

Method: this script is the whole client, one Twisted process. A run opens ONE
connector connection (an SSE stream, or a WebSocket), waits for its
``connected`` event, then POSTs the run's messages to ``/webhook/bench``
(treq, one persistent connection pool). Every body is a GitHub-like push
event of exactly ``BODY_BYTES`` bytes carrying the run's id, a sequence
number and the ``time.perf_counter()`` at which its POST was issued. The
connector acks each message as it arrives: over SSE with ``POST /connect/ack``
(same pool), over the WebSocket with an ``ack`` frame. Two kinds of run:

- **load** (``--messages``, default 5,000): ``--concurrency`` POSTs (default
  32) always in flight, as fast as cwm answers. Gives the throughput. POSTs
  are cheaper than deliveries, so a backlog builds up in Redis during the run
  and these latencies include the time spent queued (the report shows the
  largest backlog): they grow with the number of messages.
- **paced** (``--paced-messages`` at ``--paced-rate`` msgs/s, default 1,000
  at 100/s, well below capacity): POST n is issued at start + n / rate
  (still at most ``--concurrency`` in flight). Gives the latency of one
  message through an unloaded system. ``--paced-rate 0`` skips these runs.

Figures per run:

- **delivered msgs/s**: messages / (first POST issued -> last message
  settled). SSE: settled = the last ack POST answered 200 ``acked``.
  WebSocket (acks are frames, not answered): settled = the admin stats show
  ``messages_delivered`` up by the run's messages, polled every 10 ms once
  the last ack frame has been sent.
- **POST msgs/s**: messages / (first POST issued -> last POST answered).
- **latency**: per message, the moment its SSE event / WebSocket frame
  reached the client minus the ``sent_at`` in its payload (one process, one
  clock); and how long each POST took to be answered.
- **CPU**: ``utime + stime`` of cwm and redis-server (``/proc/PID/stat``)
  and of this process (``os.times``), and how busy each of the two cores was
  (``/proc/stat``; this also counts kernel work, such as the loopback
  network, that no process is charged for).

One warm-up load run per protocol (``--warmup`` messages), then ``--rounds``
rounds: each runs, per protocol (the order alternating between rounds), one
load run then one paced run. The tables give the medians of the rounds.

Every run is checked: every POST answered 200, every posted sequence number
arrived exactly once (none lost, none duplicated, none redelivered, none from
another run), every SSE ack answered 200, and the channel's admin stats
afterwards show ``messages_delivered`` up by exactly the messages posted,
nothing queued, in flight, expired or dead-lettered, no client connected. A
failed check, a timeout or a traceback in cwm's log makes the benchmark
invalid: the report says why at the top, is written as
``connect-<UTC date>-INVALID.md``, and the exit status is 1.

Every wait is bounded: each request, connect, close and stats wait by
``REQUEST_TIMEOUT``, a whole run by ``--run-timeout``, start-up by
``--ready-timeout``. Redis and cwm are stopped (TERM, then KILL) and the temp
dir removed at the end, on failure, Ctrl-C or SIGTERM too (``--keep-tmp``
keeps cwm's and Redis's logs).
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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, FirstError, gatherResults
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
reactor: Any = _reactor
T = TypeVar("T")
Headers = dict[bytes | str, bytes | str]

WEBHOOK = "bench"
CHANNEL = "bench"
CHANNEL_TOKEN = "tok"
ADMIN_TOKEN = "adm"
MAX_QUEUE_SIZE = 100_000
BODY_BYTES = 400
REQUEST_TIMEOUT = 10.0
"""Seconds any one request, connect, close or stats wait may take."""
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


def _option(p: argparse.ArgumentParser, flag: str, env: str | None, kind: type, default: str, text: str) -> None:
    """An option whose default may come from the environment variable ``env``."""
    value = (os.environ.get(env, "").strip() if env else "") or default
    p.add_argument(flag, type=kind, default=kind(value), help=f"{text} (env {env})" if env else text)


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Webhook Connect benchmark: one SSE client, then one WebSocket client (see bench/README.rst).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _option(p, "--messages", "MESSAGES", int, "5000", "messages per load run")
    _option(p, "--warmup", "WARMUP", int, "500", "messages of the warm-up run per protocol")
    _option(p, "--rounds", "ROUNDS", int, "3", "rounds")
    _option(p, "--concurrency", "CONCURRENCY", int, "32", "POSTs kept in flight")
    _option(p, "--paced-messages", "PACED_MESSAGES", int, "1000", "messages per paced run")
    _option(p, "--paced-rate", "PACED_RATE", float, "100", "POSTs/s of a paced run, 0: no paced runs")
    _option(p, "--protocols", "PROTOCOLS", str, "sse,ws", "comma-separated: sse, ws")
    _option(p, "--max-in-flight", None, int, "100", "the channel's max_in_flight")
    _option(p, "--run-timeout", "RUN_TIMEOUT", float, "120", "seconds one run may take")
    _option(p, "--ready-timeout", "READY_TIMEOUT", float, "30", "seconds start-up may take")
    _option(p, "--server-cpu", "SERVER_CPU", int, "0", "core of cwm")
    _option(p, "--redis-cpu", "REDIS_CPU", str, "0", "core of redis-server, 'none': not pinned")
    _option(p, "--client-cpu", "CLIENT_CPU", int, "1", "core of this client")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="directory of the results file")
    p.add_argument("--keep-tmp", action="store_true", default=os.environ.get("KEEP_TMP", "0").strip() == "1",
                   help="keep the temp dir with cwm's and redis's logs (env KEEP_TMP=1)")
    o = p.parse_args(argv)
    o.protocols = [name.strip() for name in o.protocols.split(",") if name.strip()]
    if not o.protocols or any(name not in PROTOCOLS for name in o.protocols):
        p.error(f"--protocols: expected a comma-separated list of {', '.join(PROTOCOLS)}")
    for name in ("messages", "rounds", "concurrency", "max_in_flight", "paced_messages"):
        if getattr(o, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if o.warmup < 0 or o.paced_rate < 0:
        p.error("--warmup and --paced-rate must not be negative")
    o.redis_cpu = None if o.redis_cpu.lower() == "none" else int(o.redis_cpu)
    return o


# --- small helpers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 5,000 samples is the 4,950th smallest); NaN if none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_times() -> dict[int, tuple[int, int]]:
    """Per core: (all ticks, idle + iowait ticks), from /proc/stat."""
    cores = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                cores[int(name[3:])] = (sum(ticks[:8]), ticks[3] + ticks[4])  # guest time is in user already
    return cores


def process_ticks() -> dict[int, tuple[str, int]]:
    """Every process: (name, utime + stime ticks)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue  # gone meanwhile
            fields = text.rsplit(")", 1)[1].split()
            found[int(entry)] = (text[text.index("(") + 1:text.rindex(")")], int(fields[11]) + int(fields[12]))
    return found


def other_processes(before: dict[int, tuple[str, int]], seconds: float, ours: set[int]) -> str:
    """Processes other than ours that used over 1 % of a core since ``before`` (noise on the figures)."""
    ticks = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, now) in process_ticks().items():
        share = 100 * (now - before.get(pid, (name, 0))[1]) / ticks / seconds
        if pid not in ours and share >= 1:
            busy.append((share, f"{name} (pid {pid})"))
    busy.sort(reverse=True)
    return ", ".join(f"{who} {share:.0f} %" for share, who in busy[:8]) or "none over 1 % of a core"


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
            "max_queue_size": MAX_QUEUE_SIZE,
            "max_in_flight": max_in_flight,
        },
    }


def bounded(work: Coroutine[Any, Any, T] | Deferred[T], seconds: float) -> Deferred[T]:
    """``work`` as a Deferred that fails with TimeoutError after ``seconds`` (and cancels it)."""
    d: Deferred[T] = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
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
        """Start cwm; returns once its log says "configuration loaded" and /health answers 200."""
        webhooks = {WEBHOOK: webhook_entry(self.options.max_in_flight)}
        (self.tmp / "webhooks.json").write_text(json.dumps(webhooks, indent=2))
        (self.tmp / "connections.json").write_text("{}")
        env = dict(os.environ)
        env.update(
            WEBHOOK_CONNECT_ENABLED="true",
            WEBHOOK_CONNECT_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            WEBHOOK_CONNECT_ADMIN_TOKEN=ADMIN_TOKEN,
            WEBHOOK_CONNECT_KEY_PREFIX=self.prefix,
        )
        # Not installed in the venv: serve the working tree (twistd finds ./twisted/plugins).
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
        marks = ("Traceback", "Unhandled", "#critical]")
        return [line for line in text.splitlines() if any(mark in line for mark in marks)]

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
        self.post_seconds: list[float] = []  # how long each POST took to be answered 200
        self.post_failures: list[str] = []
        self.latency: dict[int, float] = {}  # seq -> seconds, POST issued -> received (first delivery)
        self.deliveries = 0  # webhook events/frames seen, duplicates included
        self.duplicates = 0
        self.redelivered = 0  # delivery_count > 1
        self.strays: list[str] = []  # not from this run
        self.errors: list[str] = []  # anything else wrong on the connection
        self.acks_done = 0  # acks answered (SSE) or sent (WS), failed or not
        self.ack_failures: list[str] = []
        self.last_ack = 0.0
        self.received_while_posting = 0  # first deliveries before the last POST was answered
        self.backlog = 0  # answered 200 but not yet received
        self.max_backlog = 0  # sampled at each POST answer
        self.finished: Deferred[None] = Deferred()

    def post_answered(self, seq: int, sent_at: float, at: float, failure: str | None) -> None:
        if failure is None:
            self.posted.add(seq)
            self.post_seconds.append(at - sent_at)
            if seq not in self.latency:
                self.backlog += 1
                self.max_backlog = max(self.max_backlog, self.backlog)
        else:
            self.post_failures.append(f"seq {seq}: {failure}")

    def all_posted(self, at: float) -> None:
        self.posts_done = at
        self.posting = False
        self._check()

    def received(self, message: Any, at: float) -> None:
        """One ``webhook`` event/frame (its wire form), received at ``at`` (perf_counter)."""
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
            if self.posting:
                self.received_while_posting += 1
            if seq in self.posted:
                self.backlog -= 1

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
            if not line:  # a blank line ends the event
                if self._data or self._name:
                    self._on_event(self._name or "message", "\n".join(self._data), at)
                self._name, self._data = "", []
            elif not line.startswith(":"):  # ":..." is a comment
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
            IPushProducer(self.transport).stopProducing()  # drops the connection


class BenchSocket(WebSocketClientProtocol):
    """The WebSocket connector: acks every webhook frame as it arrives."""

    factory: BenchSocketFactory

    def onOpen(self) -> None:
        self.factory.socket = self

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
    protocol = BenchSocket  # type: ignore[assignment]

    def __init__(self, url: str, delivery: Delivery) -> None:
        super().__init__(url, headers={"Authorization": f"Bearer {CHANNEL_TOKEN}"})
        self.setProtocolOptions(openHandshakeTimeout=REQUEST_TIMEOUT, closeHandshakeTimeout=REQUEST_TIMEOUT)
        self.delivery = delivery
        self.connected: Deferred[str] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.closing = False
        self.socket: BenchSocket | None = None  # once open


@dataclass
class RunResult:
    protocol: str
    kind: str  # "warm-up", "load" or "paced"
    round: int  # 0 for the warm-up
    messages: int
    rate: float | None  # POSTs/s of a paced run
    delivery: Delivery
    settled_at: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds over the run: cwm, redis, client
    busy: dict[int, float] = field(default_factory=dict)  # core -> fraction busy over the run
    stats_before: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{PROTOCOLS[self.protocol]} {self.kind}" + (f" {self.round}" if self.round else "")

    @property
    def seconds(self) -> float:
        """First POST issued -> settled; NaN if it never settled (a failed run)."""
        if self.settled_at <= self.delivery.first_post:
            return float("nan")
        return self.settled_at - self.delivery.first_post

    @property
    def delivered_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def post_rate(self) -> float:
        d = self.delivery
        return self.messages / (d.posts_done - d.first_post) if d.posts_done > d.first_post else float("nan")

    @property
    def while_posting_percent(self) -> float:
        """Share of the messages the connector received before the last POST was answered."""
        return 100 * self.delivery.received_while_posting / self.messages

    @property
    def drain_rate(self) -> float:
        """Messages/s delivered and settled after the last POST was answered (NaN if too few)."""
        d = self.delivery
        left, seconds = self.messages - d.received_while_posting, self.settled_at - d.posts_done
        return left / seconds if left >= 100 and seconds > 0 else float("nan")

    def latency_ms(self, p: float) -> float:
        return 1000 * percentile(list(self.delivery.latency.values()), p)

    def post_ms(self, p: float) -> float:
        return 1000 * percentile(self.delivery.post_seconds, p)

    def cpu_us_per_message(self, who: str) -> float:
        return 1e6 * self.cpu[who] / self.messages

    def cpu_percent(self, who: str) -> float:
        return 100 * self.cpu[who] / self.seconds


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

    async def request(self, method: str, url: str, headers: Headers, body: bytes | None = None) -> tuple[int, bytes]:
        """One request over the pool, body read; (status, body)."""
        async def go() -> tuple[int, bytes]:
            response = await self.http.request(method, url, headers=headers, data=body, allow_redirects=False)
            return response.code, await response.content()

        return await bounded(go(), REQUEST_TIMEOUT)

    @staticmethod
    def auth_header(token: str) -> Headers:
        return {"Authorization": f"Bearer {token}"}

    async def stats(self) -> dict[str, Any]:
        code, body = await self.request(
            "GET", f"{self.base}/admin/webhook-connect/channels/{CHANNEL}/stats", self.auth_header(ADMIN_TOKEN)
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

    async def post_one(self, delivery: Delivery, seq: int) -> None:
        sent_at = time.perf_counter()
        delivery.first_post = delivery.first_post or sent_at
        body = push_event(delivery.run, seq, sent_at)
        try:
            code, answer = await self.request("POST", f"{self.base}/webhook/{WEBHOOK}",
                                              {"Content-Type": "application/json"}, body)
        except Exception as e:
            delivery.post_answered(seq, sent_at, time.perf_counter(), f"{type(e).__name__}: {e}")
            return
        delivery.post_answered(seq, sent_at, time.perf_counter(), None if code == 200 else f"{code} {answer[:200]!r}")

    async def post_all(self, delivery: Delivery, rate: float | None) -> None:
        """POST the run's messages: ``concurrency`` at a time, at most ``rate`` per second if given."""
        slots = DeferredSemaphore(self.options.concurrency)
        posts: list[Deferred[None]] = []
        start = time.perf_counter()
        for seq in range(delivery.messages):
            if rate:
                wait = start + seq / rate - time.perf_counter()
                if wait > 0:
                    await sleep(wait)
            await slots.acquire()
            post = Deferred.fromCoroutine(self.post_one(delivery, seq))
            post.addBoth(lambda _: slots.release())
            posts.append(post)
        await gatherResults(posts)
        delivery.all_posted(time.perf_counter())

    async def run(self, protocol: str, kind: str, round_: int, messages: int, rate: float | None = None) -> RunResult:
        self.servers.check_alive()
        self.counter += 1
        result = RunResult(protocol, kind, round_, messages, rate, Delivery(f"{protocol}-{self.counter}", messages))
        say(f"{result.name}: {messages} messages" + (f" at {rate:g}/s" if rate else ""))
        opened = self.open_sse if protocol == "sse" else self.open_ws
        close = await opened(result.delivery)
        try:
            result.stats_before = await self.stats()
            before, cores_before = self.cpu_snapshot(), core_times()
            posting = Deferred.fromCoroutine(self.post_all(result.delivery, rate))
            try:
                await bounded(gatherResults([posting, result.delivery.finished], consumeErrors=True),
                              self.options.run_timeout)
            except Exception as e:
                d = result.delivery
                reason = e.subFailure.value if isinstance(e, FirstError) else e
                raise BenchError(
                    f"{result.name}: {type(reason).__name__} {reason} after {len(d.posted)} POSTs"
                    f" answered 200, {len(d.latency)} messages received, {d.acks_done} acks"
                ) from None
            if protocol == "sse":
                result.settled_at = result.delivery.last_ack
            else:  # WebSocket acks are not answered: the stats tell when they have all landed
                expected = result.stats_before["messages_delivered"] + len(result.delivery.posted)
                _, result.settled_at = await self.wait_stats(lambda s: s["messages_delivered"] >= expected,
                                                             REQUEST_TIMEOUT)
            after, cores_after = self.cpu_snapshot(), core_times()
            result.cpu = {who: after[who] - before[who] for who in before}
            result.busy = {
                core: 1 - (cores_after[core][1] - idle) / max(1, cores_after[core][0] - total)
                for core, (total, idle) in cores_before.items()
            }
        finally:
            await close()
        await self.check(result)
        return result

    def cpu_snapshot(self) -> dict[str, float]:
        assert self.servers.cwm is not None and self.servers.redis is not None
        times = os.times()
        return {
            "cwm": cpu_seconds(self.servers.cwm.pid),
            "redis": cpu_seconds(self.servers.redis.pid),
            "client": times.user + times.system,
        }

    async def open_sse(self, delivery: Delivery) -> Callable[[], Awaitable[None]]:
        """Open the SSE stream, acking every webhook event; returns the call that closes it."""
        connected: Deferred[str] = Deferred()
        ack_headers: Headers = {}

        async def ack(message_id: str) -> None:
            url = f"{self.base}/connect/ack?message_id={message_id}&status=ack"
            try:
                code, body = await self.request("POST", url, ack_headers)
                outcome = json.loads(body).get("outcome") if code == 200 else None
            except Exception as e:
                delivery.ack_answered(time.perf_counter(), f"{message_id}: {type(e).__name__}: {e}")
                return
            failure = None if outcome == "acked" else f"{message_id}: {code} {body[:200]!r}"
            delivery.ack_answered(time.perf_counter(), failure)

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
                                 headers=self.auth_header(CHANNEL_TOKEN), unbuffered=True),
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
        """Open the WebSocket (it acks every webhook frame); returns the call that closes it."""
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
        zero = ("messages_queued", "messages_in_flight", "connected_clients")
        same = ("messages_expired", "messages_dead_lettered")

        def settled(s: dict[str, Any]) -> bool:
            return s["messages_delivered"] == expected and all(s[k] == 0 for k in zero)

        result.stats_after, _ = await self.wait_stats(settled, REQUEST_TIMEOUT)
        after, before = result.stats_after, result.stats_before
        delta = after["messages_delivered"] - before["messages_delivered"]
        if delta != len(d.posted):
            problems.append(f"stats: messages_delivered went up by {delta}, not {len(d.posted)}")
        problems.extend(f"stats: {key} is {after[key]} after the run" for key in zero if after[key])
        problems.extend(
            f"stats: {key} went from {before[key]} to {after[key]}" for key in same if after[key] != before[key]
        )


async def measure(options: argparse.Namespace, servers: Servers, results: list[RunResult]) -> None:
    """The warm-ups, then the rounds (protocol order alternating); appends to ``results``."""
    bench = Bench(options, servers)
    try:
        if options.warmup:
            for protocol in options.protocols:
                results.append(await bench.run(protocol, "warm-up", 0, options.warmup))
        for number in range(1, options.rounds + 1):
            for protocol in options.protocols if number % 2 else options.protocols[::-1]:
                results.append(await bench.run(protocol, "load", number, options.messages))
                if options.paced_rate:
                    results.append(
                        await bench.run(protocol, "paced", number, options.paced_messages, options.paced_rate)
                    )
    finally:
        await bench.close()


def run_reactor(options: argparse.Namespace, servers: Servers, results: list[RunResult]) -> None:
    """Run ``measure`` on the reactor; raises what it raised (Interrupted if the reactor was stopped)."""
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


def machine_facts() -> dict[str, str]:
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
    with open("/proc/loadavg", encoding="ascii") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "nproc": run("nproc"),
        "CPU": cpu_model,
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at the start": load,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Twisted / treq / autobahn": f"{version('twisted')} / {version('treq')} / {version('autobahn')}",
        "redis-server": run("redis-server", "--version").replace("Redis server ", ""),
        "cwm commit": commit,
    }


def _f(value: float, digits: int = 0) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def report(options: argparse.Namespace, facts: dict[str, str], results: list[RunResult], failure: str | None,
           log_problems: list[str], started: datetime.datetime, cwm_rss: float) -> tuple[str, bool]:
    """The Markdown report, and whether the benchmark is valid."""
    problems = [f"{r.name}: {p}" for r in results for p in r.problems]
    if failure:
        problems.append(failure)
    problems += [f"cwm's log: {line}" for line in log_problems[:10]]
    kinds = ["load"] + (["paced"] if options.paced_rate else [])
    for protocol in options.protocols:
        for kind in kinds:
            done = sum(1 for r in results if r.protocol == protocol and r.kind == kind)
            if done < options.rounds:
                problems.append(f"{PROTOCOLS[protocol]} {kind}: {done} of {options.rounds} runs done")
    valid = not problems
    server, client = options.server_cpu, options.client_cpu
    redis_where = f"core {options.redis_cpu}" if options.redis_cpu is not None else "any core"

    def runs(protocol: str, kind: str) -> list[RunResult]:
        return [r for r in results if r.protocol == protocol and r.kind == kind]

    out: list[str] = [f"# Webhook Connect benchmark, {started:%Y-%m-%d %H:%M:%S} UTC", ""]
    if not valid:
        out += ["**INVALID RUN**:", ""] + [f"- {p}" for p in problems] + [""]
    out += [
        f"One connector at a time (one SSE stream, or one WebSocket) on channel `{CHANNEL}`; this client POSTs "
        f"{BODY_BYTES}-byte JSON push events to `/webhook/{WEBHOOK}` and the connector acks each message as it "
        f"arrives. cwm on core {server}, redis-server on {redis_where}, this client (one Twisted process: treq, "
        f"autobahn) on core {client}. Medians of {options.rounds} rounds, after one warm-up run of "
        f"{options.warmup:,} messages per protocol.",
        "",
        f"## Throughput: {options.messages:,} messages per run, {options.concurrency} POSTs in flight",
        "",
        "| protocol | delivered msgs/s (first POST → last ack) | POST msgs/s | received while the POSTs ran % "
        "| delivered msgs/s after the POSTs ended | latency p50 ms | latency p99 ms | cwm CPU µs/msg "
        f"| core {server} busy % | core {client} busy % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol in options.protocols:
        if rs := runs(protocol, "load"):
            out.append(
                f"| {PROTOCOLS[protocol]} | {_f(median([r.delivered_rate for r in rs]))} "
                f"| {_f(median([r.post_rate for r in rs]))} "
                f"| {_f(median([r.while_posting_percent for r in rs]))} | {_f(median([r.drain_rate for r in rs]))} "
                f"| {_f(median([r.latency_ms(50) for r in rs]), 1)} | {_f(median([r.latency_ms(99) for r in rs]), 1)} "
                f"| {_f(median([r.cpu_us_per_message('cwm') for r in rs]))} "
                f"| {_f(median([100 * r.busy.get(server, math.nan) for r in rs]))} "
                f"| {_f(median([100 * r.busy.get(client, math.nan) for r in rs]))} |"
            )
    out += [
        "",
        "- **delivered msgs/s**: messages / (first POST issued → last message settled). SSE: the last "
        "`POST /connect/ack` answered 200 `acked`. WebSocket (acks are frames, not answered): the admin stats "
        f"showed `messages_delivered` up by the run's messages, polled every {STATS_POLL * 1000:g} ms after the "
        "last ack frame was sent.",
        "- **POST msgs/s**: messages / (first POST issued → last POST answered 200).",
        "- **received while the POSTs ran**: share of the messages the connector received before the last POST "
        "was answered; **after the POSTs ended**: the rest / (last POST answered → last message settled), i.e. "
        "how fast cwm delivers to one connector when it is not also taking POSTs (– when under 100 messages were "
        "left). A low share means deliveries wait while POSTs keep coming: the backlog grows in Redis during the "
        "run (its largest value is in the runs table).",
        "- **latency**: the message's SSE event / WebSocket frame reached the client, minus the `sent_at` in its "
        "payload (when its POST was issued); same process, same clock. In these runs it is mostly time spent "
        "queued behind the backlog, so it grows with the messages per run; the paced runs below give the latency "
        "without a backlog.",
        "- **cwm CPU µs/msg**: cwm's utime + stime over the run, per message. **core busy %**: from `/proc/stat`, "
        "which also counts the kernel's work (loopback networking) that no process is charged for.",
    ]
    if options.paced_rate:
        out += [
            "",
            f"## Latency at {options.paced_rate:g} msgs/s: {options.paced_messages:,} messages per run, paced",
            "",
            "| protocol | achieved POSTs/s | latency p50 ms | p90 ms | p99 ms | max ms | POST answered p50 ms | p99 ms "
            "| max backlog |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for protocol in options.protocols:
            if rs := runs(protocol, "paced"):
                out.append(
                    f"| {PROTOCOLS[protocol]} | {_f(median([r.post_rate for r in rs]))} "
                    + "".join(f"| {_f(median([r.latency_ms(p) for r in rs]), 1)} " for p in (50, 90, 99, 100))
                    + "".join(f"| {_f(median([r.post_ms(p) for r in rs]), 1)} " for p in (50, 99))
                    + f"| {_f(median([r.delivery.max_backlog for r in rs]))} |"
                )
        out += [
            "",
            f"POST n is issued at start + n / {options.paced_rate:g} s (at most {options.concurrency} in flight), "
            "well below the throughput above: the latency of one message through cwm and Redis to the connector "
            "when nothing queues. **POST answered**: how long the sender waits for cwm's 200.",
        ]
    out += [
        "",
        "## Runs",
        "",
        "| run | messages | seconds | delivered msgs/s | POST msgs/s | received while POSTing % | msgs/s after "
        "| latency p50 ms | p90 ms | p99 ms | max ms | POST p50 ms | POST p99 ms | max backlog | cwm CPU % "
        f"| redis CPU % | client CPU % | core {server} busy % | core {client} busy % | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        out.append(
            f"| {r.name} | {r.messages:,} | {_f(r.seconds, 2)} | {_f(r.delivered_rate)} | {_f(r.post_rate)} "
            f"| {_f(r.while_posting_percent)} | {_f(r.drain_rate)} "
            + "".join(f"| {_f(r.latency_ms(p), 1)} " for p in (50, 90, 99, 100))
            + "".join(f"| {_f(r.post_ms(p), 1)} " for p in (50, 99))
            + f"| {r.delivery.max_backlog:,} "
            + "".join(f"| {_f(r.cpu_percent(who))} " for who in ("cwm", "redis", "client"))
            + "".join(f"| {_f(100 * r.busy.get(core, math.nan))} " for core in (server, client))
            + f"| {'ok' if not r.problems else 'FAILED'} |"
        )
    out += [
        "",
        "*msgs/s after*: delivered msgs/s after the POSTs ended. *max backlog*: the most messages answered 200 but "
        "not yet received, sampled at each POST answer. *CPU %*: of one core, over the run's seconds. *checks*: "
        "every POST answered 200; every posted sequence number received exactly once, with `delivery_count` 1, "
        "none from another run; every SSE ack answered 200 `acked`; afterwards the channel's admin stats show "
        "`messages_delivered` up by exactly the messages posted, "
        "0 queued, 0 in flight, no new expired or dead-lettered message, 0 connected clients.",
        "",
        "## Settings",
        "",
        f"- load runs: {options.messages:,} messages, {options.concurrency} POSTs in flight; paced runs: "
        + (f"{options.paced_messages:,} messages at {options.paced_rate:g}/s" if options.paced_rate else "none")
        + f"; warm-up: one load run of {options.warmup:,} messages per protocol; {options.rounds} rounds, protocol "
        "order alternating",
        f"- body: {BODY_BYTES} bytes of JSON (a GitHub-like push event with `bench: {{run, seq, sent_at}}` and "
        "padding), `Content-Type: application/json`, no authorization",
        f"- webhooks.json: `{{\"{WEBHOOK}\": {json.dumps(webhook_entry(options.max_in_flight))}}}`, connections.json "
        "`{}` (other channel settings at their defaults: ack timeout 30 s, heartbeat 30 s, 5 deliveries)",
        "- cwm: `twistd --pidfile= -n cwm --listen tcp:PORT:interface=127.0.0.1 ...`, stdout and stderr to a file; "
        "`WEBHOOK_CONNECT_ENABLED=true`, a fresh `WEBHOOK_CONNECT_KEY_PREFIX`, `WEBHOOK_CONNECT_ADMIN_TOKEN` set; "
        f"RSS at the end {_f(cwm_rss, 1)} MiB",
        "- redis-server: `--save \"\" --appendonly yes --appendfsync everysec`, loopback, a fresh temp dir",
        "- client: POSTs and SSE acks over one persistent `HTTPConnectionPool` (up to "
        f"{options.concurrency + options.max_in_flight + 8} kept connections), the SSE stream on a connection "
        "of its own; WebSocket acks as `{\"type\": \"ack\", \"message_id\": ...}` frames",
        f"- bounds: {REQUEST_TIMEOUT:g} s per request, connect, close and stats wait; {options.run_timeout:g} s "
        "per run",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {key} | {value} |" for key, value in facts.items()]
    out += [
        "",
        "Absolute figures depend on the machine and its load, and vary between runs minutes apart (by ±10-20 % on "
        "this 2-core VM, more when anything else runs: see *other processes*): compare runs made on the same "
        "machine, before and after a change, and the rounds of one run with each other.",
        "",
    ]
    return "\n".join(out), valid


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    cores = os.sched_getaffinity(0)
    if not {options.server_cpu, options.client_cpu} <= cores or options.server_cpu == options.client_cpu:
        say(f"needs two distinct cores for cwm ({options.server_cpu}) and this client ({options.client_cpu});"
            f" available: {sorted(cores)}")
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
    keep = options.keep_tmp
    try:
        facts = machine_facts()
        os.sched_setaffinity(0, {options.client_cpu})
        servers.start_redis()
        say(f"redis-server on port {servers.redis_port}")
        servers.start_cwm()
        say(f"cwm ready on port {servers.port}")
        failure: str | None = None
        ticks_before, measuring_since = process_ticks(), time.monotonic()
        try:
            run_reactor(options, servers, results)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # a BenchError, a timeout...: the runs so far are reported, as invalid
            failure = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        ours = {os.getpid()} | {p.pid for p in (servers.cwm, servers.redis) if p is not None}
        facts["other processes during the runs (CPU, of one core)"] = other_processes(
            ticks_before, time.monotonic() - measuring_since, ours
        )
        cwm_rss = rss_mib(servers.cwm.pid) if servers.cwm is not None and servers.cwm.poll() is None else math.nan
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
