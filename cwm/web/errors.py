"""The one way an answer other than success becomes JSON, shared by every Klein app of cwm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from cwm.errors import HTTPError
from cwm.web.limits import json_error_bytes

_log = Logger(namespace="cwm.web")


def json_answer(request: IRequest, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """Set status and headers of a JSON answer; returns its body."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return body


def error_answer(request: IRequest, status: int, detail: str, headers: Mapping[str, str] | None = None) -> bytes:
    return json_answer(request, status, json_error_bytes(detail), headers)


def _http_error(self: Any, request: IRequest, failure: Failure) -> bytes:
    error = failure.value
    assert isinstance(error, HTTPError)
    return error_answer(request, error.status, error.detail, error.headers)


def _routing_error(self: Any, request: IRequest, failure: Failure) -> bytes:
    error = failure.value
    assert isinstance(error, HTTPException)
    code = error.code or 500
    headers: dict[str, str] = {}
    if code == 404:
        detail = "Not Found"
    elif isinstance(error, RequestRedirect):
        # werkzeug builds an absolute URL from the request's Host: send the path only
        # (one leading slash: "//x" would be read as another host).
        target = urlsplit(error.new_url)
        headers["Location"] = "/" + target.path.lstrip("/") + (f"?{target.query}" if target.query else "")
        detail = "Moved Permanently"
    elif isinstance(error, MethodNotAllowed):
        allowed = ", ".join(error.valid_methods or ())
        detail = f"Method {request.method.decode('ascii', 'replace')} not allowed; use {allowed}"
        headers["Allow"] = allowed
    else:
        detail = error.description or error.name
    return error_answer(request, code, detail, headers)


def _unexpected(self: Any, request: IRequest, failure: Failure) -> bytes | None:
    if failure.check(CancelledError):
        return None  # the client went away; nobody to answer
    _log.failure("unexpected error answering {path}", failure, path=request.path)
    return error_answer(request, 500, "Internal server error")


def install_json_errors(app: Klein) -> None:
    """Every error of ``app``'s routes answers ``{"detail": ...}``; no traceback reaches a client."""
    app.handle_errors(HTTPError)(_http_error)
    app.handle_errors(HTTPException)(_routing_error)
    app.handle_errors(Exception)(_unexpected)
