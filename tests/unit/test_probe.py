"""cwm.probe (the images' HEALTHCHECK): where it asks, and its exit status, without sockets."""

from __future__ import annotations

import pytest

from cwm import probe
from cwm.probe import ProbeError, Target, connector_target, endpoint_target, main, receiver_target


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:9090", Target("/p", host="127.0.0.1", port=9090)),
        ("tcp:port=9090", Target("/p", host="127.0.0.1", port=9090)),
        ("  TCP:9090  ", Target("/p", host="127.0.0.1", port=9090)),
        ("tcp:9090:interface=10.1.2.3", Target("/p", host="10.1.2.3", port=9090)),
        ("tcp:9090:interface=0.0.0.0", Target("/p", host="127.0.0.1", port=9090)),
        ("tcp:9090:interface=", Target("/p", host="127.0.0.1", port=9090)),
        ("tcp:9090:interface=\\:\\:", Target("/p", host="::1", port=9090)),
        ("tcp:9090:interface=fd00\\:\\:5", Target("/p", host="fd00::5", port=9090)),
        ("tcp:9090:backlog=50:interface=localhost", Target("/p", host="localhost", port=9090)),
        ("tcp6:9090", Target("/p", host="::1", port=9090)),
        ("tcp6:9090:interface=\\:\\:1", Target("/p", host="::1", port=9090)),
        ("tcp:65535", Target("/p", host="127.0.0.1", port=65535)),
        ("unix:/run/cwm/status.sock", Target("/p", unix="/run/cwm/status.sock")),
        ("unix:address=/run/s.sock:mode=660", Target("/p", unix="/run/s.sock")),
        ("unix:/run/s.sock:lockfile=0", Target("/p", unix="/run/s.sock")),
    ],
)
def test_endpoint_target(description: str, expected: Target) -> None:
    assert endpoint_target(description, "/p") == expected


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("tcp", "no port"),
        ("tcp:", "no port"),
        ("tcp:0", "no port"),
        ("tcp:65536", "no port"),
        ("tcp:http", "no port"),
        ("tcp:-1", "no port"),
        ("tcp:interface=127.0.0.1", "no port"),
        ("unix:", "no socket path"),
        ("unix:mode=660", "no socket path"),
        ("ssl:8443:privateKey=k.pem", "cannot probe a 'ssl' endpoint"),
        ("systemd:domain=INET:index=0", "cannot probe a 'systemd' endpoint"),
        ("", "cannot probe a '' endpoint"),
    ],
)
def test_endpoint_target_refuses(description: str, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        endpoint_target(description, "/p")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Target("/ready", host="127.0.0.1", port=8000)),
        ({"PORT": " ", "HOST": ""}, Target("/ready", host="127.0.0.1", port=8000)),
        ({"PORT": "9000"}, Target("/ready", host="127.0.0.1", port=9000)),
        ({"PORT": " 9000 ", "HOST": " 0.0.0.0 "}, Target("/ready", host="127.0.0.1", port=9000)),
        ({"HOST": "10.0.0.7"}, Target("/ready", host="10.0.0.7", port=8000)),
        ({"HOST": "::", "PORT": "9000"}, Target("/ready", host="::1", port=9000)),
        ({"HOST": "fd00::7"}, Target("/ready", host="fd00::7", port=8000)),
    ],
)
def test_receiver_target(environ: dict[str, str], expected: Target) -> None:
    assert receiver_target(environ) == expected


def test_receiver_target_bad_port() -> None:
    for port in ("http", "0", "70000"):
        with pytest.raises(ProbeError, match="no port"):
            receiver_target({"PORT": port})


def test_connector_target() -> None:
    assert connector_target({"CONNECTOR_STATUS_LISTEN": "tcp:8081"}) == Target(
        "/health", host="127.0.0.1", port=8081
    )
    assert connector_target({"CONNECTOR_STATUS_LISTEN": "unix:/tmp/c.sock"}) == Target(
        "/health", unix="/tmp/c.sock"
    )
    for environ in ({}, {"CONNECTOR_STATUS_LISTEN": "  "}):
        with pytest.raises(ProbeError, match="CONNECTOR_STATUS_LISTEN is not set"):
            connector_target(environ)


class FakeAsk:
    """Stands in for ``probe.ask``: records the targets, answers a status or raises."""

    def __init__(self, answer: int | BaseException) -> None:
        self.answer = answer
        self.asked: list[Target] = []

    def __call__(self, target: Target, timeout: float = probe.TIMEOUT_SECONDS) -> int:
        self.asked.append(target)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.fixture
def fake_ask(monkeypatch: pytest.MonkeyPatch) -> FakeAsk:
    fake = FakeAsk(200)
    monkeypatch.setattr(probe, "ask", fake)
    return fake


def test_main_exit_0_on_2xx(fake_ask: FakeAsk, capsys: pytest.CaptureFixture[str]) -> None:
    for status in (200, 204, 299):
        fake_ask.answer = status
        assert main(["cwm"], {"PORT": "9000"}) == 0
    assert fake_ask.asked[-1] == Target("/ready", host="127.0.0.1", port=9000)
    fake_ask.answer = 200
    assert main(["connector"], {"CONNECTOR_STATUS_LISTEN": "unix:/tmp/c.sock"}) == 0
    assert fake_ask.asked[-1] == Target("/health", unix="/tmp/c.sock")
    assert capsys.readouterr() == ("", "")


def test_main_exit_1_on_other_answers(fake_ask: FakeAsk, capsys: pytest.CaptureFixture[str]) -> None:
    for status in (199, 301, 404, 503):
        fake_ask.answer = status
        assert main(["cwm"], {"HOST": "::", "PORT": "9000"}) == 1
        err = capsys.readouterr().err
        assert err == f"cwm.probe: [::1]:9000/ready answered {status}\n"


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        probe.http.client.RemoteDisconnected("Remote end closed connection without response"),
        probe.http.client.BadStatusLine("SSH-2.0"),
        UnicodeError("encoding with 'idna' codec failed (UnicodeError: label too long)"),
    ],
)
def test_main_exit_1_when_nothing_good_answers(
    fake_ask: FakeAsk, capsys: pytest.CaptureFixture[str], error: BaseException
) -> None:
    fake_ask.answer = error
    assert main(["cwm"], {}) == 1
    err = capsys.readouterr().err
    assert err.startswith("cwm.probe: 127.0.0.1:8000/ready: ")
    assert err.count("\n") == 1


def test_main_usage_and_setting_errors_exit_1(
    fake_ask: FakeAsk, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in ([], ["other"], ["cwm", "connector"], ["--help"]):
        assert main(argv, {}) == 1  # never 2: Docker reserves it in a HEALTHCHECK
        assert capsys.readouterr().err == "usage: python -m cwm.probe cwm|connector\n"
    assert main(["connector"], {}) == 1
    assert "CONNECTOR_STATUS_LISTEN is not set" in capsys.readouterr().err
    assert main(["cwm"], {"PORT": "zero"}) == 1
    assert capsys.readouterr().err.startswith("cwm.probe: no port in ")
    assert fake_ask.asked == []
