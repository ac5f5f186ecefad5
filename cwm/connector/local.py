"""The connector's "module" and "etcd" delivery modes: relayed webhooks run through cwm's own modules.

Both reuse the receiver's machinery whole: a ``ConfigStore`` builds one module
instance per entry (with ``{$VAR}`` substitution, which upstream's module mode
skipped), fed live either by the local webhooks.json and
connections.json (module mode, polled for changes) or by etcd (etcd mode,
entries under ``{prefix}{namespace}/webhooks/`` and
``{prefix}global/connections/``; other namespaces' entries are not built).

A message's ``webhook_id`` selects the local entry. The entry's checks
(authorization, HMAC, IP lists, rate limit, JSON schema...) are not run: the
cloud already checked the sender, and the message no longer carries what some
of them need (the peer address, the original request line). Upstream ignored
them too. The body is parsed again under the local entry's ``data_type``, so
the module gets exactly the bytes the sender posted.

What each case tells the cloud:

- delivered by the module: ack;
- configuration not loaded yet (etcd unreachable since start), entry held
  back for a secret, or rejected as invalid (a fix of the local configuration
  applies live), module unavailable or failing: requeue;
- no such local webhook, a body the local ``data_type`` cannot parse, or the
  module refused it: dead letter.

Unlike upstream, etcd being down at start does not stop the connector: the
watch retries with backoff, and messages are requeued until the first
snapshot has loaded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath
from twisted.web.client import HTTPConnectionPool

from cwm.body import LARGE_BODY, parse_body, thd_parse_body
from cwm.collector import NoHold, PayloadHold
from cwm.config.files import FileConfigSource, read_document
from cwm.config.model import DEFAULT_NAMESPACE, namespace_problem
from cwm.config.store import ConfigStore
from cwm.connector.logs import connector_logger
from cwm.connector.message import DELIVERED, Message, Outcome, dead_letter, requeue
from cwm.connector.settings import ConnectorSettings
from cwm.errors import ConfigError, HTTPError
from cwm.modules.base import ModuleRefused, ModuleUnavailable, WebhookEvent
from cwm.modules.runtime import ModulesService, close_modules, module_context
from cwm.workers import BlockingWork, WorkersBusy

RELOAD_DEBOUNCE = 1.0
"""Seconds a changed local config file must stay unchanged before it is applied."""

CLIENT_IP = "connector"
"""What a module sees as the client address: the sender's is the cloud's to know."""


class ModuleDelivery:
    """Delivers each message to the module of the local webhook entry with its id."""

    _log = connector_logger()

    def __init__(
        self,
        store: ConfigStore,
        namespace: str,
        clock: IReactorTime,
        mode: str = "module",
        source_status: Callable[[], Mapping[str, Any]] = dict,
        pools: tuple[HTTPConnectionPool, ...] = (),
        files: BlockingWork | None = None,
        payload_hold: PayloadHold | None = None,
    ) -> None:
        """
        Args:
            store: The live entries; its source is someone else's to run.
            namespace: Where entries are looked up.
            mode: ``module`` or ``etcd``, as status shows it.
            source_status: What status shows about the source (no secrets).
            pools: The modules' HTTP pools, closed by ``close`` after them.
            files: The modules' file threads: a body over ``LARGE_BODY`` is
                parsed there (None parses every body here).
            payload_hold: Held while such a body's payload is parsed and
                delivered, so that no full garbage collection walks it
                (``cwm.collector``; the composition root's).
        """
        self._files = files
        self._payload_hold: PayloadHold = payload_hold if payload_hold is not None else NoHold()
        self._store = store
        self._namespace = namespace
        self._clock = clock
        self._mode = mode
        self._source_status = source_status
        self._pools = pools

    async def deliver(self, message: Message) -> Outcome:
        """Run the entry's module on the message; every failure is an Outcome (see the module docstring)."""
        webhook_id = message.webhook_id
        if not self._store.loaded:
            return requeue("local configuration not loaded yet")
        if not webhook_id:
            return dead_letter("the message names no webhook")
        webhook = self._store.lookup(self._namespace, webhook_id)
        if webhook is None:
            if self._store.held_back(self._namespace, webhook_id) is not None:
                # The reason (which variable or Vault field) is in status, not sent to the cloud.
                return requeue(f"local webhook '{webhook_id}' waits for a secret")
            if any(
                r.kind == "webhook" and r.namespace == self._namespace and r.name == webhook_id
                for r in self._store.rejections
            ):
                return requeue(f"local webhook '{webhook_id}' has an invalid configuration")
            return dead_letter(f"no local webhook '{webhook_id}'")
        if len(message.body) <= LARGE_BODY:
            return await self._deliver(webhook, message)
        release = self._payload_hold.hold()
        try:
            return await self._deliver(webhook, message)
        finally:
            # On the reactor's next turn, once this frame has let go of the payload.
            self._clock.callLater(0, release)

    async def _deliver(self, webhook: Any, message: Message) -> Outcome:
        webhook_id = message.webhook_id
        entry = webhook.entry
        content_type = message.headers.get("content-type")
        try:
            if self._files is not None and len(message.body) > LARGE_BODY:
                payload = await self._files.run(thd_parse_body, entry.data_type, message.body, content_type)
            else:
                payload = parse_body(entry.data_type, message.body, content_type)
        except HTTPError as e:
            return dead_letter(f"local webhook '{webhook_id}': {e.detail}")
        except WorkersBusy:
            return requeue(f"local webhook '{webhook_id}': the server is busy")
        event = WebhookEvent(
            namespace=self._namespace,
            webhook_id=webhook_id,
            request_id=uuid.uuid4().hex,
            received_at=self._clock.seconds(),
            headers={name: [value] for name, value in message.headers.items()},
            body=message.body,
            payload=payload,
            data_type=entry.data_type,
            client_ip=CLIENT_IP,
        )
        # No deadline of our own: the module bounds its own calls, and the
        # connector's stop cancels this wait (CancelledError passes through).
        try:
            await webhook.module.deliver(event)
        except CancelledError:
            raise
        except ModuleRefused as e:
            return dead_letter(e.reason)
        except ModuleUnavailable as e:
            return requeue(e.reason)
        except Exception:
            self._log.failure(
                "module {module} failed for message {message_id} of local webhook {webhook_id}",
                module=entry.module,
                message_id=message.message_id,
                webhook_id=webhook_id,
            )
            return requeue(f"module '{entry.module}' failed")
        return DELIVERED

    def status(self) -> dict[str, Any]:
        """Counts, what is rejected or held back and why, and the source's state; never a value."""
        webhooks, connections = self._store.counts()
        return {
            "mode": self._mode,
            "namespace": self._namespace,
            "loaded": self._store.loaded,
            "webhooks": webhooks,
            "connections": connections,
            "rejected": [r.as_json() for r in self._store.rejections],
            "secrets_unavailable": [u.as_json() for u in self._store.unavailable],
            **self._source_status(),
        }

    async def close(self) -> None:
        """Close every module instance, then the HTTP pools: for a delivery used
        without a service parent (in a service tree, the parent's stop does it)."""
        await close_modules(self._store, self._pools)


def _store(
    reactor: Any,
    environ: Mapping[str, str],
    stdout: IO[str],
    working_dir: FilePath | None,
    parent: MultiService,
    output_to_log: bool = False,
) -> tuple[ConfigStore, tuple[HTTPConnectionPool, ...], BlockingWork]:
    """The store of the module instances, their pools and file threads; its service closes them when ``parent`` stops.

    ``output_to_log``: the ``log`` module writes to twistd's log, not ``stdout``.
    """
    context, pools = module_context(
        reactor, stdout, working_dir or FilePath(os.getcwd()), output_to_log=output_to_log
    )
    store = ConfigStore(context, environ)
    # Added before the source, so the source stops first.
    ModulesService(store, pools, context).setServiceParent(parent)
    return store, pools, context.files


def module_delivery(
    settings: ConnectorSettings,
    reactor: Any,
    environ: Mapping[str, str],
    stdout: IO[str],
    parent: MultiService,
    working_dir: FilePath | None = None,
    output_to_log: bool = False,
    payload_hold: PayloadHold | None = None,
) -> ModuleDelivery:
    """Module mode: entries from ``webhooks_config`` (and ``connections_config``, if set), reloaded live.

    Add the stream client to ``parent`` after calling this, so that it stops
    before the modules close.

    Args:
        working_dir: What relative module paths are resolved against and
            ``save_to_disk`` is confined to; the current directory by default.
        output_to_log: The ``log`` module writes to twistd's log instead of
            ``stdout`` (twistd running as a daemon has /dev/null as stdout).
        payload_hold: See ``ModuleDelivery``.

    Raises:
        ConfigError: no webhooks file, or a file that cannot be read or
            parsed now (start-up stops rather than dead-letter every message).
    """
    if settings.webhooks_config is None:
        raise ConfigError("module mode needs webhooks_config")
    read_document(settings.webhooks_config, "webhooks")
    if settings.connections_config is not None:
        read_document(settings.connections_config, "connections")
    store, pools, files = _store(reactor, environ, stdout, working_dir, parent, output_to_log)
    source = FileConfigSource(
        store,
        FilePath(settings.webhooks_config),
        FilePath(settings.connections_config) if settings.connections_config is not None else None,
        reactor,
        watching=True,
        debounce=RELOAD_DEBOUNCE,
    )
    source.setServiceParent(parent)

    def source_status() -> Mapping[str, Any]:
        return {
            "webhooks_config": settings.webhooks_config,
            "connections_config": settings.connections_config,
            "errors": source.errors,
            "last_reload": source.last_reload,
        }

    return ModuleDelivery(store, DEFAULT_NAMESPACE, reactor, "module", source_status, pools, files, payload_hold)


def etcd_delivery(
    settings: ConnectorSettings,
    reactor: Any,
    environ: Mapping[str, str],
    stdout: IO[str],
    parent: MultiService,
    working_dir: FilePath | None = None,
    output_to_log: bool = False,
    payload_hold: PayloadHold | None = None,
) -> ModuleDelivery:
    """etcd mode: entries of ``settings.namespace`` and the global connections, live from etcd.

    The watch runs on its own thread (``PrefixWatch``) and retries with backoff
    while etcd is unreachable; until its first snapshot, every message is
    requeued. Add the stream client to ``parent`` after calling this.

    ``output_to_log``, ``payload_hold``: as for ``module_delivery``.

    Raises:
        ConfigError: no etcd host, or a namespace that cannot exist in etcd.
    """
    from cwm.config.etcd import EtcdConfigSource
    from cwm.etcd import client as etcd_client
    from cwm.etcd.mirror import PrefixMirror
    from cwm.etcd.options import EtcdOptions
    from cwm.etcd.watch import PrefixWatch

    if settings.etcd_host is None:
        raise ConfigError("etcd mode needs CONNECTOR_ETCD_HOST")
    problem = namespace_problem(settings.namespace)
    if problem:
        raise ConfigError(f"invalid CONNECTOR_NAMESPACE={settings.namespace!r}: {problem}")
    options = EtcdOptions(
        endpoints=((settings.etcd_host, settings.etcd_port),),
        username=settings.etcd_username,
        password=settings.etcd_password,
    )

    def new_client() -> etcd_client.EtcdClient:
        return etcd_client.EtcdClient(options)

    store, pools, files = _store(reactor, environ, stdout, working_dir, parent, output_to_log)
    mirror = PrefixMirror()
    source = EtcdConfigSource(store, mirror, settings.etcd_prefix, settings.namespace)
    PrefixWatch(new_client, etcd_client, settings.etcd_prefix.encode(), mirror, reactor).setServiceParent(parent)

    def source_status() -> Mapping[str, Any]:
        details = dict(source.status())
        details.pop("instances", None)  # the connector does not announce itself
        return {"etcd": source.health, "etcd_prefix": settings.etcd_prefix, "etcd_status": details}

    return ModuleDelivery(store, settings.namespace, reactor, "etcd", source_status, pools, files, payload_hold)
