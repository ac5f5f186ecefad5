"""Every docker/**/docker-compose.yaml against the Compose specification, and docker/Dockerfile.

``docker-compose config`` validates a file without a Docker engine: Debian's
docker-compose 1.29 (``make test`` installs it) or a Compose v2 binary of that
name. A file must also be one both understand, since users run either. On top
of the schema: third-party images are the pinned ones, cwm services are built
from docker/Dockerfile, and every service has a healthcheck (its own, or the
Dockerfile's), which ``docker compose up --wait`` and
``depends_on: {condition: service_healthy}`` rely on.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILES = sorted({*ROOT.glob("docker/**/docker-compose.yaml"), *ROOT.glob("docker/**/docker-compose.yml")})
IDS = [str(path.parent.relative_to(ROOT / "docker")) for path in COMPOSE_FILES]

# The images of the seed documents; anything else third-party is a change to review.
PINNED_IMAGES = frozenset({"redis:7-alpine", "quay.io/coreos/etcd:v3.5.14", "hashicorp/vault:1.16"})
# docker/Dockerfile's targets and the image name each is tagged with.
CWM_IMAGES = {"cwm": "cwm:local", "connector": "cwm-connector:local"}

pytestmark = pytest.mark.integration


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's package)")
    return found


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)


@functools.cache
def _is_v1(compose: str) -> bool:
    """Whether docker-compose is the 1.x Python program (Debian's 1.29) rather than v2."""
    version = _run([compose, "version", "--short"], ROOT).stdout.strip()
    return version.startswith("1.")


def _normalised(compose: str, path: Path) -> dict[str, Any] | None:
    """The file as docker-compose resolves it (anchors merged, paths absolute); None if invalid.

    Compose v2 prints JSON itself; 1.29 prints only YAML (and takes an unknown option
    for a request for help), and is a Python program whose interpreter has PyYAML
    (a dependency of Debian's package), which reads it.
    """
    if not _is_v1(compose):
        as_json = _run([compose, "-f", path.name, "config", "--format", "json"], path.parent)
        return dict(json.loads(as_json.stdout)) if as_json.returncode == 0 else None
    as_yaml = _run([compose, "-f", path.name, "config"], path.parent)
    if as_yaml.returncode != 0:
        return None
    shebang = Path(compose).read_bytes()[:200].split(b"\n", 1)[0].decode("utf-8", "replace")
    interpreter = shebang[2:].split() if shebang.startswith("#!") else []
    if not interpreter or "python" not in Path(interpreter[-1]).name:
        pytest.skip(f"cannot read the YAML {compose} prints: not the Python docker-compose")
    converted = _run(
        [*interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        path.parent,
        stdin=as_yaml.stdout,
    )
    assert converted.returncode == 0, converted.stderr
    return dict(json.loads(converted.stdout))


def _dockerfile_stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is FROM, its instructions as (KEYWORD, arguments)), in file order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    defaults: dict[str, str] = {}  # ARGs before the first FROM, with their defaults
    for line in text.splitlines():
        keyword, _, arguments = line.strip().partition(" ")
        if not keyword or keyword.startswith("#"):
            continue
        if keyword.upper() == "ARG" and not stages:
            name, _, default = arguments.strip().partition("=")
            defaults[name] = default
        elif keyword.upper() == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), arguments).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = []
            stages[name] = (words[0], current)
        else:
            current.append((keyword.upper(), arguments.strip()))
    return stages


def _target_instructions(target: str) -> list[tuple[str, str]]:
    """What a target runs, its parent stages' instructions first."""
    stages = _dockerfile_stages()
    chain: list[tuple[str, str]] = []
    while target in stages:
        parent, instructions = stages[target]
        chain[:0] = instructions
        target = parent
    return chain


def _healthcheck(target: str) -> str:
    """The arguments of the HEALTHCHECK a target runs ("" when none)."""
    checks = [args for keyword, args in _target_instructions(target) if keyword == "HEALTHCHECK"]
    return checks[-1] if checks else ""


def _has_healthcheck(target: str) -> bool:
    check = _healthcheck(target)
    return bool(check) and check.upper() != "NONE"


def test_receiver_healthcheck_is_readiness() -> None:
    """The receiver image's healthcheck asks /ready (a backend in use down: unhealthy), not /health (liveness).

    ``cwm.probe cwm`` is the readiness probe (tests/unit/test_probe.py); the connector's is
    ``cwm.probe connector``.
    """
    check = _healthcheck("cwm")
    assert '"cwm.probe", "cwm"]' in check and "/health" not in check, check
    assert '"cwm.probe", "connector"]' in _healthcheck("connector")


def test_dockerfile_targets() -> None:
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "cwm", "the last stage is what `docker build .` builds: the receiver"
    for name, (base, _) in stages.items():
        assert base in stages or base == "python:3.11-slim", f"stage {name}: unexpected base image {base}"
    for target in CWM_IMAGES:
        instructions = _target_instructions(target)
        users = [args for keyword, args in instructions if keyword == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as root"
        assert _has_healthcheck(target), f"target {target} has no HEALTHCHECK"
        assert any(keyword == "CMD" for keyword, _ in stages[target][1]), f"target {target} has no CMD"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=IDS)
def test_compose_file_is_valid(path: Path) -> None:
    compose = _docker_compose()
    result = _run([compose, "-f", path.name, "config", "-q"], path.parent)
    assert result.returncode == 0, f"{path.relative_to(ROOT)}:\n{result.stderr}{result.stdout}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=IDS)
def test_compose_file_images_and_healthchecks(path: Path) -> None:
    compose = _docker_compose()
    config = _normalised(compose, path)
    if config is None:
        pytest.skip("invalid for this docker-compose: see test_compose_file_is_valid")
    services: dict[str, dict[str, Any]] = config["services"]
    built = {svc["image"] for svc in services.values() if "build" in svc and "image" in svc}
    problems: list[str] = []
    has_healthcheck: dict[str, bool] = {}
    for name, service in services.items():
        image = service.get("image", "")
        build = service.get("build")
        if build is not None:
            target = build.get("target", "")
            if Path(build.get("context", "")).resolve() != ROOT:
                problems.append(f"{name}: build context is not the repository root")
            if build.get("dockerfile") != "docker/Dockerfile":
                problems.append(f"{name}: not built from docker/Dockerfile")
            if target not in CWM_IMAGES:
                problems.append(f"{name}: build target {target!r} is not one of {sorted(CWM_IMAGES)}")
            elif image != CWM_IMAGES[target]:
                problems.append(f"{name}: target {target} is tagged {CWM_IMAGES[target]}, not {image!r}")
            covered = _has_healthcheck(target)
        elif image in CWM_IMAGES.values():
            if image not in built:
                problems.append(f"{name}: uses {image} but no service of this file builds it")
            target = next(t for t, i in CWM_IMAGES.items() if i == image)
            covered = _has_healthcheck(target)
        else:
            if image not in PINNED_IMAGES:
                problems.append(f"{name}: image {image!r} is not one of the pinned {sorted(PINNED_IMAGES)}")
            covered = False
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{name}: image {image!r} has no pinned tag")
        healthcheck = service.get("healthcheck")
        receiver = target == "cwm" if build is not None else image == CWM_IMAGES["cwm"]
        if receiver and healthcheck is not None and not service.get("entrypoint"):
            if "/ready" not in json.dumps(healthcheck.get("test")):
                problems.append(f"{name}: the receiver's healthcheck does not ask /ready (readiness)")
        if healthcheck is not None and healthcheck.get("disable"):
            problems.append(f"{name}: healthcheck disabled")
        elif healthcheck is None and not covered:
            problems.append(f"{name}: no healthcheck (its own or the Dockerfile's)")
        has_healthcheck[name] = (healthcheck is not None and not healthcheck.get("disable")) or (healthcheck is None and covered)
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = condition.get("condition") if isinstance(condition, dict) else None
            if wanted not in (None, "service_started", "service_healthy"):
                problems.append(f"{name}: depends_on {dependency} with condition {wanted!r}")
            elif has_healthcheck.get(dependency) and wanted != "service_healthy":
                # Started is not ready: wait for the healthcheck the dependency has.
                problems.append(f"{name}: depends_on {dependency} with condition {wanted!r}, not 'service_healthy'"
                                " (it has a healthcheck)")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)
