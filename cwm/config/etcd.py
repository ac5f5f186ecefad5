"""The etcd configuration source: keys under the prefix become store entries, live.

Key layout (upstream's): ``{prefix}{namespace}/webhooks/{webhook_id}`` and
``{prefix}global/connections/{name}``. Other keys under the prefix (such as
``global/instances/...``) are not configuration and are left alone. A key
whose namespace is invalid or whose value is not JSON is skipped with a log
line and listed in status; it never stops the others. cwm never writes
configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.logger import Logger

from cwm.config.model import namespace_problem
from cwm.config.store import ConfigStore, InvalidRaw, WebhookKey
from cwm.etcd.mirror import DELETE, STALE, STARTING, SYNCED, Change, PrefixMirror

GLOBAL = "global"
WEBHOOKS = "webhooks"
CONNECTIONS = "connections"
INSTANCES = "instances"



def webhook_key(prefix: str, namespace: str, webhook_id: str) -> str:
    """Where a webhook entry lives: ``{prefix}{namespace}/webhooks/{webhook_id}``."""
    return f"{prefix}{namespace}/{WEBHOOKS}/{webhook_id}"


def connection_key(prefix: str, name: str) -> str:
    """Where a connection entry lives: ``{prefix}global/connections/{name}``."""
    return f"{prefix}{GLOBAL}/{CONNECTIONS}/{name}"


def instance_key(prefix: str, instance_id: str) -> str:
    """Where a running cwm announces itself: ``{prefix}global/instances/{id}``."""
    return f"{prefix}{GLOBAL}/{INSTANCES}/{instance_id}"


# What /health shows for the mirror's state.
HEALTH = {STARTING: "connecting", SYNCED: "healthy", STALE: "disconnected"}


class EtcdConfigSource:
    """Feeds a store from a PrefixMirror of ``prefix``; runs on the reactor thread."""

    _log = Logger()

    def __init__(self, store: ConfigStore, mirror: PrefixMirror, prefix: str, namespace: str | None = None) -> None:
        """``namespace``: only that namespace's webhooks (and every connection); None: all."""
        self._store = store
        self._namespace = namespace
        self._mirror = mirror
        self._prefix = prefix.encode("utf-8")
        self.skipped: dict[str, str] = {}
        self.instances: dict[str, Any] = {}
        mirror.subscribe(self._apply)

    @property
    def health(self) -> str:
        """``connecting`` until the first snapshot, then ``healthy`` or ``disconnected``."""
        return HEALTH.get(self._mirror.state, "disconnected")

    def status(self) -> Mapping[str, Any]:
        """What /health shows about etcd beyond its one-word state."""
        return {
            "state": self.health,
            "revision": self._mirror.revision,
            "reason": self._mirror.reason,
            "skipped_keys": [{"key": k, "reason": r} for k, r in sorted(self.skipped.items())],
            "instances": [self.instances[i] for i in sorted(self.instances)],
        }

    def _apply(self, changes: Sequence[Change], snapshot: bool) -> None:
        webhooks: dict[WebhookKey, Any] = {}
        connections: dict[str, Any] = {}
        for change in changes:
            target = self._classify(change.key, deleted=change.kind == DELETE)
            if target is None:
                continue
            kind, namespace, name = target
            value = None if change.kind == DELETE else self._parse(change.value)
            if kind == INSTANCES:
                if value is None or isinstance(value, InvalidRaw):
                    self.instances.pop(name, None)
                else:
                    self.instances[name] = value
            elif kind == WEBHOOKS:
                if self._namespace is None or namespace == self._namespace:
                    webhooks[(namespace, name)] = value
            else:
                connections[name] = value
        if webhooks or connections:
            self._store.update(webhooks, connections)
        if snapshot and not self._store.loaded:
            self._store.mark_loaded()
            serving, valid = self._store.counts()
            self._log.info(
                "configuration loaded from etcd at revision {revision}: {webhooks} webhooks, "
                "{connections} connections, {rejected} rejected",
                revision=self._mirror.revision,
                webhooks=serving,
                connections=valid,
                rejected=len(self._store.rejections),
            )

    def _classify(self, key: bytes, deleted: bool) -> tuple[str, str, str] | None:
        """(kind, namespace, name) of a configuration key, or None for other keys."""
        shown = key.decode("utf-8", "replace")
        self.skipped.pop(shown, None)
        try:
            rest = key[len(self._prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            self._skip(shown, "key is not valid UTF-8", deleted)
            return None
        parts = rest.split("/")
        if len(parts) != 3:
            return None
        namespace, kind, name = parts
        if namespace == GLOBAL and kind in (CONNECTIONS, INSTANCES) and name:
            return kind, GLOBAL, name
        if kind != WEBHOOKS or not name:
            return None
        problem = namespace_problem(namespace)
        if problem:
            self._skip(shown, problem, deleted)
            return None
        return WEBHOOKS, namespace, name

    def _skip(self, key: str, reason: str, deleted: bool) -> None:
        if deleted:
            return  # a skipped key going away: nothing left to report
        self.skipped[key] = reason
        self._log.error("skipped etcd key {key!r}: {reason}", key=key, reason=reason)

    @staticmethod
    def _parse(value: bytes) -> Any:
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            return InvalidRaw(f"value is not valid JSON: {e}")
