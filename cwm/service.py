"""The composition root: ``makeService(options)`` builds the receiver's service tree.

The only module that may import the global reactor, and only lazily.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.web.client import HTTPConnectionPool

from cwm.config.files import FileConfigSource
from cwm.config.store import ConfigStore
from cwm.modules.base import ModuleContext
from cwm.modules.ssrf import build_http_clients
from cwm.pipeline import WebhookPipeline
from cwm.settings import ReceiverOptions, Settings
from cwm.web.limits import LimitedSite
from cwm.web.receiver import WebhookReceiver

Options = ReceiverOptions


class _StoreService(Service):
    """Closes every module instance, then the HTTP pools, once everything else has stopped."""

    def __init__(self, store: ConfigStore, pools: tuple[HTTPConnectionPool, ...]) -> None:
        self._store = store
        self._pools = pools

    def stopService(self) -> Deferred[None]:
        super().stopService()

        def close_pools(_: object) -> Deferred[None]:
            closing = [pool.closeCachedConnections() for pool in self._pools]
            return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

        return self._store.close().addCallback(close_pools)


def _sighup_installer(reactor: Any) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def install(callback: Callable[[], None]) -> Callable[[], None]:
        previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: reactor.callFromThread(callback)
        )

        def remove() -> None:
            signal.signal(signal.SIGHUP, previous)

        return remove

    return install


def build_receiver(
    settings: Settings,
    reactor: Any,
    environ: Mapping[str, str],
    stdout: Any,
    install_reload_signal: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
) -> tuple[MultiService, WebhookReceiver, LimitedSite]:
    """Wire the receiver from its settings; returns the tree and its web parts."""
    pools = (HTTPConnectionPool(reactor, persistent=True), HTTPConnectionPool(reactor, persistent=True))
    guarded, unguarded = build_http_clients(reactor, pools)
    context = ModuleContext(
        clock=reactor,
        stdout=stdout,
        http=guarded,
        http_unguarded=unguarded,
        working_dir=settings.working_dir,
    )
    store = ConfigStore(context, environ)
    source = FileConfigSource(
        store,
        settings.webhooks_file,
        settings.connections_file,
        reactor,
        watching=settings.file_watching,
        debounce=settings.reload_debounce,
        install_reload_signal=install_reload_signal,
    )
    pipeline = WebhookPipeline(store, reactor, settings.max_concurrent_tasks)

    def health() -> tuple[bool, Mapping[str, Any]]:
        webhooks, connections = store.counts()
        return True, {
            "components": {
                "config_manager": "degraded" if source.errors else "healthy",
                "config_backend": settings.config_backend,
            },
            "config": {
                "webhooks": webhooks,
                "connections": connections,
                "rejected": [r.as_json() for r in store.rejections],
                "errors": source.errors,
                "last_reload": source.last_reload,
            },
        }

    receiver = WebhookReceiver(pipeline, reactor, health)
    site = LimitedSite(receiver.resource(), settings.max_body_bytes, reactor)
    top = MultiService()
    # Started in this order, stopped in reverse: the listener stops first,
    # then the watcher, then every module closes.
    _StoreService(store, pools).setServiceParent(top)
    source.setServiceParent(top)
    StreamServerEndpointService(serverFromString(reactor, settings.listen), site).setServiceParent(top)
    return top, receiver, site


def makeService(options: ReceiverOptions) -> MultiService:
    """twistd's entry point."""
    from twisted.internet import reactor

    top, _, _ = build_receiver(
        options.settings,
        reactor,
        os.environ,
        sys.__stdout__,
        install_reload_signal=_sighup_installer(reactor),
    )
    return top
