"""``rediss://`` settings: verification on by default, a private CA, the explicit opt-out.

The handshakes themselves (a good certificate, another CA, another host
name, the opt-out) run against a real redis-server in
tests/integration/test_redis_tls.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import LogEvent, formatEvent

from cwm.config.vault import UnverifiedConnections
from cwm.connect.buffer import parse_redis_url, redis_tls
from cwm.errors import ConfigError
from cwm.settings import parse_settings
from tests.integration.test_redis_tls import make_certificates


def test_rediss_verifies_unless_the_url_opts_out() -> None:
    assert parse_redis_url("rediss://h:6380/1").verify
    assert parse_redis_url("rediss://h?ssl_cert_reqs=required").verify
    address = parse_redis_url("rediss://:pw@h:6380/1?ssl_cert_reqs=none")
    assert (address.tls, address.verify, address.db, address.password) == (True, False, 1, "pw")
    assert parse_redis_url("rediss://h?ssl_cert_reqs=NONE").verify is False


def test_unknown_ssl_cert_reqs_is_refused_without_the_password() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_redis_url("rediss://:hunter2@h?ssl_cert_reqs=optional")
    assert "ssl_cert_reqs" in str(raised.value) and "hunter2" not in str(raised.value)


def test_no_tls_no_context() -> None:
    assert redis_tls(parse_redis_url("redis://h"), None) is None


def test_verifying_creator_for_the_url_host() -> None:
    creator = redis_tls(parse_redis_url("rediss://redis.example:6380"), None)
    assert IOpenSSLClientConnectionCreator.providedBy(creator)
    assert not isinstance(creator, UnverifiedConnections)  # host and chain checked: see the integration test


def test_private_ca(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    settings = parse_settings(
        {},
        {"WEBHOOK_CONNECT_ENABLED": "true", "WEBHOOK_CONNECT_REDIS_CA_CERT": "trusted-ca.pem"},
        str(tmp_path),
    )
    assert settings.connect is not None and settings.connect.redis_ca_cert == certificates.trusted_ca
    creator = redis_tls(parse_redis_url("rediss://localhost"), settings.connect.redis_ca_cert)
    assert IOpenSSLClientConnectionCreator.providedBy(creator)


def test_bad_ca_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_CONNECT_REDIS_CA_CERT"):
        parse_settings({}, {"WEBHOOK_CONNECT_ENABLED": "true", "WEBHOOK_CONNECT_REDIS_CA_CERT": "nope.pem"}, str(tmp_path))
    (tmp_path / "empty.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="WEBHOOK_CONNECT_REDIS_CA_CERT"):
        redis_tls(parse_redis_url("rediss://h"), str(tmp_path / "empty.pem"))


def test_opt_out_warns_without_secrets(captured: list[LogEvent]) -> None:
    creator = redis_tls(parse_redis_url("rediss://:pw-never-shown@h?ssl_cert_reqs=none"), None)
    assert isinstance(creator, UnverifiedConnections)
    [warning] = [e for e in captured if e["log_level"].name == "warn"]
    text = formatEvent(warning)
    assert "ssl_cert_reqs=none" in text and "not checked" in text and "pw-never-shown" not in text


@pytest.fixture
def captured() -> Any:
    from twisted.logger import globalLogPublisher

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
