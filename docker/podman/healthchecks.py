"""Runs the HEALTHCHECKs of this podman's running containers on their schedule.

Docker's engine runs a container's HEALTHCHECK itself; podman hands the
schedule to systemd timers, so on a machine without systemd a container's
health stays "starting" and compose's ``condition: service_healthy`` and
``up --wait`` never see it healthy. This loop is that scheduler: for each
running container with a healthcheck it runs ``podman healthcheck run`` first
one interval after the container started, then every interval, as Docker
does; podman itself applies the timeout, start period and retries and
records the status. Started and stopped by ``engine.sh``; stdlib only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

TICK_SECONDS = 0.5
DEFAULT_INTERVAL_SECONDS = 30.0  # Docker's default when a HEALTHCHECK names none
COMMAND_TIMEOUT_SECONDS = 60.0


@dataclass
class Scheduled:
    started_at: object  # the container's start time: a new one means a restart
    interval: float
    due: float
    running: bool = False


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)


def _interval(container_id: str) -> float | None:
    """The container's healthcheck interval in seconds; None if it has no healthcheck."""
    found = _podman("container", "inspect", "--format", "{{json .Config.Healthcheck}}", container_id)
    if found.returncode != 0:
        return None
    config = json.loads(found.stdout or "null")
    if not config or not config.get("Test") or config["Test"][0] == "NONE":
        return None
    nanoseconds = config.get("Interval") or 0
    return nanoseconds / 1e9 if nanoseconds else DEFAULT_INTERVAL_SECONDS


def _run_check(container_id: str, entry: Scheduled) -> None:
    try:
        _podman("healthcheck", "run", container_id)
    except subprocess.TimeoutExpired:
        pass  # podman's own timeout marks the check failed; the next one is scheduled anyway
    finally:
        entry.due = time.monotonic() + entry.interval
        entry.running = False


def _tick(scheduled: dict[str, Scheduled]) -> None:
    """One pass: follow the running containers, start the checks that are due."""
    listed = _podman("ps", "--format", "json")
    if listed.returncode != 0:
        raise RuntimeError(f"podman ps failed: {listed.stderr.strip()}")
    running = {c["Id"]: c.get("StartedAt") for c in json.loads(listed.stdout or "[]")}
    for container_id, entry in list(scheduled.items()):
        # Gone, or stopped and started again since it was scheduled: its schedule starts over.
        if running.get(container_id, entry.started_at) != entry.started_at or container_id not in running:
            del scheduled[container_id]
    now = time.monotonic()
    for container_id in running.keys() - scheduled.keys():
        interval = _interval(container_id)
        if interval is not None:
            scheduled[container_id] = Scheduled(running[container_id], interval, due=now + interval)
    for container_id, entry in scheduled.items():
        if not entry.running and now >= entry.due:
            entry.running = True
            threading.Thread(target=_run_check, args=(container_id, entry), daemon=True).start()


def main() -> int:
    scheduled: dict[str, Scheduled] = {}
    while True:
        try:
            _tick(scheduled)
        except Exception as e:  # a failed pass is logged and the next one tries again
            print(f"healthchecks: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        time.sleep(TICK_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
