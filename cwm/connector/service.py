"""``twistd cwm-connector``: the composition root of the local connector.

The only connector module that may import the global reactor, and only lazily.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from klein import Klein
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from cwm.connector.dispatch import Counters, Dispatcher
from cwm.connector.logs import connector_logger, set_level
from cwm.connector.message import Delivery
from cwm.connector.settings import ConnectorSettings, parse_connector_settings, read_config_file
from cwm.connector.streams import CloudLink
from cwm.errors import ConfigError
from cwm.modules.runtime import close_pools
from cwm.web.errors import install_json_errors, json_answer
from cwm.web.limits import NamedRequest

COUNTERS_LOG_INTERVAL = 60.0


class ConnectorOptions(usage.Options):
    """Command-line options of ``twistd cwm-connector`` (each also a ``CONNECTOR_*`` variable
    and a key of the ``--config`` file; an option given here wins)."""

    optParameters = [
        ["config", "c", None, "JSON config file (upstream's connector keys)."],
        ["cloud-url", None, None, "Base URL of the cloud cwm (CONNECTOR_CLOUD_URL)."],
        ["channel", None, None, "Channel name (CONNECTOR_CHANNEL)."],
        ["token", None, None, "Channel token (CONNECTOR_TOKEN)."],
        ["protocol", None, None, "websocket, sse or long_poll (CONNECTOR_PROTOCOL; default websocket)."],
        ["log-level", None, None, "debug, info, warning, error or critical (CONNECTOR_LOG_LEVEL; default info)."],
        ["connector-id", None, None, "Sent as X-Connector-ID (CONNECTOR_ID)."],
        ["target-url", None, None, "HTTP mode: the default target URL (CONNECTOR_TARGET_URL)."],
        ["webhooks-config", None, None, "Module mode: a local webhooks.json (CONNECTOR_WEBHOOKS_CONFIG)."],
        ["connections-config", None, None, "Module mode: a local connections.json (CONNECTOR_CONNECTIONS_CONFIG)."],
        ["status-listen", None, None, "Server endpoint of the status page, e.g. tcp:9090:interface=127.0.0.1"
                                      " (CONNECTOR_STATUS_LISTEN; default none)."],
    ]
    optFlags = [["no-verify-ssl", None, "Do not verify TLS certificates (CONNECTOR_VERIFY_SSL=false)."]]

    settings: ConnectorSettings

    def postOptions(self) -> None:
        """Parse everything now, so a bad value stops start-up before anything runs."""
        names = [str(option[0]) for option in self.optParameters if option[0] != "config"]
        cli: dict[str, str | None] = {name: self[name] for name in names}
        cli["no-verify-ssl"] = "true" if self["no-verify-ssl"] else None
        try:
            document = read_config_file(self["config"]) if self["config"] else None
            self.settings = parse_connector_settings(
                cli, os.environ, os.getcwd(), document, self["config"] or "the config file"
            )
        except ConfigError as e:
            _fail(str(e))


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"cwm-connector: {message}\n")
    raise SystemExit(2)


class ConnectorService(MultiService):
    """The link to the cloud, the deliveries, and what the deliveries need (its children).

    Stop order (SIGTERM): ask the cloud for nothing more; let running
    deliveries finish within ``drain_timeout`` (nacking the rest with retry);
    close the stream; then stop the children (configuration sources, modules)
    and the HTTP pools.
    """

    log = connector_logger()

    def __init__(self, settings: ConnectorSettings, link: CloudLink, dispatcher: Dispatcher, delivery: Delivery,
                 clock: Any, pools: tuple[Any, ...]) -> None:
        super().__init__()
        self.settings = settings
        self.link = link
        self.dispatcher = dispatcher
        self.delivery = delivery
        self._clock = clock
        self._pools = pools
        self._counters_logged: dict[str, int] | None = None
        self._ticker = LoopingCall(self.log_counters)
        self._ticker.clock = clock
        self.started_at = clock.seconds()

    def startService(self) -> None:
        super().startService()
        for warning in self.settings.warnings:
            self.log.warn("{warning}", warning=warning)
        self.log.info(
            "cwm-connector: channel {channel} at {cloud} over {protocol}, delivery mode {mode},"
            " up to {limit} deliveries at once",
            channel=self.settings.channel, cloud=self.link.status()["cloud_url"], protocol=self.settings.protocol,
            mode=self.settings.delivery_mode, limit=self.settings.max_concurrent_requests,
        )
        self.link.start()
        self._ticker.start(COUNTERS_LOG_INTERVAL, now=False).addErrback(
            lambda f: self.log.failure("counter logging stopped", f))

    def log_counters(self, final: bool = False) -> None:
        """One structured line with every counter (when they changed, or at stop)."""
        counters = self.dispatcher.counters.as_json()
        if counters == self._counters_logged and not final:
            return
        self._counters_logged = counters
        self.log.info(
            "counters: {received} received, {delivered} delivered, {nacked} nacked, {dead_lettered} dead-lettered,"
            " {reconnects} reconnects",
            counters=counters, in_progress=self.dispatcher.running, waiting=self.dispatcher.waiting, **counters,
        )

    def stopService(self) -> Deferred[None]:
        if self._ticker.running:
            self._ticker.stop()
        self.link.quiesce()
        running = self.dispatcher.running + self.dispatcher.waiting
        if running:
            self.log.info("stopping: {running} deliveries to finish (at most {timeout:g}s)",
                          running=running, timeout=self.settings.drain_timeout)
        d = self.dispatcher.drain(self.settings.drain_timeout)
        d.addCallback(lambda _: self.link.stop())
        d.addCallback(lambda _: self.dispatcher.give_back())
        # The children (configuration sources, then the modules' closing service) stop here.
        d.addCallback(lambda _: MultiService.stopService(self))
        d.addCallback(lambda _: close_pools(self._pools))
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result: object) -> None:
        self.log_counters(final=True)
        if isinstance(result, Failure):
            self.log.failure("stopping the connector failed", result)

    def status(self) -> dict[str, Any]:
        return {
            "status": "connected" if self.link.connected else "disconnected",
            "link": self.link.status(),
            "delivery": {
                "mode": self.settings.delivery_mode,
                "in_progress": self.dispatcher.running,
                "waiting": self.dispatcher.waiting,
                "max_concurrent_requests": self.settings.max_concurrent_requests,
                **self.delivery.status(),
            },
            "counters": self.dispatcher.counters.as_json(),
            "uptime_seconds": round(self._clock.seconds() - self.started_at, 3),
        }


class StatusPage:
    """``GET /health`` (200 connected, 503 not) and ``GET /status`` (everything, no secrets)."""

    app = Klein()

    def __init__(self, connector: ConnectorService) -> None:
        self._connector = connector

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        status = self._connector.status()
        body = {"status": status["status"], "last_error": status["link"]["last_error"]}
        return json_answer(request, 200 if status["status"] == "connected" else 503, json.dumps(body).encode())

    @app.route("/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        return json_answer(request, 200, json.dumps(self._connector.status()).encode())


install_json_errors(StatusPage.app)


def _delivery(settings: ConnectorSettings, reactor: Any, environ: Mapping[str, str], stdout: Any,
              parent: MultiService, policy: Any, daemon: bool) -> tuple[Delivery, tuple[Any, ...]]:
    """The delivery of the configured mode; its services go under ``parent``."""
    if settings.delivery_mode in ("etcd", "module"):
        from cwm.collector import FullCollectionHold
        from cwm.connector.local import etcd_delivery, module_delivery

        # Full garbage collections held off while a large message's payload is alive (bounded).
        hold = FullCollectionHold(reactor)
        hold.setServiceParent(parent)
        build = etcd_delivery if settings.delivery_mode == "etcd" else module_delivery
        return build(settings, reactor, environ, stdout, parent, output_to_log=daemon, payload_hold=hold), ()
    from cwm.connector.http import HttpDelivery, http_client

    client, pool = http_client(reactor, settings, policy)
    return HttpDelivery(settings, client, reactor), (pool,)


def build_connector(settings: ConnectorSettings, reactor: Any, environ: Mapping[str, str],
                    stdout: Any, daemon: bool = False) -> tuple[MultiService, ConnectorService]:
    """Wire the connector from its settings; returns the service tree and the connector.

    ``daemon``: twistd runs without ``-n``, so stdout is /dev/null and the
    ``log`` module (module and etcd modes) writes to twistd's log instead.

    Raises:
        ConfigError: a TLS file, a local config file or the etcd namespace is unusable.
    """
    from cwm.connector.http import http_client, tls_policy

    set_level(settings.log_level)
    top = MultiService()
    policy = tls_policy(settings)
    cloud, cloud_pool = http_client(reactor, settings, policy)
    counters = Counters()
    holder = MultiService()
    delivery, pools = _delivery(settings, reactor, environ, stdout, holder, policy, daemon)
    dispatcher = Dispatcher(delivery, reactor, settings.max_concurrent_requests, counters)
    link = CloudLink(settings, reactor, cloud, dispatcher, policy.creator)
    connector = ConnectorService(settings, link, dispatcher, delivery, reactor, (cloud_pool, *pools))
    for child in list(holder):
        child.disownServiceParent()
        child.setServiceParent(connector)
    connector.setServiceParent(top)
    if settings.status_listen:
        page = StatusPage(connector)
        StreamServerEndpointService(
            serverFromString(reactor, settings.status_listen), Site(page.resource(), requestFactory=NamedRequest)
        ).setServiceParent(top)
    return top, connector


def makeService(options: ConnectorOptions) -> MultiService:
    """twistd's entry point."""
    from twisted.internet import reactor

    from cwm.service import daemonized

    try:
        top, _ = build_connector(options.settings, reactor, os.environ, sys.__stdout__, daemon=daemonized(options))
    except ConfigError as e:
        _fail(str(e))
    return top


Options = ConnectorOptions
