"""Webhook Connect over ``rediss://`` to a real ``redis-server --tls-port``: the certificate is checked.

The test makes two throwaway CAs and server certificates: one for
``localhost`` from the CA cwm trusts (``WEBHOOK_CONNECT_REDIS_CA_CERT``), one
for ``localhost`` from another CA, one for another host name from the trusted
CA. Only the first connects; ``?ssl_cert_reqs=none`` connects to any of them
and says so in a warning at start-up. A refused connection is seen from the
Redis side (its log names the TLS alert cwm sent), then in cwm's ``/ready``
and in the answer to a webhook.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.certificates import Authority, write_pair
from tests.integration.cwm_process import CwmProcess, start_cwm

pytestmark = pytest.mark.integration

WAIT = 30.0
HOOK = {
    "relay": {
        "module": "webhook_connect",
        "module-config": {"channel": "tls-channel", "channel_token": "channel-token"},
    }
}


@dataclass(frozen=True)
class Certificates:
    trusted_ca: str
    good: tuple[str, str]  # localhost, from the trusted CA
    other_ca: tuple[str, str]  # localhost, from another CA
    wrong_host: tuple[str, str]  # not-this-host.test, from the trusted CA


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    trusted, other = Authority("cwm test CA"), Authority("someone else's CA")

    def server(stem: str, host: str, ca: Authority) -> tuple[str, str]:
        ips = ["127.0.0.1"] if host == "localhost" else []
        return write_pair(directory, stem, *ca.issue(host, dns=[host], ips=ips))

    return Certificates(
        trusted_ca=trusted.write(directory, "trusted-ca"),
        good=server("good", "localhost", trusted),
        other_ca=server("other-ca", "localhost", other),
        wrong_host=server("wrong-host", "not-this-host.test", trusted),
    )


class TlsRedis:
    """``redis-server --port 0 --tls-port P`` serving one certificate; clients need none of their own."""

    def __init__(self, directory: Path, cert: tuple[str, str], ca: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
        directory.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.log = directory / "redis.log"
        self.process = subprocess.Popen(
            [
                binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", cert[0], "--tls-key-file", cert[1], "--tls-ca-cert-file", ca,
                "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(directory),
                "--logfile", str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_log("Ready to accept connections")

    def wait_log(self, text: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            content = self.log.read_text(errors="replace") if self.log.exists() else ""
            if text in content:
                return content
            if self.process.poll() is not None:
                break
            pause.wait(0.05)
        raise AssertionError(f"no {text!r} in the Redis log within {timeout} s:\n" + (
            self.log.read_text(errors="replace") if self.log.exists() else ""))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(WAIT)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[TlsRedis]]:
    started: list[TlsRedis] = []
    yield started
    for server in started:
        server.stop()


def start(tmp_path: Path, servers: list[TlsRedis], cert: tuple[str, str], ca: str, query: str = "",
          host: str = "localhost", **env: str) -> tuple[TlsRedis, CwmProcess]:
    redis = TlsRedis(tmp_path / "redis", cert, ca)
    servers.append(redis)
    environ = {
        "WEBHOOK_CONNECT_ENABLED": "true",
        "WEBHOOK_CONNECT_REDIS_URL": f"rediss://{host}:{redis.port}/0{query}",
        **env,
    }
    directory = tmp_path / "cwm"
    directory.mkdir()
    return redis, start_cwm(directory, HOOK, env=environ)


def wait_ready(process: CwmProcess, want: int, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        code, body, _ = process.request("GET", "/ready")
        if code == want:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/ready did not answer {want} within {timeout} s; last: {code} {body}")
        pause.wait(0.05)


def relay(process: CwmProcess) -> int:
    return process.post("/webhook/relay", {"n": 1})[0]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])  # a DNS name, an address: both in the certificate
def test_certificate_from_the_configured_ca_for_the_host_connects(
    tmp_path: Path, servers: list[TlsRedis], certificates: Certificates, host: str
) -> None:
    _, process = start(tmp_path, servers, certificates.good, certificates.trusted_ca, host=host,
                       WEBHOOK_CONNECT_REDIS_CA_CERT=certificates.trusted_ca)
    try:
        wait_ready(process, 200)
        assert relay(process) == 200
        assert not any("ssl_cert_reqs" in line for line in process.lines)
    finally:
        process.stop()


@pytest.mark.parametrize("which", ["other_ca", "wrong_host"])
def test_certificate_of_another_ca_or_another_host_is_refused(
    tmp_path: Path, servers: list[TlsRedis], certificates: Certificates, which: str
) -> None:
    """The handshake fails on cwm's side: Redis logs the alert cwm sent, and nothing is relayed."""
    cert = getattr(certificates, which)
    redis, process = start(tmp_path, servers, cert, certificates.trusted_ca,
                           WEBHOOK_CONNECT_REDIS_CA_CERT=certificates.trusted_ca)
    try:
        redis.wait_log("Error accepting a client connection")
        body = wait_ready(process, 503)
        assert body["components"]["webhook_connect"] == "redis_unreachable"
        assert relay(process) == 503
    finally:
        process.stop()


def test_without_a_ca_setting_the_system_roots_refuse_a_private_ca(
    tmp_path: Path, servers: list[TlsRedis], certificates: Certificates
) -> None:
    """The default: the system's trust roots, which do not hold the test's CA."""
    redis, process = start(tmp_path, servers, certificates.good, certificates.trusted_ca)
    try:
        redis.wait_log("Error accepting a client connection")
        wait_ready(process, 503)
        assert relay(process) == 503
    finally:
        process.stop()


def test_ssl_cert_reqs_none_connects_to_any_certificate_and_warns(
    tmp_path: Path, servers: list[TlsRedis], certificates: Certificates
) -> None:
    _, process = start(tmp_path, servers, certificates.other_ca, certificates.trusted_ca, "?ssl_cert_reqs=none")
    try:
        process.wait_for(r"ssl_cert_reqs=none: the certificate of localhost is not checked")
        wait_ready(process, 200)
        assert relay(process) == 200
    finally:
        process.stop()
