"""The reactor-thread cache of live configuration: what each request is looked up in.

A source (files now, etcd later) hands raw entries to the store; the store
substitutes, validates and builds each entry's checks and module once, keeps
the last good version of an entry whose new version is invalid, and swaps the
result in one assignment so a request never sees a half-applied change.
"""

from __future__ import annotations

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


class ConfigStore:
    """Live webhooks by namespace and id, and connections by name."""

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
        self._webhooks: dict[str, dict[str, Webhook]] = {}
        self._connections: dict[str, ConnectionEntry] = {}
        self._connection_prints: dict[str, str] = {}
        self.rejections: tuple[Rejection, ...] = ()
        self.generation = 0

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
        """Make the given raw documents the live configuration.

        Args:
            webhooks: namespace -> webhook id -> raw JSON entry.
            connections: connection name -> raw JSON entry.

        Returns:
            The entries rejected by this change (also kept in ``rejections``).
        """
        rejections: list[Rejection] = []
        new_connections, connection_prints = self._parse_connections(connections, rejections)
        context = replace(self._context, connections={n: c.raw for n, c in new_connections.items()})

        new_webhooks: dict[str, dict[str, Webhook]] = {}
        for namespace, entries in webhooks.items():
            built: dict[str, Webhook] = {}
            for webhook_id, raw in entries.items():
                webhook = self._build_webhook(
                    namespace, webhook_id, raw, new_connections, connection_prints, context, rejections
                )
                if webhook is not None:
                    built[webhook_id] = webhook
            new_webhooks[namespace] = built

        retired = [
            old.module
            for namespace, entries in self._webhooks.items()
            for webhook_id, old in entries.items()
            if new_webhooks.get(namespace, {}).get(webhook_id) is not old
        ]
        self._webhooks = new_webhooks
        self._connections = new_connections
        self._connection_prints = connection_prints
        self.rejections = tuple(rejections)
        self.generation += 1
        for module in retired:
            self._close(module)
        return self.rejections

    def close(self) -> Deferred[None]:
        """Close every module instance; fires when all have closed."""
        from twisted.internet.defer import DeferredList

        modules = [w.module for entries in self._webhooks.values() for w in entries.values()]
        self._webhooks = {}
        return DeferredList([self._close(m) for m in modules], consumeErrors=True).addCallback(
            lambda _: None
        )

    def _parse_connections(
        self, raw: Mapping[str, Any], rejections: list[Rejection]
    ) -> tuple[dict[str, ConnectionEntry], dict[str, str]]:
        parsed: dict[str, ConnectionEntry] = {}
        prints: dict[str, str] = {}
        for name, value in raw.items():
            try:
                substituted = substitute(value, self._environ, name)
                parsed[name] = parse_connection_entry(name, substituted)
                prints[name] = _fingerprint(substituted)
            except ConfigError as e:
                previous = self._connections.get(name)
                if previous is not None:
                    parsed[name] = previous
                    prints[name] = self._connection_prints[name]
                self._reject(rejections, "connection", None, name, str(e), previous is not None)
        return parsed, prints

    def _build_webhook(
        self,
        namespace: str,
        webhook_id: str,
        raw: Any,
        connections: Mapping[str, ConnectionEntry],
        connection_prints: Mapping[str, str],
        context: ModuleContext,
        rejections: list[Rejection],
    ) -> Webhook | None:
        previous = self.lookup(namespace, webhook_id)
        try:
            substituted = substitute(raw, self._environ, webhook_id)
            entry = parse_webhook_entry(webhook_id, substituted, self._known_module, connections)
            fingerprint = _fingerprint(
                [substituted, connection_prints.get(entry.connection or "", "")]
            )
            if previous is not None and previous.fingerprint == fingerprint:
                return previous  # unchanged: keep its module and its rate-limit state
            checks = build_checks(entry.raw)
            try:
                module = self._build(entry.module, entry.module_config, context)
            except ConfigError as e:
                raise ConfigError(f"module '{entry.module}': {e}") from None
        except ConfigError as e:
            self._reject(rejections, "webhook", namespace, webhook_id, str(e), previous is not None)
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
        rejections: list[Rejection],
        kind: str,
        namespace: str | None,
        name: str,
        reason: str,
        serving_previous: bool,
    ) -> None:
        rejections.append(Rejection(kind, namespace, name, reason, serving_previous))
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
