"""HTTP mode of the connector: each message goes to its webhook's target URL.

The target gets the exact bytes the sender posted and the sender's own
headers (less the hop-by-hop ones), so it can check the sender's signature
itself (GitHub's ``X-Hub-Signature-256``, Stripe's ``Stripe-Signature``...).
Upstream re-serialised the payload and renamed every header to
``X-Original-*``, which broke those checks.

Each attempt has the target's timeout on the injected clock; attempts are
spaced by the target's backoff on the same clock. What the target answers
decides the outcome: 2xx delivers, a 4xx (but 408 and 429) can never work and
goes to the dead letters, anything else is retried and finally requeued.
``retry_enabled: false`` means one attempt (upstream still repeated them).

``http_client`` builds the treq client for the targets and the cloud, with the
connector's TLS settings (``verify_ssl``, ``ca_cert_path``, a client
certificate). Targets are local by design: loopback and private addresses
are allowed, there is no SSRF guard here.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectError,
    ConnectionClosed,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from cwm.connector.logs import connector_logger
from cwm.connector.message import DELIVERED, Message, Outcome, dead_letter, requeue
from cwm.connector.settings import ConnectorSettings, Target
from cwm.config.vault import load_ca_bundle
from cwm.errors import ConfigError
from cwm.modules.http_forward import drain_body
from cwm.modules.ssrf import body_producer, cookieless_jar, quiet_pool
from cwm.request import HEADER_NAME

if TYPE_CHECKING:
    from cryptography import x509

_T = TypeVar("_T")

MAX_RETRY_WAIT = 60.0
"""Seconds: the longest wait between two attempts, whatever the backoff or Retry-After say."""

# Never forwarded: they describe the sender's connection to cwm, not this one.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Set by the HTTP client for this request; never copied from the sender.
_TRANSPORT = _HOP_BY_HOP | frozenset({"host", "content-length"})
_RETRY_AFTER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class _Answer:
    """How one attempt ended: a status, or none (timeout, connection error)."""

    status: int | None
    reason: str
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def hopeless(self) -> bool:
        """A 4xx that no retry will change (408 and 429 may)."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


class _TimedOut(Exception):
    """An attempt ran out of time (its own timeout, not a stop)."""


def outgoing_headers(message: Message, target: Target, attempt: int) -> Headers:
    """The headers of one attempt: the sender's, the target's, then cwm's.

    The sender's hop-by-hop and framing headers (and any named in its
    ``Connection`` header) are dropped; the target's headers replace the
    sender's of the same name; ``X-Webhook-*`` come last. Without any
    Content-Type, ``application/json`` is sent.
    """
    named = {
        token.strip().lower()
        for token in message.headers.get("connection", "").split(",")
    }
    headers: dict[str, str] = {}
    for name, value in message.headers.items():
        lowered = name.lower()
        if lowered not in _TRANSPORT and lowered not in named and HEADER_NAME.fullmatch(lowered):
            headers[lowered] = value
    for name, value in target.headers.items():
        lowered = name.lower()
        # Host may be set on purpose (virtual hosts); framing never.
        if lowered not in _HOP_BY_HOP and lowered != "content-length":
            headers[lowered] = value
    headers["x-webhook-message-id"] = message.message_id
    headers["x-webhook-id"] = message.webhook_id
    headers["x-webhook-attempt"] = str(attempt)
    headers["x-webhook-delivery-count"] = str(message.delivery_count)
    headers.setdefault("content-type", "application/json")
    return Headers({name: [value] for name, value in headers.items()})


def retry_wait(target: Target, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The target's backoff, but at least what a Retry-After asked for; never
    more than MAX_RETRY_WAIT.
    """
    wait = min(target.retry_delay_seconds * target.retry_backoff_multiplier ** (attempt - 1), MAX_RETRY_WAIT)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_WAIT))
    return wait


def _retry_after(status: int, headers: Headers) -> float | None:
    """The seconds of a 429 or 503's ``Retry-After`` (the HTTP-date form is not read)."""
    if status not in (429, 503):
        return None
    values = headers.getRawHeaders(b"retry-after") or []
    text = values[-1].decode("latin-1").strip() if values else ""
    return float(text) if _RETRY_AFTER.fullmatch(text) else None


def _transport_reason(error: BaseException) -> str | None:
    """A client-safe reason for a failed request, or None if it is not a transport failure."""
    causes = [error] + [r.value for r in getattr(error, "reasons", None) or [] if isinstance(r, Failure)]
    if any(type(cause).__module__.startswith(("OpenSSL", "service_identity")) for cause in causes):
        return "TLS handshake with the target failed"
    if isinstance(error, (ConnectionRefusedError, builtins.ConnectionRefusedError)):
        return "connection refused"
    if isinstance(error, DNSLookupError):
        return "could not resolve the target host"
    if isinstance(error, ConnectTimeoutError):
        return "timed out connecting to the target"
    if isinstance(error, (ConnectError, OSError)):
        return "could not connect to the target"
    if isinstance(error, (ResponseFailed, ConnectionClosed)) or len(causes) > 1:
        return "connection to the target failed"
    return None


class HttpDelivery:
    """Delivers each message to its webhook's target (or the default target) over HTTP."""

    _log = connector_logger()

    def __init__(self, settings: ConnectorSettings, http: Any, clock: IReactorTime) -> None:
        """
        Args:
            http: A treq ``HTTPClient`` (``http_client``), or ``StubTreq`` in tests.
            clock: Drives every timeout and every wait between attempts.
        """
        self._targets: Mapping[str, Target] = settings.targets
        self._default = settings.default_target
        self._http = http
        self._clock = clock

    def target_for(self, webhook_id: str) -> Target | None:
        """The webhook's own target, else the default one."""
        return self._targets.get(webhook_id, self._default)

    async def deliver(self, message: Message) -> Outcome:
        """Try the target up to its attempt count; see the module docstring for the rules."""
        target = self.target_for(message.webhook_id)
        if target is None:
            return dead_letter(f"no target for webhook_id {message.webhook_id!r}")
        attempts = target.retry_max_attempts if target.retry_enabled else 1
        answer = _Answer(None, "not attempted")
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await deferLater(self._clock, retry_wait(target, attempt - 1, answer.retry_after))
            try:
                answer = await self._attempt(message, target, attempt)
            except CancelledError:
                raise
            except Exception:
                self._log.failure(
                    "delivering message {message_id} (webhook {webhook_id}) failed unexpectedly",
                    message_id=message.message_id,
                    webhook_id=message.webhook_id,
                )
                return requeue("unexpected error while delivering to the target")
            if answer.delivered:
                return DELIVERED
            self._log.info(
                "message {message_id} (webhook {webhook_id}): attempt {attempt} of {attempts} failed: {reason}",
                message_id=message.message_id,
                webhook_id=message.webhook_id,
                attempt=attempt,
                attempts=attempts,
                reason=answer.reason,
            )
            if answer.hopeless:
                return dead_letter(answer.reason)
        plural = "s" if attempts > 1 else ""
        return requeue(f"{answer.reason} (after {attempts} attempt{plural})")

    async def _attempt(self, message: Message, target: Target, attempt: int) -> _Answer:
        """One request and its answer, within the target's timeout."""
        timeout = target.timeout_seconds

        def timed_out(result: _Answer | Failure, _timeout: float) -> _Answer | Failure:
            # An answer that came as the time ran out (its body cut short) stands.
            return Failure(_TimedOut()) if isinstance(result, Failure) else result

        headers = outgoing_headers(message, target, attempt)
        exchange = Deferred.fromCoroutine(self._exchange(target, headers, message.body))
        exchange.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)
        try:
            return await _stoppable(exchange)
        except _TimedOut:
            return _Answer(None, f"target timed out after {timeout:g}s")
        except CancelledError:
            raise
        except Exception as error:
            reason = _transport_reason(error)
            if reason is None:
                raise
            return _Answer(None, reason)

    async def _exchange(self, target: Target, headers: Headers, body: bytes) -> _Answer:
        response = await self._http.request(
            target.method,
            target.url,
            headers=headers,
            data=body,
            allow_redirects=False,
            unbuffered=True,
            reactor=self._clock,
        )
        status: int = response.code
        answer = _Answer(status, f"target answered {status}", _retry_after(status, response.headers))
        try:
            await drain_body(response)
        except Exception as error:
            # A body cut short (by the target, the timeout or a stop) leaves
            # the status as it was; _stoppable tells a stop apart.
            self._log.debug("discarded the rest of a response body: {error_type}", error_type=type(error).__name__)
        return answer

    def status(self) -> dict[str, Any]:
        """How many targets there are; never their URLs or headers."""
        return {"mode": "http", "targets": len(self._targets), "default_target": self._default is not None}


# --------------------------------------------------------------------------
# The HTTP client and its TLS policy
#
# pyOpenSSL (Twisted's ``tls`` extra) and cryptography are imported only when
# a policy is built, so that importing this module stays cheap.


def http_client(
    reactor: Any, settings: ConnectorSettings, policy: ConnectorTLSPolicy | None = None
) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client on a persistent pool, with the connector's TLS settings and no cookies.

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``. The caller owns
    the pool and closes it (``pool.closeCachedConnections()``) at stop.
    Pass ``policy`` to share one TLS policy (and one read of its files).

    Raises:
        ConfigError: a CA, certificate or key file that cannot be read or used.
    """
    pool = quiet_pool(reactor)  # no "Starting factory" line per connection
    agent = Agent(reactor, contextFactory=policy or tls_policy(settings), connectTimeout=settings.connection_timeout, pool=pool)
    # Targets must not plant cookies that later messages would carry back.
    return HTTPClient(agent, cookiejar=cookieless_jar(), data_to_body_producer=body_producer), pool


def tls_policy(settings: ConnectorSettings) -> ConnectorTLSPolicy:
    """The HTTPS policy for ``verify_ssl``, ``ca_cert_path`` and the client certificate.

    Raises:
        ConfigError: as ``http_client``.
    """
    try:
        from twisted.internet import ssl
    except ImportError:
        raise ConfigError("https needs pyOpenSSL: install Twisted's tls extra") from None
    client: dict[str, Any] = {}
    if settings.client_cert_path and settings.client_key_path:
        client = _client_certificate(settings.client_cert_path, settings.client_key_path)
    if not settings.verify_ssl:
        from cwm.config.vault import UnverifiedConnections

        ConnectorTLSPolicy._log.warn(
            "verify_ssl is off: TLS certificates of the cloud and of the targets are not checked,"
            " so a machine in the middle could read and change the webhooks"
        )
        options = ssl.CertificateOptions(verify=False, **client)
        return ConnectorTLSPolicy(lambda host: UnverifiedConnections(options, _ascii(host)))
    trust: Any = (
        ssl.trustRootFromCertificates(load_ca_bundle(settings.ca_cert_path, "ca_cert_path"))
        if settings.ca_cert_path
        else ssl.platformTrust()
    )
    return ConnectorTLSPolicy(
        lambda host: ssl.optionsForClientTLS(host, trustRoot=trust, extraCertificateOptions=dict(client))
    )


@implementer(IPolicyForHTTPS)
class ConnectorTLSPolicy:
    """One TLS connection creator per host, made once and reused for every request to it."""

    _log = connector_logger()

    def __init__(self, make: Callable[[str], IOpenSSLClientConnectionCreator]) -> None:
        self._make = make
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}

    def creator(self, host: str) -> IOpenSSLClientConnectionCreator:
        """The connection creator for ``host`` (a name or an IP literal)."""
        # Bounded: the hosts are those of the configured targets and the cloud.
        if host not in self._creators:
            self._creators[host] = self._make(host)
        return self._creators[host]

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """What the Agent asks for each HTTPS request."""
        return self.creator(hostname.decode("ascii"))


def _ascii(host: str) -> bytes:
    return host.encode("ascii") if host.isascii() else host.encode("idna")


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:  # off-reactor: start-up only (makeService, before the reactor runs)
            return f.read()
    except OSError as error:
        raise ConfigError(f"invalid {key}: cannot read {path}: {error.strerror or error}") from None


def _certificates(path: str, key: str) -> list[x509.Certificate]:
    from cryptography import x509

    pem = _read(path, key)
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"invalid {key}: {path} holds no valid PEM certificate") from None


def _client_certificate(cert_path: str, key_path: str) -> dict[str, Any]:
    """``CertificateOptions`` arguments for the client certificate, its key and the chain after it in the file.

    They are ``cryptography`` objects, which pyOpenSSL takes without the
    deprecation warnings of its own wrappers (``PrivateCertificate`` would use those).
    """
    from cryptography.hazmat.primitives import serialization

    leaf, *chain = _certificates(cert_path, "client_cert_path")
    pem = _read(key_path, "client_key_path")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError):
        # TypeError: the key is encrypted; there is no setting for a passphrase.
        raise ConfigError(f"invalid client_key_path: {key_path} holds no unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(f"invalid client_key_path: {key_path} is not the key of {cert_path}")
    return {"privateKey": key, "certificate": leaf, "extraCertChain": chain}


def _stoppable(work: Deferred[_T]) -> Deferred[_T]:
    """``work``, except that cancelling the result always fails it with CancelledError.

    Cancelling ``work`` itself can end in many errors (ResponseNeverReceived,
    ConnectingCancelledError...); a caller that stops the connector wants to
    see CancelledError, and a timeout (handled on ``work``) must not look like one.
    """
    stopped = False

    def stop(_: Deferred[_T]) -> None:
        nonlocal stopped
        stopped = True
        work.cancel()

    result: Deferred[_T] = Deferred(stop)

    def forward(outcome: _T | Failure) -> None:
        if stopped:
            return  # the result already failed with CancelledError
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    work.addBoth(forward)
    return result
