"""What hostile and idle clients can hold on a real ``twistd -n cwm``; prints a Markdown table.

Usage (from the repository root)::

    .venv/bin/python bench/hostile_clients.py [--tree DIR] [--label NAME] [--quick]

``--tree`` runs the cwm found in another checkout (``PYTHONPATH=DIR``), to
compare with an older version. Each case runs against a fresh process with
the default settings unless the case says otherwise:

- idle keep-alive: one request, then silence; when does the server close?
- half request line / half headers: sent, then silence.
- trickled head: a header byte every 5 s.
- body one byte per second (Content-Length 1000).
- slowloris: 500 connections trickling their heads (a byte each every 0.5 s)
  while a normal client POSTs on a keep-alive connection for 12 s (across the
  header deadline of the 500): its p50/p99.
- flood past MAX_CONNECTIONS (100): 1,000 silent connections; how many are
  closed at once, and does a normal POST get through after 1.5 s?
- burst of 2,000 connections, each sending one POST at once: the kernel's
  listen overflows, answers, failures and the slowest answer.
- ulimit -n 256: 400 stalled connections, then 50 POSTs on fresh connections.

Every wait is capped (``CAP`` seconds); "held" means the server had not
closed the connection when the cap was reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.cwm_process import start_cwm  # noqa: E402

CAP = 100.0
WEBHOOKS = {"logged": {"module": "log"}}
POST = (b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 8\r\n\r\n{\"a\": 1}")


def start(tree: str | None, env: dict[str, str] | None = None, nofile: int | None = None) -> Any:
    environ = dict(env or {})
    if tree:
        environ["PYTHONPATH"] = tree
    popen = subprocess.Popen
    if nofile is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

        def limited(*args: Any, **kw: Any) -> Any:
            return popen(*args, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard)), **kw)

        subprocess.Popen = limited  # type: ignore[misc]
    try:
        return start_cwm(Path(tempfile.mkdtemp()), WEBHOOKS, env=environ)
    finally:
        subprocess.Popen = popen  # type: ignore[misc]


async def until_closed(reader: asyncio.StreamReader, cap: float) -> tuple[str, float]:
    """Read until the server closes; (first status line or 'closed, no answer', seconds)."""
    started = time.monotonic()
    data = b""
    try:
        async with asyncio.timeout(cap):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return "held", cap
    except ConnectionResetError:
        data += b" (reset)"
    status = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed, no answer"
    return status, round(time.monotonic() - started, 1)


async def case_idle(port: int) -> tuple[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
    await reader.readexactly(length)
    return await until_closed(reader, CAP)


async def case_sent_then_silent(port: int, data: bytes) -> tuple[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    return await until_closed(reader, CAP)


async def case_trickle(port: int, head: bytes, every: float, body: bytes = b"") -> tuple[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)

    async def trickle() -> None:
        for byte in body or b"x" * 10_000:
            await asyncio.sleep(every)
            writer.write(bytes([byte]))

    task = asyncio.create_task(trickle())
    try:
        return await until_closed(reader, CAP)
    finally:
        task.cancel()


async def post_once(port: int, timeout: float = 60, connects: list[float] | None = None) -> float | None:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if connects is not None:
                connects.append(time.monotonic() - started)
            writer.write(POST)
            line = await reader.readline()
            writer.close()
            return time.monotonic() - started if line.startswith(b"HTTP/1.1 200") else None
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None


async def slowloris(port: int, count: int = 500) -> dict[str, Any]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        writers.append(writer)
    stop = asyncio.Event()

    async def trickle() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            for w in writers:
                if not w.is_closing():
                    w.write(b"x")

    task = asyncio.create_task(trickle())
    loop = asyncio.get_running_loop()
    samples = await loop.run_in_executor(None, keep_alive_posts, port, 12.0)
    stop.set()
    task.cancel()
    for w in writers:
        w.close()
    ordered = sorted(samples)
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "requests": len(samples)}


def keep_alive_posts(port: int, seconds: float) -> list[float]:
    """POST on one keep-alive connection for ``seconds`` (past the header deadline of the stalled ones)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        connection.request("POST", "/webhook/logged", b'{"a": 1}', {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        samples.append(time.monotonic() - started)
    connection.close()
    return samples


async def flood(port: int, count: int = 1000) -> dict[str, Any]:
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]

    async def closed_within(reader: asyncio.StreamReader, wait: float) -> bool:
        try:
            async with asyncio.timeout(wait):
                return await reader.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    closed = await asyncio.gather(*(closed_within(r, 1.0) for r, _ in streams))
    await asyncio.sleep(0.5)
    latency = await post_once(port, 30)
    for _, w in streams:
        w.close()
    return {"closed_at_once": sum(closed), "held": count - sum(closed),
            "post_after_1.5s": "200 in %.0f ms" % (latency * 1000) if latency is not None else "failed"}


def listen_overflows() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["ListenOverflows"])
    return 0


async def burst(port: int, count: int = 2000) -> dict[str, Any]:
    before = listen_overflows()
    started = time.monotonic()
    connects: list[float] = []
    results = await asyncio.gather(*(post_once(port, 90, connects) for _ in range(count)))
    answered = [r for r in results if r is not None]
    # A connect that took a second or more had its SYN dropped (the accept queue was full)
    # and retransmitted; the machine-wide overflow counter also counts other processes.
    return {"answered": len(answered), "failed": count - len(answered),
            "slowest_s": round(max(answered), 2) if answered else None,
            "connects_retried": sum(c >= 0.9 for c in connects),
            "wall_s": round(time.monotonic() - started, 2), "listen_overflows_host": listen_overflows() - before}


async def ulimit_case(port: int) -> dict[str, Any]:
    writers = []
    for _ in range(400):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            writers.append(writer)
        except OSError:
            pass
    await asyncio.sleep(1.5)
    results = [await post_once(port, 20) for _ in range(50)]
    for w in writers:
        w.close()
    return {"stalled_opened": len(writers), "posts_ok": sum(r is not None for r in results), "posts": len(results)}


def backlog_of(port: int) -> str:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"


def run(coro_factory: Any, tree: str | None, env: dict[str, str] | None = None, nofile: int | None = None) -> Any:
    process = start(tree, env, nofile)
    try:
        result = asyncio.run(coro_factory(process.port))
        return result, process
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=None)
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--only-bursts", action="store_true", help="run only the bursts of 2,000 connections")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    tree = args.tree
    rows: list[tuple[str, Any]] = []

    async def single_cases(port: int) -> list[tuple[str, Any]]:
        cases = {
            "idle keep-alive": case_idle(port),
            "half request line": case_sent_then_silent(port, b"POST /webhook/logg"),
            "half headers": case_sent_then_silent(port, b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nX-A: b"),
            "head trickled, a byte every 5 s": case_trickle(port, b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nX-A: ", 5),
            "body one byte per second": case_trickle(
                port, b"POST /webhook/logged HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n", 1.0, b"x" * 1000),
        }
        done = await asyncio.gather(*cases.values())
        return list(zip(cases, done))

    if not args.only_bursts:
        singles, process = run(single_cases, tree)
        rows.extend(singles)
        probe = start(tree)
        rows.append(("listen backlog (ss Send-Q)", backlog_of(probe.port)))
        probe.stop()
        rows.append(("slowloris 500 + normal client", run(slowloris, tree)[0]))
        rows.append(("flood 1,000 past MAX_CONNECTIONS=100", run(flood, tree, {"MAX_CONNECTIONS": "100",
                                                                               "HTTP_HEADER_TIMEOUT": "60"})[0]))
    for i in range(args.bursts):
        rows.append((f"burst of 2,000 connections (run {i + 1})", run(burst, tree)[0]))
    if not args.only_bursts:
        rows.append(("ulimit -n 256: 400 stalled, then 50 POSTs",
                     run(ulimit_case, tree, {"HTTP_HEADER_TIMEOUT": "60"}, nofile=256)[0]))
    print(f"\n| case ({args.label}) | outcome |\n|---|---|")
    for name, outcome in rows:
        print(f"| {name} | {json.dumps(outcome) if not isinstance(outcome, str) else outcome} |")


if __name__ == "__main__":
    main()
