"""Liveness (/health) and readiness (/ready): each component's failure and recovery, without a reactor.

Each backend is the real object cwm uses (the etcd source over a mirror, the
Connect hub over a recording buffer, the Vault resolver over the stand-in),
driven on a Clock; the Redis, etcd and Vault servers themselves are stopped
and started in tests/integration/test_readiness.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwm.config.etcd import EtcdConfigSource
from cwm.etcd.mirror import STALE, STARTING, PrefixMirror
from cwm.readiness import (
    Component,
    Readiness,
    config_component,
    connect_components,
    etcd_component,
    readiness_body,
    vault_component,
)
from cwm.web.receiver import WebhookReceiver
from tests.unit.test_config import make_store
from tests.unit.test_connect_hub import hub_with_channel, open_connection
from tests.unit.test_receiver import connect_off
from tests.unit.test_secret_resolution import BEARER, TTL, World

_sync = SynchronousTestCase()


class Page:
    """A receiver whose /health and /ready the test drives."""

    def __init__(self, readiness: Readiness, health: Any = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.receiver = WebhookReceiver(
            None,  # type: ignore[arg-type]  # no webhook is posted
            self.clock,
            health or (lambda: (True, {"components": {"config_manager": "healthy"}})),
            *connect_off(self.clock),
            readiness=readiness,
        )
        self.treq = StubTreq(self.receiver.resource())

    def get(self, path: str) -> tuple[int, Any, Any]:
        d = self.treq.get("http://cwm.test" + path)
        self.treq.flush()
        response = _sync.successResultOf(d)
        body = _sync.successResultOf(response.content())
        return response.code, json.loads(body), response.headers


class Switch:
    """A probe whose component the test sets."""

    def __init__(self, name: str) -> None:
        self.component = Component(name, True)

    def __call__(self) -> Iterable[Component]:
        return [self.component]


# -- the routes ---------------------------------------------------------------------------------


def test_ready_is_200_when_every_component_is_ready() -> None:
    page = Page(Readiness([lambda: [config_component(True)], lambda: [etcd_component("healthy", None)]]))
    code, body, headers = page.get("/ready")
    assert code == 200
    assert body == {
        "status": "ready",
        "service": "webhook-service",
        "timestamp": page.clock.seconds(),
        "components": {"config": "ready", "etcd": "ready"},
    }
    assert headers.getRawHeaders("Retry-After") is None
    assert headers.getRawHeaders("Cache-Control") == ["no-store"]


def test_ready_is_503_naming_the_failing_components_while_health_stays_200() -> None:
    """Readiness fails with the component's reason and Retry-After; liveness does not follow it."""
    redis = Switch("webhook_connect")
    page = Page(Readiness([lambda: [config_component(True)], redis]))
    redis.component = Component("webhook_connect", False, "redis_unreachable", "Redis unreachable: Connection refused")
    code, body, headers = page.get("/ready")
    assert code == 503
    assert body["status"] == "not_ready"
    assert body["components"] == {"config": "ready", "webhook_connect": "redis_unreachable"}
    assert body["failing"] == {"webhook_connect": "Redis unreachable: Connection refused"}
    assert body["detail"] == "Not ready: webhook_connect (Redis unreachable: Connection refused)"
    assert headers.getRawHeaders("Retry-After") == ["5"]
    assert page.get("/health")[0] == 200
    redis.component = Component("webhook_connect", True)
    assert page.get("/ready")[0] == 200


def test_a_readiness_check_that_raises_is_503_and_logged(logged_failures: list[Any]) -> None:
    def broken() -> Iterable[Component]:
        raise KeyError("internal detail")

    code, body, headers = Page(Readiness([lambda: [config_component(True)], broken])).get("/ready")
    assert code == 503 and body["failing"] == {"readiness_check": "a readiness check failed"}
    assert "internal detail" not in json.dumps(body) and headers.getRawHeaders("Retry-After") == ["5"]
    assert len(logged_failures) == 1
    logged_failures.clear()


def test_health_is_503_unhealthy_only_when_the_configuration_state_cannot_be_read(
    logged_failures: list[Any],
) -> None:
    """Liveness fails only when the process cannot serve: its configuration state cannot be read."""

    def broken() -> tuple[bool, Mapping[str, Any]]:
        raise KeyError("internal detail")

    page = Page(Readiness(), health=broken)
    code, body, _ = page.get("/health")
    assert code == 503
    assert body == {
        "status": "unhealthy",
        "service": "webhook-service",
        "timestamp": page.clock.seconds(),
        "components": {"config_manager": "unhealthy"},
    }
    assert len(logged_failures) == 1
    logged_failures.clear()


def test_body_lists_every_failing_component() -> None:
    components = [config_component(False), etcd_component("connecting", "")]
    body = readiness_body(False, components, "svc", 1.0)
    assert body["detail"] == "Not ready: config (configuration not loaded yet), etcd (etcd not synced yet)"
    assert body["components"] == {"config": "not_loaded", "etcd": "connecting"}


# -- configuration and etcd ---------------------------------------------------------------------


def test_config_is_ready_once_loaded() -> None:
    store, _ = make_store()
    readiness = Readiness([lambda: [config_component(store.loaded)]])
    assert readiness.check()[0] is False
    store.mark_loaded()
    assert readiness.check() == (True, [Component("config", True)])


def test_etcd_not_synced_then_synced_then_disconnected_then_synced_again() -> None:
    store, _ = make_store()
    mirror = PrefixMirror()
    source = EtcdConfigSource(store, mirror, "/cwm/")
    readiness = Readiness([lambda: [config_component(store.loaded)], lambda: [etcd_component(source.health, mirror.reason)]])
    ready, components = readiness.check()
    assert not ready and [c.state for c in components] == ["not_loaded", "connecting"]
    mirror.set_state(STARTING, "connection refused")
    assert readiness.check()[1][1].reason == "etcd not synced yet: connection refused"
    mirror.apply_snapshot([], 5)
    assert readiness.check() == (True, [Component("config", True), Component("etcd", True)])
    mirror.set_state(STALE, "socket closed")
    ready, components = readiness.check()
    assert not ready and components[1] == Component("etcd", False, "disconnected", "etcd unreachable: socket closed")
    mirror.apply_snapshot([], 6)
    assert readiness.check()[0] is True


# -- Webhook Connect ------------------------------------------------------------------------------


def test_connect_status_keys() -> None:
    """``buffer`` false or no live connection: Redis unreachable; ``read_loop`` missing counts as running."""
    ok = {"buffer": True, "channels_count": 0, "connections_count": 0}
    assert list(connect_components(ok, True)) == [Component("webhook_connect", True)]
    assert list(connect_components({**ok, "read_loop": "running", "read_loop_error": ""}, True))[0].ready
    down = list(connect_components({**ok, "buffer": False}, True, "Connection refused"))
    assert down == [Component("webhook_connect", False, "redis_unreachable", "Redis unreachable: Connection refused")]
    assert not list(connect_components(ok, False))[0].ready  # still making the first connection
    restarting = list(connect_components({**ok, "read_loop": "restarting", "read_loop_error": "boom"}, True))
    assert restarting == [Component("webhook_connect", False, "read_loop_restarting", "read loop restarting: boom")]
    assert list(connect_components({**ok, "read_loop": "stopped"}, True))[0].state == "read_loop_stopped"


def test_connect_read_failure_then_recovery() -> None:
    """The hub's blocking read fails (Redis gone): not ready; the next read succeeds: ready again."""
    import txredisapi

    hub, buffer, clock = hub_with_channel()
    open_connection(hub)
    readiness = Readiness([lambda: connect_components(hub.status(), True, hub.last_error)])
    assert readiness.check()[0] is True
    _, read = buffer.reads[-1]
    read.errback(txredisapi.ConnectionError("Not connected"))
    ready, components = readiness.check()
    assert not ready and components[0].state == "redis_unreachable" and "Not connected" in components[0].reason
    clock.advance(1)  # within the read loop's backoff and the call timeout
    buffer.answer()  # the restarted loop's read of what waits: nothing
    buffer.answer()  # then its blocking read
    assert readiness.check()[0] is True
    stopped = hub.stop()
    buffer.answer()  # stop waits for the read under way
    _sync.successResultOf(stopped)


# -- Vault ----------------------------------------------------------------------------------------


def vault_probe(w: World) -> Readiness:
    return Readiness(
        [lambda: [vault_component(w.resolver.unreachable(), w.resolver.in_use, w.resolver.not_read_yet())]]
    )


def test_vault_not_referenced_is_ready() -> None:
    w = World()
    w.load({"plain": {"module": "log"}})
    assert vault_probe(w).check() == (True, [Component("vault", True, "not_referenced")])


def test_vault_not_ready_until_the_first_read_answers() -> None:
    """A field in use whose first read is still waiting: its entries cannot serve yet."""
    w = World()
    w.vault.hold = True
    w.load({"a": BEARER})
    w.turn()
    ready, components = vault_probe(w).check()
    assert not ready
    assert components == [Component("vault", False, "reading", "1 Vault field(s) not read yet: app/auth#token")]
    w.vault.hold = False
    w.vault.answer_held()
    w.http.flush()
    w.turn()
    assert vault_probe(w).check()[0] is True


def test_vault_sealed_then_unsealed() -> None:
    """Vault answering 503 for a field in use: not ready, named; unsealed: ready again. No secret shown."""
    w = World()
    w.load({"a": BEARER})
    w.turn()
    readiness = vault_probe(w)
    assert readiness.check()[0] is True
    w.vault.sealed = True
    w.turn(TTL)  # the value expires; its re-read fails
    ready, components = readiness.check()
    assert not ready
    assert components == [
        Component(
            "vault",
            False,
            "unreachable",
            "Vault unreachable for 1 field(s): app/auth#token: Vault answered HTTP 503 for app/auth#token",
        )
    ]
    w.vault.sealed = False
    w.turn(1)  # the retry
    assert readiness.check()[0] is True


@pytest.mark.parametrize("webhook", [{"module": "log", "authorization": "Bearer {$vault:app/none#token}"}])
def test_vault_missing_field_is_a_config_problem_not_unreadiness(webhook: dict[str, Any]) -> None:
    """Vault answers 404 for a field: that entry is held back (see /health), the instance stays ready."""
    w = World()
    w.load({"a": webhook})
    w.turn()
    assert w.resolver.status()["unavailable"]
    assert vault_probe(w).check()[0] is True
