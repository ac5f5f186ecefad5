"""The reactor-thread cache of live configuration: what each request is looked up in.

A source (files now, etcd later) hands raw entries to the store; the store
substitutes, validates and builds each entry's checks and module once, keeps
the last good version of an entry whose new version is invalid, and swaps the
result in one assignment so a request never sees a half-applied change.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cwm.auth import WebhookChecks, build_checks
from cwm.config.model import (
    ConnectionEntry,
    WebhookEntry,
    parse_connection_entry,
    parse_webhook_entry,
)
from cwm.config.secrets import substitute
from cwm.errors import ConfigError
from cwm.modules.base import Module, ModuleContext
from cwm.modules.registry import build_module, is_known


@dataclass(frozen=True)
class Webhook:
    """One serving webhook: its entry, its built checks and its module instance."""

    namespace: str
    entry: WebhookEntry
    checks: WebhookChecks
    module: Module
    fingerprint: str

    @property
    def webhook_id(self) -> str:
        return self.entry.webhook_id


@dataclass(frozen=True)
class Rejection:
    """An entry that could not be (re)built, and whether an older version still serves."""

    kind: str  # "webhook" or "connection"
    namespace: str | None
    name: str
    reason: str
    serving_previous: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "reason": self.reason,
            "serving_previous": self.serving_previous,
        }


def _fingerprint(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


class InvalidRaw:
    """A source's value that could not even be read as JSON; the store rejects it with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InvalidRaw) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)


WebhookKey = tuple[str, str]
"""(namespace, webhook id)."""

_MISSING = object()


class ConfigStore:
    """Live webhooks by namespace and id, and connections by name.

    Sources hand over raw JSON values: the file source whole documents
    (``replace_all``), the etcd source single keys (``update``). Only what
    changed is rebuilt; an unchanged entry keeps its module instance and its
    rate-limit state.
    """

    _log = Logger()

    def __init__(
        self,
        module_context: ModuleContext,
        environ: Mapping[str, str],
        build: Callable[[str, Mapping[str, Any], ModuleContext], Module] = build_module,
        known_module: Callable[[str], bool] = is_known,
    ) -> None:
        self._context = module_context
        self._environ = environ
        self._build = build
        self._known_module = known_module
        self._raw_webhooks: dict[WebhookKey, Any] = {}
        self._raw_connections: dict[str, Any] = {}
        self._webhooks: dict[str, dict[str, Webhook]] = {}
        self._connections: dict[str, ConnectionEntry] = {}
        self._connection_prints: dict[str, str] = {}
        self._rejections: dict[tuple[str, str | None, str], Rejection] = {}
        self.loaded = False
        self.generation = 0

    def mark_loaded(self) -> None:
        """The source delivered its first complete configuration.

        The objects built so far live as long as their entries, so they are
        moved out of the garbage collector's reach: with 25,000 webhooks a
        full collection would otherwise pause the reactor for about 200 ms.
        """
        if not self.loaded:
            self.loaded = True
            gc.freeze()

    @property
    def rejections(self) -> tuple[Rejection, ...]:
        """Every entry that is not serving its current version, and why."""
        return tuple(self._rejections.values())

    def lookup(self, namespace: str, webhook_id: str) -> Webhook | None:
        """The serving webhook, or None."""
        found = self._webhooks.get(namespace)
        return found.get(webhook_id) if found is not None else None

    def has_namespace(self, namespace: str) -> bool:
        return namespace in self._webhooks

    def counts(self) -> tuple[int, int]:
        """(webhooks serving, connections valid)."""
        return sum(len(n) for n in self._webhooks.values()), len(self._connections)

    def replace_all(
        self,
        webhooks: Mapping[str, Mapping[str, Any]],
        connections: Mapping[str, Any],
    ) -> tuple[Rejection, ...]:
        """Make the given raw documents the whole live configuration.

        Args:
            webhooks: namespace -> webhook id -> raw JSON entry.
            connections: connection name -> raw JSON entry.

        Returns:
            Every rejected entry (as ``rejections``).
        """
        wanted = {
            (namespace, webhook_id): raw
            for namespace, entries in webhooks.items()
            for webhook_id, raw in entries.items()
        }
        webhook_changes: dict[WebhookKey, Any] = {
            key: raw for key, raw in wanted.items() if self._raw_webhooks.get(key, _MISSING) != raw
        }
        webhook_changes.update({key: None for key in self._raw_webhooks if key not in wanted})
        connection_changes: dict[str, Any] = {
            name: raw
            for name, raw in connections.items()
            if self._raw_connections.get(name, _MISSING) != raw
        }
        connection_changes.update({name: None for name in self._raw_connections if name not in connections})
        return self.update(webhook_changes, connection_changes)

    def update(
        self,
        webhooks: Mapping[WebhookKey, Any],
        connections: Mapping[str, Any] | None = None,
    ) -> tuple[Rejection, ...]:
        """Apply changed keys: a raw value puts the entry, None deletes it.

        A webhook that uses a changed connection is rebuilt, and so is every
        rejected webhook (the connection it lacked may have arrived).

        Returns:
            Every rejected entry (as ``rejections``).
        """
        affected = dict(webhooks)
        if connections:
            for name, raw in connections.items():
                self._apply_connection(name, raw)
            changed = set(connections)
            for entries in self._webhooks.values():
                for webhook in entries.values():
                    if webhook.entry.connection in changed:
                        affected.setdefault((webhook.namespace, webhook.webhook_id), _MISSING)
            for kind, namespace, name in list(self._rejections):
                if kind == "webhook" and namespace is not None:
                    affected.setdefault((namespace, name), _MISSING)
        context = replace(
            self._context, connections={n: c.raw for n, c in self._connections.items()}
        )
        for (namespace, webhook_id), raw in affected.items():
            if raw is _MISSING:
                raw = self._raw_webhooks.get((namespace, webhook_id))
            self._apply_webhook(namespace, webhook_id, raw, context)
        self.generation += 1
        return self.rejections

    def close(self) -> Deferred[None]:
        """Close every module instance; fires when all have closed."""
        from twisted.internet.defer import DeferredList

        modules = [w.module for entries in self._webhooks.values() for w in entries.values()]
        self._webhooks = {}
        return DeferredList([self._close(m) for m in modules], consumeErrors=True).addCallback(
            lambda _: None
        )

    def _apply_connection(self, name: str, raw: Any) -> None:
        key = ("connection", None, name)
        self._rejections.pop(key, None)
        if raw is None:
            self._raw_connections.pop(name, None)
            self._connections.pop(name, None)
            self._connection_prints.pop(name, None)
            return
        self._raw_connections[name] = raw
        try:
            if isinstance(raw, InvalidRaw):
                raise ConfigError(raw.reason)
            substituted = substitute(raw, self._environ, name)
            self._connections[name] = parse_connection_entry(name, substituted)
            self._connection_prints[name] = _fingerprint(substituted)
        except ConfigError as e:
            self._reject("connection", None, name, str(e), name in self._connections)

    def _apply_webhook(
        self, namespace: str, webhook_id: str, raw: Any, context: ModuleContext
    ) -> None:
        key = (namespace, webhook_id)
        self._rejections.pop(("webhook", namespace, webhook_id), None)
        serving = self._webhooks.setdefault(namespace, {})
        previous = serving.get(webhook_id)
        if raw is None:
            self._raw_webhooks.pop(key, None)
            if previous is not None:
                del serving[webhook_id]
                self._close(previous.module)
            if not serving:
                del self._webhooks[namespace]
            return
        self._raw_webhooks[key] = raw
        webhook = self._build_webhook(namespace, webhook_id, raw, previous, context)
        if webhook is None:
            if not serving:
                del self._webhooks[namespace]
            return
        serving[webhook_id] = webhook
        if previous is not None and previous is not webhook:
            self._close(previous.module)

    def _build_webhook(
        self,
        namespace: str,
        webhook_id: str,
        raw: Any,
        previous: Webhook | None,
        context: ModuleContext,
    ) -> Webhook | None:
        try:
            if isinstance(raw, InvalidRaw):
                raise ConfigError(raw.reason)
            substituted = substitute(raw, self._environ, webhook_id)
            entry = parse_webhook_entry(webhook_id, substituted, self._known_module, self._connections)
            fingerprint = _fingerprint(
                [substituted, self._connection_prints.get(entry.connection or "", "")]
            )
            if previous is not None and previous.fingerprint == fingerprint:
                return previous  # unchanged: keep its module and its rate-limit state
            checks = build_checks(entry.raw)
            try:
                module = self._build(entry.module, entry.module_config, context)
            except ConfigError as e:
                raise ConfigError(f"module '{entry.module}': {e}") from None
        except ConfigError as e:
            self._reject("webhook", namespace, webhook_id, str(e), previous is not None)
            return previous
        for warning in entry.warnings:
            self._log.warn(
                "webhook {namespace}/{webhook_id}: {warning}",
                namespace=namespace,
                webhook_id=webhook_id,
                warning=warning,
            )
        return Webhook(namespace, entry, checks, module, fingerprint)

    def _reject(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        reason: str,
        serving_previous: bool,
    ) -> None:
        self._rejections[(kind, namespace, name)] = Rejection(
            kind, namespace, name, reason, serving_previous
        )
        self._log.error(
            "rejected {kind} {name!r}{where}: {reason}{previous}",
            kind=kind,
            name=name,
            where=f" in namespace {namespace!r}" if namespace else "",
            reason=reason,
            previous="; its last good version keeps serving" if serving_previous else "",
        )

    def _close(self, module: Module) -> Deferred[None]:
        d: Deferred[None] = Deferred.fromCoroutine(module.close())

        def failed(failure: Any) -> None:
            self._log.failure("closing a module failed", failure)

        return d.addErrback(failed)
