"""Readiness: whether this instance can serve traffic now, component by component.

``/health`` is liveness: it stays 200 while the process serves, since
restarting cwm because Redis is down helps nobody. ``/ready`` is readiness:
it is 200 only when the configuration is loaded and every backend in use is
reachable, so that a load balancer, Kubernetes or compose sends traffic
elsewhere meanwhile. Each backend contributes a probe: a function returning
its components; more (connection pools of modules) can be added later
without touching the others.

The checks here are pure functions over the status each part already keeps;
none of them makes a call, so ``/ready`` answers at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

READY = "ready"

RETRY_AFTER = 5
"""Seconds a client of ``/ready`` is asked to wait before asking again."""


@dataclass(frozen=True)
class Component:
    """One part that readiness depends on: its name, whether it is ready, and why not."""

    name: str
    ready: bool
    state: str = READY
    reason: str = ""


Probe = Callable[[], Iterable[Component]]
"""What a backend in use contributes to readiness; called on the reactor thread, must not block."""


class Readiness:
    """The probes of every backend in use; ``check()`` combines them."""

    _log = Logger()

    def __init__(self, probes: Iterable[Probe] = ()) -> None:
        self._probes: list[Probe] = list(probes)

    def add(self, probe: Probe) -> None:
        self._probes.append(probe)

    def check(self) -> tuple[bool, list[Component]]:
        """(ready, every component); ready only when each one is."""
        components: list[Component] = []
        for probe in self._probes:
            try:
                components.extend(probe())
            except Exception:
                self._log.failure("a readiness check failed")
                components.append(Component("readiness_check", False, "error", "a readiness check failed"))
        return all(c.ready for c in components), components


def readiness_body(ready: bool, components: Iterable[Component], service: str, now: float) -> dict[str, Any]:
    """The JSON body of ``/ready``: each component's state, and with 503 a ``detail`` naming the failing ones."""
    components = list(components)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not_ready",
        "service": service,
        "timestamp": now,
        "components": {c.name: c.state for c in components},
    }
    failing = [c for c in components if not c.ready]
    if failing:
        body["failing"] = {c.name: c.reason or c.state for c in failing}
        body["detail"] = "Not ready: " + ", ".join(
            f"{c.name} ({c.reason or c.state})" for c in failing
        )
    return body


# -- the checks of each backend ------------------------------------------------------------------


def config_component(loaded: bool) -> Component:
    """The configuration: ready once a source has loaded it (an empty configuration counts)."""
    if loaded:
        return Component("config", True)
    return Component("config", False, "not_loaded", "configuration not loaded yet")


def etcd_component(health: str, reason: str | None) -> Component:
    """etcd: ready while the watch is synced (``health`` is the source's word: healthy, connecting, disconnected)."""
    if health == "healthy":
        return Component("etcd", True)
    text = "etcd not synced yet" if health == "connecting" else "etcd unreachable"
    return Component("etcd", False, health, f"{text}: {reason}" if reason else text)


def connect_components(status: Mapping[str, Any], redis_connected: bool, last_error: str = "") -> Iterable[Component]:
    """Webhook Connect: its Redis reachable, and its read loop running.

    ``status`` is the hub's status, ``last_error`` its last Redis error. Its ``buffer`` is false once a Redis call
    or the blocking read failed, or the command pool lost every connection;
    it stays true while the pool makes its very first connection, so
    ``redis_connected`` (the pool holds a live connection) is checked too.
    ``read_loop`` (``running``, ``restarting`` or ``stopped``) is read with a
    default: a hub that does not report it counts as running.
    """
    if not status.get("buffer", False) or not redis_connected:
        reason = "Redis unreachable" + (f": {last_error}" if last_error else "")
        yield Component("webhook_connect", False, "redis_unreachable", reason)
        return
    loop = status.get("read_loop", "running")
    if loop != "running":
        error = status.get("read_loop_error") or ""
        reason = f"read loop {loop}" + (f": {error}" if error else "")
        yield Component("webhook_connect", False, f"read_loop_{loop}", reason)
        return
    yield Component("webhook_connect", True)


def vault_component(unreachable: Mapping[str, str], fields: int, not_read_yet: Sequence[str] = ()) -> Component:
    """Vault, when the configuration references it: ready once every field in use has been read,
    unless one cannot be read because Vault is unreachable (no answer, a timeout, 5xx). A field
    Vault answers "not found" or "permission denied" for is a configuration problem of the
    entries that use it: those are held back and shown in ``/health``, the others serve."""
    if fields == 0:
        return Component("vault", True, "not_referenced")
    if unreachable:
        first = sorted(unreachable.items())[0]
        reason = f"Vault unreachable for {len(unreachable)} field(s): {first[0]}: {first[1]}"
        return Component("vault", False, "unreachable", reason)
    if not_read_yet:
        reason = f"{len(not_read_yet)} Vault field(s) not read yet: {sorted(not_read_yet)[0]}"
        return Component("vault", False, "reading", reason)
    return Component("vault", True)
