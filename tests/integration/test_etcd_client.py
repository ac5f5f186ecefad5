"""The blocking etcd client against a real etcd 3.5.1: KV, paging, compaction, leases, failover, auth, watch.

Every wait is on an event with a bound (a response, a log line, a thread
ending); none sleeps for propagation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from cwm.etcd.client import (
    AuthExpired,
    AuthFailed,
    Cancelled,
    Compacted,
    EtcdClient,
    EtcdOptions,
    LeaseNotFound,
    PermissionDenied,
    Unavailable,
    prefix_range_end,
)
from cwm.etcd.etcdrpc import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.integration.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    with EtcdClient(EtcdOptions(endpoints=(etcd.address,))) as c:
        yield c


def keys(kvs: list[kv_pb2.KeyValue]) -> list[bytes]:
    return [kv.key for kv in kvs]


def test_put_and_range_round_trip(client: EtcdClient, etcd_prefix: str) -> None:
    prefix = etcd_prefix.encode()
    first = client.put(prefix + b"a", b"1")
    second = client.put(prefix + b"b", b"\x00binary\xff")
    assert second > first > 0
    kv = client.range_key(prefix + b"a")
    assert kv is not None and (kv.key, kv.value, kv.mod_revision, kv.version) == (prefix + b"a", b"1", first, 1)
    assert client.range_key(prefix + b"missing") is None
    kvs, revision = client.range_prefix(prefix)
    assert [(kv.key, kv.value) for kv in kvs] == [(prefix + b"a", b"1"), (prefix + b"b", b"\x00binary\xff")]
    assert revision >= second
    # The same key again: a new revision and version, at the old revision the old value.
    third = client.put(prefix + b"a", b"2")
    assert client.range_key(prefix + b"a").version == 2  # type: ignore[union-attr]
    assert client.range_key(prefix + b"a", revision=first).value == b"1"  # type: ignore[union-attr]
    assert client.range_key(prefix + b"a", revision=third).value == b"2"  # type: ignore[union-attr]


def test_paged_range_is_one_snapshot_at_the_first_pages_revision(client: EtcdClient, etcd_prefix: str) -> None:
    """2,500 keys in pages of 1,000: the full set, even with writes landing between pages."""
    prefix = etcd_prefix.encode()
    expected = [prefix + b"k%05d" % i for i in range(2500)]
    for key in expected:
        client.put(key, key[-5:])
    kvs, revision = client.range_prefix(prefix, page_size=1000)
    assert keys(kvs) == expected and [kv.value for kv in kvs] == [key[-5:] for key in expected]
    # A writer between the pages: adds a key, deletes one, rewrites one.
    pages: list[rpc_pb2.RangeRequest] = []
    real_range = client._range

    def range_then_write(request: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        response = real_range(request)
        pages.append(request)
        if len(pages) == 1:
            client.put(prefix + b"k99999", b"late")
            client.delete(prefix + b"k02000")
            client.put(prefix + b"k00001", b"changed")
        return response

    client._range = range_then_write  # type: ignore[method-assign]
    try:
        pinned, pinned_revision = client.range_prefix(prefix, page_size=1000)
    finally:
        del client._range
    assert len(pages) == 3 and [p.revision for p in pages] == [0, pinned_revision, pinned_revision]
    assert pages[1].key == expected[999] + b"\0" and pages[2].key == expected[1999] + b"\0"
    assert keys(pinned) == expected
    assert pinned[1].value == b"00001"
    latest, latest_revision = client.range_prefix(prefix, page_size=1000)
    assert latest_revision == pinned_revision + 3
    assert len(latest) == 2500 and prefix + b"k99999" in keys(latest) and prefix + b"k02000" not in keys(latest)
    # And an explicit revision reads that snapshot again, in one page or many.
    again, again_revision = client.range_prefix(prefix, page_size=0, revision=revision)
    assert again_revision == revision and keys(again) == expected


def test_delete_and_delete_prefix(client: EtcdClient, etcd_prefix: str) -> None:
    prefix = etcd_prefix.encode()
    for name in (b"a", b"b", b"sub/c", b"sub/d"):
        client.put(prefix + name, b"1")
    outside = prefix[:-1] + b"x"  # shares all but the last byte with the prefix
    client.put(outside, b"keep")
    revision = client.delete(prefix + b"a")
    assert client.range_key(prefix + b"a") is None and revision > 0
    assert client.delete(prefix + b"a") == revision  # nothing deleted: the revision does not move
    after = client.delete_prefix(prefix + b"sub/")
    assert after == revision + 1  # both keys, one revision
    assert keys(client.range_prefix(prefix)[0]) == [prefix + b"b"]
    client.delete_prefix(prefix)
    assert client.range_prefix(prefix)[0] == []
    assert client.range_key(outside) is not None
    client.delete(outside)


def test_compaction_turns_an_old_revision_into_compacted(client: EtcdClient, etcd_prefix: str) -> None:
    prefix = etcd_prefix.encode()
    old = client.put(prefix + b"a", b"1")
    latest = client.put(prefix + b"a", b"2")
    client.compact(latest)
    with pytest.raises(Compacted):
        client.range_prefix(prefix, revision=old)
    with pytest.raises(Compacted):
        client.compact(latest)
    # At the compact revision itself the history is still there.
    kvs, revision = client.range_prefix(prefix, revision=latest)
    assert revision == latest and kvs[0].value == b"2"


def test_lease_grant_keepalive_revoke(client: EtcdClient, etcd_prefix: str) -> None:
    key = etcd_prefix.encode() + b"leased"
    lease, ttl = client.lease_grant(30)
    assert lease != 0 and ttl == 30
    client.put(key, b"here", lease=lease)
    assert client.range_key(key).lease == lease  # type: ignore[union-attr]
    assert client.lease_keepalive(lease) == 30
    client.lease_revoke(lease)
    assert client.range_key(key) is None
    assert client.lease_keepalive(lease) == 0
    with pytest.raises(LeaseNotFound):
        client.lease_revoke(lease)
    with pytest.raises(LeaseNotFound):
        client.put(key, b"again", lease=lease)
    # etcd rounds a tiny TTL up.
    short, granted = client.lease_grant(1)
    assert granted >= 2
    client.lease_revoke(short)


def test_connection_refused_is_unavailable_within_the_deadline() -> None:
    options = EtcdOptions(endpoints=(("127.0.0.1", free_port()),), timeout=3.0)
    with EtcdClient(options) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.put(b"/k", b"v")
        assert time.monotonic() - started < options.timeout + 1.0


def test_failover_to_the_next_endpoint(etcd: EtcdServer, etcd_prefix: str) -> None:
    """The first endpoint refuses connections; calls move on to the second and stay there."""
    dead = ("127.0.0.1", free_port())
    with EtcdClient(EtcdOptions(endpoints=(dead, etcd.address), timeout=3.0)) as client:
        assert client.endpoint == dead
        revision = client.put(etcd_prefix.encode() + b"a", b"1")
        assert client.endpoint == etcd.address
        assert client.range_key(etcd_prefix.encode() + b"a").mod_revision == revision  # type: ignore[union-attr]
        assert client.status().version.startswith("3.")
    # A watch opened first thing also finds the live endpoint.
    with EtcdClient(EtcdOptions(endpoints=(dead, etcd.address), timeout=3.0)) as client:
        stream = client.open_watch(etcd_prefix.encode(), 0)
        with closing_after(stream, WAIT):
            assert next(stream.responses()).created
        assert client.endpoint == etcd.address


def test_auth_credentials_permissions_and_failures(fresh_etcd: Callable[..., EtcdServer]) -> None:
    server = fresh_etcd()
    server.enable_auth("rootpw", "app", "apppw", "/cfg/")
    with EtcdClient(EtcdOptions(endpoints=(server.address,), username="app", password="apppw")) as client:
        revision = client.put(b"/cfg/a", b"1")
        assert client.range_key(b"/cfg/a").mod_revision == revision  # type: ignore[union-attr]
        assert keys(client.range_prefix(b"/cfg/")[0]) == [b"/cfg/a"]
        with pytest.raises(PermissionDenied):
            client.put(b"/elsewhere", b"1")
        with pytest.raises(PermissionDenied):
            client.range_key(b"/elsewhere")
        stream = client.open_watch(b"/cfg/", revision)
        with closing_after(stream, WAIT):
            responses = stream.responses()
            assert next(responses).created
            event = next(responses).events[0]
            assert (event.kv.key, event.kv.value) == (b"/cfg/a", b"1")
    with EtcdClient(EtcdOptions(endpoints=(server.address,), username="app", password="wrong")) as client:
        with pytest.raises(AuthFailed):
            client.put(b"/cfg/a", b"2")
    with EtcdClient(EtcdOptions(endpoints=(server.address,))) as client:
        with pytest.raises(AuthFailed):
            client.put(b"/cfg/a", b"2")


def test_credentials_against_a_server_without_auth(client: EtcdClient, etcd: EtcdServer, etcd_prefix: str) -> None:
    """etcd answers Authenticate with "not enabled": the client goes on without a token."""
    options = EtcdOptions(endpoints=(etcd.address,), username="app", password="apppw")
    with EtcdClient(options) as authed:
        revision = authed.put(etcd_prefix.encode() + b"a", b"1")
        assert client.range_key(etcd_prefix.encode() + b"a").mod_revision == revision  # type: ignore[union-attr]


def test_an_expired_token_is_renewed_transparently(fresh_etcd: Callable[..., EtcdServer]) -> None:
    """With --auth-token-ttl 2 the idle client's token expires; its next call re-authenticates."""
    server = fresh_etcd("--auth-token-ttl", "2", log_level="info")
    server.enable_auth("rootpw", "app", "apppw", "/cfg/")
    with EtcdClient(EtcdOptions(endpoints=(server.address,), username="app", password="apppw")) as client:
        client.put(b"/cfg/a", b"1")
        old_token = client._token
        assert old_token
        # etcd logs the expiry (simple tokens slide: any use of the old token would renew it).
        assert server.wait_for_log('"deleted a simple token","user-name":"app"', WAIT), server.log_tail()
        channel = grpc.insecure_channel(server.endpoint)
        try:
            with pytest.raises(grpc.RpcError) as raised:
                rpc_pb2_grpc.KVStub(channel).Range(
                    rpc_pb2.RangeRequest(key=b"/cfg/a"), metadata=(("token", old_token),), timeout=5
                )
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            channel.close()
        kv = client.range_key(b"/cfg/a")
        assert kv is not None and kv.value == b"1"
        assert client._token and client._token != old_token


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class closing_after:
    """Close a watch stream on exit, and after ``timeout`` seconds if a read hangs (the read then fails)."""

    def __init__(self, stream: object, timeout: float) -> None:
        self._stream = stream
        self._timer = threading.Timer(timeout, self._close)
        self._timer.daemon = True

    def _close(self) -> None:
        self._stream.close()  # type: ignore[attr-defined]

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._close()


def test_watch_created_then_put_event_and_close_leaves_no_thread(
    client: EtcdClient, etcd_prefix: str
) -> None:
    prefix = etcd_prefix.encode()
    client.status()  # the channel is up before counting threads
    before = thread_names()
    stream = client.open_watch(
        rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_range_end(prefix), prev_kv=True)
    )
    with closing_after(stream, WAIT):
        responses = stream.responses()
        created = next(responses)
        assert created.created and not created.canceled and created.header.revision > 0
        revision = client.put(prefix + b"a", b"1")
        update = next(responses)
        assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in update.events] == [
            (kv_pb2.Event.PUT, prefix + b"a", b"1", revision)
        ]
        assert update.watch_id == created.watch_id
        client.delete(prefix + b"a")
        deleted = next(responses).events[0]
        assert deleted.type == kv_pb2.Event.DELETE and deleted.prev_kv.value == b"1"
        stream.close()
        with pytest.raises(Cancelled):
            next(responses)
    assert wait_for(lambda: thread_names() == before), (before, thread_names())


def test_watch_from_a_compacted_revision_is_created_then_canceled(client: EtcdClient, etcd_prefix: str) -> None:
    """etcd sends the created reply first, then a canceled one carrying compact_revision."""
    prefix = etcd_prefix.encode()
    old = client.put(prefix + b"a", b"1")
    latest = client.put(prefix + b"a", b"2")
    client.compact(latest)
    stream = client.open_watch(prefix, old)
    with closing_after(stream, WAIT):
        responses = stream.responses()
        created = next(responses)
        assert created.created and not created.canceled
        cancelled = next(responses)
        assert cancelled.canceled and cancelled.compact_revision >= latest and not cancelled.events


def test_close_of_the_client_ends_its_streams(etcd: EtcdServer, etcd_prefix: str) -> None:
    client = EtcdClient(EtcdOptions(endpoints=(etcd.address,)))
    stream = client.open_watch(etcd_prefix.encode(), 0)
    with closing_after(stream, WAIT):
        responses = stream.responses()
        assert next(responses).created
        client.close()
        with pytest.raises(Cancelled):
            next(responses)
    assert stream.closed
    with pytest.raises(Cancelled):
        client.status()


def test_progress_request_answers_with_the_store_revision(client: EtcdClient, etcd_prefix: str) -> None:
    stream = client.open_watch(etcd_prefix.encode(), 0)
    with closing_after(stream, WAIT):
        responses = stream.responses()
        assert next(responses).created
        revision = client.put(etcd_prefix.encode() + b"other/../x", b"1")
        assert next(responses).events
        stream.request_progress()
        progress = next(responses)
        assert not progress.events and not progress.created and not progress.canceled
        assert progress.header.revision >= revision


def test_a_watch_refused_for_an_expired_token_is_auth_expired(fresh_etcd: Callable[..., EtcdServer]) -> None:
    """etcd 3.5.1 refuses the create (created+canceled, "permission denied"): classified AuthExpired."""
    from cwm.etcd.client import classify_cancel_reason

    server = fresh_etcd("--auth-token-ttl", "2", log_level="info")
    server.enable_auth("rootpw", "app", "apppw", "/cfg/")
    with EtcdClient(EtcdOptions(endpoints=(server.address,), username="app", password="apppw")) as client:
        client.authenticate()
        assert server.wait_for_log('"deleted a simple token","user-name":"app"', WAIT), server.log_tail()
        stream = client.open_watch(b"/cfg/", 0)
        with closing_after(stream, WAIT):
            refused = next(stream.responses())
        assert refused.created and refused.canceled
        assert classify_cancel_reason(refused.cancel_reason) is AuthExpired
        client.authenticate()
        stream = client.open_watch(b"/cfg/", 0)
        with closing_after(stream, WAIT):
            accepted = next(stream.responses())
        assert accepted.created and not accepted.canceled


def test_tls_with_a_client_certificate(fresh_etcd: Callable[..., EtcdServer], etcd_prefix: str) -> None:
    """ca_cert/cert/key make a TLS channel; without the client certificate etcd refuses the handshake."""
    server = fresh_etcd(tls=True)
    tls = server.tls
    assert tls is not None
    key = etcd_prefix.encode() + b"a"
    options = EtcdOptions(
        endpoints=(server.address,), ca_cert=tls.ca_cert, cert=tls.client_cert, key=tls.client_key, timeout=3.0
    )
    with EtcdClient(options) as client:
        revision = client.put(key, b"1")
        assert client.range_key(key).mod_revision == revision  # type: ignore[union-attr]
        stream = client.open_watch(etcd_prefix.encode(), revision)
        with closing_after(stream, WAIT):
            responses = stream.responses()
            assert next(responses).created
            assert next(responses).events[0].kv.key == key
    no_client_cert = EtcdOptions(endpoints=(server.address,), ca_cert=tls.ca_cert, timeout=3.0)
    plaintext = EtcdOptions(endpoints=(server.address,), timeout=3.0)
    for refused in (no_client_cert, plaintext):
        with EtcdClient(refused) as client:
            with pytest.raises(Unavailable):
                client.range_key(key)


def test_the_client_rides_out_restart_pause_and_kill(fresh_etcd: Callable[..., EtcdServer]) -> None:
    """EtcdServer's fault injection, seen from the client: data kept, errors classified, recovery."""
    server = fresh_etcd()
    with EtcdClient(EtcdOptions(endpoints=(server.address,), timeout=1.0)) as client:
        revision = client.put(b"/a", b"1")
        server.restart()
        assert client.range_key(b"/a").mod_revision == revision  # type: ignore[union-attr]
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                client.range_key(b"/a")
            assert time.monotonic() - started < 2.0
        finally:
            server.resume()
        assert client.range_key(b"/a") is not None
        server.kill()
        with pytest.raises(Unavailable):
            client.range_key(b"/a")
        server.start()
        assert client.put(b"/a", b"2") > revision
