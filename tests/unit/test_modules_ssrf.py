"""The SSRF guard: the address rule, the filtering resolver, the reactor view, the clients."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping, Sequence
from http.cookiejar import Cookie
from typing import Any

import pytest
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cwm.modules import ssrf

_sync = SynchronousTestCase()


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        # public
        ("8.8.8.8", False),
        ("93.184.216.34", False),
        ("1.1.1.1", False),
        ("2606:4700:4700::1111", False),
        ("2a00:1450:4001:80b::200e", False),
        ("::ffff:8.8.8.8", False),
        ("64:ff9b::808:808", False),
        ("2002:808:808::1", False),
        # private
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("172.31.255.255", True),
        ("192.168.0.1", True),
        # loopback
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        # link-local and metadata
        ("169.254.169.254", True),
        ("169.254.0.1", True),
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fd00:ec2::254", True),
        ("100.100.100.200", True),
        ("192.0.0.192", True),
        # unspecified, broadcast, multicast, reserved, shared, documentation
        ("0.0.0.0", True),
        ("0.1.2.3", True),
        ("::", True),
        ("255.255.255.255", True),
        ("224.0.0.1", True),
        ("239.255.255.250", True),
        ("ff02::1", True),
        ("240.0.0.1", True),
        ("100.64.0.1", True),
        ("100.127.255.254", True),
        ("198.18.0.1", True),
        ("192.0.2.1", True),
        ("203.0.113.7", True),
        ("2001:db8::1", True),
        # IPv4-mapped, NAT64, 6to4 and IPv4-compatible forms of forbidden addresses
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("64:ff9b::7f00:1", True),
        ("2002:7f00:1::", True),
        ("2002:a9fe:a9fe::", True),
        ("::127.0.0.1", True),
        # unique local, site-local, Teredo
        ("fc00::1", True),
        ("fd12:3456:789a::1", True),
        ("fec0::1", True),
        ("2001::1", True),
        # not an IP address at all: fail closed
        ("example.com", True),
        ("", True),
        ("127.1", True),
    ],
)
def test_is_forbidden_address_table(address: str, forbidden: bool) -> None:
    """Only public unicast addresses are allowed."""
    assert ssrf.is_forbidden_address(address) is forbidden


@implementer(IHostnameResolver)
class FakeResolver:
    """Resolves names to the addresses a test chooses, synchronously."""

    def __init__(self, answers: Mapping[str, Sequence[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        """Report every chosen address for ``hostName``, then completion."""
        self.asked.append(hostName)
        resolutionReceiver.resolutionBegan(None)
        for address in self.answers.get(hostName, ()):
            kind = IPv6Address if ":" in address else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return None


@implementer(IResolutionReceiver)
class RecordingReceiver:
    """Records what a resolution reported."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.began = False
        self.completed = False

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        """Note the start."""
        self.began = True

    def addressResolved(self, address: Any) -> None:
        """Keep the address."""
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        """Note the end."""
        self.completed = True


ANSWERS = {
    "public.example": ["93.184.216.34", "2606:4700::6810:84e5"],
    "mixed.example": ["10.0.0.7", "93.184.216.34", "::ffff:127.0.0.1"],
    "private.example": ["10.0.0.7", "192.168.1.1"],
    "loopback.example": ["127.0.0.1", "::1"],
    "metadata.example": ["169.254.169.254", "fd00:ec2::254"],
    "mapped.example": ["::ffff:169.254.169.254", "::ffff:10.1.1.1"],
    "ula.example": ["fd12:3456:789a::1"],
    "127.0.0.1": ["127.0.0.1"],
    "8.8.8.8": ["8.8.8.8"],
}


def resolve(name: str) -> tuple[RecordingReceiver, ssrf.BlocklistingResolver]:
    """Resolve ``name`` through the guard over the fake resolver."""
    resolver = ssrf.BlocklistingResolver(FakeResolver(ANSWERS))
    receiver = RecordingReceiver()
    resolver.resolveHostName(receiver, name, 443)
    return receiver, resolver


@pytest.mark.parametrize(
    "name",
    [
        "private.example",
        "loopback.example",
        "metadata.example",
        "mapped.example",
        "ula.example",
        "127.0.0.1",
    ],
)
def test_resolver_filters_every_forbidden_address(name: str) -> None:
    """Private, loopback, metadata, IPv4-mapped and ULA results never reach the caller."""
    receiver, resolver = resolve(name)
    assert receiver.addresses == []
    assert receiver.began and receiver.completed
    assert resolver.refused == len(ANSWERS[name])
    assert resolver.accepted == 0


def test_resolver_passes_public_addresses() -> None:
    """Public IPv4 and IPv6 results pass unchanged."""
    receiver, resolver = resolve("public.example")
    assert receiver.addresses == ["93.184.216.34", "2606:4700::6810:84e5"]
    assert resolver.refused == 0
    assert receiver.completed


def test_resolver_keeps_only_the_public_part_of_a_mixed_answer() -> None:
    """A name with public and private addresses keeps only the public ones."""
    receiver, resolver = resolve("mixed.example")
    assert receiver.addresses == ["93.184.216.34"]
    assert (resolver.accepted, resolver.refused) == (1, 2)


def test_resolver_passes_a_public_ip_literal() -> None:
    """IP literals go through the resolver too, and public ones pass."""
    receiver, _ = resolve("8.8.8.8")
    assert receiver.addresses == ["8.8.8.8"]


def make_reactor() -> MemoryReactorClock:
    """A memory reactor whose resolver answers from ``ANSWERS``."""
    reactor = MemoryReactorClock()
    reactor.installNameResolver(FakeResolver(ANSWERS))
    return reactor


def test_reactor_view_provides_what_an_agent_needs() -> None:
    """The wrapper provides TCP, time, pluggable resolution, and SSL when the reactor has it."""
    view = ssrf.BlocklistingReactor(make_reactor())
    for interface in (IReactorTCP, IReactorTime, IReactorPluggableNameResolver, IReactorSSL):
        assert interface.providedBy(view), interface
    assert isinstance(view.nameResolver, ssrf.BlocklistingResolver)


def test_reactor_view_without_ssl_does_not_claim_it() -> None:
    """IReactorSSL is provided only when the wrapped reactor provides it."""
    clock = Clock()
    clock.nameResolver = FakeResolver(ANSWERS)  # type: ignore[attr-defined]
    view = ssrf.BlocklistingReactor(clock)
    assert not IReactorSSL.providedBy(view)


def test_reactor_view_delegates_time() -> None:
    """Time calls go to the real reactor."""
    reactor = make_reactor()
    view = ssrf.BlocklistingReactor(reactor)
    calls: list[int] = []
    view.callLater(5, calls.append, 1)
    assert len(view.getDelayedCalls()) == 1
    reactor.advance(5)
    assert calls == [1]
    assert view.seconds() == reactor.seconds()


def test_installed_resolver_is_filtered_too() -> None:
    """``installNameResolver`` wraps the new resolver in the filter."""
    view = ssrf.BlocklistingReactor(make_reactor())
    view.installNameResolver(FakeResolver({"x.example": ["10.0.0.1", "8.8.4.4"]}))
    receiver = RecordingReceiver()
    view.nameResolver.resolveHostName(receiver, "x.example", 80)
    assert receiver.addresses == ["8.8.4.4"]


@pytest.mark.parametrize("host", ["10.0.0.1", "127.0.0.1", "169.254.169.254", "example.com"])
def test_connect_tcp_refuses_forbidden_and_unresolved_hosts(host: str) -> None:
    """``connectTCP`` only takes allowed IP literals: a name would bypass the filter."""
    reactor = make_reactor()
    view = ssrf.BlocklistingReactor(reactor)
    with pytest.raises(ssrf.DestinationNotAllowed):
        view.connectTCP(host, 80, ClientFactory())
    with pytest.raises(ssrf.DestinationNotAllowed):
        view.connectSSL(host, 443, ClientFactory(), None)
    assert reactor.tcpClients == []
    assert reactor.sslClients == []


def test_connect_tcp_passes_public_addresses() -> None:
    """A public IP literal is connected through the real reactor."""
    reactor = make_reactor()
    ssrf.BlocklistingReactor(reactor).connectTCP("93.184.216.34", 80, ClientFactory())
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("93.184.216.34", 80)]


def guarded_request(url: str) -> tuple[MemoryReactorClock, list[Any]]:
    """Start a request through the guarded client built on a memory reactor."""
    reactor = make_reactor()
    guarded, _ = ssrf.build_http_clients(reactor)
    results: list[Any] = []
    clock: Any = reactor
    guarded.request("POST", url, data=b"{}", timeout=10, reactor=clock).addBoth(results.append)
    return reactor, results


@pytest.mark.parametrize(
    "url",
    [
        "http://private.example/hook",
        "https://metadata.example/latest",
        "http://loopback.example:8080/",
        "http://mapped.example/",
        "http://127.0.0.1:9000/",
    ],
)
def test_guarded_client_refuses_with_a_clear_error(url: str) -> None:
    """A name resolving only to forbidden addresses fails with DestinationNotAllowed."""
    reactor, results = guarded_request(url)
    assert len(results) == 1
    failure = results[0]
    assert failure.check(ssrf.DestinationNotAllowed)
    assert ssrf.REFUSAL_REASON in str(failure.value)
    assert reactor.tcpClients == []
    reactor.advance(10)


def test_guarded_client_connects_to_the_public_address_only() -> None:
    """With a mixed answer, only the public address is dialled."""
    reactor, results = guarded_request("http://mixed.example/hook")
    assert results == []
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("93.184.216.34", 80)]
    reactor.advance(10)  # treq's timeout fires and cancels the attempt
    assert len(results) == 1


def test_unknown_name_is_still_a_dns_error() -> None:
    """A name with no addresses at all stays a DNSLookupError (not a guard refusal)."""
    from twisted.internet.error import DNSLookupError

    _, results = guarded_request("http://nowhere.example/")
    assert results[0].check(DNSLookupError)
    assert not results[0].check(ssrf.DestinationNotAllowed)


def test_unguarded_client_connects_anywhere() -> None:
    """The unguarded client dials private addresses (for ``allowed_hosts``)."""
    reactor = make_reactor()
    _, unguarded = ssrf.build_http_clients(reactor)
    unguarded.request("POST", "http://private.example/", data=b"{}")
    assert [host for host, *_ in reactor.tcpClients] == ["10.0.0.7"]


def test_clients_are_separate_treq_clients_without_cookies() -> None:
    """Two distinct HTTPClients, each with its own pool, and cookies refused."""
    reactor = make_reactor()
    clients = ssrf.build_http_clients(reactor)
    assert all(isinstance(client, HTTPClient) for client in clients)
    assert clients[0] is not clients[1]
    # Private attributes, read only to check that nothing is shared.
    pools: list[Any] = [getattr(client._agent, "_pool") for client in clients]
    assert pools[0] is not pools[1]
    assert all(pool.persistent for pool in pools)
    cookie = Cookie(
        0, "session", "1", None, False, "example.com", False, False, "/", False,
        False, None, False, None, None, {},
    )
    for client in clients:
        policy: Any = getattr(client._cookiejar, "_policy")
        assert not policy.set_ok(cookie, urllib.request.Request("http://example.com/"))


def test_bytes_producer_writes_the_body_at_once() -> None:
    """Request bodies given as bytes are written synchronously, no cooperator."""
    written: list[bytes] = []

    class Consumer:
        def write(self, data: bytes) -> None:
            written.append(data)

    producer = ssrf.BytesProducer(b"abc")
    assert producer.length == 3
    _sync.successResultOf(producer.startProducing(Consumer()))
    assert written == [b"abc"]


def test_refused_connection_protocol_never_runs() -> None:
    """No protocol is built for a refused destination."""
    built: list[Protocol] = []

    class Factory(ClientFactory):
        def buildProtocol(self, addr: Any) -> Protocol:
            protocol = Protocol()
            built.append(protocol)
            return protocol

    reactor = make_reactor()
    endpoint = ssrf._GuardedHostnameEndpoint(reactor, "private.example", 80)
    failure = _sync.failureResultOf(endpoint.connect(Factory()), ssrf.DestinationNotAllowed)
    assert failure.check(ssrf.DestinationNotAllowed)
    assert built == []
