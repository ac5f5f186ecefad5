"""The receiver's HTTP surface: thin Klein routes and the one place errors become JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from cwm.errors import HTTPError
from cwm.pipeline import OK, Answer, WebhookPipeline
from cwm.request import InboundRequest
from cwm.web.limits import json_error_bytes

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
    ) -> None:
        self._pipeline = pipeline
        self._clock = clock
        self._health = health

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        return _render_answer(OK, request)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        healthy, components = self._health()
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "service": SERVICE_NAME,
            "timestamp": self._clock.seconds(),
        }
        body.update(components)
        return _json(request, 200 if healthy else 503, json.dumps(body).encode(), {})

    @app.route("/webhook/<webhook_id>", methods=["POST"])
    def webhook(self, request: IRequest, webhook_id: str) -> Deferred[bytes]:
        return self._serve(request, None, webhook_id)

    @app.route("/webhook/<namespace>/<webhook_id>", methods=["POST"])
    def namespaced_webhook(self, request: IRequest, namespace: str, webhook_id: str) -> Deferred[bytes]:
        return self._serve(request, namespace, webhook_id)

    def _serve(self, request: IRequest, namespace: str | None, webhook_id: str) -> Deferred[bytes]:
        inbound = inbound_request(request, self._clock.seconds())
        d = Deferred.fromCoroutine(self._pipeline.handle(namespace, webhook_id, inbound))
        return d.addCallback(_render_answer, request)

    @app.handle_errors(HTTPError)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPError)
        return _render_error(request, error.status, error.detail, error.headers)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        code = error.code or 500
        headers: dict[str, str] = {}
        if code == 404:
            detail = "Not Found"
        elif isinstance(error, MethodNotAllowed):
            allowed = ", ".join(error.valid_methods or ())
            detail = f"Method {request.method.decode('ascii', 'replace')} not allowed; use {allowed}"
            headers["Allow"] = allowed
        else:
            detail = error.description or error.name
        return _render_error(request, code, detail, headers)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None  # the client went away; nobody to answer
        self._log.failure("unexpected error answering {path}", failure, path=request.path)
        return _render_error(request, 500, "Internal server error", {})


def _render_answer(answer: Answer, request: IRequest) -> bytes:
    return _json(request, answer.status, answer.body, {})


def _render_error(request: IRequest, status: int, detail: str, headers: Mapping[str, str]) -> bytes:
    return _json(request, status, json_error_bytes(detail), headers)


def _json(request: IRequest, status: int, body: bytes, headers: Mapping[str, str]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    for name, value in headers.items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return body
