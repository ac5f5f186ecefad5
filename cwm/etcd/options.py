"""How to reach etcd: the options of a client, free of grpc so settings can hold them."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd.

    Attributes:
        endpoints: ``(host, port)`` pairs; the first is tried first.
        ca_cert: CA bundle path. TLS is used when this or ``cert`` is set.
        cert: Client certificate path (with ``key``).
        key: Client private key path (with ``cert``).
        username: With ``password``, etcd authentication.
        password: The etcd password; never shown in ``repr``.
        timeout: Deadline in seconds of every unary call.
        keepalive_time_ms: HTTP/2 ping interval while a call is open; etcd
            answers pings more often than every 5 s with GOAWAY.
        keepalive_timeout_ms: How long to wait for the ping's answer.
        ping_timeout_ms: ``grpc.http2.ping_timeout_ms``; without it grpcio
            waits 60 s for a ping ack whatever keepalive_timeout_ms says.
        max_receive_bytes: Largest message accepted (one revision of a watch
            can be big; grpcio's default is 4 MiB).
    """

    endpoints: tuple[tuple[str, int], ...]
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    keepalive_time_ms: int = 5000
    keepalive_timeout_ms: int = 5000
    ping_timeout_ms: int = 5000
    max_receive_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if self.timeout <= 0:
            raise ValueError("the etcd call timeout must be positive")
        if (self.cert is None) != (self.key is None):
            raise ValueError("an etcd client certificate needs its key, and the other way round")
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd authentication needs both a username and a password")

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS."""
        return self.ca_cert is not None or self.cert is not None

    def channel_options(self) -> list[tuple[str, int]]:
        """The gRPC channel arguments: keepalive pings that notice a dead peer, big messages, short reconnects."""
        return [
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.http2.ping_timeout_ms", self.ping_timeout_ms),
            # etcd refuses pings on a connection without a call open.
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.initial_reconnect_backoff_ms", 500),
            # grpcio's default is 120 s; the callers pace their own retries.
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
