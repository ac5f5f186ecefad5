"""A blocking etcd v3 client over the generated gRPC stubs.

Every method here blocks on the network (unary calls up to
``EtcdOptions.timeout``; a watch stream for as long as it lives). Call it only
from a dedicated thread: the watch thread of ``cwm.etcd.watch``, the
publisher's thread, or a one-thread pool of your own. Never from the reactor
thread, and never through ``deferToThread``: the reactor's shared pool also
resolves hostnames, and a worker blocked in gRPC there wedges DNS and
``reactor.stop()`` (that pool has at most ten workers, and stopping the
reactor joins each of them, so one blocked in a watch hangs the process).

What it adds to the bare stubs:

- channel options that notice a dead peer in ~15 s and accept big revisions;
- a deadline on every unary call;
- failover: a unary call that finds its endpoint unavailable moves to the
  next one (round robin) and is retried once per endpoint;
- authentication: with a username, a token is fetched before the first call
  and sent as ``token`` metadata; an expired token is renewed once,
  transparently, and the call retried;
- errors classified into the few kinds a caller acts on (:class:`EtcdError`
  and its subclasses: relist, back off and retry, authenticate again, or
  wait for the configuration to be fixed);
- watch streams that really stop: :meth:`WatchStream.close` cancels the call
  and ends the request iterator, so no gRPC thread is left behind.
"""

from __future__ import annotations

import queue
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc

from cwm.etcd.etcdrpc import kv_pb2, rpc_pb2, rpc_pb2_grpc
from cwm.etcd.options import EtcdOptions

KeyValue = kv_pb2.KeyValue
Metadata = tuple[tuple[str, str], ...]
_T = TypeVar("_T")


# --- errors -----------------------------------------------------------------------------------


class EtcdError(Exception):
    """An etcd call failed. The subclass tells the caller what to do about it.

    Attributes:
        message: What went wrong, with the gRPC status name when there is one.
        code: The ``grpc.StatusCode``, or None when the error did not come
            from a gRPC status (a watch cancel reason, a closed client).
    """

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Unavailable(EtcdError):
    """No answer: connection refused or lost, no leader, deadline exceeded. Back off and retry."""


class Compacted(EtcdError):
    """The revision asked for has been compacted away. Relist; never retry the same revision."""


class AuthExpired(EtcdError):
    """The token is no longer valid. Authenticate again (and open a new watch stream)."""


class AuthFailed(EtcdError):
    """Wrong or missing credentials. Retrying will not help until the configuration changes."""


class PermissionDenied(EtcdError):
    """The user may not touch these keys. A configuration error."""


class TooLarge(EtcdError):
    """A message over a size limit, or the database over its quota. Not fixed by retrying."""


class LeaseNotFound(EtcdError):
    """The lease has expired or was revoked. Grant a new one."""


class Cancelled(EtcdError):
    """The call was cancelled on purpose (a stream closed, the client closed)."""


# Message fragments (etcd's rpctypes) that decide the kind whatever the status code.
_BY_MESSAGE: tuple[tuple[str, type[EtcdError]], ...] = (
    ("required revision has been compacted", Compacted),
    ("invalid auth token", AuthExpired),
    ("revision of auth store is old", AuthExpired),
    ("authentication failed", AuthFailed),
    ("user name is empty", AuthFailed),
    ("user name not found", AuthFailed),
    ("permission denied", PermissionDenied),
    ("requested lease not found", LeaseNotFound),
    ("request is too large", TooLarge),
    ("database space exceeded", TooLarge),
    ("no leader", Unavailable),
    ("leader changed", Unavailable),
)


def _by_code() -> dict[Any, type[EtcdError]]:
    codes = grpc.StatusCode
    return {
        codes.UNAVAILABLE: Unavailable,
        codes.DEADLINE_EXCEEDED: Unavailable,
        codes.UNAUTHENTICATED: AuthExpired,
        codes.PERMISSION_DENIED: PermissionDenied,
        codes.RESOURCE_EXHAUSTED: TooLarge,
        codes.CANCELLED: Cancelled,
    }


_BY_CODE = _by_code()


def _kind(code: Any, details: str) -> type[EtcdError]:
    lowered = details.lower()
    for fragment, kind in _BY_MESSAGE:
        if fragment in lowered:
            return kind
    return _BY_CODE.get(code, EtcdError)


def classify(error: BaseException) -> EtcdError:
    """The :class:`EtcdError` for any error an etcd call raised.

    A ``grpc.RpcError`` is classified by its status code and message; an
    EtcdError is returned as it is; anything else becomes a plain EtcdError.
    """
    if isinstance(error, EtcdError):
        return error
    code_method = getattr(error, "code", None)
    details_method = getattr(error, "details", None)
    if isinstance(error, grpc.RpcError) and callable(code_method):
        code = code_method()
        details = (details_method() if callable(details_method) else None) or ""
        name = getattr(code, "name", str(code))
        return _kind(code, details)(f"{name}: {details}" if details else name, code)
    return EtcdError(f"{type(error).__name__}: {error}")


# Go's status error text: "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token".
_GO_STATUS = re.compile(r"rpc error: code = (?P<code>\w+) desc = (?P<desc>.*)", re.DOTALL)


def _status_code_from_go(name: str) -> Any:
    if name == "Canceled":
        return grpc.StatusCode.CANCELLED
    upper = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
    return getattr(grpc.StatusCode, upper, None)


def classify_cancel_reason(reason: str) -> type[EtcdError]:
    """The kind of error a watch ``cancel_reason`` (a created-and-canceled reply) reports.

    etcd 3.4.23 refuses a watch create with an expired token as
    ``rpc error: code = Unauthenticated desc = etcdserver: invalid auth token``;
    3.5.0 to 3.5.5 say ``... code = PermissionDenied desc = etcdserver:
    permission denied`` for the same thing (fixed in 3.5.6). Both are
    :class:`AuthExpired`: authenticate and open a new stream; a permission
    really missing is refused again right after, and the caller gives up then.
    """
    match = _GO_STATUS.search(reason)
    code = _status_code_from_go(match.group("code")) if match else None
    details = match.group("desc") if match else reason
    kind = _kind(code, details)
    if kind is PermissionDenied:
        return AuthExpired
    return kind


# --- keys -------------------------------------------------------------------------------------


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, range_end)`` every key starting with ``prefix``.

    The last byte below 0xff is incremented and what follows it dropped;
    ``b"\\0"`` (every key from ``prefix`` on) when there is no such byte.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def watch_prefix_request(prefix: bytes, start_revision: int) -> rpc_pb2.WatchCreateRequest:
    """The create request of a cache's prefix watch, from ``start_revision`` on.

    Progress notifications let a resume start after the last revision known
    even when nothing changed; fragments keep a huge revision under every
    message size limit.
    """
    return rpc_pb2.WatchCreateRequest(
        key=prefix,
        range_end=prefix_range_end(prefix),
        start_revision=start_revision,
        progress_notify=True,
        fragment=True,
    )


# --- the client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stubs:
    kv: Any
    watch: Any
    lease: Any
    auth: Any
    maintenance: Any


class EtcdClient:
    """Blocking calls to an etcd cluster; connects lazily to ``options.endpoints[0]``.

    Only ever used from one dedicated thread (see the module docstring);
    :meth:`close` and :meth:`WatchStream.close` may come from another.
    """

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._index = 0
        self._channel: Any = None
        self._stubs: _Stubs | None = None
        # None: not authenticated yet; "": no token needed (no credentials, or auth disabled).
        self._token: str | None = None if options.username else ""
        # A call has succeeded on the current channel.
        self._ready = False
        self._closed = False
        self._streams: weakref.WeakSet[WatchStream] = weakref.WeakSet()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def endpoint(self) -> tuple[str, int]:
        """The endpoint calls go to now."""
        return self.options.endpoints[self._index]

    # --- connection ---

    def _current(self) -> _Stubs:
        with self._lock:
            if self._closed:
                raise Cancelled("the etcd client is closed")
            if self._stubs is None:
                self._channel = self._open_channel(*self.options.endpoints[self._index])
                channel = self._channel
                self._stubs = _Stubs(
                    kv=rpc_pb2_grpc.KVStub(channel),
                    watch=rpc_pb2_grpc.WatchStub(channel),
                    lease=rpc_pb2_grpc.LeaseStub(channel),
                    auth=rpc_pb2_grpc.AuthStub(channel),
                    maintenance=rpc_pb2_grpc.MaintenanceStub(channel),
                )
                self._ready = False
            return self._stubs

    def _open_channel(self, host: str, port: int) -> Any:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = self.options.channel_options()
        if not self.options.tls:
            return grpc.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.options.ca_cert),
            private_key=_read(self.options.key),
            certificate_chain=_read(self.options.cert),
        )
        return grpc.secure_channel(target, credentials, options=options)

    def _unready(self) -> None:
        """A stream found the endpoint unavailable: check it (and fail over) before the next stream."""
        self._ready = False

    def failover(self) -> None:
        """Drop the current channel; the next call goes to the next endpoint (round robin)."""
        with self._lock:
            channel, self._channel, self._stubs = self._channel, None, None
            self._index = (self._index + 1) % len(self.options.endpoints)
            self._ready = False
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close every watch stream and the channel. Later calls raise :class:`Cancelled`."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stubs = self._channel, None, None
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        if channel is not None:
            channel.close()

    # --- calls ---

    def _metadata(self) -> Metadata:
        return (("token", self._token),) if self._token else ()

    def _unary(self, call: Callable[[_Stubs, Metadata], _T], authenticated: bool = True) -> _T:
        """Run ``call`` with failover and, when authenticated, one transparent re-authentication."""
        if authenticated and self._token is None:
            self.authenticate()
        unavailable = 0
        renewed = False
        while True:
            stubs = self._current()
            try:
                result = call(stubs, self._metadata() if authenticated else ())
            except grpc.RpcError as rpc_error:
                error = classify(rpc_error)
            else:
                self._ready = True
                return result
            if isinstance(error, Unavailable):
                unavailable += 1
                self.failover()
                if unavailable < len(self.options.endpoints):
                    continue
            elif isinstance(error, AuthExpired) and authenticated and self.options.username and not renewed:
                renewed = True
                self.authenticate()
                continue
            raise error

    def forget_token(self) -> None:
        """The next call or watch authenticates again first.

        A simple token expires once unused for its TTL, and an open watch
        stream does not use it: after a stream ends, its token may be gone.
        """
        if self.options.username:
            self._token = None

    def authenticate(self) -> None:
        """Fetch a new token for the configured user; every later call and new watch carries it.

        Without credentials this does nothing. A server with authentication
        disabled answers that it is; calls then go without a token.
        """
        if not self.options.username:
            return
        request = rpc_pb2.AuthenticateRequest(name=self.options.username, password=self.options.password or "")
        self._token = None
        try:
            response = self._unary(
                lambda stubs, _: stubs.auth.Authenticate(request, timeout=self.options.timeout),
                authenticated=False,
            )
        except EtcdError as error:
            if "authentication is not enabled" in error.message:
                self._token = ""
                return
            raise
        self._token = response.token

    def _range(self, request: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        response: rpc_pb2.RangeResponse = self._unary(
            lambda stubs, metadata: stubs.kv.Range(request, timeout=self.options.timeout, metadata=metadata)
        )
        return response

    def range_prefix(
        self, prefix: bytes, page_size: int = 1000, revision: int = 0
    ) -> tuple[list[kv_pb2.KeyValue], int]:
        """Every key under ``prefix`` at one revision, and that revision.

        Pages of ``page_size`` keys (0: one unlimited request) all read at the
        revision of the first page (or ``revision`` when given), so the result
        is one consistent snapshot however many writes land meanwhile. Raises
        :class:`Compacted` if that revision is compacted before the last page:
        list again.
        """
        end = prefix_range_end(prefix)
        limit = max(page_size, 0)
        kvs: list[kv_pb2.KeyValue] = []
        key = prefix
        while True:
            response = self._range(rpc_pb2.RangeRequest(key=key, range_end=end, limit=limit, revision=revision))
            if not revision:
                revision = response.header.revision
            kvs.extend(response.kvs)
            if not response.more or not response.kvs:
                return kvs, revision
            key = response.kvs[-1].key + b"\0"

    def range_key(self, key: bytes, revision: int = 0) -> kv_pb2.KeyValue | None:
        """The key's current value (or at ``revision``), None when it does not exist."""
        response = self._range(rpc_pb2.RangeRequest(key=key, revision=revision))
        return response.kvs[0] if response.kvs else None

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write ``key`` (attached to ``lease`` unless 0); returns the new store revision."""
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        response: rpc_pb2.PutResponse = self._unary(
            lambda stubs, metadata: stubs.kv.Put(request, timeout=self.options.timeout, metadata=metadata)
        )
        return response.header.revision

    def _delete_range(self, request: rpc_pb2.DeleteRangeRequest) -> int:
        response: rpc_pb2.DeleteRangeResponse = self._unary(
            lambda stubs, metadata: stubs.kv.DeleteRange(request, timeout=self.options.timeout, metadata=metadata)
        )
        return response.header.revision

    def delete(self, key: bytes) -> int:
        """Delete ``key``; returns the store revision after it (unchanged if there was no key)."""
        return self._delete_range(rpc_pb2.DeleteRangeRequest(key=key))

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every key under ``prefix`` in one revision; returns the store revision after it."""
        return self._delete_range(rpc_pb2.DeleteRangeRequest(key=prefix, range_end=prefix_range_end(prefix)))

    def compact(self, revision: int, physical: bool = True) -> None:
        """Discard the history before ``revision`` (``physical``: wait until it is gone from disk)."""
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        self._unary(lambda stubs, metadata: stubs.kv.Compact(request, timeout=self.options.timeout, metadata=metadata))

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: its ID and the TTL etcd granted (it rounds tiny TTLs up)."""
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl)
        response: rpc_pb2.LeaseGrantResponse = self._unary(
            lambda stubs, metadata: stubs.lease.LeaseGrant(request, timeout=self.options.timeout, metadata=metadata)
        )
        if response.error:
            raise EtcdError(f"lease grant refused: {response.error}")
        return response.ID, response.TTL

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; returns its TTL in seconds, 0 when it has expired or is unknown.

        One round trip on a LeaseKeepAlive stream of its own, closed before
        returning, under the unary deadline.
        """
        request = rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)

        def call(stubs: _Stubs, metadata: Metadata) -> int:
            stream = stubs.lease.LeaseKeepAlive(iter((request,)), timeout=self.options.timeout, metadata=metadata)
            try:
                for response in stream:
                    return int(response.TTL)
            finally:
                stream.cancel()
            raise Unavailable(f"the keep-alive stream of lease {lease_id} ended without an answer")

        return self._unary(call)

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease: its keys are deleted now. :class:`LeaseNotFound` if it is gone already."""
        request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        self._unary(
            lambda stubs, metadata: stubs.lease.LeaseRevoke(request, timeout=self.options.timeout, metadata=metadata)
        )

    def status(self) -> rpc_pb2.StatusResponse:
        """The member's status: version, leader, raft indexes, database size."""
        response: rpc_pb2.StatusResponse = self._unary(
            lambda stubs, metadata: stubs.maintenance.Status(
                rpc_pb2.StatusRequest(), timeout=self.options.timeout, metadata=metadata
            )
        )
        return response

    def open_watch(self, create: rpc_pb2.WatchCreateRequest | bytes, start_revision: int = 0) -> WatchStream:
        """Open a Watch stream whose first request is ``create``.

        ``create`` may also be a key prefix: the stream then watches it from
        ``start_revision`` as :func:`watch_prefix_request` describes. The call
        carries ``hasleader: true``, so a member that loses its quorum ends the
        stream (UNAVAILABLE) instead of leaving it silent, and the token, so an
        expired one needs :meth:`authenticate` and a new stream. Before
        opening, the client makes sure its endpoint answers (failing over if
        not): a stream's errors only show once its responses are read.
        """
        if isinstance(create, bytes):
            create = watch_prefix_request(create, start_revision)
        elif start_revision:
            raise ValueError("start_revision goes in the WatchCreateRequest")
        if self._token is None:
            self.authenticate()
        if not self._ready:
            self.status()
        stubs = self._current()
        metadata = (("hasleader", "true"),) + self._metadata()
        stream = WatchStream(
            lambda requests: stubs.watch.Watch(requests, metadata=metadata), create, on_unavailable=self._unready
        )
        with self._lock:
            closed = self._closed
            self._streams.add(stream)
        if closed:
            stream.close()
        return stream


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise EtcdError(f"cannot read the etcd TLS file {path}: {error.strerror or error}") from None


class WatchStream:
    """One bidirectional Watch call: requests go in through a queue, responses come out.

    gRPC consumes the request iterator on a thread of its own; :meth:`close`
    both cancels the call (ending the watch on the server: a half-close does
    not) and feeds the iterator its end, so that thread exits too.
    """

    _END = None

    def __init__(
        self,
        start: Callable[[Iterator[rpc_pb2.WatchRequest]], Any],
        create: rpc_pb2.WatchCreateRequest,
        on_unavailable: Callable[[], None] | None = None,
    ) -> None:
        self._on_unavailable = on_unavailable
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))
        self._closed = threading.Event()
        self._call = start(self._request_iterator())

    def _request_iterator(self) -> Iterator[rpc_pb2.WatchRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def responses(self) -> Iterator[rpc_pb2.WatchResponse]:
        """The server's responses, in order; blocks until each arrives.

        Ends when the server ends the stream; a failed stream raises the
        classified :class:`EtcdError` (:class:`Cancelled` after :meth:`close`).
        """
        try:
            for response in self._call:
                yield response
        except grpc.RpcError as rpc_error:
            error = classify(rpc_error)
            if isinstance(error, Unavailable) and self._on_unavailable is not None:
                self._on_unavailable()
            raise error from None

    def _send(self, request: rpc_pb2.WatchRequest) -> None:
        if not self._closed.is_set():
            self._requests.put(request)

    def request_progress(self) -> None:
        """Ask for a progress notification (answered once every watcher on the stream is synced)."""
        self._send(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def cancel_watch(self, watch_id: int) -> None:
        """Ask the server to cancel one watcher of this stream (answered with a canceled reply)."""
        self._send(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id)))

    def close(self) -> None:
        """Cancel the call and end the request iterator. Safe from any thread, more than once."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._call.cancel()
        self._requests.put(self._END)


__all__ = [
    "AuthExpired",
    "AuthFailed",
    "Cancelled",
    "Compacted",
    "EtcdClient",
    "EtcdError",
    "EtcdOptions",
    "KeyValue",
    "LeaseNotFound",
    "PermissionDenied",
    "TooLarge",
    "Unavailable",
    "WatchStream",
    "classify",
    "classify_cancel_reason",
    "prefix_range_end",
    "watch_prefix_request",
]
