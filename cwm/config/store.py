"""The reactor-thread cache of live configuration: what each request is looked up in.

A source (the files, or etcd) hands raw entries to the store; the store
substitutes, validates and builds each entry's checks and module once, and
keeps the last good version of an entry whose new version is invalid. Every
change is applied on the reactor thread between two requests, so a request
never sees a half-applied change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cwm.auth import WebhookChecks, build_checks
from cwm.config.model import (
    ConnectionEntry,
    WebhookEntry,
    parse_connection_entry,
    parse_webhook_entry,
)
from cwm.config.secrets import (
    SecretsPending,
    SecretUnavailable,
    Substituted,
    resolve,
)
from cwm.errors import ConfigError
from cwm.modules.base import Module, ModuleContext
from cwm.modules.registry import build_module, is_known

if TYPE_CHECKING:
    from cwm.config.secrets import SecretRef


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
        return asdict(self)


@dataclass(frozen=True)
class Unavailable:
    """An entry held back because a secret it needs cannot be resolved (yet)."""

    kind: str  # "webhook" or "connection"
    namespace: str | None
    name: str
    reason: str
    waiting: bool  # not read yet, rather than failed

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


EntryKey = tuple[str, str | None, str]
"""("webhook", namespace, id) or ("connection", None, name)."""


class SecretTable(Protocol):
    """The Vault values the store resolves against (``cwm.config.resolver.SecretResolver``)."""

    notify: Callable[[set[EntryKey]], None] | None

    def lookup(self, ref: SecretRef) -> str | Exception | None: ...

    def track(self, key: EntryKey, refs: frozenset[SecretRef], reread: bool) -> None: ...


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

    An entry whose secrets cannot be resolved is held back on its own
    (``unavailable``): its webhook answers 503 while every other one serves.
    With a ``SecretResolver``, Vault references are read on the reactor and
    the entries that use a field are rebuilt whenever its value changes.
    """

    _log = Logger()

    def __init__(
        self,
        module_context: ModuleContext,
        environ: Mapping[str, str],
        build: Callable[[str, Mapping[str, Any], ModuleContext], Module] = build_module,
        known_module: Callable[[str], bool] = is_known,
        secrets: SecretTable | None = None,
        on_loaded: Callable[[], None] | None = None,
    ) -> None:
        """``on_loaded`` is called once, when the store first counts as loaded."""
        self._on_loaded = on_loaded
        self._context = module_context
        self._environ = environ
        self._build = build
        self._known_module = known_module
        self._secrets = secrets
        if secrets is not None:
            secrets.notify = self._secrets_changed
        self._raw_webhooks: dict[WebhookKey, Any] = {}
        self._raw_connections: dict[str, Any] = {}
        self._webhooks: dict[str, dict[str, Webhook]] = {}
        self._connections: dict[str, ConnectionEntry] = {}
        self._connection_prints: dict[str, str] = {}
        self._rejections: dict[EntryKey, Rejection] = {}
        self._unavailable: dict[EntryKey, Unavailable] = {}
        self._source_loaded = False
        self.loaded = False

    def mark_loaded(self) -> None:
        """The source delivered its first complete configuration.

        The store counts as loaded once, in addition, no entry is still
        waiting for the first read of a Vault secret (each read ends within
        the Vault timeout, in success or failure).
        """
        self._source_loaded = True
        self._settle_loaded()

    def _settle_loaded(self) -> None:
        if self.loaded or not self._source_loaded:
            return
        if any(u.waiting for u in self._unavailable.values()):
            return
        self.loaded = True
        if self._on_loaded is not None:
            self._on_loaded()

    @property
    def rejections(self) -> tuple[Rejection, ...]:
        """Every entry that is not serving its current version, and why."""
        return tuple(self._rejections.values())

    @property
    def unavailable(self) -> tuple[Unavailable, ...]:
        """Every entry held back for a secret, and why (never a value)."""
        return tuple(self._unavailable.values())

    def lookup(self, namespace: str, webhook_id: str) -> Webhook | None:
        """The serving webhook, or None."""
        found = self._webhooks.get(namespace)
        return found.get(webhook_id) if found is not None else None

    def held_back(self, namespace: str, webhook_id: str) -> Unavailable | None:
        """Why a webhook that is not serving waits for a secret, or None."""
        return self._unavailable.get(("webhook", namespace, webhook_id))

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
        reread: bool = True,
    ) -> tuple[Rejection, ...]:
        """Apply changed keys: a raw value puts the entry, None deletes it.

        A webhook that uses a changed connection is rebuilt, and so is every
        rejected or held-back webhook (the connection it lacked may have
        arrived). With ``reread`` (a source's change), the Vault fields of the
        changed entries are read again unless their value is still fresh.

        Returns:
            Every rejected entry (as ``rejections``).
        """
        affected = dict(webhooks)
        if connections:
            for name, raw in connections.items():
                self._apply_connection(name, raw, reread)
            changed = set(connections)
            for entries in self._webhooks.values():
                for webhook in entries.values():
                    if webhook.entry.connection in changed:
                        affected.setdefault((webhook.namespace, webhook.webhook_id), _MISSING)
            for kind, namespace, name in [*self._rejections, *self._unavailable]:
                if kind == "webhook" and namespace is not None:
                    affected.setdefault((namespace, name), _MISSING)
        context = replace(
            self._context, connections={n: c.raw for n, c in self._connections.items()}
        )
        for (namespace, webhook_id), raw in affected.items():
            entry_reread = reread
            if raw is _MISSING:
                raw = self._raw_webhooks.get((namespace, webhook_id))
                entry_reread = False
            self._apply_webhook(namespace, webhook_id, raw, context, entry_reread)
        self._settle_loaded()
        return self.rejections

    def close(self) -> Deferred[None]:
        """Close every module instance; fires when all have closed."""
        from twisted.internet.defer import DeferredList

        modules = [w.module for entries in self._webhooks.values() for w in entries.values()]
        self._webhooks = {}
        return DeferredList([self._close(m) for m in modules], consumeErrors=True).addCallback(
            lambda _: None
        )

    def _secrets_changed(self, keys: set[EntryKey]) -> None:
        """A Vault field changed (read, rotated, failed): rebuild the entries using it."""
        webhooks: dict[WebhookKey, Any] = {}
        connections: dict[str, Any] = {}
        for kind, namespace, name in keys:
            if kind == "connection" and name in self._raw_connections:
                connections[name] = self._raw_connections[name]
            elif kind == "webhook" and namespace is not None:
                raw = self._raw_webhooks.get((namespace, name))
                if raw is not None:
                    webhooks[(namespace, name)] = raw
        if webhooks or connections:
            self.update(webhooks, connections, reread=False)

    def _substitute(self, key: EntryKey, raw: Any, where: str, reread: bool) -> Substituted:
        """Resolve the references of one entry and tell the resolver which fields it uses."""
        lookup = self._secrets.lookup if self._secrets is not None else None
        try:
            done = resolve(raw, self._environ, where, lookup)
        except (SecretsPending, SecretUnavailable) as e:
            self._track(key, e.refs, reread)
            raise
        except ConfigError:
            self._track(key, frozenset(), False)
            raise
        self._track(key, done.refs, reread)
        return done

    def _track(self, key: EntryKey, refs: Any, reread: bool) -> None:
        if self._secrets is not None:
            self._secrets.track(key, refs, reread)

    def _hold(self, key: EntryKey, reason: str, waiting: bool) -> None:
        kind, namespace, name = key
        known = self._unavailable.get(key)
        self._unavailable[key] = Unavailable(kind, namespace, name, reason, waiting)
        if waiting or (known is not None and known.reason == reason):
            return
        self._log.error(
            "{kind} {name!r}{where} is held back: {reason}",
            kind=kind,
            name=name,
            where=f" in namespace {namespace!r}" if namespace else "",
            reason=reason,
        )

    def _apply_connection(self, name: str, raw: Any, reread: bool) -> None:
        key: EntryKey = ("connection", None, name)
        self._rejections.pop(key, None)
        held = self._unavailable.pop(key, None)
        if raw is None:
            self._raw_connections.pop(name, None)
            self._connections.pop(name, None)
            self._connection_prints.pop(name, None)
            self._track(key, frozenset(), False)
            return
        self._raw_connections[name] = raw
        try:
            if isinstance(raw, InvalidRaw):
                self._track(key, frozenset(), False)
                raise ConfigError(raw.reason)
            substituted = self._substitute(key, raw, name, reread).value
            self._connections[name] = parse_connection_entry(name, substituted)
            self._connection_prints[name] = _fingerprint(substituted)
        except ConfigError as e:
            self._reject("connection", None, name, str(e), name in self._connections)
        except SecretsPending as e:
            if name not in self._connections:
                self._hold(key, e.reason, waiting=True)
        except SecretUnavailable as e:
            self._connections.pop(name, None)
            self._connection_prints.pop(name, None)
            self._hold(key, e.reason, waiting=False)
        if held is not None and key not in self._unavailable:
            self._log.info("connection {name!r} serves again", name=name)

    def _apply_webhook(
        self, namespace: str, webhook_id: str, raw: Any, context: ModuleContext, reread: bool
    ) -> None:
        key = (namespace, webhook_id)
        entry_key: EntryKey = ("webhook", namespace, webhook_id)
        self._rejections.pop(entry_key, None)
        held = self._unavailable.pop(entry_key, None)
        serving = self._webhooks.setdefault(namespace, {})
        previous = serving.get(webhook_id)
        webhook: Webhook | None = previous
        if raw is None:
            self._raw_webhooks.pop(key, None)
            self._track(entry_key, frozenset(), False)
            webhook = None
        else:
            self._raw_webhooks[key] = raw
            try:
                webhook = self._build_webhook(namespace, webhook_id, raw, previous, context, reread)
            except ConfigError as e:
                self._reject("webhook", namespace, webhook_id, str(e), previous is not None)
            except SecretsPending as e:
                # The last good version (if any) serves until the new secrets are read.
                if previous is None:
                    self._hold(entry_key, e.reason, waiting=True)
            except SecretUnavailable as e:
                # A secret that cannot be read must not keep an old value working.
                webhook = None
                self._hold(entry_key, e.reason, waiting=False)
        if webhook is None:
            serving.pop(webhook_id, None)
        else:
            serving[webhook_id] = webhook
        if previous is not None and previous is not webhook:
            self._close(previous.module)
        if not serving:
            del self._webhooks[namespace]
        if held is not None and not held.waiting and webhook is not None:
            self._log.info(
                "webhook {webhook_id!r} in namespace {namespace!r} serves again",
                webhook_id=webhook_id,
                namespace=namespace,
            )

    def _build_webhook(
        self,
        namespace: str,
        webhook_id: str,
        raw: Any,
        previous: Webhook | None,
        context: ModuleContext,
        reread: bool,
    ) -> Webhook:
        """Build one entry, or return ``previous`` when nothing it depends on changed.

        Raises:
            ConfigError, SecretsPending, SecretUnavailable: see ``_apply_webhook``.
        """
        entry_key: EntryKey = ("webhook", namespace, webhook_id)
        if isinstance(raw, InvalidRaw):
            self._track(entry_key, frozenset(), False)
            raise ConfigError(raw.reason)
        substituted = self._substitute(entry_key, raw, webhook_id, reread).value
        connection = substituted.get("connection") if isinstance(substituted, dict) else None
        if isinstance(connection, str):
            held = self._unavailable.get(("connection", None, connection))
            if held is not None and held.waiting:
                raise SecretsPending(frozenset(), frozenset(), f"connection '{connection}': {held.reason}")
            if held is not None:
                raise SecretUnavailable(f"connection '{connection}': {held.reason}", frozenset())
        entry = parse_webhook_entry(webhook_id, substituted, self._known_module, self._connections)
        fingerprint = _fingerprint(
            [substituted, self._connection_prints.get(entry.connection or "", "")]
        )
        if previous is not None and previous.fingerprint == fingerprint:
            return previous  # unchanged: keep its module and its rate-limit state
        checks = build_checks(entry.raw)
        try:
            module = self._build(
                entry.module,
                entry.module_config,
                replace(
                    context,
                    entry=(namespace, webhook_id),
                    secret_headers=checks.secret_headers,
                    secret_params=checks.secret_params,
                    credential_headers=checks.credential_headers,
                ),
            )
        except ConfigError as e:
            raise ConfigError(f"module '{entry.module}': {e}") from None
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

