"""VaultClient over real TLS: ``VAULT_VERIFY`` as a CA bundle, true, and false."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from cwm.config.vault import VaultClient, VaultSettings, VaultUnavailable, vault_http_client
from tests.certificates import Authority
from tests.vault_standin import VaultStandin

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the bound on every wait outside the client's own timeout
SECRET = "tls-secret-value"


def server_tls(authority: Authority) -> ServerTLS:
    """A server context with a certificate for ``localhost`` and ``127.0.0.1``."""
    certificate, key = authority.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])
    return ServerTLS(key, certificate)


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """The stand-in's side of TLS, built from ``cryptography`` objects.

    (Twisted's ``PrivateCertificate.options()`` hands pyOpenSSL the deprecated
    ``X509``/``PKey`` wrappers.)
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(certificate)
        self._context.use_privatekey(key)
        self._context.check_privatekey()

    def getContext(self) -> SSL.Context:
        return self._context


@dataclass
class Served:
    standin: VaultStandin
    ca_path: Path
    tmp_path: Path


async def bounded(d: Deferred[Any]) -> Any:
    from twisted.internet import reactor

    d.addTimeout(WAIT, reactor)
    return await d


@pytest_twisted.async_yield_fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The stand-in over HTTPS on a random loopback port, with its CA in ``ca.pem``."""
    from twisted.internet import reactor

    authority = Authority("cwm test CA")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(authority.pem())
    standin = VaultStandin()
    standin.create_token(token="root")
    standin.put_secret("app/auth", {"token": SECRET})
    standin.listen(reactor, tls=server_tls(authority))
    try:
        yield Served(standin, ca_path, tmp_path)
    finally:
        stopped = standin.stop_listening()
        if stopped is not None:
            await bounded(stopped)


async def read_with(addr: str, verify: bool | str) -> str:
    """Read ``app/auth#token`` with a client of its own, then close its pool."""
    from twisted.internet import reactor

    settings = VaultSettings(addr=addr, token="root", verify=verify, timeout=5.0)
    http, pool = vault_http_client(reactor, settings)
    client = VaultClient(settings, http, reactor)
    try:
        return await client.read("app/auth", "token")
    finally:
        client.stop()
        await bounded(pool.closeCachedConnections())


@pytest_twisted.ensureDeferred
async def test_ca_bundle_is_trusted(served: Served) -> None:
    assert served.standin.addr.startswith("https://127.0.0.1:")
    assert await read_with(served.standin.addr, str(served.ca_path)) == SECRET
    by_name = served.standin.addr.replace("127.0.0.1", "localhost")
    assert await read_with(by_name, str(served.ca_path)) == SECRET


@pytest_twisted.ensureDeferred
async def test_bundle_of_several_certificates(served: Served) -> None:
    """Every certificate of a bundle is trusted, whichever place the right one has."""
    other = Authority("another CA").pem()
    for name, content in (
        ("last.pem", other + served.ca_path.read_bytes()),
        ("first.pem", served.ca_path.read_bytes() + other),
    ):
        bundle = served.tmp_path / name
        bundle.write_bytes(content)
        assert await read_with(served.standin.addr, str(bundle)) == SECRET


@pytest_twisted.ensureDeferred
async def test_only_the_bundle_is_trusted(served: Served) -> None:
    other = served.tmp_path / "other.pem"
    other.write_bytes(Authority("another CA").pem())
    with pytest.raises(VaultUnavailable) as raised:
        await read_with(served.standin.addr, str(other))
    assert "TLS" in raised.value.reason
    assert served.standin.request_count("/v1/secret/data/app/auth") == 0


@pytest_twisted.ensureDeferred
async def test_system_roots_do_not_trust_a_private_ca(served: Served) -> None:
    with pytest.raises(VaultUnavailable) as raised:
        await read_with(served.standin.addr, True)
    assert raised.value.retryable
    assert "TLS" in raised.value.reason
    assert served.standin.request_count("/v1/secret/data/app/auth") == 0


@pytest_twisted.ensureDeferred
async def test_verification_off_reads(served: Served) -> None:
    assert await read_with(served.standin.addr, False) == SECRET
