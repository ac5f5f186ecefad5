"""What running output modules needs, shared by the receiver and the connector.

Their context, whose HTTP clients use connection pools of their own, whose
blocking file work runs on a few threads of its own and whose ``log`` output
goes through a writer thread; and the service that starts those threads,
and at stop closes every module instance, then the pools, then the threads.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.filepath import FilePath
from twisted.web.client import HTTPConnectionPool

from cwm.modules.base import ModuleContext, TextOutput
from cwm.modules.output import LoggerOutput, StdoutWriter
from cwm.modules.ssrf import build_http_clients, quiet_pool
from cwm.workers import ThreadWorkers

if TYPE_CHECKING:
    from cwm.config.store import ConfigStore

Pools = tuple[HTTPConnectionPool, HTTPConnectionPool]


FILE_THREADS = 4
"""Threads that run the modules' file work (save_to_disk, rendering big log lines)."""

FILE_QUEUE_LIMIT = 200
"""File calls accepted at once, running or waiting; past it the module answers 503."""


def module_context(
    reactor: Any, stdout: IO[str], working_dir: FilePath, connect: Any = None, output_to_log: bool = False
) -> tuple[ModuleContext, Pools]:
    """The context every module is built with, and the (guarded, unguarded) pools to close at stop.

    ``output_to_log``: the ``log`` module writes to twistd's log instead of
    ``stdout`` (a daemon's stdout is /dev/null). Hand the context to
    ``ModulesService``, which runs its threads.
    """
    pools = (quiet_pool(reactor), quiet_pool(reactor))
    guarded, unguarded = build_http_clients(reactor, pools)
    output: TextOutput = LoggerOutput() if output_to_log else StdoutWriter(reactor, stdout)
    context = ModuleContext(
        clock=reactor,
        stdout=stdout,
        http=guarded,
        http_unguarded=unguarded,
        working_dir=working_dir,
        connect=connect,
        files=ThreadWorkers(reactor, "cwm-files", FILE_THREADS, FILE_QUEUE_LIMIT),
        output=output,
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

    def __init__(
        self, store: ConfigStore, pools: tuple[HTTPConnectionPool, ...], context: ModuleContext | None = None
    ) -> None:
        """``context``: the one ``module_context`` built, whose threads this service runs."""
        self._store = store
        self._pools = pools
        parts: tuple[object, ...] = (context.files, context.output) if context is not None else ()
        self._threads = [part for part in parts if isinstance(part, Service)]

    def startService(self) -> None:
        super().startService()
        for part in self._threads:
            part.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()

        def stop_threads(_: object) -> Deferred[None]:
            stopping = [part.stopService() for part in self._threads if part.running]
            return DeferredList(stopping, consumeErrors=True).addCallback(lambda _: None)

        return close_modules(self._store, self._pools).addCallback(stop_threads)
