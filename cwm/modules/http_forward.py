"""The ``http_webhook`` module: forward the exact received body to a URL.

The body bytes go out as received, with the original Content-Type, so a
downstream signature check still passes. Destinations go through the SSRF
guard (``ctx.http``) unless their host is listed in ``allowed_hosts``.
Upstream's version could not be instantiated at all (its constructor refused
the keyword argument every caller passed, so each webhook using it got a 500);
this one is built once per config entry.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from cwm.errors import ConfigError
from cwm.modules._config import get_str, get_str_list, reject_unknown_keys
from cwm.modules.base import HTTPClientLike, ModuleContext, ModuleUnavailable, WebhookEvent
from cwm.modules.ssrf import REFUSAL_REASON, DestinationNotAllowed, is_forbidden_address
from cwm.request import HEADER_NAME

_KNOWN_KEYS = frozenset(
    {
        "url",
        "method",
        "headers",
        "forward_headers",
        "allowed_headers",
        "timeout",
        "allowed_hosts",
    }
)
_METHODS = frozenset({"POST", "PUT", "PATCH"})
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded by ``forward_headers: true``: hop-by-hop, framing, the
# destination's own Host, and the sender's credentials for cwm.
_NOT_FORWARDED = _HOP_BY_HOP | frozenset({"host", "content-length", "authorization", "cookie"})
# Cannot be forwarded or configured at all: they would break the framing of
# the outgoing request or belong to this hop only.
_FRAMING = _HOP_BY_HOP | frozenset({"content-length"})

_METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
    }
)

_BAD_VALUE_CHARS = re.compile(r"[\r\n\0\u2028\u2029\x0b\x0c]")

_DRAIN_LIMIT = 1024 * 1024
"""Response body bytes read (and discarded) before the connection is dropped."""


def _is_proxy_header(name: str) -> bool:
    return name.startswith("proxy-")


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _host_key(host: str) -> str:
    """A comparable form of a host name or IP literal."""
    normalised = _normalise_host(host).strip("[]")
    try:
        return str(ipaddress.ip_address(normalised))
    except ValueError:
        return normalised


def _as_ip_literal(host: str) -> str | None:
    """The IP address ``host`` spells, including legacy forms like ``127.1``."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


class BodyDrain(Protocol):
    """Reads a response body to its end and throws it away."""

    def __init__(self, finished: Deferred[None]) -> None:
        self._finished = finished
        self._received = 0

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > _DRAIN_LIMIT:
            # Long enough: give up on reusing this connection.
            self.stop()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss) or self._received > _DRAIN_LIMIT:
            self._finished.callback(None)
        else:
            self._finished.errback(reason)

    def stop(self) -> None:
        """Abort the body (and its connection)."""
        producer: Any = self.transport
        if producer is not None:
            producer.stopProducing()


def drain_body(response: Any) -> Deferred[None]:
    """Read and discard ``response``'s body (up to BodyDrain's cap) so its connection can
    be reused; fires when done, fails if the body breaks; cancelling aborts it."""
    if response.length == 0:
        return succeed(None)
    finished: Deferred[None] = Deferred(lambda _: drain.stop())
    drain = BodyDrain(finished)
    response.deliverBody(drain)
    return finished


def _reasons(error: BaseException) -> list[Failure]:
    reasons = getattr(error, "reasons", None)
    return list(reasons) if isinstance(reasons, list) else []


def _is_cancellation(error: BaseException) -> bool:
    if isinstance(error, (CancelledError, ConnectingCancelledError, TimeoutError)):
        return True
    return any(
        reason.check(CancelledError, ConnectingCancelledError) for reason in _reasons(error)
    )


def _is_tls_failure(error: BaseException) -> bool:
    # pyOpenSSL's errors arrive wrapped in ResponseNeverReceived; matched by
    # module so that pyOpenSSL stays an optional import.
    causes = [error] + [reason.value for reason in _reasons(error)]
    return any(type(cause).__module__.startswith("OpenSSL") for cause in causes)


class HTTPForwardModule:
    """Forwards each webhook's body to one URL; built once per config entry."""

    _log = Logger()

    def __init__(
        self,
        *,
        clock: Any,
        http: HTTPClientLike,
        url: str,
        host: str,
        method: str,
        headers: Mapping[str, str],
        forward_all: bool,
        forward_only: frozenset[str],
        timeout: float,
    ) -> None:
        self._clock = clock
        self._http = http
        self._url = url
        self._host = host
        self._method = method
        self._headers = dict(headers)
        self._forward_all = forward_all
        self._forward_only = forward_only
        self._timeout = timeout

    def outgoing_headers(self, event: WebhookEvent) -> Headers:
        """The request headers for ``event``: forwarded, configured, ids."""
        headers = Headers()
        for name, values in event.headers.items():
            lowered = name.lower()
            if lowered == "content-type" or self._forwards(lowered):
                headers.setRawHeaders(lowered, list(values))
        for name, value in self._headers.items():
            headers.setRawHeaders(name, [value])
        headers.setRawHeaders("X-Webhook-ID", [event.webhook_id])
        headers.setRawHeaders("X-Request-ID", [event.request_id])
        return headers

    def _forwards(self, name: str) -> bool:
        if self._forward_all:
            return name not in _NOT_FORWARDED and not _is_proxy_header(name)
        return name in self._forward_only

    async def deliver(self, event: WebhookEvent) -> None:
        """Send the body; return once the destination answered 2xx."""
        started = self._clock.seconds()
        try:
            response = await self._http.request(
                self._method,
                self._url,
                headers=self.outgoing_headers(event),
                data=event.body,
                allow_redirects=False,
                unbuffered=True,
                timeout=self._timeout,
                reactor=self._clock,
            )
        except CancelledError as error:
            if self._clock.seconds() - started < self._timeout:
                raise  # our caller cancelled (the client went away)
            raise self._unavailable(event, error, started) from error
        except Exception as error:
            raise self._unavailable(event, error, started) from error
        status = response.code
        await self._drain(response, started)
        if not 200 <= status < 300:
            self._log.warn(
                "{host} answered {status} to webhook {request_id}",
                host=self._host,
                status=status,
                request_id=event.request_id,
            )
            raise ModuleUnavailable(f"upstream answered {status}")

    def _unavailable(
        self, event: WebhookEvent, error: Exception, started: float
    ) -> BaseException:
        """The ModuleUnavailable for a failed request (or the cancellation)."""
        if _is_cancellation(error):
            if self._clock.seconds() - started < self._timeout:
                # Our caller cancelled (the client went away): not a failure.
                return error if isinstance(error, CancelledError) else CancelledError()
            reason = f"timed out after {self._timeout:g} s"
        elif isinstance(error, DestinationNotAllowed):
            reason = REFUSAL_REASON
        elif isinstance(error, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(error, DNSLookupError):
            reason = "could not resolve the destination host"
        elif isinstance(error, ConnectTimeoutError):
            reason = "timed out while connecting"
        elif isinstance(error, ConnectError):
            reason = "could not connect to the destination"
        elif _is_tls_failure(error):
            reason = "the TLS handshake with the destination failed"
        elif isinstance(error, ResponseFailed) or _reasons(error):
            reason = "the connection to the destination failed"
        else:
            reason = "the request to the destination failed"
        self._log.warn(
            "could not forward webhook {request_id} to {host}: {reason} ({error_type})",
            request_id=event.request_id,
            host=self._host,
            reason=reason,
            error_type=type(error).__name__,
        )
        return ModuleUnavailable(reason)

    async def _drain(self, response: Any, started: float) -> None:
        """Read and discard the response body so the connection can be reused."""
        finished = drain_body(response)
        remaining = self._timeout - (self._clock.seconds() - started)
        finished.addTimeout(max(remaining, 1.0), self._clock)
        try:
            await finished
        except CancelledError:
            raise
        except Exception as error:
            # The status is what counts; a broken body only costs the connection.
            self._log.info(
                "discarding the response body from {host} failed: {error_type}",
                host=self._host,
                error_type=type(error).__name__,
            )

    async def close(self) -> None:
        """Nothing to release: the HTTP clients belong to the composition root."""


def _parse_url(module_config: Mapping[str, Any]) -> tuple[str, str]:
    if "url" not in module_config:
        raise ConfigError("module-config.url: required")
    url = get_str(module_config, "url")
    assert url is not None
    url = url.strip()
    if any(c in url for c in "\r\n\t\0 "):
        raise ConfigError("module-config.url: must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"module-config.url: invalid URL ({error})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError("module-config.url: scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "module-config.url: must not contain credentials; use module-config.headers"
        )
    host = parts.hostname
    if not host:
        raise ConfigError("module-config.url: must include a host")
    if port == 0:
        raise ConfigError("module-config.url: port must be 1-65535")
    return url, host


def _check_destination(host: str, allowed: frozenset[str]) -> bool:
    """Whether ``host`` is exempt from the guard; ConfigError if forbidden."""
    if _host_key(host) in allowed:
        return True
    normalised = _normalise_host(host)
    if normalised in _METADATA_HOSTS or normalised.endswith(".localhost"):
        raise ConfigError(
            f"module-config.url: host {normalised!r} is a local or cloud metadata "
            "name; list it in module-config.allowed_hosts to allow it"
        )
    literal = _as_ip_literal(normalised)
    if literal is not None and is_forbidden_address(literal):
        raise ConfigError(
            f"module-config.url: {literal} is not a public address (private, loopback, "
            "link-local, metadata, multicast or reserved); list it in "
            "module-config.allowed_hosts to allow it"
        )
    return False


def _parse_headers(module_config: Mapping[str, Any]) -> dict[str, str]:
    raw = module_config.get("headers", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("module-config.headers: must be an object of header names to strings")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ConfigError(f"module-config.headers: invalid header name {name!r}")
        if not isinstance(value, str):
            raise ConfigError(f"module-config.headers.{name}: must be a string")
        if _BAD_VALUE_CHARS.search(value):
            raise ConfigError(
                f"module-config.headers.{name}: must not contain line breaks or NUL"
            )
        if name.lower() in _FRAMING or name.lower() in ("x-webhook-id", "x-request-id"):
            raise ConfigError(f"module-config.headers.{name}: cannot be set (set by cwm)")
        headers[name] = value
    return headers


def _parse_forwarding(module_config: Mapping[str, Any]) -> tuple[bool, frozenset[str]]:
    """``(forward_all, forward_only)`` from forward_headers / allowed_headers."""
    forward = module_config.get("forward_headers", False)
    listed = get_str_list(module_config, "allowed_headers")
    key = "allowed_headers"
    if isinstance(forward, list):
        if listed is not None:
            raise ConfigError(
                "module-config.allowed_headers: give the header list in "
                "forward_headers or allowed_headers, not both"
            )
        listed = get_str_list(module_config, "forward_headers")
        key = "forward_headers"
    elif not isinstance(forward, bool):
        raise ConfigError(
            "module-config.forward_headers: must be true, false or a list of header names"
        )
    elif listed is not None and "forward_headers" in module_config and not forward:
        raise ConfigError(
            "module-config.allowed_headers: conflicts with forward_headers: false"
        )
    if listed is None:
        return forward is True, frozenset()
    names: set[str] = set()
    for name in listed:
        lowered = name.strip().lower()
        if not HEADER_NAME.fullmatch(lowered):
            raise ConfigError(f"module-config.{key}: invalid header name {name!r}")
        if lowered in _FRAMING or lowered == "host" or _is_proxy_header(lowered):
            raise ConfigError(
                f"module-config.{key}: {name!r} cannot be forwarded "
                "(hop-by-hop, framing or Host header)"
            )
        names.add(lowered)
    return False, frozenset(names)


def _parse_timeout(module_config: Mapping[str, Any]) -> float:
    timeout = module_config.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError("module-config.timeout: must be a number of seconds")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"module-config.timeout: must be > 0 and <= {MAX_TIMEOUT:g} seconds")
    return float(timeout)


def build(module_config: Mapping[str, Any], ctx: ModuleContext) -> HTTPForwardModule:
    """Build the ``http_webhook`` module from its ``module-config``.

    Keys: ``url`` (required), ``method`` (POST, PUT or PATCH), ``headers``,
    ``forward_headers`` (false, true or a list), ``allowed_headers`` (the
    list form, upstream's name), ``timeout`` (30 s, at most 300),
    ``allowed_hosts`` (hosts exempt from the SSRF guard).

    Raises:
        ConfigError: an unknown key, a malformed value, or a destination that
            is a non-public IP or a metadata host not in ``allowed_hosts``.
    """
    reject_unknown_keys(module_config, _KNOWN_KEYS)
    url, host = _parse_url(module_config)
    method = (get_str(module_config, "method", "POST") or "POST").strip().upper()
    if method not in _METHODS:
        raise ConfigError("module-config.method: must be POST, PUT or PATCH")
    allowed_hosts = get_str_list(module_config, "allowed_hosts") or []
    exempt = _check_destination(host, frozenset(_host_key(h) for h in allowed_hosts))
    if ":" in host:
        # treq turns the URL into a URI with hyperlink, which IDNA-encodes
        # IPv6 literals and fails (hyperlink issues #68, #188).
        raise ConfigError(
            "module-config.url: IPv6 literal hosts are not supported by the HTTP "
            "client; use a host name"
        )
    forward_all, forward_only = _parse_forwarding(module_config)
    return HTTPForwardModule(
        clock=ctx.clock,
        http=ctx.http_unguarded if exempt else ctx.http,
        url=url,
        host=_normalise_host(host),
        method=method,
        headers=_parse_headers(module_config),
        forward_all=forward_all,
        forward_only=forward_only,
        timeout=_parse_timeout(module_config),
    )
