"""The receiver's HTTP surface: thin Klein routes; Webhook Connect's are mounted under it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from cwm.pipeline import OK, Answer, WebhookPipeline
from cwm.readiness import RETRY_AFTER, Readiness, readiness_body
from cwm.request import InboundRequest
from cwm.web.errors import install_json_errors, json_answer

SERVICE_NAME = "webhook-service"


def inbound_request(request: IRequest, received_at: float) -> InboundRequest:
    """The pure view of a Twisted request that checks and modules work on."""
    headers: dict[str, list[str]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        headers[name.decode("latin-1").lower()] = [v.decode("latin-1") for v in values]
    query = {
        k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
        for k, vs in (request.args or {}).items()
    }
    address = request.getClientAddress()
    return InboundRequest(
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("utf-8", "replace"),
        body=request.content.getvalue() if request.content is not None else b"",
        peer_ip=getattr(address, "host", "unix"),
        received_at=received_at,
        headers=headers,
        query=query,
    )


class WebhookReceiver:
    """Routes of ``twistd cwm``; each reads the request, calls one method, answers."""

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        pipeline: WebhookPipeline,
        clock: IReactorTime,
        health: Callable[[], tuple[bool, Mapping[str, Any]]],
        connect: IResource,
        connect_admin: IResource,
        readiness: Readiness | None = None,
    ) -> None:
        """``connect`` and ``connect_admin`` serve ``/connect/`` and ``/admin/webhook-connect/``;
        ``readiness`` answers ``/ready`` (none: always ready)."""
        self._pipeline = pipeline
        self._clock = clock
        self._health = health
        self._connect = connect
        self._connect_admin = connect_admin
        self._readiness = readiness if readiness is not None else Readiness()

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        return _render_answer(OK, request)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """Liveness: 200 while the process serves, whatever its backends say; 503 only when it cannot."""
        try:
            healthy, components = self._health()
        except Exception:
            # The configuration's state cannot even be read: this process cannot serve.
            self._log.failure("GET /health: the state of the configuration cannot be read")
            healthy, components = False, {"components": {"config_manager": "unhealthy"}}
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "service": SERVICE_NAME,
            "timestamp": self._clock.seconds(),
        }
        body.update(components)
        return json_answer(request, 200 if healthy else 503, json.dumps(body).encode())

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        """Readiness: 200 when the configuration is loaded and every backend in use is reachable."""
        ready, components = self._readiness.check()
        body = readiness_body(ready, components, SERVICE_NAME, self._clock.seconds())
        headers = {"Cache-Control": "no-store"}
        if not ready:
            headers["Retry-After"] = str(RETRY_AFTER)
        return json_answer(request, 200 if ready else 503, json.dumps(body).encode(), headers)

    @app.route("/webhook/<webhook_id>", methods=["POST"])
    def webhook(self, request: IRequest, webhook_id: str) -> Deferred[bytes]:
        return self._serve(request, None, webhook_id)

    @app.route("/webhook/<namespace>/<webhook_id>", methods=["POST"])
    def namespaced_webhook(self, request: IRequest, namespace: str, webhook_id: str) -> Deferred[bytes]:
        return self._serve(request, namespace, webhook_id)

    @app.route("/connect/", branch=True, strict_slashes=False)
    def connect(self, request: IRequest) -> IResource:
        return self._connect

    @app.route("/admin/webhook-connect/", branch=True, strict_slashes=False)
    def connect_admin(self, request: IRequest) -> IResource:
        return self._connect_admin

    def _serve(self, request: IRequest, namespace: str | None, webhook_id: str) -> Deferred[bytes]:
        inbound = inbound_request(request, self._clock.seconds())
        d = Deferred.fromCoroutine(self._pipeline.handle(namespace, webhook_id, inbound))
        return d.addCallback(_render_answer, request)


install_json_errors(WebhookReceiver.app)


def _render_answer(answer: Answer, request: IRequest) -> bytes:
    return json_answer(request, answer.status, answer.body)
