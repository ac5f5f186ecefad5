"""The etcd client's pure parts: error classification, key ranges, options. No server, no socket."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cwm.etcd.client import (
    AuthExpired,
    AuthFailed,
    Cancelled,
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdOptions,
    LeaseNotFound,
    PermissionDenied,
    TooLarge,
    Unavailable,
    WatchStream,
    classify,
    classify_cancel_reason,
    prefix_range_end,
    watch_prefix_request,
)
from cwm.etcd.etcdrpc import rpc_pb2


class FakeRpcError(grpc.RpcError):
    """What grpcio raises: an RpcError that is also a Call with code() and details()."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details


S = grpc.StatusCode


@pytest.mark.parametrize(
    "code, details, kind",
    [
        (S.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: Connection refused", Unavailable),
        (S.UNAVAILABLE, "etcdserver: no leader", Unavailable),
        (S.UNAVAILABLE, "Socket closed", Unavailable),
        (S.DEADLINE_EXCEEDED, "Deadline Exceeded", Unavailable),
        (S.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", Compacted),
        (S.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision", EtcdError),
        (S.UNAUTHENTICATED, "etcdserver: invalid auth token", AuthExpired),
        (S.INVALID_ARGUMENT, "etcdserver: revision of auth store is old", AuthExpired),
        (S.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password", AuthFailed),
        (S.INVALID_ARGUMENT, "etcdserver: user name is empty", AuthFailed),
        (S.PERMISSION_DENIED, "etcdserver: permission denied", PermissionDenied),
        (S.RESOURCE_EXHAUSTED, "Received message larger than max (6000228 vs. 4194304)", TooLarge),
        (S.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", TooLarge),
        (S.INVALID_ARGUMENT, "etcdserver: request is too large", TooLarge),
        (S.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFound),
        (S.CANCELLED, "Locally cancelled by application!", Cancelled),
        (S.FAILED_PRECONDITION, "etcdserver: authentication is not enabled", EtcdError),
        (S.INTERNAL, "", EtcdError),
    ],
)
def test_classify_grpc_status(code: Any, details: str, kind: type[EtcdError]) -> None:
    """Each status and etcd message lands in the kind the caller acts on."""
    error = classify(FakeRpcError(code, details))
    assert type(error) is kind
    assert error.code is code
    assert error.message.startswith(code.name)
    assert details in str(error)


def test_classify_passes_etcd_errors_through_and_wraps_anything_else() -> None:
    compacted = Compacted("gone")
    assert classify(compacted) is compacted
    other = classify(ValueError("odd"))
    assert type(other) is EtcdError and str(other) == "ValueError: odd" and other.code is None


@pytest.mark.parametrize(
    "reason, kind",
    [
        # etcd 3.4.23, expired token at create time.
        ("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token", AuthExpired),
        # etcd 3.5.0-3.5.5 report the same expiry as a permission problem.
        ("rpc error: code = PermissionDenied desc = etcdserver: permission denied", AuthExpired),
        ("etcdserver: mvcc: required revision has been compacted", Compacted),
        ("mvcc: required revision has been compacted", Compacted),
        ("rpc error: code = Unavailable desc = etcdserver: no leader", Unavailable),
        ("rpc error: code = Canceled desc = context canceled", Cancelled),
        ("rpc error: code = InvalidArgument desc = etcdserver: user name is empty", AuthFailed),
        ("mvcc: duplicate watch ID provided on the WatchStream", EtcdError),
        ("", EtcdError),
    ],
)
def test_classify_cancel_reason(reason: str, kind: type[EtcdError]) -> None:
    assert classify_cancel_reason(reason) is kind


@pytest.mark.parametrize(
    "prefix, end",
    [
        (b"/cwm/", b"/cwm0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xfe\xff\xff", b"a\xff"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_watch_prefix_request_asks_for_progress_and_fragments() -> None:
    request = watch_prefix_request(b"/cwm/", 42)
    assert (request.key, request.range_end, request.start_revision) == (b"/cwm/", b"/cwm0", 42)
    assert request.progress_notify and request.fragment and not request.prev_kv


def test_channel_options_are_the_recommended_ones() -> None:
    """The keepalive, message size and reconnect options, option by option."""
    options = dict(EtcdOptions(endpoints=(("127.0.0.1", 2379),)).channel_options())
    assert options == {
        "grpc.keepalive_time_ms": 5000,
        "grpc.keepalive_timeout_ms": 5000,
        "grpc.http2.ping_timeout_ms": 5000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.max_receive_message_length": 64 * 1024 * 1024,
        "grpc.initial_reconnect_backoff_ms": 500,
        "grpc.max_reconnect_backoff_ms": 5000,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoints": ()},
        {"timeout": 0},
        {"cert": "c.pem"},
        {"key": "k.pem"},
        {"username": "u"},
        {"password": "p"},
    ],
)
def test_options_refuse_half_configurations(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"endpoints": (("h", 1),), **kwargs}
    with pytest.raises(ValueError):
        EtcdOptions(**arguments)


def test_options_hide_the_password_and_know_when_tls() -> None:
    plain = EtcdOptions(endpoints=(("h", 1),), username="app", password="s3cret")
    assert "s3cret" not in repr(plain) and not plain.tls
    assert EtcdOptions(endpoints=(("h", 1),), ca_cert="ca.pem").tls
    assert EtcdOptions(endpoints=(("h", 1),), cert="c.pem", key="k.pem").tls


def test_a_new_client_connects_nowhere_and_a_closed_one_refuses_calls() -> None:
    """Construction is free of I/O; after close() every call is Cancelled (no socket opened)."""
    client = EtcdClient(EtcdOptions(endpoints=(("127.0.0.1", 1),)))
    assert client.endpoint == ("127.0.0.1", 1)
    client.close()
    with pytest.raises(Cancelled):
        client.put(b"k", b"v")
    client.close()


class FakeCall:
    """A bidi call whose request iterator is drained by a thread of its own, as grpcio does."""

    def __init__(self, requests: Any) -> None:
        import threading

        self.sent: list[Any] = []
        self.cancelled = False
        self.thread = threading.Thread(target=lambda: self.sent.extend(requests), name="fake-consumer")
        self.thread.start()

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Any:
        return iter(())


def test_watch_stream_close_cancels_and_ends_the_request_iterator() -> None:
    """close() cancels the call and feeds the sentinel, so the consumer thread exits."""
    calls: list[FakeCall] = []

    def start(requests: Any) -> FakeCall:
        calls.append(FakeCall(requests))
        return calls[-1]

    stream = WatchStream(start, rpc_pb2.WatchCreateRequest(key=b"/a"))
    stream.request_progress()
    stream.cancel_watch(7)
    call = calls[0]
    assert call.thread.is_alive()
    stream.close()
    call.thread.join(timeout=5)
    assert not call.thread.is_alive() and call.cancelled and stream.closed
    kinds = [request.WhichOneof("request_union") for request in call.sent]
    assert kinds == ["create_request", "progress_request", "cancel_request"]
    stream.request_progress()
    stream.close()
    assert len(call.sent) == 3


def test_an_unreadable_tls_file_is_an_etcd_error(tmp_path: Any) -> None:
    """Reading the PEM files happens at the first call, and fails as an EtcdError naming the file."""
    missing = str(tmp_path / "ca.pem")
    with EtcdClient(EtcdOptions(endpoints=(("127.0.0.1", 1),), ca_cert=missing)) as client:
        with pytest.raises(EtcdError, match="ca.pem"):
            client.status()
