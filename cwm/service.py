"""The composition root: ``makeService(options)`` builds the receiver's service tree.

The only module that may import the global reactor, and only lazily.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.web.client import HTTPConnectionPool

from cwm.collector import FullCollectionHold, PayloadHold
from cwm.config.files import FileConfigSource
from cwm.config.store import ConfigStore
from cwm.modules.runtime import ModulesService, module_context
from cwm.pipeline import WebhookPipeline
from cwm.readiness import Readiness, config_component, connect_components, etcd_component, vault_component
from cwm.settings import ReceiverOptions, Settings
from cwm.web.connections import ConnectionLimits
from cwm.web.limits import LimitedSite
from cwm.web.listen import with_backlog
from cwm.web.receiver import WebhookReceiver
from cwm.workers import ThreadWorkers

if TYPE_CHECKING:
    from cwm.config.resolver import SecretResolver
    from cwm.config.vault import VaultClient
    from cwm.connect.hub import ConnectHub

Options = ReceiverOptions


class _VaultService(Service):
    """Keeps the Vault token alive while running; on stop, cancels every read and timer."""

    def __init__(self, client: VaultClient, resolver: SecretResolver, pool: HTTPConnectionPool) -> None:
        self._client = client
        self._resolver = resolver
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        self._client.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._resolver.stop()
        self._client.stop()
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


def _secrets(settings: Settings, reactor: Any, parent: MultiService) -> SecretResolver | None:
    """The Vault reader and the table of fields in use, or None when Vault is off."""
    if settings.vault is None:
        return None
    from cwm.config.resolver import SecretResolver
    from cwm.config.vault import VaultClient, vault_http_client

    http, pool = vault_http_client(reactor, settings.vault)
    client = VaultClient(settings.vault, http, reactor)
    resolver = SecretResolver(client, reactor, ttl=settings.vault.cache_ttl)
    _VaultService(client, resolver, pool).setServiceParent(parent)
    return resolver


class _ConnectService(Service):
    """Runs the Webhook Connect hub; on stop, closes its streams, gives back what they held, then Redis."""

    def __init__(self, hub: ConnectHub, redis: tuple[Any, ...]) -> None:
        self._hub = hub
        self._redis = redis

    def startService(self) -> None:
        super().startService()
        self._hub.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()

        def disconnect(_: object) -> Deferred[None]:
            closing = [connection.disconnect() for connection in self._redis]
            return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

        return self._hub.stop().addCallback(disconnect)


def _connect_hub(settings: Settings, reactor: Any, parent: MultiService, readiness: Readiness) -> ConnectHub | None:
    """Webhook Connect's hub over two Redis connections (commands, the blocking read), or None when off."""
    if settings.connect is None:
        return None
    import txredisapi

    from cwm.connect.buffer import StreamBuffer, redis_tls
    from cwm.connect.channels import token_key
    from cwm.connect.hub import CALL_TIMEOUT, ConnectHub

    address = settings.connect.redis
    common = {
        "host": address.host,
        "port": address.port,
        "dbid": address.db,
        "password": address.password,
        "username": address.username,
        "ssl_context_factory": redis_tls(address, settings.connect.redis_ca_cert),
        "connectTimeout": CALL_TIMEOUT,
        "convertNumbers": False,
    }
    commands = txredisapi.lazyConnectionPool(poolsize=2, replyTimeout=2 * CALL_TIMEOUT, **common)
    reader = txredisapi.lazyConnection(**common)
    prefix, instance = settings.connect.key_prefix, settings.connect.instance
    factory = commands._factory  # txredisapi keeps the pool's state there

    def connected() -> bool:
        # Live, or still making its first connections (the call then waits, bounded).
        return bool(factory.size) or factory.deferred is not None

    hub = ConnectHub(
        StreamBuffer(commands, prefix, instance), StreamBuffer(reader, prefix, instance), reactor, instance, connected,
        token_key=token_key(settings.connect.token_key, settings.connect.admin_token),
    )
    _ConnectService(hub, (commands, reader)).setServiceParent(parent)
    # Ready only with a live Redis connection: ``connected()`` is also true while the
    # pool still makes its first one, which lasts as long as Redis is down at start-up.
    readiness.add(lambda: connect_components(hub.status(), bool(factory.size), hub.last_error))
    return hub


def _sighup_installer(reactor: Any) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def install(callback: Callable[[], None]) -> Callable[[], None]:
        previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: reactor.callFromThread(callback)
        )

        def remove() -> None:
            signal.signal(signal.SIGHUP, previous)

        return remove

    return install


StatusParts = Callable[[], tuple[dict[str, Any], dict[str, Any]]]
"""(components, config) for /health, from the configuration source."""


def _file_source(
    settings: Settings,
    store: ConfigStore,
    reactor: Any,
    parent: MultiService,
    install_reload_signal: Callable[[Callable[[], None]], Callable[[], None]] | None,
) -> StatusParts:
    source = FileConfigSource(
        store,
        settings.webhooks_file,
        settings.connections_file,
        reactor,
        watching=settings.file_watching,
        debounce=settings.reload_debounce,
        install_reload_signal=install_reload_signal,
    )
    source.setServiceParent(parent)

    def status() -> tuple[dict[str, Any], dict[str, Any]]:
        components = {
            "config_manager": (
                "not_configured" if not store.loaded else "degraded" if source.errors else "healthy"
            ),
            "config_backend": "file",
        }
        return components, {"errors": source.errors, "last_reload": source.last_reload}

    return status


def _etcd_source(
    settings: Settings, store: ConfigStore, reactor: Any, parent: MultiService, readiness: Readiness
) -> StatusParts:
    from cwm.config.etcd import EtcdConfigSource
    from cwm.etcd import client as etcd_client
    from cwm.etcd.instances import InstanceRegistration, instance_record
    from cwm.etcd.mirror import PrefixMirror
    from cwm.etcd.watch import PrefixWatch

    etcd = settings.etcd
    assert etcd is not None
    options = etcd.options

    def new_client() -> etcd_client.EtcdClient:
        return etcd_client.EtcdClient(options)

    mirror = PrefixMirror()
    source = EtcdConfigSource(store, mirror, etcd.prefix)
    PrefixWatch(new_client, etcd_client, etcd.prefix.encode(), mirror, reactor).setServiceParent(parent)
    registration = InstanceRegistration(
        new_client, reactor, etcd.prefix, instance_record(settings.listen, reactor.seconds())
    )
    registration.setServiceParent(parent)
    readiness.add(lambda: [etcd_component(source.health, mirror.reason)])

    def status() -> tuple[dict[str, Any], dict[str, Any]]:
        components = {
            "config_manager": "healthy" if store.loaded else "not_configured",
            "config_backend": "etcd",
            "etcd": source.health,
        }
        return components, {"etcd": dict(source.status()), "instance_id": registration.instance_id}

    return status


def _fd_limit() -> int | None:
    """The soft limit on open files, or None when there is none to watch."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def build_receiver(
    settings: Settings,
    reactor: Any,
    environ: Mapping[str, str],
    stdout: Any,
    install_reload_signal: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    daemon: bool = False,
) -> tuple[MultiService, WebhookReceiver, LimitedSite]:
    """Wire the receiver from its settings; returns the tree and its web parts.

    ``daemon``: twistd runs without ``-n``, so stdout is /dev/null and the
    ``log`` module writes to twistd's log instead.
    """
    top = MultiService()
    readiness = Readiness()
    # Started in this order, stopped in reverse: the listener stops first,
    # then the configuration source, then every module closes, then Webhook
    # Connect's streams and Redis, then Vault.
    secrets = _secrets(settings, reactor, top)
    hub = _connect_hub(settings, reactor, top, readiness)
    context, pools = module_context(reactor, stdout, settings.working_dir, connect=hub, output_to_log=daemon)
    store = ConfigStore(context, environ, secrets=secrets, on_loaded=_freeze_gc if settings.gc_freeze else None)
    readiness.add(lambda: [config_component(store.loaded)])
    if secrets is not None:
        resolver = secrets
        readiness.add(lambda: [vault_component(resolver.unreachable(), resolver.in_use, resolver.not_read_yet())])
    ModulesService(store, pools, context).setServiceParent(top)
    if settings.etcd is not None:
        source_status = _etcd_source(settings, store, reactor, top, readiness)
    else:
        source_status = _file_source(settings, store, reactor, top, install_reload_signal)
    body_work = ThreadWorkers(reactor, "cwm-body", BODY_THREADS, BODY_QUEUE_LIMIT)
    body_work.setServiceParent(top)
    pipeline = WebhookPipeline(
        store, reactor, settings.max_concurrent_tasks, settings.default_namespace, body_work=body_work,
        payload_hold=_payload_hold(settings, reactor, top),
    )

    def health() -> tuple[bool, Mapping[str, Any]]:
        webhooks, connections = store.counts()
        components, config = source_status()
        config.update(
            {
                "webhooks": webhooks,
                "connections": connections,
                "rejected": [r.as_json() for r in store.rejections],
                "secrets_unavailable": [u.as_json() for u in store.unavailable],
            }
        )
        if hub is not None:
            connect = hub.status()
            components["webhook_connect"] = "healthy" if connect["buffer"] else "degraded"
            config["webhook_connect"] = connect
        if secrets is not None:
            vault = secrets.status()
            components["vault"] = "degraded" if vault["unavailable"] else "healthy"
            config["vault"] = vault
        return True, {"components": components, "config": config}

    from cwm.connect.admin import ConnectAdmin
    from cwm.connect.api import ConnectStreams

    admin_token = settings.connect.admin_token if settings.connect is not None else None
    receiver = WebhookReceiver(
        pipeline,
        reactor,
        health,
        ConnectStreams(hub, reactor).resource(),
        ConnectAdmin(hub, admin_token, reactor).resource(),
        readiness,
    )
    limits = ConnectionLimits(
        header_timeout=settings.http_header_timeout,
        body_timeout=settings.http_body_timeout,
        idle_timeout=settings.http_idle_timeout,
        max_connections=settings.max_connections,
        fd_limit=_fd_limit(),
    )
    # Only TCP and UNIX ports take a refused connection as None; TLS (ssl:) wraps the protocol.
    wrapped = settings.listen.split(":", 1)[0] not in ("tcp", "tcp6", "unix")
    site = LimitedSite(receiver.resource(), settings.max_body_bytes, reactor, limits, wrapped=wrapped)
    listen = with_backlog(settings.listen, settings.listen_backlog)
    StreamServerEndpointService(serverFromString(reactor, listen), site).setServiceParent(top)
    return top, receiver, site


BODY_THREADS = 2
"""Threads that parse bodies over ``cwm.body.LARGE_BODY``."""

BODY_QUEUE_LIMIT = 16
"""Large bodies accepted for parsing at once; past it the sender gets 503 with Retry-After."""


def _payload_hold(settings: Settings, reactor: Any, parent: MultiService) -> PayloadHold | None:
    """Full garbage collections held off while large payloads are alive (bounded), or None when off."""
    if settings.gc_hold_max <= 0:
        return None
    hold = FullCollectionHold(reactor, max_hold=settings.gc_hold_max)
    hold.setServiceParent(parent)
    return hold


def _freeze_gc() -> None:
    # The objects built for the first configuration live as long as their
    # entries: out of the garbage collector's reach, a full collection with
    # 25,000 webhooks no longer pauses the reactor for about 200 ms.
    gc.freeze()


def daemonized(options: Any) -> bool:
    """Whether twistd runs as a daemon (no ``-n``): its stdout is then /dev/null."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return False
    try:
        return not parent["nodaemon"]
    except KeyError:  # a twistd without daemon mode (Windows)
        return False


def makeService(options: ReceiverOptions) -> MultiService:
    """twistd's entry point."""
    from twisted.internet import reactor

    top, _, _ = build_receiver(
        options.settings,
        reactor,
        os.environ,
        sys.__stdout__,
        install_reload_signal=_sighup_installer(reactor),
        daemon=daemonized(options),
    )
    return top
