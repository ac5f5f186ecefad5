"""docker/Dockerfile's two images, run as a user runs them: ``podman run`` with published ports."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.containers.conftest import ROOT, podman

pytestmark = [pytest.mark.integration, pytest.mark.containers]

CLOUD_CONFIG = ROOT / "docker" / "scenario" / "02_connector" / "config"


def status_of(url: str) -> int | None:
    """The HTTP status of GET url; None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_for(what: str, check: object, seconds: float = 60.0) -> None:
    """Until check() is true, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.2)


class Containers:
    """Containers and networks made by one test, removed after it (logs shown on failure)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.names: list[str] = []
        self.networks: list[str] = []

    def network(self) -> str:
        name = f"cwm-test-{uuid.uuid4().hex[:8]}"
        made = podman(self.env, "network", "create", name)
        assert made.returncode == 0, made.stderr
        self.networks.append(name)
        return name

    def run(self, image: str, *args: str, name: str = "", network: str = "") -> str:
        name = name or f"cwm-test-{uuid.uuid4().hex[:8]}"
        flags = ["--network", network, "--network-alias", name.rsplit("-", 1)[0]] if network else []
        started = podman(self.env, "run", "-d", "--name", name, *flags, *args, image)
        assert started.returncode == 0, started.stderr
        self.names.append(name)
        return name

    def published(self, name: str, port: int) -> str:
        """host:port that the container's port is published on."""
        shown = podman(self.env, "port", name, f"{port}/tcp")
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.strip().splitlines()[0].replace("0.0.0.0", "127.0.0.1")

    def logs(self) -> str:
        shown = []
        for name in self.names:
            printed = podman(self.env, "logs", "--tail", "40", name)
            shown.append(f"---- {name}\n{printed.stdout}{printed.stderr}")
        return "\n".join(shown)

    def remove(self) -> None:
        for name in reversed(self.names):
            podman(self.env, "rm", "--force", "--time", "5", name)
        for network in self.networks:
            podman(self.env, "network", "rm", "--force", network)


@pytest.fixture
def containers(engine: dict[str, str]) -> Iterator[Containers]:
    made = Containers(engine)
    try:
        yield made
    finally:
        print(made.logs())  # captured: pytest shows it only for a test that failed
        made.remove()


def config_files(tmp_path: Path) -> list[str]:
    """-v flags mounting a one-webhook configuration at the image's config paths."""
    (tmp_path / "webhooks.json").write_text(json.dumps({"hello": {"data_type": "json", "module": "log"}}))
    (tmp_path / "connections.json").write_text("{}")
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    return ["-v", f"{tmp_path / 'webhooks.json'}:/app/webhooks.json:ro",
            "-v", f"{tmp_path / 'connections.json'}:/app/connections.json:ro"]


def healthcheck(env: Mapping[str, str], name: str) -> str:
    """Run the image's HEALTHCHECK command in the container now: "healthy" or podman's answer."""
    ran = podman(env, "healthcheck", "run", name)
    return (ran.stdout.strip() or ran.stderr.strip() or "healthy") if ran.returncode == 0 else (
        f"exit {ran.returncode}: {ran.stdout.strip()} {ran.stderr.strip()}")


def test_cwm_image_runs_as_its_user_is_ready_and_healthy(containers: Containers, tmp_path: Path) -> None:
    name = containers.run("cwm:local", "-p", "127.0.0.1::8000", *config_files(tmp_path))
    address = containers.published(name, 8000)
    wait_for("/ready answers 200", lambda: status_of(f"http://{address}/ready") == 200)
    assert podman(containers.env, "exec", name, "id", "-u").stdout.strip() == "10001"
    assert healthcheck(containers.env, name) == "healthy"
    posted = urllib.request.urlopen(urllib.request.Request(
        f"http://{address}/webhook/hello", data=b'{"a": 1}', headers={"Content-Type": "application/json"}), timeout=5)
    assert posted.status == 200


def test_port_moves_the_receiver_and_its_healthcheck(containers: Containers, tmp_path: Path) -> None:
    name = containers.run("cwm:local", "-e", "PORT=9000", "-p", "127.0.0.1::9000", *config_files(tmp_path))
    address = containers.published(name, 9000)
    wait_for("/ready on PORT 9000", lambda: status_of(f"http://{address}/ready") == 200)
    assert healthcheck(containers.env, name) == "healthy"
    # Nothing listens on 8000 inside the container any more.
    moved = podman(containers.env, "exec", "-e", "PORT=8000", name, "python", "-m", "cwm.probe", "cwm")
    assert moved.returncode == 1 and "127.0.0.1:8000/ready" in moved.stderr


def test_unready_receiver_fails_its_healthcheck(containers: Containers, tmp_path: Path) -> None:
    # Webhook Connect with a Redis that does not exist: alive, not ready.
    name = containers.run(
        "cwm:local", "-p", "127.0.0.1::8000", "-e", "WEBHOOK_CONNECT_ENABLED=true",
        "-e", "WEBHOOK_CONNECT_REDIS_URL=redis://127.0.0.1:1/0", *config_files(tmp_path),
    )
    address = containers.published(name, 8000)
    wait_for("/health answers 200", lambda: status_of(f"http://{address}/health") == 200)
    assert status_of(f"http://{address}/ready") == 503
    assert healthcheck(containers.env, name).startswith("exit 1:")


def test_connector_image_holds_a_link_and_is_healthy(containers: Containers) -> None:
    network = containers.network()
    containers.run("docker.io/library/redis:7-alpine", name="redis-" + network[-8:], network=network)
    containers.run(
        "cwm:local", name="cloud-" + network[-8:], network=network,
        *["-e", "WEBHOOK_CONNECT_ENABLED=true", "-e", "WEBHOOK_CONNECT_REDIS_URL=redis://redis:6379/0",
          "-v", f"{CLOUD_CONFIG / 'cloud-webhooks.json'}:/app/webhooks.json:ro",
          "-v", f"{CLOUD_CONFIG / 'cloud-connections.json'}:/app/connections.json:ro"],
    )
    connector = containers.run(
        "cwm-connector:local", "-p", "127.0.0.1::9090", network=network,
        *["-e", "CONNECTOR_CLOUD_URL=http://cloud:8000", "-e", "CONNECTOR_CHANNEL=test-channel",
          "-e", "CONNECTOR_TOKEN=channel_secret_token_123", "-e", "CONNECTOR_PROTOCOL=sse",
          "-e", "CONNECTOR_TARGET_URL=http://127.0.0.1:1/webhook/nowhere"],
    )
    address = containers.published(connector, 9090)
    wait_for("the connector's /health answers 200", lambda: status_of(f"http://{address}/health") == 200, 90)
    assert podman(containers.env, "exec", connector, "id", "-u").stdout.strip() == "10001"
    assert healthcheck(containers.env, connector) == "healthy"
