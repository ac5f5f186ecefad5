"""Every docker/ scenario and compose folder, run as local processes (``run_test.sh all --local``).

The scripts are what users run with Docker Compose; running their local mode
here keeps them working. Each script makes its own assertions and exits 1 on
any failed check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(ROOT.glob("docker/scenario/*/run_test.sh")) + sorted(ROOT.glob("docker/compose/*/run_test.sh"))

pytestmark = [pytest.mark.integration, pytest.mark.scenario]


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.parent.relative_to(ROOT / "docker")) for s in SCRIPTS])
def test_scenario_local_mode(script: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "WEBHOOK", "CONFIG_", "VAULT_", "ETCD_"))}
    env.update({"CWM_VENV": str(Path(sys.executable).parent.parent), "TMPDIR": str(tmp_path)})
    result = subprocess.run(["bash", str(script), "all", "--local"], cwd=script.parent, env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "FAIL" not in result.stdout, output[-6000:]
