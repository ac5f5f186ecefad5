"""docker/podman's own pieces, without podman: the healthcheck scheduler and env.sh's check."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "docker" / "podman"


def _load_scheduler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthchecks", PODMAN_DIR / "healthchecks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


class FakePodman:
    """Answers ``podman ps`` and ``podman container inspect``; records ``healthcheck run``."""

    def __init__(self) -> None:
        self.containers: dict[str, Any] = {}  # id -> StartedAt
        self.intervals: dict[str, int | None] = {}  # id -> nanoseconds (None: no healthcheck)
        self.checks: list[str] = []

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        if args[0] == "ps":
            out = json.dumps([{"Id": cid, "StartedAt": started} for cid, started in self.containers.items()])
        elif args[:2] == ("container", "inspect"):
            interval = self.intervals[args[-1]]
            out = json.dumps(None if interval is None else {"Test": ["CMD", "true"], "Interval": interval})
        elif args[0] == "healthcheck":
            self.checks.append(args[-1])
            out = ""
        else:
            raise AssertionError(args)
        return subprocess.CompletedProcess(["podman", *args], 0, out, "")


class Immediate:
    """threading.Thread stand-in that runs its target at start()."""

    def __init__(self, target: Any, args: tuple[Any, ...], daemon: bool) -> None:
        self._target, self._args = target, args

    def start(self) -> None:
        self._target(*self._args)


Scheduler = tuple[ModuleType, FakePodman, list[float]]


@pytest.fixture
def scheduler(monkeypatch: pytest.MonkeyPatch) -> Scheduler:
    module = _load_scheduler()
    fake = FakePodman()
    now = [1000.0]
    monkeypatch.setattr(module, "_podman", fake)
    monkeypatch.setattr(module.threading, "Thread", Immediate)
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    return module, fake, now


def test_first_check_one_interval_after_start_then_every_interval(scheduler: Scheduler) -> None:
    module, fake, now = scheduler
    fake.containers["a"], fake.intervals["a"] = 1, 5_000_000_000
    fake.containers["b"], fake.intervals["b"] = 1, None  # no healthcheck: never run
    scheduled: dict[str, Any] = {}
    module._tick(scheduled)
    now[0] += 4.9
    module._tick(scheduled)
    assert fake.checks == []
    now[0] += 0.1
    module._tick(scheduled)
    assert fake.checks == ["a"]
    now[0] += 4.9
    module._tick(scheduled)
    assert fake.checks == ["a"]
    now[0] += 0.1
    module._tick(scheduled)
    assert fake.checks == ["a", "a"]


def test_a_restarted_container_starts_its_schedule_over(scheduler: Scheduler) -> None:
    module, fake, now = scheduler
    fake.containers["a"], fake.intervals["a"] = 1, 2_000_000_000
    scheduled: dict[str, Any] = {}
    module._tick(scheduled)
    now[0] += 1.5
    fake.containers["a"] = 2  # stopped and started again between two passes
    module._tick(scheduled)
    now[0] += 1.0  # 2.5 s after the first start, 1 s after the second
    module._tick(scheduled)
    assert fake.checks == []
    now[0] += 1.0
    module._tick(scheduled)
    assert fake.checks == ["a"]
    del fake.containers["a"]
    module._tick(scheduled)
    assert scheduled == {}


def test_podman_check_names_what_is_missing(tmp_path: Path) -> None:
    """Without podman on PATH: status 1 and one line naming it (the container group fails with it)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("bash", "sha256sum", "cut", "mkdir", "cat", "cmp", "mv", "rm", "dirname"):
        found = shutil.which(name)
        assert found is not None
        (tools / name).symlink_to(found)
    store = tmp_path / "containers"
    env = {"PATH": str(tools), "CWM_CONTAINERS_DIR": str(store), "HOME": str(tmp_path)}
    done = subprocess.run([str(tools / "bash"), "-c", 'source "$1" && podman_check', "-", str(PODMAN_DIR / "env.sh")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "containers: podman is not installed (make container-tools installs it)\n"
    conf = (store / "containers.conf").read_text()
    assert 'runtime = "runc"' in conf and 'cgroup_manager = "cgroupfs"' in conf
    assert f'graphroot = "{store / "storage"}"' in (store / "storage.conf").read_text()
