"""The SSRF guard behind ``ModuleContext.http``.

Webhook destinations are user-supplied, so the guarded HTTP client refuses to
connect to private, loopback, link-local, metadata and other non-public
addresses. The check runs on the addresses DNS returned, not on the host
name, so a public name that resolves to ``10.0.0.1`` (or is re-pointed there
later) is refused too. Twisted's ``HostnameEndpoint`` sends IP literals
through the name resolver as well, so they are filtered the same way; the
wrapped ``connectTCP`` refuses forbidden or unresolved hosts as a second line.

The composition root builds both clients once with
``build_http_clients(reactor)``; modules only ever see ``ctx.http`` and
``ctx.http_unguarded``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from http.cookiejar import DefaultCookiePolicy
from typing import Any

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import alsoProvides, implementer

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSAL_REASON = (
    "destination address is not allowed: resolves to a private, loopback, "
    "link-local or metadata address"
)
"""The client-safe text modules use when the guard refuses a destination."""

# Ranges refused on top of what ``ipaddress`` flags, because the flags differ
# between Python versions (192.0.0.0/24 is "global" in some 3.11 releases).
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier NAT; Alibaba metadata)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (Oracle metadata .192)
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/8",  # unspecified, loopback, IPv4-compatible, other reserved
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local (ULA), e.g. fd00:ec2::254 metadata
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
# Well-known IPv6 forms that embed an IPv4 address: judged by that address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_forbidden_address(ip_string: str) -> bool:
    """Whether a connection to this IP address must be refused.

    Anything that is not a public unicast address is forbidden: private,
    loopback, link-local (cloud metadata), unspecified, multicast, reserved,
    shared (100.64/10), documentation and ULA ranges. IPv4-mapped, NAT64 and
    6to4 IPv6 addresses are judged by the IPv4 address they carry. A string
    that is not an IP address is forbidden too (fail closed).
    """
    try:
        address = ipaddress.ip_address(ip_string.strip())
    except ValueError:
        return True
    return _is_forbidden(address)


def _is_forbidden(address: _IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _is_forbidden(address.ipv4_mapped)
        if address in _NAT64:
            return _is_forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            return _is_forbidden(address.sixtofour)
        if any(address in network for network in _FORBIDDEN_V6):
            return True
        if address.is_site_local:
            return True
    elif any(address in network for network in _FORBIDDEN_V4):
        return True
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


class DestinationNotAllowed(ConnectError):
    """The guard refused the destination: it is not a public address."""


@implementer(IResolutionReceiver)
class _FilteringReceiver:
    """Passes on only the resolved addresses the guard allows."""

    _log = Logger()

    def __init__(
        self,
        downstream: Any,
        resolver: BlocklistingResolver,
        host_name: str,
    ) -> None:
        self._downstream = downstream
        self._resolver = resolver
        self._host_name = host_name

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        """Pass the start on."""
        self._downstream.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: Any) -> None:
        """Pass an allowed address on; count and log a refused one."""
        if isinstance(address, (IPv4Address, IPv6Address)) and not (
            self._resolver.is_forbidden(address.host)
        ):
            self._resolver.accepted += 1
            self._downstream.addressResolved(address)
            return
        self._resolver.refused += 1
        self._log.warn(
            "refused address {address} of {host}: not a public address",
            address=getattr(address, "host", repr(address)),
            host=self._host_name,
        )

    def resolutionComplete(self) -> None:
        """Pass the end on."""
        self._downstream.resolutionComplete()


@implementer(IHostnameResolver)
class BlocklistingResolver:
    """An ``IHostnameResolver`` that drops forbidden addresses from results.

    Attributes:
        accepted: How many addresses it passed on so far.
        refused: How many addresses it dropped so far.
    """

    def __init__(
        self,
        resolver: Any,
        is_forbidden: Callable[[str], bool] = is_forbidden_address,
    ) -> None:
        self._resolver = resolver
        self.is_forbidden = is_forbidden
        self.accepted = 0
        self.refused = 0

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[Any]] | None = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        """Resolve through the wrapped resolver, filtering what it finds."""
        receiver = _FilteringReceiver(resolutionReceiver, self, hostName)
        return self._resolver.resolveHostName(
            receiver, hostName, portNumber, addressTypes, transportSemantics
        )


@implementer(IReactorTCP, IReactorTime, IReactorPluggableNameResolver)
class BlocklistingReactor:
    """A reactor view for an ``Agent``: a filtering resolver, guarded connects.

    Time and listening are delegated to the real reactor unchanged; IReactorSSL
    is provided only when the real reactor provides it. An ``Agent`` built
    directly on this view is guarded too, but reports a refused name as
    ``DNSLookupError``; ``build_http_clients`` wraps it per connection so the
    refusal is reported as ``DestinationNotAllowed``.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        name_resolver: BlocklistingResolver | None = None,
    ) -> None:
        self._reactor = reactor
        self.nameResolver: Any = (
            name_resolver
            if name_resolver is not None
            else BlocklistingResolver(reactor.nameResolver)
        )
        if IReactorSSL.providedBy(reactor):
            alsoProvides(self, IReactorSSL)

    # IReactorPluggableNameResolver

    def installNameResolver(self, resolver: Any) -> Any:
        """Replace the resolver; the new one is filtered as well."""
        previous = self.nameResolver
        self.nameResolver = BlocklistingResolver(resolver)
        return previous

    # IReactorTime

    def seconds(self) -> float:
        """Delegate to the real reactor."""
        now: float = self._reactor.seconds()
        return now

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any:
        """Delegate to the real reactor."""
        return self._reactor.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[Any]:
        """Delegate to the real reactor."""
        calls: Sequence[Any] = self._reactor.getDelayedCalls()
        return calls

    # IReactorTCP

    def listenTCP(
        self,
        port: int,
        factory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        """Delegate to the real reactor (listening is not guarded)."""
        listening = self._reactor.listenTCP(
            port, factory, backlog, interface
        )
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> Any:
        """Connect to an already-resolved, allowed IP address only."""
        self._check_destination(host)
        connector = self._reactor.connectTCP(
            host, port, factory, timeout, bindAddress
        )
        return connector

    # IReactorSSL (provided only if the real reactor has it)

    def connectSSL(
        self,
        host: str,
        port: int,
        factory: Any,
        contextFactory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> Any:
        """Connect over TLS to an already-resolved, allowed IP address only."""
        self._check_destination(host)
        connector = self._reactor.connectSSL(
            host, port, factory, contextFactory, timeout, bindAddress
        )
        return connector

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        """Delegate to the real reactor (listening is not guarded)."""
        listening = self._reactor.listenSSL(
            port, factory, contextFactory, backlog, interface
        )
        return listening

    def _check_destination(self, host: str) -> None:
        # A host name here would be resolved by the real reactor, behind the
        # filter's back: only IP literals the guard allows get through.
        if is_forbidden_address(host):
            self._log.warn("refused connection to {host}", host=host)
            raise DestinationNotAllowed(string=REFUSAL_REASON)


@implementer(IStreamClientEndpoint)
class _GuardedHostnameEndpoint:
    """A ``HostnameEndpoint`` over the guard that says why it failed.

    Each connection attempt gets its own filtering resolver, so an empty
    result caused by the guard is reported as ``DestinationNotAllowed``
    instead of the ``DNSLookupError`` ``HostnameEndpoint`` would raise.
    """

    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """Resolve, filter, then connect to the first allowed address."""
        resolver = BlocklistingResolver(self._reactor.nameResolver)
        scoped = BlocklistingReactor(self._reactor, name_resolver=resolver)
        endpoint = HostnameEndpoint(scoped, self._host, self._port)

        def explain(failure: Failure) -> Failure:
            if failure.check(DNSLookupError) and resolver.refused and not resolver.accepted:
                return Failure(DestinationNotAllowed(string=REFUSAL_REASON))
            return failure

        connecting: Deferred[Any] = endpoint.connect(protocolFactory)
        return connecting.addErrback(explain)


@implementer(IAgentEndpointFactory)
class _GuardedEndpointFactory:
    """TCP for ``http``, TLS over TCP for ``https``, both through the guard."""

    def __init__(self, reactor: Any, tls_policy: Any) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy

    def endpointForURI(self, uri: URI) -> Any:
        """Build the guarded endpoint for one request URI."""
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        host = uri.host.decode("ascii")
        endpoint: Any = _GuardedHostnameEndpoint(
            self._reactor, host, uri.port
        )
        if uri.scheme == b"https":
            creator = self._tls_policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


@implementer(IBodyProducer)
class BytesProducer:
    """Writes a request body that is already in memory, all at once.

    treq's default turns bytes into a ``FileBodyProducer``, which runs on the
    global cooperator and so the global reactor; this needs neither.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write the whole body."""
        if self._body:
            consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: everything was written at once."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""


def body_producer(data: Any) -> Any:
    """Bytes written at once (no global cooperator), anything else as its IBodyProducer."""
    if isinstance(data, (bytes, bytearray)):
        return BytesProducer(bytes(data))
    return IBodyProducer(data)


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


def quiet_pool(reactor: Any) -> HTTPConnectionPool:
    """A persistent connection pool that logs no "Starting factory" line per outbound connection.

    ``HTTPConnectionPool`` builds one client factory per connection from its
    ``_factory`` attribute (Twisted's own extension point for it, though
    named as private); the quiet subclass only turns ``noisy`` off.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietHTTP11ClientFactory
    return pool


def cookieless_jar() -> IndexableCookieJar:
    # Destinations must not be able to plant cookies that later webhooks
    # (perhaps of another namespace) would send back.
    return IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def build_http_clients(
    reactor: Any,
    pools: tuple[HTTPConnectionPool, HTTPConnectionPool] | None = None,
) -> tuple[HTTPClient, HTTPClient]:
    """Build the (guarded, unguarded) HTTP clients modules deliver with.

    Each has its own persistent connection pool on ``reactor`` (pass
    ``pools`` to keep hold of them, e.g. to close them at shutdown); nothing
    is shared with treq's module-level functions or its global pool. Neither
    keeps cookies, and request bodies given as bytes are written without the
    global cooperator.
    """
    guarded_pool, unguarded_pool = pools or (quiet_pool(reactor), quiet_pool(reactor))
    tls_policy = BrowserLikePolicyForHTTPS()
    guarded_agent: Any = Agent.usingEndpointFactory(
        reactor,
        _GuardedEndpointFactory(reactor, tls_policy),
        pool=guarded_pool,
    )
    unguarded_agent: Any = Agent(
        reactor,
        contextFactory=tls_policy,
        pool=unguarded_pool,
    )
    return (
        HTTPClient(
            guarded_agent,
            cookiejar=cookieless_jar(),
            data_to_body_producer=body_producer,
        ),
        HTTPClient(
            unguarded_agent,
            cookiejar=cookieless_jar(),
            data_to_body_producer=body_producer,
        ),
    )
