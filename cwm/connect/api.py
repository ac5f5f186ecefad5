"""Webhook Connect's connector-facing routes, mounted at ``/connect/``.

- ``GET /connect/stream/{channel}``: WebSocket (autobahn); acks and nacks in band.
- ``GET /connect/stream/{channel}/sse``: Server-Sent Events; each event's
  ``id:`` is the message's stream position, and a reconnect with
  ``Last-Event-ID`` takes over what the previous stream had sent.
- ``GET /connect/stream/{channel}/poll``: long-poll; what it returns stays
  in flight until acked (or until the ack timeout), so it can be acked.
- ``POST /connect/ack`` (query parameters or a JSON body), on any instance:
  one that does not hold the stream settles the message in Redis by its id;
  and ``GET /connect/status/{channel}``.

The channel token comes from ``Authorization: Bearer`` or ``?token=`` (the
header wins). Every refusal is JSON with the reason: 401 token, 404 channel,
422 parameter, 503 with Retry-After for ``max_connections`` or Redis.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.iweb import IRequest

from cwm.body import parse_body
from cwm.connect.buffer import Buffered, ChannelCounts
from cwm.connect.hub import RESUME_GRACE, Channel, ConnectHub, Connection, NotInFlight, iso
from cwm.errors import HTTPError
from cwm.web.errors import install_json_errors, json_answer
from cwm.web.limits import mark_streaming

FULL_RETRY_AFTER = 5


def not_enabled() -> HTTPError:
    """With Webhook Connect off its routes do not exist: 404 (a 503 would invite retries)."""
    return HTTPError(404, "Webhook Connect is not enabled")


def channel_stats(channel: Channel, counts: ChannelCounts, connections: list[dict[str, Any]]) -> dict[str, Any]:
    """Upstream's ChannelStats, from Redis (so every instance agrees)."""
    return {
        "channel": channel.name,
        "messages_queued": counts.queued,
        "messages_in_flight": counts.in_flight,
        "messages_delivered": counts.delivered,
        "messages_expired": counts.expired,
        "messages_dead_lettered": counts.dead_lettered,
        "dead_letters": counts.dead_letters,
        "dead_letters_dropped": counts.dead_letters_dropped,
        "connected_clients": len(connections),
    }


def request_header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def query_arg(request: IRequest, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def bounded_arg(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    raw = query_arg(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise HTTPError(422, f"{name}: expected a whole number from {low} to {high}")
    return value


def bearer(value: str | None) -> str:
    """The token of an Authorization value (``Bearer `` removed when present)."""
    if not value:
        return ""
    value = value.strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


MAX_ACK_BODY = 64 * 1024


def _ack_fields(request: IRequest) -> dict[str, str]:
    """``message_id``, ``status``, ``retry`` and ``reason`` of an ack: from the query (as
    upstream's connectors send them), or, when the query has no ``message_id``, from a JSON
    object body (``{"message_id": ..., "status": "ack", "retry": true}``)."""
    names = ("message_id", "status", "retry", "reason")
    if query_arg(request, "message_id") is not None:
        return {name: value for name in names if (value := query_arg(request, name)) is not None}
    content = request.content
    raw = content.read(MAX_ACK_BODY + 1) if content is not None else b""
    if len(raw) > MAX_ACK_BODY:
        raise HTTPError(413, f"An ack body is at most {MAX_ACK_BODY} bytes")
    if not raw.strip():
        return {name: value for name in names if (value := query_arg(request, name)) is not None}
    body = parse_body("json", raw, request_header(request, b"content-type"))
    if not isinstance(body, dict):
        raise HTTPError(422, "The body must be a JSON object")
    fields: dict[str, str] = {}
    for name in names:
        value = body.get(name)
        if isinstance(value, bool):
            value = "true" if value else "false"
        if value is not None and not isinstance(value, str):
            raise HTTPError(422, f"{name}: expected a string")
        if value is not None:
            fields[name] = value
    return fields


def _window(request: IRequest, channel: Channel) -> int:
    """Unacked messages a stream may hold: the channel's ``max_in_flight``, or less if the
    connector asks (``?max_in_flight=``, e.g. its own concurrency, so nothing waits at
    the connector while its ack timeout runs)."""
    return min(channel.config.max_in_flight, bounded_arg(request, "max_in_flight", channel.config.max_in_flight, 1, 100_000))


def _remote(request: IRequest) -> str:
    return getattr(request.getClientAddress(), "host", "unix")


class _SSE:
    """One open event stream: events, idle heartbeats, and its end."""

    def __init__(self, request: IRequest, clock: IReactorTime, heartbeat: float) -> None:
        self._request = request
        self._clock = clock
        self._heartbeat = heartbeat
        self.done: Deferred[None] = Deferred()
        self.ended_by_server = False
        self._beat: IDelayedCall | None = clock.callLater(heartbeat, self._idle)
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        finished.addBoth(lambda _: self._stop())

    def event(self, name: str, data: Any, event_id: str | None = None) -> None:
        self.event_bytes(name, json.dumps(data, separators=(",", ":")).encode(), event_id)

    def event_bytes(self, name: str, data: bytes, event_id: str | None = None) -> None:
        """Send one event whose data is JSON text already (on one line, as JSON text with no indent is)."""
        if self.done.called:
            return
        lines = f"id: {event_id}\n" if event_id else ""
        lines += f"event: {name}\ndata: "
        # Three writes: joining them would copy a large message once more.
        self._request.write(lines.encode())
        self._request.write(data)
        self._request.write(b"\n\n")
        if self._beat is not None and self._beat.active():
            self._beat.reset(self._heartbeat)

    def send(self, messages: list[Buffered]) -> None:
        for message in messages:
            self.event_bytes("webhook", message.wire_bytes(), message.stream_id)

    def close(self, reason: str) -> None:
        self.event("error", {"error": reason})
        self.ended_by_server = True
        self._stop()

    def _idle(self) -> None:
        self._beat = None
        if not self.done.called:
            self.event("heartbeat", {"timestamp": iso(self._clock.seconds())})
            self._beat = self._clock.callLater(self._heartbeat, self._idle)

    def _stop(self) -> None:
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        if not self.done.called:
            self.done.callback(None)


class _Poll:
    """Collects what one long-poll is handed, until the first batch or the timeout."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.messages: list[Buffered] = []
        self.done: Deferred[list[Buffered]] = Deferred()
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._finish)

    def add(self, messages: list[Buffered]) -> None:
        first = not self.messages
        self.messages.extend(messages)
        if first and self._timer is not None and self._timer.active():
            # Answer on the next turn, with whatever else this read hands over.
            self._timer.reset(0)

    def close(self, reason: str) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.done.called:
            self.done.callback(self.messages)


class ConnectStreams:
    """The routes under ``/connect/``."""

    app = Klein()

    def __init__(self, hub: ConnectHub | None, clock: IReactorTime) -> None:
        self._hub_or_none = hub
        self._clock = clock

    def resource(self) -> Any:
        return self.app.resource()

    def _hub(self) -> ConnectHub:
        if self._hub_or_none is None:
            raise not_enabled()
        return self._hub_or_none

    async def _authorized(self, request: IRequest, name: str) -> tuple[ConnectHub, Channel, str]:
        hub = self._hub()
        token = bearer(request_header(request, b"authorization")) or (query_arg(request, "token") or "")
        channel = hub.channel(name)
        if channel is None:
            raise HTTPError(404, f"Channel '{name}' not found")
        if not token:
            raise HTTPError(401, "Missing channel token (Authorization: Bearer, or ?token=)")
        accepted = await hub.authorize(channel, token)
        if not accepted:
            raise HTTPError(401, "Invalid channel token")
        return hub, channel, token

    async def _connect(self, hub: ConnectHub, channel: Channel, protocol: str, request: IRequest, token: str,
                       window: int) -> Connection:
        connector_id = (request_header(request, b"x-connector-id") or "").strip()[:128] or "anonymous"
        connection = await hub.connect(channel, protocol, connector_id, _remote(request), token, window)
        if connection is None:
            raise HTTPError(
                503,
                f"Max connections reached ({channel.config.max_connections}) for channel '{channel.name}'",
                {"Retry-After": str(FULL_RETRY_AFTER)},
            )
        mark_streaming(request)  # a stream keeps its own heartbeat rules, not the HTTP timeouts
        return connection

    @app.route("/stream/<channel>", methods=["GET"])
    async def websocket(self, request: IRequest, channel: str) -> Any:
        self._hub()  # 404 when Webhook Connect is off, before any 426
        if (request_header(request, b"upgrade") or "").lower() != "websocket":
            raise HTTPError(426, "This is the WebSocket endpoint: upgrade to WebSocket", {"Upgrade": "websocket"})
        hub, found, token = await self._authorized(request, channel)
        connection = await self._connect(hub, found, "websocket", request, token, _window(request, found))
        from cwm.connect.ws import websocket_resource  # autobahn: imported by the first WebSocket

        return websocket_resource(hub, connection, self._clock, found.config.heartbeat_interval_seconds)

    @app.route("/stream/<channel>/sse", methods=["GET"])
    async def sse(self, request: IRequest, channel: str) -> bytes:
        hub, found, token = await self._authorized(request, channel)
        connection = await self._connect(hub, found, "sse", request, token, _window(request, found))
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Connection", b"keep-alive")
        request.setHeader(b"X-Accel-Buffering", b"no")
        stream = _SSE(request, self._clock, found.config.heartbeat_interval_seconds)
        stream.event("connected", {"connection_id": connection.id, "channel": found.name})
        hub.attach(connection, stream.send, stream.close)
        last_event_id = (request_header(request, b"last-event-id") or "").strip()
        if last_event_id:
            hub.resume(connection, last_event_id)
        try:
            await stream.done
        finally:
            hub.disconnect(connection, hold=0 if stream.ended_by_server else RESUME_GRACE)
        return b""

    @app.route("/stream/<channel>/poll", methods=["GET"])
    async def poll(self, request: IRequest, channel: str) -> bytes:
        timeout = bounded_arg(request, "timeout", 30, 1, 60)
        max_messages = bounded_arg(request, "max_messages", 10, 1, 100)
        hub, found, token = await self._authorized(request, channel)
        window = min(max_messages, found.config.max_in_flight)
        connection = await self._connect(hub, found, "long_poll", request, token, window)
        batch = _Poll(self._clock, timeout)
        hub.attach(connection, batch.add, batch.close)
        try:
            messages = await batch.done
        except CancelledError:
            hub.disconnect(connection, hold=0)  # nobody to answer: give them back now
            raise
        hub.disconnect(connection, hold=None)  # returned messages wait for their acks
        if not messages:
            request.setResponseCode(204)
            return b""
        rest = {"connection_id": connection.id, "channel": found.name, "timestamp": iso(self._clock.seconds())}
        # The messages are JSON text already: joined, never parsed (see Buffered.wire_bytes).
        body = b"".join([b'{"messages":[', b",".join(m.wire_bytes() for m in messages), b"],", json.dumps(rest)[1:].encode()])
        return json_answer(request, 200, body)

    @app.route("/ack", methods=["POST"])
    async def ack(self, request: IRequest) -> bytes:
        """Settle one message, on any instance: the one holding the stream, or another (a load
        balancer in front; the holder died), which settles it in Redis after checking the token."""
        hub = self._hub()
        fields = _ack_fields(request)
        message_id = fields.get("message_id")
        if not message_id:
            raise HTTPError(422, "message_id: required (query parameter or JSON body)")
        status = fields.get("status") or "ack"
        if status not in ("ack", "nack"):
            raise HTTPError(422, "status: expected ack or nack")
        retry_text = (fields.get("retry") or "true").lower()
        if retry_text not in ("true", "false"):
            raise HTTPError(422, "retry: expected true or false")
        connection_id = request_header(request, b"x-connection-id")
        if not connection_id:
            raise HTTPError(422, "X-Connection-ID: required header")
        token = bearer(request_header(request, b"authorization"))
        if not token:
            raise HTTPError(422, "Authorization: required header")
        ack, retry, reason = status == "ack", retry_text == "true", (fields.get("reason") or "")[:200]
        connection = hub.connection(connection_id)
        try:
            if connection is None:
                outcome = await self._settle_elsewhere(hub, token, message_id, ack, retry, reason)
            else:
                channel = hub.channel(connection.channel)
                if not hmac.compare_digest(token.encode(), connection.token.encode()):
                    if channel is None or not await hub.authorize(channel, token):
                        raise HTTPError(401, "Invalid token")
                outcome = await hub.settle_anywhere(connection, message_id, ack, retry, reason)
        except NotInFlight:
            raise HTTPError(404, "Message not in flight") from None
        body = {"status": "ok", "message_id": message_id, "outcome": outcome}
        return json_answer(request, 200, json.dumps(body).encode())

    async def _settle_elsewhere(self, hub: ConnectHub, token: str, message_id: str, ack: bool, retry: bool,
                                reason: str) -> str:
        """An ack for a connection this instance does not hold: by message id, on the channels the token opens.

        The token is checked against what each channel's tokens were at the last sweep
        (no Redis call: a made-up token costs nothing per channel); only a channel whose
        tokens are not known yet is asked in Redis.
        """
        channels = hub.channels()
        # The channels whose configured token it is first (the usual case: one), then rotated ones.
        channels.sort(key=lambda c: not hmac.compare_digest(token.encode(), c.config.token.encode()))
        opened = False
        for channel in channels:
            known = hub.authorize_known(channel, token)
            if not (known if known is not None else await hub.authorize(channel, token)):
                continue
            opened = True
            try:
                return await hub.settle_by_id(channel, message_id, ack, retry, reason)
            except NotInFlight:
                continue
        if not opened:
            raise HTTPError(401, "Invalid token")
        # Neither this instance's connection nor, in Redis, a message of a channel it opens.
        raise HTTPError(404, "Connection not found")

    @app.route("/status/<channel>", methods=["GET"])
    async def status(self, request: IRequest, channel: str) -> bytes:
        self._hub()  # 404 when Webhook Connect is off, before any 401
        if not bearer(request_header(request, b"authorization")):
            raise HTTPError(401, "Missing authorization header")
        hub, found, _ = await self._authorized(request, channel)
        counts, connections = await hub.counts(found), await hub.clients(found)
        body = {
            "channel": found.name,
            "connected": True,
            "stats": channel_stats(found, counts, connections),
            "server_time": iso(self._clock.seconds()),
        }
        return json_answer(request, 200, json.dumps(body).encode())


install_json_errors(ConnectStreams.app)
