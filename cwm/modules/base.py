"""The one small interface every output module implements, and what it is given."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath

from cwm.errors import HTTPError
from cwm.workers import BlockingWork, NoWorkers


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One accepted webhook, handed to a module.

    Attributes:
        namespace: The config namespace the webhook was found in.
        webhook_id: The webhook's id.
        request_id: A unique id for this request (for logs and file names).
        received_at: Seconds since the epoch, from the injected clock.
        headers: Lower-case header names to all their values, as received.
        body: The exact received body bytes.
        payload: The parsed body: JSON value for ``data_type: json``, the
            raw bytes for ``blob``.
        data_type: ``"json"`` or ``"blob"``.
        client_ip: The client address as the checks established it.
    """

    namespace: str
    webhook_id: str
    request_id: str
    received_at: float
    headers: Mapping[str, list[str]]
    body: bytes
    payload: Any
    data_type: str
    client_ip: str


class ModuleUnavailable(HTTPError):
    """The module's sink failed or is full: 503, and the sender should retry later.

    Attributes:
        reason: Client-safe reason (no secrets, no internal addresses of
            credentials).
    """

    def __init__(self, reason: str, retry_after: int = 30) -> None:
        """``retry_after``: seconds the sender should wait (the Retry-After header)."""
        super().__init__(503, reason, {"Retry-After": str(retry_after)})


class ModuleRefused(HTTPError):
    """The module will never accept this webhook as sent (a 4xx, not worth a retry).

    Attributes:
        status: The HTTP status for the sender, 400-499 (e.g. 413 for a
            message over a channel's size limit).
        reason: Client-safe reason.
    """

    def __init__(self, status: int, reason: str) -> None:
        if not 400 <= status <= 499:
            raise ValueError("ModuleRefused needs a 4xx status")
        super().__init__(status, reason)


class Module(Protocol):
    """An output module instance, built once per config entry."""

    async def deliver(self, event: WebhookEvent) -> None:
        """Hand the event to the sink; return once the sink has accepted it.

        Raises:
            ModuleUnavailable: the sink refused or failed; the sender gets 503.
            ModuleRefused: this webhook can never be accepted; the sender
                gets its 4xx.
        """

    async def close(self) -> None:
        """Release what the instance holds; called when its entry goes away."""


class TextOutput(Protocol):
    """Where the ``log`` module's text goes (``cwm.modules.output``)."""

    def write(self, text: str) -> Deferred[None]:
        """Fires once ``text`` is written; fails with ModuleUnavailable when it cannot be."""
        ...


# ``treq.client.HTTPClient`` in production, ``treq.testing.StubTreq`` in tests:
# they share their API but no class, so the field is typed loosely.
HTTPClientLike = Any


@dataclass(frozen=True)
class ModuleContext:
    """What the composition root gives every module factory.

    Attributes:
        clock: The reactor's time interface; every timeout uses it.
        stdout: Where the ``log`` module writes (a text stream).
        http: An HTTP client whose connections refuse private, loopback,
            link-local and metadata addresses after DNS resolution.
        http_unguarded: An HTTP client without that guard, used only for
            hosts a module's ``allowed_hosts`` lists.
        working_dir: The directory relative paths are resolved against and
            the default confinement root of ``save_to_disk``.
        connections: Validated connections.json entries by name.
        connect: The Webhook Connect hub (``cwm.connect.hub.ConnectHub``), or
            None when Webhook Connect is off.
        entry: (namespace, webhook_id) of the entry the module is built for.
        secret_headers: Lower-case names of the headers the entry's own checks
            read a credential or a signature from; never shown in clear.
        secret_params: The query parameters the entry's checks read a
            credential from; never shown in clear.
        files: Where modules run their blocking file work: the bounded file
            threads of ``cwm.modules.runtime`` (a context built without them,
            to validate entries, refuses such work).
        output: The ``log`` module's non-blocking writer
            (``cwm.modules.output``); None writes to ``stdout`` directly
            (tests).
    """

    clock: IReactorTime
    stdout: IO[str]
    http: HTTPClientLike
    http_unguarded: HTTPClientLike
    working_dir: FilePath
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    connect: Any = None
    entry: tuple[str, str] | None = None
    secret_headers: frozenset[str] = frozenset()
    secret_params: frozenset[str] = frozenset()
    credential_headers: frozenset[str] = frozenset()
    files: BlockingWork = field(default_factory=NoWorkers)
    output: TextOutput | None = None


ModuleFactory = Callable[[Mapping[str, Any], ModuleContext], Module]
"""Builds a module from its ``module-config``; raises ConfigError if invalid."""
