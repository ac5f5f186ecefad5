"""The container group: docker/'s images built and run with podman as the Docker engine.

Once per session the ``engine`` fixture builds every image the compose files name
(``docker/podman/images.sh all``: the Debian base, redis, etcd, the Vault
stand-in, cwm and the connector; cached under ``.cache/containers``) and starts
podman's Docker API with its healthcheck scheduler (``docker/podman/engine.sh``).
A machine where podman cannot run ends the session at once with one line saying
why: never a silent skip. The time of each build step and the image sizes are
printed in the terminal summary.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "docker" / "podman"
VENV = str(Path(sys.executable).parent.parent)
_REPORT: list[str] = []

# Variables of the calling shell that would change what a container or script does.
_DROPPED = ("CONNECTOR_", "WEBHOOK", "CONFIG_", "VAULT_", "ETCD_", "DOCKER_", "COMPOSE_", "CONTAINERS_")


def engine_environment() -> dict[str, str]:
    """This process's environment with docker/podman/env.sh's settings on top."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
    base["CWM_VENV"] = VENV
    printed = subprocess.run(
        ["bash", "-c", 'source "$1" >/dev/null && env -0', "-", str(PODMAN_DIR / "env.sh")],
        env=base, capture_output=True, timeout=60, check=True,
    ).stdout.decode()
    wanted = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "DOCKER_HOST", "CWM_CONTAINERS_DIR",
              "CWM_CONTAINERS_RUN", "PODMAN_SOCKET")
    for entry in printed.split("\0"):
        name, _, value = entry.partition("=")
        if name in wanted:
            base[name] = value
    return base


def podman(env: Mapping[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` against this checkout's storage."""
    return subprocess.run(["podman", *args], env=dict(env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def engine() -> Iterator[dict[str, str]]:
    """The environment that reaches this checkout's podman, with every image built."""
    # One container group at a time on a machine: two checkouts have their own storage,
    # but the scenarios' published ports, netavark's bridges and iptables are the host's.
    os.makedirs("/run/cwm-containers", exist_ok=True)
    lock = open("/run/cwm-containers/group.lock", "w")  # noqa: SIM115 (held for the session)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.exit("containers: another container group holds /run/cwm-containers/group.lock "
                    "(it uses the scenarios' fixed ports); run one at a time", returncode=1)
    env = engine_environment()
    check = subprocess.run(
        ["bash", "-c", 'source "$1" && podman_check', "-", str(PODMAN_DIR / "env.sh")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    if check.returncode != 0:
        pytest.exit((check.stderr.strip().splitlines() or ["containers: podman cannot run here"])[-1], returncode=1)
    built = subprocess.run(["bash", str(PODMAN_DIR / "images.sh"), "all"], env=env, capture_output=True,
                           text=True, timeout=2400)
    _REPORT.extend(line for line in built.stdout.splitlines() if line.startswith(("time:", "size:")))
    if built.returncode != 0:
        pytest.exit("containers: docker/podman/images.sh failed:\n" + (built.stdout + built.stderr)[-4000:],
                    returncode=1)
    # What an interrupted run left (containers holding the scenarios' ports, their networks
    # and volumes) goes first: this storage is the checkout's own.
    for leftover in (["rm", "--all", "--force", "--time", "5"], ["network", "prune", "--force"],
                     ["volume", "prune", "--force"]):
        podman(env, *leftover, timeout=300)
    started = subprocess.run(["bash", str(PODMAN_DIR / "engine.sh"), "start"], env=env, capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        pytest.exit((started.stderr.strip().splitlines() or ["containers: engine.sh start failed"])[-1],
                    returncode=1)
    try:
        yield env
    finally:
        subprocess.run(["bash", str(PODMAN_DIR / "engine.sh"), "stop"], env=env, capture_output=True, timeout=300)
        lock.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("container images")
        for line in _REPORT:
            terminalreporter.write_line(line)
