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
    assert "mode: docker" in result.stdout, output[-6000:]
    assert result.returncode == 0, output[-12000:]
    assert "FAIL" not in result.stdout, output[-12000:]
