"""What running output modules needs, shared by the receiver and the connector.

Their context, whose HTTP clients use connection pools of their own, and the
service that closes every module instance and then those pools at stop.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.filepath import FilePath
from twisted.web.client import HTTPConnectionPool

from cwm.modules.base import ModuleContext
from cwm.modules.ssrf import build_http_clients

if TYPE_CHECKING:
    from cwm.config.store import ConfigStore

Pools = tuple[HTTPConnectionPool, HTTPConnectionPool]


def module_context(
    reactor: Any, stdout: IO[str], working_dir: FilePath, connect: Any = None
) -> tuple[ModuleContext, Pools]:
    """The context every module is built with, and the (guarded, unguarded) pools to close at stop."""
    pools = (HTTPConnectionPool(reactor, persistent=True), HTTPConnectionPool(reactor, persistent=True))
    guarded, unguarded = build_http_clients(reactor, pools)
    context = ModuleContext(
        clock=reactor,
        stdout=stdout,
        http=guarded,
        http_unguarded=unguarded,
        working_dir=working_dir,
        connect=connect,
    )
    return context, pools


def close_pools(pools: tuple[HTTPConnectionPool, ...]) -> Deferred[None]:
    """Close the pools' cached connections; fires when all are closed."""
    closing = [pool.closeCachedConnections() for pool in pools]
    return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


def close_modules(store: ConfigStore, pools: tuple[HTTPConnectionPool, ...]) -> Deferred[None]:
    """Close every module instance of ``store``, then the pools; fires when all are closed."""
    return store.close().addCallback(lambda _: close_pools(pools))


class ModulesService(Service):
    """Closes every module instance, then the HTTP pools, once everything else has stopped.

    Add it to the parent before the configuration source, so that the source
    stops first and no reload builds a module after they closed.
    """

    def __init__(self, store: ConfigStore, pools: tuple[HTTPConnectionPool, ...]) -> None:
        self._store = store
        self._pools = pools

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return close_modules(self._store, self._pools)
