"""Turn the raw output of one bench/run.sh run into its Markdown report.

Usage: ``python bench/report.py RUN_DIR`` where RUN_DIR holds

- ``wrk/<server>.warmup.txt`` and ``wrk/<server>.<round>.txt``: wrk's output
  (``--latency``) for each server;
- ``facts.tsv``: ``key<TAB>value`` lines written by run.sh (machine facts,
  parameters, ``<server>.ticks.<round>``, ``<server>.rss_kb``,
  ``<server>.first200``, ``<server>.lines``...).

Prints the report on stdout. Exit status 1 when the run is invalid (a wrk
run with non-2xx answers or socket errors, or that could not be parsed); the
report then says why, at the top.
"""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

SERVERS = (("cwm", "cwm (`log` module, bearer check)"), ("bare", "bare Klein app (bench/bare_klein.py)"))

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"


@dataclass
class WrkRun:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> WrkRun:
    """The numbers of one ``wrk --latency`` output; ValueError if one is missing."""

    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no match for {pattern!r}")
        return match

    requests = int(need(r"^\s*(\d+) requests in ").group(1))
    rps = float(need(r"^Requests/sec:\s*([0-9.]+)").group(1))
    p50 = need(r"^\s*50%\s+" + _TIME)
    p99 = need(r"^\s*99%\s+" + _TIME)
    non_2xx_match = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    socket: dict[str, int] = {}
    socket_match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_match:
        socket = dict(zip(("connect", "read", "write", "timeout"), map(int, socket_match.groups())))
    return WrkRun(
        requests=requests,
        rps=rps,
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        non_2xx=int(non_2xx_match.group(1)) if non_2xx_match else 0,
        socket_errors=socket,
    )


def _fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def main(run_dir: Path) -> int:
    facts: dict[str, str] = {}
    for line in (run_dir / "facts.tsv").read_text().splitlines():
        if "\t" in line:
            key, value = line.split("\t", 1)
            facts[key] = value
    rounds = int(facts["param.rounds"])
    clk_tck = int(facts["machine.clk_tck"])
    problems: list[str] = []
    runs: dict[str, list[WrkRun]] = {}
    warmups: dict[str, WrkRun | None] = {}

    for server, _ in SERVERS:
        runs[server] = []
        for label in ["warmup"] + [str(r) for r in range(1, rounds + 1)]:
            path = run_dir / "wrk" / f"{server}.{label}.txt"
            try:
                run = parse_wrk(path.read_text())
            except (OSError, ValueError) as error:
                problems.append(f"{server} {label}: {error}")
                if label == "warmup":
                    warmups[server] = None
                continue
            if run.errors or run.requests == 0:
                socket = ", ".join(f"{k} {v}" for k, v in run.socket_errors.items())
                problems.append(
                    f"{server} {label}: {run.requests} requests, {run.non_2xx} non-2xx/3xx"
                    f" answers, socket errors: {socket or 'none'}"
                )
            if label == "warmup":
                warmups[server] = run
            else:
                runs[server].append(run)

    rows: dict[str, dict[str, float]] = {}
    for server, _ in SERVERS:
        measured = runs[server]
        if len(measured) != rounds:
            continue
        total_requests = sum(r.requests for r in measured)
        ticks = sum(int(facts[f"{server}.ticks.{i}"]) for i in range(1, rounds + 1))
        rows[server] = {
            "rps": statistics.median(r.rps for r in measured),
            "p50": statistics.median(r.p50_ms for r in measured),
            "p99": statistics.median(r.p99_ms for r in measured),
            "cpu": ticks / clk_tck * 1e6 / total_requests if total_requests else float("nan"),
            "rss": int(facts[f"{server}.rss_kb"]) / 1024,
            "first": float(facts[f"{server}.first200"]),
        }

    out: list[str] = []
    emit = out.append
    emit(f"# Receiver benchmark, {facts['run.utc']}")
    emit("")
    if problems:
        emit("**INVALID RUN**: every answer must be 2xx with no socket error.")
        emit("")
        for problem in problems:
            emit(f"- {problem}")
        emit("")
    emit(
        f"`wrk -t{facts['param.threads']} -c{facts['param.connections']} -d{facts['param.duration']}"
        f" --latency -s bench/post.lua` (POST, {facts['param.body_bytes']}-byte JSON body,"
        " `Content-Type: application/json`, `Authorization: Bearer bench-token`) on core 1,"
        f" each server alone on core 0; a {facts['param.warmup']} warm-up run per server,"
        f" then {rounds} interleaved rounds (order alternating); medians of the rounds."
        " CPU µs/req: the server's utime+stime over the measured runs / their requests."
        " RSS: VmRSS after the runs. First 200: seconds from launch to the first 200 answer."
    )
    emit("")
    emit("| server | req/s | p50 ms | p99 ms | CPU µs/req | RSS MiB | first 200 s |")
    emit("|---|---|---|---|---|---|---|")
    for server, title in SERVERS:
        row = rows.get(server)
        if row is None:
            emit(f"| {title} | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        emit(
            f"| {title} | {_fmt_int(row['rps'])} | {_fmt(row['p50'])} | {_fmt(row['p99'])}"
            f" | {_fmt_int(row['cpu'])} | {_fmt(row['rss'])} | {_fmt(row['first'], 2)} |"
        )
    if "cwm" in rows and "bare" in rows:
        c, b = rows["cwm"], rows["bare"]
        emit(
            f"| **cwm / bare** | **{c['rps'] / b['rps']:.2f}** | {c['p50'] / b['p50']:.2f}"
            f" | {c['p99'] / b['p99']:.2f} | {c['cpu'] / b['cpu']:.2f} | {c['rss'] / b['rss']:.2f}"
            f" | {c['first'] / b['first']:.2f} |"
        )
    emit("")
    emit("Per round (req/s, p50 ms, p99 ms, CPU µs/req):")
    emit("")
    emit("| round | " + " | ".join(name for name, _ in SERVERS) + " |")
    emit("|---|" + "---|" * len(SERVERS))
    for i in range(rounds):
        cells = []
        for server, _ in SERVERS:
            if i < len(runs[server]):
                run = runs[server][i]
                ticks = int(facts.get(f"{server}.ticks.{i + 1}", "0"))
                cpu = ticks / clk_tck * 1e6 / run.requests if run.requests else float("nan")
                cells.append(
                    f"{_fmt_int(run.rps)}, {_fmt(run.p50_ms)}, {_fmt(run.p99_ms)}, {_fmt_int(cpu)}"
                )
            else:
                cells.append("n/a")
        emit(f"| {i + 1} | " + " | ".join(cells) + " |")
    for server, _ in SERVERS:
        warm = warmups.get(server)
        if warm is not None:
            emit("")
            emit(f"Warm-up {server}: {_fmt_int(warm.rps)} req/s, p99 {_fmt(warm.p99_ms)} ms.")
    emit("")
    emit("Sanity: lines each server wrote to stdout (readiness checks + warm-up + rounds,")
    emit("including requests still in flight when wrk stopped) vs. answers wrk counted:")
    emit("")
    for server, _ in SERVERS:
        answered = sum(r.requests for r in runs[server]) + (
            warmups[server].requests if warmups.get(server) else 0
        )
        emit(f"- {server}: {facts.get(f'{server}.lines', '?')} lines, {answered} answers")
    emit("")
    emit("Machine:")
    emit("")
    for key, label in (
        ("machine.nproc", "nproc"),
        ("machine.cpu", "CPU"),
        ("machine.kernel", "kernel"),
        ("machine.loadavg", "load average before the run"),
        ("machine.python", "Python"),
        ("machine.twisted", "Twisted"),
        ("machine.klein", "Klein"),
        ("machine.wrk", "wrk"),
        ("machine.cwm_commit", "cwm commit"),
    ):
        emit(f"- {label}: {facts.get(key, '?')}")
    emit("")
    emit("The absolute numbers move ±10-20 % between runs on this machine; compare the")
    emit("cwm / bare ratio, measured within one run, not req/s across runs.")
    print("\n".join(out))
    return 1 if problems or len(rows) != len(SERVERS) else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
