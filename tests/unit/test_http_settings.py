"""The HTTP listener's settings: timeouts, the connection cap and the listen backlog."""

from __future__ import annotations

from pathlib import Path

import pytest

from cwm.errors import ConfigError
from cwm.settings import parse_settings
from cwm.web.listen import default_backlog, with_backlog


def test_defaults() -> None:
    s = parse_settings({}, {}, "/srv")
    assert (s.http_header_timeout, s.http_body_timeout, s.http_idle_timeout) == (10.0, 30.0, 60.0)
    assert s.max_connections == 10_000
    assert 1 <= s.listen_backlog <= 511


def test_environment() -> None:
    env = {"HTTP_HEADER_TIMEOUT": "2.5", "HTTP_BODY_TIMEOUT": "7", "HTTP_IDLE_TIMEOUT": "1", "MAX_CONNECTIONS": "50"}
    s = parse_settings({}, env, "/srv")
    assert (s.http_header_timeout, s.http_body_timeout, s.http_idle_timeout, s.max_connections) == (2.5, 7.0, 1.0, 50)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"HTTP_HEADER_TIMEOUT": "0"}, "invalid HTTP_HEADER_TIMEOUT='0': expected a number from 0.1 to 86400"),
        ({"HTTP_BODY_TIMEOUT": "soon"}, "invalid HTTP_BODY_TIMEOUT='soon': expected a number"),
        ({"HTTP_IDLE_TIMEOUT": "nan"}, "invalid HTTP_IDLE_TIMEOUT='nan': expected a number from 0.1 to 86400"),
        ({"MAX_CONNECTIONS": "0"}, "invalid MAX_CONNECTIONS='0': expected a whole number from 1 to 10000000"),
    ],
)
def test_invalid_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings({}, env, "/")
    assert str(e.value) == message


def test_default_backlog_is_511_or_somaxconn_when_lower(tmp_path: Path) -> None:
    """Twisted's default backlog is 50, which a burst of connections overflows."""
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("4096\n")
    assert default_backlog(str(somaxconn)) == 511
    somaxconn.write_text("128\n")
    assert default_backlog(str(somaxconn)) == 128
    assert default_backlog(str(tmp_path / "missing")) == 511


@pytest.mark.parametrize(
    "given, expected",
    [
        ("tcp:8000", "tcp:8000:backlog=511"),
        ("tcp:8000:interface=\\:\\:1", "tcp:8000:interface=\\:\\:1:backlog=511"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=511"),
        ("unix:/run/cwm.sock", "unix:/run/cwm.sock:backlog=511"),
        ("tcp:8000:backlog=64", "tcp:8000:backlog=64"),
        ("tcp:port=8000:backlog=64:interface=127.0.0.1", "tcp:port=8000:backlog=64:interface=127.0.0.1"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_with_backlog_adds_one_unless_given(given: str, expected: str) -> None:
    assert with_backlog(given, 511) == expected


def test_an_unlimited_open_file_limit_is_not_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """RLIM_INFINITY (-1) as a limit would make every new connection look past it."""
    import resource

    from cwm import service

    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert service._fd_limit() is None
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert service._fd_limit() == 1024
