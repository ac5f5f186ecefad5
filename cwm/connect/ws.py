"""The WebSocket of ``GET /connect/stream/{channel}`` (autobahn), imported by the first one.

The route has already checked the token and opened the hub connection; this
protocol sends ``connected``, the wire messages and heartbeats, and reads
``ack``, ``nack`` and ``heartbeat`` frames.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.exception import Disconnected
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cwm.connect.buffer import Buffered
from cwm.connect.hub import ConnectHub, ConnectUnavailable, Connection, NotInFlight, SinkClosed, iso

MAX_CLIENT_MESSAGE = 64 * 1024
"""What a connector may send in one message (acks, nacks, heartbeats are small)."""


class ChannelSocket(WebSocketServerProtocol):
    """One connector's WebSocket: wire messages out; ack, nack and heartbeat frames in."""

    _log = Logger()
    factory: ChannelSocketFactory
    _beat: IDelayedCall | None = None
    _incoming = 0  # bytes of the message being received

    def onOpen(self) -> None:
        f = self.factory
        self._send_json({"type": "connected", "connection_id": f.connection.id, "channel": f.connection.channel,
                         "timestamp": iso(f.clock.seconds())})
        f.hub.attach(f.connection, self._send_batch, self._close_by_server)
        self._beat = f.clock.callLater(f.heartbeat, self._heartbeat)

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._incoming = 0

    def onMessageFrameBegin(self, length: int) -> None:
        # autobahn's maxMessagePayloadSize would bound what cwm sends as well as what it
        # receives (so a webhook of a few tens of KB could not be sent): it is left
        # unlimited, and what a connector sends is bounded here, over all its frames.
        super().onMessageFrameBegin(length)
        self._incoming += length
        if self._incoming > MAX_CLIENT_MESSAGE and self.state == self.STATE_OPEN:
            self._log.warn("connection {connection_id}: a message over {limit} bytes from the connector; closed",
                           connection_id=self.factory.connection.id, limit=MAX_CLIENT_MESSAGE)
            self.sendClose(1009, f"messages to the server are limited to {MAX_CLIENT_MESSAGE} bytes")
            self.dropConnection(abort=False)  # the close frame goes out first

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f = self.factory
        try:
            frame = json.loads(payload)
            kind = frame.get("type") if isinstance(frame, dict) else None
        except ValueError:
            kind = None
            frame = {}
        f.connection.last_activity = f.clock.seconds()
        if kind in ("ack", "nack") and isinstance(frame.get("message_id"), str):
            retry = frame.get("retry", True)
            reason = frame.get("reason") if isinstance(frame.get("reason"), str) else ""
            d = Deferred.fromCoroutine(
                f.hub.settle_anywhere(f.connection, frame["message_id"], kind == "ack", retry is not False,
                                      reason[:200])
            )
            d.addErrback(self._settle_failed, frame["message_id"])
        elif kind != "heartbeat":
            self._send_json({"type": "error", "error": "expected a JSON frame of type ack, nack or heartbeat"})

    def _settle_failed(self, failure: Any, message_id: str) -> None:
        if failure.check(NotInFlight):
            return  # an ack for a message this connection does not hold: ignored
        if failure.check(ConnectUnavailable):
            self._log.warn("ack of {message_id} not recorded: Redis unavailable; it is redelivered later",
                           message_id=message_id)
            return
        self._log.failure("settling {message_id} failed", failure, message_id=message_id)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Called by autobahn whenever the connection is lost, handshake or not.
        self._stop_heartbeat()
        self.factory.hub.disconnect(self.factory.connection, hold=0)

    def _stop_heartbeat(self) -> None:
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None

    def _heartbeat(self) -> None:
        now = self.factory.clock.seconds()
        self._send_json({"type": "heartbeat", "timestamp": iso(now), "server_time": now})
        self._beat = self.factory.clock.callLater(self.factory.heartbeat, self._heartbeat)

    def _send_json(self, frame: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(frame, separators=(",", ":")).encode())

    def _send_batch(self, messages: list[Buffered]) -> None:
        # After the peer's close frame, until onClose runs, autobahn refuses to send.
        if self.state != self.STATE_OPEN:
            raise SinkClosed()
        for message in messages:
            try:
                self.sendMessage(message.wire_bytes())
            except Disconnected:
                raise SinkClosed() from None

    def _close_by_server(self, reason: str) -> None:
        self.sendClose(4000, reason[:120])


class ChannelSocketFactory(WebSocketServerFactory):
    """Builds the protocol of one already-authorised connection."""

    protocol = ChannelSocket  # type: ignore[assignment]

    def __init__(self, hub: ConnectHub, connection: Connection, clock: IReactorTime, heartbeat: float) -> None:
        super().__init__()
        self.hub = hub
        self.connection = connection
        self.clock = clock
        self.heartbeat = heartbeat
        # A peer that stops answering pings is dropped (no silent half-open stream).
        self.setProtocolOptions(
            autoPingInterval=heartbeat,
            autoPingTimeout=max(5.0, heartbeat),
            maxMessagePayloadSize=0,  # bounds sending too: see ChannelSocket.onMessageFrameBegin
            maxFramePayloadSize=MAX_CLIENT_MESSAGE,  # only frames received
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )


def websocket_resource(hub: ConnectHub, connection: Connection, clock: IReactorTime, heartbeat: float) -> Any:
    """The resource that takes the request's transport over for this connection."""
    return WebSocketResource(ChannelSocketFactory(hub, connection, clock, heartbeat))
