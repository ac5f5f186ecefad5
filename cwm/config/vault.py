"""Reading ``{$vault:PATH#FIELD}`` secrets from Vault's KV engine, on the reactor.

``VaultClient`` talks Vault's HTTP API through one injected treq client and
one injected clock: every wait has a timeout on that clock, concurrent reads
of one secret field share one request, values are cached for ``cache_ttl``
seconds (and the last value is kept for callers that prefer a stale secret to
none), and a renewable token is renewed once two thirds of its lease has run.
``vault_http_client`` builds that treq client, checking Vault's TLS
certificate as ``VAULT_VERIFY`` says.

Secret values and tokens never appear in logs, exception messages or reprs:
errors name the ``path#field`` they were about, nothing more.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from treq.client import HTTPClient
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from cwm.errors import ConfigError
from cwm.modules.ssrf import quiet_pool

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.ssl import Certificate, CertificateOptions

# --------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class VaultSettings:
    """Where Vault is and how to log in; ``cwm.settings`` builds and validates it from ``VAULT_*``."""

    addr: str
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    namespace: str | None = None
    mount_point: str = "secret"
    kv_version: int = 2
    verify: bool | str = True
    timeout: float = 10.0
    cache_ttl: float = 300.0
    cache_max_size: int = 1000


# --------------------------------------------------------------------------
# References


_PATH = re.compile(r"[A-Za-z0-9_./-]{1,512}")
_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def parse_reference(text: str) -> tuple[str, str, str | None]:
    """Split the part after ``$vault:`` into ``(path, field, default)``.

    ``PATH#FIELD`` or ``PATH#FIELD:DEFAULT``; the default is everything after
    the first ``:`` that follows the field, so it may contain ``:`` itself.

    Raises:
        ConfigError: the reference is malformed; the message never repeats a
            default (it may be a secret).
    """
    path_text, hash_sign, rest = text.partition("#")
    if not hash_sign:
        raise ConfigError("invalid Vault reference: expected PATH#FIELD")
    field_text, colon, default_text = rest.partition(":")
    if not _PATH.fullmatch(path_text):
        raise ConfigError(
            "invalid Vault reference: the path must be 1-512 characters of A-Z a-z 0-9 _ . / -"
        )
    path = path_text.strip("/")
    if not path:
        raise ConfigError("invalid Vault reference: the path is empty")
    if ".." in path:
        raise ConfigError(f"invalid Vault reference {path}: the path must not contain '..'")
    if not _FIELD.fullmatch(field_text):
        raise ConfigError(
            f"invalid Vault reference {path}#...: the field must be 1-128 characters "
            "of A-Z a-z 0-9 _ . -"
        )
    return path, field_text, (default_text if colon else None)


# --------------------------------------------------------------------------
# The HTTP client and its TLS policy
#
# pyOpenSSL (Twisted's ``tls`` extra) is imported only when a policy is built,
# so that this module imports without it.


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def vault_http_client(reactor: Any, settings: VaultSettings) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client for Vault on a persistent pool, checking TLS per ``settings.verify``.

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``. The caller owns
    the pool and closes it (``pool.closeCachedConnections()``) on shutdown.

    Raises:
        ConfigError: ``VAULT_VERIFY`` names a CA bundle that cannot be read or
            holds no certificate, or pyOpenSSL is missing.
    """
    policy = vault_tls_policy(settings.verify)
    pool = quiet_pool(reactor)
    agent = Agent(reactor, contextFactory=policy, connectTimeout=settings.timeout, pool=pool)
    return HTTPClient(agent), pool


def vault_tls_policy(verify: bool | str) -> IPolicyForHTTPS:
    """The HTTPS policy for ``VAULT_VERIFY``.

    True: the system's trust roots. A path: only the certificates in that PEM
    bundle. False: no verification at all (logged once, as a warning).
    """
    try:
        from twisted.internet.ssl import trustRootFromCertificates
    except ImportError:
        raise ConfigError("Vault over https needs pyOpenSSL: install Twisted's tls extra") from None
    if verify is True:
        return BrowserLikePolicyForHTTPS()
    if verify is False:
        return _UnverifiedPolicy()
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(load_ca_bundle(verify, "VAULT_VERIFY")))


def load_ca_bundle(path: str, setting: str) -> list[Certificate]:
    """Every certificate in the PEM file at ``path``; it blocks, so for start-up only.

    Raises:
        ConfigError: naming ``setting``: unreadable, malformed, or no certificate.
    """
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate

    try:
        with open(path, "rb") as bundle:  # off-reactor: start-up only (makeService, before the reactor runs)
            pem = bundle.read()
    except OSError as error:
        raise ConfigError(f"invalid {setting}: cannot read {path}: {error.strerror or error}") from None
    certificates = []
    for block in _PEM_CERTIFICATE.findall(pem):
        try:
            certificates.append(Certificate.loadPEM(block))
        except (crypto.Error, ValueError):
            raise ConfigError(f"invalid {setting}: the CA bundle {path} holds a malformed certificate") from None
    if not certificates:
        raise ConfigError(f"invalid {setting}: the CA bundle {path} holds no PEM certificate")
    return certificates


@implementer(IPolicyForHTTPS)
class _UnverifiedPolicy:
    """TLS without any certificate check, for ``VAULT_VERIFY=false``."""

    _log = Logger()

    def __init__(self) -> None:
        from twisted.internet.ssl import CertificateOptions

        self._options = CertificateOptions(verify=False)
        self._log.warn(
            "VAULT_VERIFY is off: Vault's TLS certificate is not checked, "
            "so a machine in the middle could read the secrets"
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return UnverifiedConnections(self._options, hostname)


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedConnections:
    """Client connections from ``CertificateOptions(verify=False)``, still sending SNI."""

    def __init__(self, options: CertificateOptions, hostname: bytes) -> None:
        self._options = options
        text = hostname.decode("ascii", "replace")
        # SNI carries DNS names only, never a literal address.
        self._server_name = None if isIPAddress(text) or isIPv6Address(text) else hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        from OpenSSL import SSL

        connection = SSL.Connection(self._options.getContext(), None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def _tls_failed(reasons: list[Any]) -> bool:
    """Whether a transport error came from the TLS handshake (as with an untrusted certificate)."""
    try:
        from OpenSSL import SSL
    except ImportError:
        return False
    return any(isinstance(r, Failure) and r.check(SSL.Error) for r in reasons)


# --------------------------------------------------------------------------
# Errors


class VaultError(Exception):
    """Reading from Vault failed; ``reason`` is safe to show a client."""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class VaultUnavailable(VaultError):
    """Vault could not be reached, answered 5xx, or the client stopped; retry later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)


class VaultTimeout(VaultUnavailable):
    """Vault did not answer within the configured timeout."""


class VaultPermissionDenied(VaultError):
    """Vault refused the token (after one AppRole re-login, if AppRole is used)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


class VaultSecretNotFound(VaultError):
    """The secret or the field does not exist."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


# --------------------------------------------------------------------------
# The client


_TRANSPORT_ERRORS = (
    ConnectError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    RequestGenerationFailed,
    OSError,
)


_LOOKUP_RETRY_FIRST = 5.0
_LOOKUP_RETRY_MAX = 300.0


def lookup_retry_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed token lookup in a row.

    5 s, doubling, at most 5 minutes: a Vault that is down at start-up is
    asked again soon, one that stays down is not hammered.
    """
    doublings = min(max(failures, 1) - 1, 16)
    return min(_LOOKUP_RETRY_MAX, _LOOKUP_RETRY_FIRST * 2.0**doublings)


@dataclass
class _Entry:
    value: str = field(repr=False)
    expires_at: float


class _Flight:
    """One shared piece of work and the callers waiting for it.

    Each caller waits on a Deferred of its own, so cancelling one caller
    fails only that caller; the work goes on for the others (and the cache).
    """

    def __init__(self, work: Deferred[Any], on_settled: Any) -> None:
        self.work = work
        self._waiters: list[Deferred[Any]] = []
        self._result: Any = None
        self.settled = False
        self._on_settled = on_settled
        work.addBoth(self._settle)

    def _settle(self, result: Any) -> None:
        self.settled = True
        self._result = result
        self._on_settled(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:  # that caller was cancelled
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        return None

    def wait(self) -> Deferred[Any]:
        if self.settled:
            if isinstance(self._result, Failure):
                return fail(self._result)
            return succeed(self._result)
        waiter: Deferred[Any] = Deferred()
        self._waiters.append(waiter)
        return waiter


class VaultClient:
    """An async Vault KV reader with a cache, single flight and token upkeep.

    Reads work without ``start()``; ``start()`` only adds the background
    renewal of a renewable token (a static ``VAULT_TOKEN`` is looked up first
    to learn its TTL), and ``stop()`` cancels every timer and every request in
    flight.
    """

    _log = Logger()

    def __init__(self, settings: VaultSettings, http: Any, clock: IReactorTime) -> None:
        """``http`` is a ``treq.client.HTTPClient`` (or ``treq.testing.StubTreq``).

        Typed ``Any`` because ``StubTreq`` grows its methods at run time and a
        Protocol cannot describe treq's keyword-only ``request`` and StubTreq's
        both.
        """
        self._settings = settings
        self._http = http
        self._clock = clock
        self._addr = settings.addr.rstrip("/")
        self._mount = settings.mount_point.strip("/")
        self._token: str | None = settings.token
        self._token_lease: float | None = None
        self._token_obtained_at = 0.0
        self._token_renewable = False
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._login: _Flight | None = None
        self._background: set[Deferred[Any]] = set()
        self._renew_call: IDelayedCall | None = None
        self._lookup_call: IDelayedCall | None = None
        self._lookup_work: Deferred[Any] | None = None
        self._lookup_failures = 0
        self._running = False
        self._stopping = False

    def __repr__(self) -> str:
        return f"<VaultClient {self._addr} mount={self._mount!r} kv_version={self._settings.kv_version}>"

    @property
    def uses_approle(self) -> bool:
        """Whether the client logs in with AppRole (no static token was given)."""
        return not self._settings.token

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Begin renewing the token in the background when it is renewable.

        An AppRole login says whether its token is renewable; a static token
        is looked up (``auth/token/lookup-self``) in the background first.
        """
        self._running = True
        self._stopping = False
        if self.uses_approle:
            self._schedule_renewal()
        elif self._lookup_work is None and self._lookup_call is None and self._renew_call is None:
            self._lookup_failures = 0
            self._lookup_now()

    def stop(self) -> None:
        """Cancel the renewal timer and every request in flight."""
        self._running = False
        self._stopping = True
        try:
            if self._renew_call is not None and self._renew_call.active():
                self._renew_call.cancel()
            self._renew_call = None
            if self._lookup_call is not None and self._lookup_call.active():
                self._lookup_call.cancel()
            self._lookup_call = None
            for flight in list(self._flights.values()):
                flight.work.cancel()
            if self._login is not None:
                self._login.work.cancel()
            for work in list(self._background):
                work.cancel()
        finally:
            self._stopping = False

    # -- cache ------------------------------------------------------------

    def cached(self, path: str, field: str) -> str | None:
        """The cached value if it has not expired, else None."""
        entry = self._cache.get((path, field))
        if entry is None or self._clock.seconds() >= entry.expires_at:
            return None
        return entry.value

    def cached_until(self, path: str, field: str) -> float | None:
        """When (on the injected clock) the cached value expires; None if nothing is cached."""
        entry = self._cache.get((path, field))
        return None if entry is None else entry.expires_at

    def _remember(self, key: tuple[str, str], value: str) -> None:
        limit = self._settings.cache_max_size
        if limit <= 0:
            return
        if key not in self._cache:
            while len(self._cache) >= limit:
                # Expired entries expire soonest, so this drops them first.
                victim = min(self._cache, key=lambda k: self._cache[k].expires_at)
                del self._cache[victim]
        self._cache[key] = _Entry(value, self._clock.seconds() + self._settings.cache_ttl)

    # -- reading ----------------------------------------------------------

    async def read(self, path: str, field: str) -> str:
        """The value of ``field`` in the secret at ``path`` (under the mount).

        Raises:
            VaultError: see its subclasses; ``retryable`` says whether trying
                again later may help.
        """
        hit = self.cached(path, field)
        if hit is not None:
            return hit
        key = (path, field)
        flight = self._flights.get(key)
        if flight is None:
            work = self._timed(self._fetch(path, field))
            flight = _Flight(work, lambda settled: self._forget(key, settled))
            if not flight.settled:
                self._flights[key] = flight
        value: str = await flight.wait()
        return value

    def _forget(self, key: tuple[str, str], flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _timed(self, coroutine: Any) -> Deferred[Any]:
        """Run ``coroutine`` with the settings' timeout on the injected clock."""
        timeout = self._settings.timeout

        def timed_out(result: Any, _timeout: float) -> Any:
            return Failure(VaultTimeout(f"Vault did not answer within {timeout:g} seconds"))

        work: Deferred[Any] = Deferred.fromCoroutine(coroutine)
        work.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)
        return work

    async def _fetch(self, path: str, field: str) -> str:
        where = f"{path}#{field}"
        if self._settings.kv_version == 2:
            url = f"{self._addr}/v1/{self._mount}/data/{path}"
        else:
            url = f"{self._addr}/v1/{self._mount}/{path}"
        status, payload = await self._authorised("GET", url, where)
        if status == 404:
            raise VaultSecretNotFound(f"Vault secret not found: {where}")
        self._check_status(status, where)
        data = payload.get("data") if isinstance(payload, dict) else None
        if self._settings.kv_version == 2 and isinstance(data, dict):
            data = data.get("data")
        if not isinstance(data, dict):
            raise VaultSecretNotFound(f"Vault secret has no data: {where}")
        if field not in data:
            raise VaultSecretNotFound(f"Vault secret field not found: {where}")
        raw = data[field]
        value = raw if isinstance(raw, str) else json.dumps(raw, separators=(",", ":"))
        self._remember((path, field), value)
        self._log.debug("read Vault secret {where}", where=where)
        return value

    async def _authorised(self, method: str, url: str, where: str) -> tuple[int, Any]:
        """Send with the current token; on 403 with AppRole, log in again once."""
        token = await self._current_token()
        status, payload = await self._send(method, url, where, token)
        if status == 403 and self.uses_approle:
            self._log.info("Vault refused the AppRole token for {where}; logging in again", where=where)
            self._drop_token(token)
            token = await self._current_token()
            status, payload = await self._send(method, url, where, token)
        if status == 403:
            raise VaultPermissionDenied(f"Vault permission denied: {where}")
        return status, payload

    def _check_status(self, status: int, where: str) -> None:
        if 200 <= status < 300:
            return
        if status >= 500 or status == 429:
            raise VaultUnavailable(f"Vault answered HTTP {status} for {where}")
        raise VaultError(f"Vault answered HTTP {status} for {where}")

    async def _send(
        self,
        method: str,
        url: str,
        where: str,
        token: str | None,
        body: Any = None,
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["X-Vault-Token"] = token
        if self._settings.namespace:
            headers["X-Vault-Namespace"] = self._settings.namespace
        kwargs: dict[str, Any] = {
            "headers": headers,
            "timeout": self._settings.timeout,
            "reactor": self._clock,
        }
        if body is not None:
            kwargs["json"] = body
        try:
            response = await self._http.request(method, url, **kwargs)
            raw = await response.content()
        except CancelledError:
            raise self._cancelled(where) from None
        except _TRANSPORT_ERRORS as error:
            reasons = getattr(error, "reasons", None) or []
            if any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons):
                # treq's timeout (or stop()) cancelled the request.
                raise self._cancelled(where) from None
            if _tls_failed(reasons):
                raise VaultUnavailable(
                    f"TLS with Vault failed (is its certificate trusted?) for {where}"
                ) from None
            raise VaultUnavailable(
                f"Vault is unreachable ({type(error).__name__}) for {where}"
            ) from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            if response.code >= 500:
                payload = {}
            else:
                raise VaultError(f"Vault answered with invalid JSON for {where}") from None
        return response.code, payload

    def _cancelled(self, where: str) -> VaultError:
        if self._stopping:
            return VaultUnavailable(f"Vault client stopped while reading {where}")
        return VaultTimeout(
            f"Vault did not answer within {self._settings.timeout:g} seconds ({where})"
        )

    # -- tokens -----------------------------------------------------------

    async def _current_token(self) -> str:
        if self._token is not None:
            return self._token
        if not self.uses_approle:
            raise VaultPermissionDenied("no Vault token")
        if self._login is None:
            work = self._timed(self._approle_login())
            flight = _Flight(work, self._login_settled)
            if not flight.settled:
                self._login = flight
            login = flight
        else:
            login = self._login
        try:
            token: str = await login.wait()
        except CancelledError:
            raise self._cancelled("auth/approle/login") from None
        return token

    def _login_settled(self, flight: _Flight) -> None:
        if self._login is flight:
            self._login = None

    async def _approle_login(self) -> str:
        where = "auth/approle/login"
        status, payload = await self._send(
            "POST",
            f"{self._addr}/v1/auth/approle/login",
            where,
            None,
            body={"role_id": self._settings.role_id, "secret_id": self._settings.secret_id},
        )
        if status >= 500 or status == 429:
            raise VaultUnavailable(f"Vault AppRole login failed: HTTP {status}")
        if status != 200:
            raise VaultPermissionDenied(f"Vault AppRole login failed: HTTP {status}")
        token = self._adopt(payload)
        if token is None:
            raise VaultError("Vault AppRole login answered without a client token")
        self._log.info("logged in to Vault with AppRole")
        return token

    def _adopt(self, payload: Any) -> str | None:
        """Take the token and lease from a login or renewal answer."""
        auth = payload.get("auth") if isinstance(payload, dict) else None
        if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
            return None
        token: str = auth["client_token"]
        lease = auth.get("lease_duration")
        self._token = token
        self._token_lease = float(lease) if isinstance(lease, (int, float)) else None
        self._token_renewable = bool(auth.get("renewable"))
        self._token_obtained_at = self._clock.seconds()
        self._schedule_renewal()
        return token

    def _drop_token(self, token: str | None) -> None:
        if self._token is not None and self._token == token:
            self._token = None
            self._token_lease = None
            self._token_renewable = False
            if self._renew_call is not None and self._renew_call.active():
                self._renew_call.cancel()
            self._renew_call = None

    def _lookup_now(self) -> None:
        """Look the static token up in the background; on failure, try again later."""
        self._lookup_call = None
        work = self._timed(self._lookup())
        self._lookup_work = work
        self._background.add(work)

        def done(result: Any) -> None:
            self._background.discard(work)
            if self._lookup_work is work:
                self._lookup_work = None
            if not isinstance(result, Failure):
                self._lookup_failures = 0
                return None
            if not self._running:
                return None  # stop() cancelled it
            self._lookup_failures += 1
            delay = lookup_retry_delay(self._lookup_failures)
            if result.check(VaultError):
                self._log.warn(
                    "Vault token lookup failed: {reason}; trying again in {delay:g} seconds",
                    reason=result.value.reason,
                    delay=delay,
                )
            else:
                self._log.failure(
                    "Vault token lookup failed; trying again in {delay:g} seconds",
                    result,
                    delay=delay,
                )
            self._lookup_call = self._clock.callLater(delay, self._lookup_now)
            return None

        work.addBoth(done)

    async def _lookup(self) -> None:
        """Learn the static token's TTL; schedule its renewal if it has one and may be renewed."""
        where = "auth/token/lookup-self"
        token = self._token
        if token is None:
            return
        status, payload = await self._send("GET", f"{self._addr}/v1/{where}", where, token)
        if status == 403:
            raise VaultPermissionDenied(f"Vault refused the token for {where}")
        self._check_status(status, where)
        data = payload.get("data") if isinstance(payload, dict) else None
        ttl = data.get("ttl") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
            raise VaultError(f"Vault answered {where} without a ttl")
        renewable = data.get("renewable") is True
        if ttl <= 0:
            self._log.info("the Vault token does not expire; nothing to renew")
            return
        if not renewable:
            self._log.warn(
                "the Vault token expires in {ttl:g} seconds and cannot be renewed", ttl=float(ttl)
            )
            return
        self._token_lease = float(ttl)
        self._token_renewable = True
        self._token_obtained_at = self._clock.seconds()
        self._schedule_renewal()
        self._log.info(
            "the Vault token expires in {ttl:g} seconds; renewing it after two thirds of that",
            ttl=float(ttl),
        )

    def _schedule_renewal(self, delay: float | None = None) -> None:
        if self._renew_call is not None and self._renew_call.active():
            self._renew_call.cancel()
        self._renew_call = None
        if not self._running or not self._token_renewable or not self._token_lease:
            return
        if delay is None:
            due = self._token_obtained_at + self._token_lease * 2 / 3
            delay = max(0.0, due - self._clock.seconds())
        self._renew_call = self._clock.callLater(delay, self._renew_now)

    def _renew_now(self) -> None:
        self._renew_call = None
        work = self._timed(self._renew())
        self._background.add(work)

        def done(result: Any) -> None:
            self._background.discard(work)
            if isinstance(result, Failure):
                if result.check(VaultError):
                    self._log.warn(
                        "Vault token renewal failed: {reason}", reason=result.value.reason
                    )
                else:
                    self._log.failure("Vault token renewal failed", result)

        work.addBoth(done)

    async def _renew(self) -> None:
        token = self._token
        if token is None:
            return
        try:
            status, payload = await self._send(
                "POST", f"{self._addr}/v1/auth/token/renew-self", "auth/token/renew-self", token, {}
            )
            if status == 200 and self._adopt(payload) is not None:
                self._log.info("renewed the Vault token")
                return
            self._check_status(status, "auth/token/renew-self")
            raise VaultError(f"Vault token renewal failed: HTTP {status}")
        except VaultError as error:
            if self.uses_approle and not error.retryable:
                # The next read logs in again.
                self._drop_token(token)
            elif error.retryable and self._token == token and self._token_lease:
                left = self._token_obtained_at + self._token_lease - self._clock.seconds()
                if left > 1:
                    self._schedule_renewal(min(60.0, left / 2))
            raise
