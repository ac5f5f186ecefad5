"""Every docker/ scenario and compose folder in container mode (``run_test.sh all --docker``).

The same scripts as tests/integration/test_scenarios.py, with the same assertions,
against the compose files themselves: images built by compose from docker/Dockerfile
(the session's images.sh run leaves their layers cached), services started with
docker-compose through podman's Docker API. A script prints each container's last
lines when it fails, and they are in the assertion message.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.containers.conftest import ROOT

SCRIPTS = sorted(ROOT.glob("docker/scenario/*/run_test.sh")) + sorted(ROOT.glob("docker/compose/*/run_test.sh"))

pytestmark = [pytest.mark.integration, pytest.mark.scenario, pytest.mark.containers]


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.parent.relative_to(ROOT / "docker")) for s in SCRIPTS])
def test_scenario_container_mode(script: Path, engine: dict[str, str], tmp_path: Path) -> None:
    env = dict(engine, TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(script), "all", "--docker"], cwd=script.parent, env=env,
                            capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    # The failed checks first (the containers' output after them can be long), then the end.
    failed = "\n".join(line for line in result.stdout.splitlines() if "FAIL" in line)
    assert "mode: docker" in result.stdout, output[-6000:]
    assert result.returncode == 0 and not failed, f"{failed}\n...\n{output[-12000:]}"


def test_a_failing_scenario_shows_its_containers_output(engine: dict[str, str], tmp_path: Path) -> None:
    """A check that fails in docker mode: the script exits 1 and prints each container's last lines."""
    folder = tmp_path / "failing_scenario"
    folder.mkdir()
    config = ROOT / "docker" / "compose" / "webhook-only" / "config"
    (folder / "docker-compose.yaml").write_text(
        "services:\n"
        "  webhook:\n"
        "    image: cwm:local\n"
        "    volumes:\n"
        f"      - {config / 'webhooks.json'}:/app/webhooks.json:ro\n"
        f"      - {config / 'connections.json'}:/app/connections.json:ro\n"
    )
    (folder / "run_test.sh").write_text(
        f'SCENARIO_DIR="{folder}"\n'
        f'source "{ROOT / "docker" / "scenario" / "lib.sh"}"\n'
        'scenario_init "$@"\n'
        "up webhook\n"
        'expect "a check that cannot pass" 1 2\n'
        "scenario_finish\n"
    )
    env = dict(engine, TMPDIR=str(tmp_path))
    try:
        result = subprocess.run(["bash", str(folder / "run_test.sh"), "--docker"], cwd=folder, env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["docker-compose", "down", "-v"], cwd=folder, env=env, capture_output=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-6000:]
    assert "FAIL: a check that cannot pass" in result.stdout, output[-6000:]
    assert "---- last lines of each container's output" in result.stdout, output[-6000:]
    assert "configuration loaded (start)" in result.stdout, output[-6000:]  # cwm's own log line
