"""The ``webhook_connect`` output module: queue each webhook on its channel in Redis.

The sender's answer tells the truth: 200 once the message is stored in Redis;
413 when the body is over the channel's ``max_message_size``; 503 with
Retry-After when the channel's queue is full or Redis cannot be reached.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cwm.body import LARGE_BODY
from cwm.connect.buffer import envelope_text
from cwm.connect.channels import ChannelConfig, parse_channel_config
from cwm.connect.hub import ConnectHub, iso
from cwm.errors import ConfigError
from cwm.modules.base import ModuleContext, ModuleRefused, ModuleUnavailable, WebhookEvent
from cwm.workers import BlockingWork, InlineWork, WorkersBusy

FULL_RETRY_AFTER = 10
BUSY_RETRY_AFTER = 5
# Left out of the relayed headers unless the module-config says forward_credentials.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def relayed_headers(
    headers: Mapping[str, list[str]], forward_credentials: bool, credentials: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The request's headers as connectors receive them: one string per (lower-case) name.

    ``credentials``: the headers the entry's own checks read a token or a
    password from (``header_auth``'s ``X-Gitlab-Token``...), left out like
    ``CREDENTIAL_HEADERS`` so that no connector, nor a ``log`` target behind
    it, ever sees them.
    """
    return {
        name: ", ".join(values)
        for name, values in headers.items()
        if forward_credentials or (name not in CREDENTIAL_HEADERS and name not in credentials)
    }


_BASE64_PIECE = 3 * 64 * 1024  # a multiple of 3: the pieces' base64 texts join without padding between


def envelope(
    event: WebhookEvent,
    config: ChannelConfig,
    message_id: str,
    credentials: frozenset[str] = frozenset(),
    *,
    yielding: bool = False,
) -> dict[str, Any]:
    """What is stored for one webhook: upstream's envelope plus the exact body bytes.

    ``yielding``: the body is encoded a piece at a time (on a worker thread,
    each piece a short hold of the GIL).
    """
    payload: Any = event.payload
    if isinstance(payload, bytes):  # a blob: its text if it has one, the bytes are in body_base64
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            payload = None
    return {
        "message_id": message_id,
        "channel": config.name,
        "webhook_id": event.webhook_id,
        "namespace": event.namespace,
        "timestamp": iso(event.received_at),
        "expires_at": iso(event.received_at + config.ttl_seconds),
        "metadata": {"source": "webhook_connect_module", "request_id": event.request_id, "client_ip": event.client_ip},
        "headers": relayed_headers(event.headers, config.forward_credentials, credentials),
        "payload": payload,
        "body_base64": (
            "".join(
                base64.b64encode(event.body[i : i + _BASE64_PIECE]).decode("ascii")
                for i in range(0, len(event.body), _BASE64_PIECE)
            )
            if yielding
            else base64.b64encode(event.body).decode("ascii")
        ),
        "data_type": event.data_type,
    }


def thd_envelope_text(
    event: WebhookEvent, config: ChannelConfig, message_id: str, credentials: frozenset[str]
) -> bytes:
    """The stored text of a large webhook's envelope (encoded), made on a worker thread without holding the GIL long."""
    return envelope_text(envelope(event, config, message_id, credentials, yielding=True), yielding=True).encode("ascii")


class WebhookConnectModule:
    """One config entry's channel; registered with the hub while the entry lives."""

    def __init__(
        self,
        config: ChannelConfig,
        hub: ConnectHub,
        release: Callable[[], None],
        credentials: frozenset[str] = frozenset(),
        files: BlockingWork | None = None,
    ) -> None:
        """``credentials``: the headers the entry's checks read a token or password from.

        ``files``: the threads that encode the envelope of a body over
        ``LARGE_BODY`` (0.3 s for 10 MB); None runs it inline (tests).
        """
        self.config = config
        self._hub = hub
        self._release = release
        self._credentials = credentials
        self._files: BlockingWork = files if files is not None else InlineWork()

    async def deliver(self, event: WebhookEvent) -> None:
        config = self.config
        if len(event.body) > config.max_message_size:
            raise ModuleRefused(
                413,
                f"Payload too large for channel '{config.name}': {len(event.body)} bytes"
                f" (max: {config.max_message_size})",
            )
        message_id = "msg_" + uuid.uuid4().hex[:16]
        # Redis unreachable raises ConnectUnavailable: a ModuleUnavailable (503, Retry-After 5).
        stored_envelope: dict[str, Any] | bytes
        if len(event.body) > LARGE_BODY:
            try:
                stored_envelope = await self._files.run(thd_envelope_text, event, config, message_id, self._credentials)
            except WorkersBusy:
                raise ModuleUnavailable("could not queue the webhook: the server is busy", BUSY_RETRY_AFTER) from None
        else:
            stored_envelope = envelope(event, config, message_id, self._credentials)
        stored = await self._hub.publish(config, event.webhook_id, message_id, stored_envelope, event.received_at)
        if stored is None:
            raise ModuleUnavailable(
                f"Channel '{config.name}' queue is full ({config.max_queue_size} messages)", FULL_RETRY_AFTER
            )

    async def close(self) -> None:
        self._release()


def build(module_config: Mapping[str, Any], ctx: ModuleContext) -> WebhookConnectModule:
    config = parse_channel_config(module_config)
    hub = ctx.connect
    if hub is None:
        raise ConfigError("Webhook Connect is off: set WEBHOOK_CONNECT_ENABLED=true to use it")
    if ctx.entry is None:
        raise ConfigError("webhook_connect is only available to webhook entries")
    return WebhookConnectModule(config, hub, hub.register(ctx.entry, config), ctx.credential_headers, ctx.files)
